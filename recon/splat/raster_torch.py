"""Plain-PyTorch tile compositor: the reference twin of ``raster_cpu.rasterize_to_pixels``.

Straightforward and slow (a Python loop over tiles and over chunks of each tile's depth-sorted
Gaussians); autograd provides every gradient. Same signature and same rules as the numba path:

``compositing="alpha"`` (gsplat 1.4.0 / 3DGS, per pixel, front to back over the tile's list)::

    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   (dx, dy) = mean2d - pixel_centre
    alpha = min(ALPHA_MAX, opacity * exp(-sigma))
    skip if sigma < 0 or alpha < ALPHA_THRESHOLD
    stop (exclusive) when T * (1 - alpha) <= TRANSMITTANCE_EPS
    colour += colour_i * alpha * T;  T *= 1 - alpha
    render = colour + T_final * background;  render_alpha = 1 - T_final

``compositing="additive"`` (X-ray line integrals)::

    w_i = opacity_i * exp(-sigma),  skip if sigma < 0 or sigma > ADDITIVE_SIGMA_CUT
    render = sum_i w_i colour_i;  render_alpha = sum_i w_i

The additive cutoff drops terms with ``exp(-sigma) < exp(-18) ~ 1.5e-8`` (beyond 6 std along
the major axis), below float32 resolution of an order-one sum; it only saves time.
``rasterization`` bins additive Gaussians with a matching 6-std radius, so the additive image is
exactly sum over *all* visible Gaussians of the terms with sigma <= 18, independent of tiles
(alpha mode keeps gsplat's 3-std tile culling). Pixel centres are at ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_raster_inputs",
    "ALPHA_MAX",
    "ALPHA_THRESHOLD",
    "TRANSMITTANCE_EPS",
    "ADDITIVE_SIGMA_CUT",
    "COMPOSITING_MODES",
    "rasterize_to_pixels",
]

ALPHA_MAX = 0.999
ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_EPS = 1e-4
ADDITIVE_SIGMA_CUT = 18.0
COMPOSITING_MODES = ("alpha", "additive")

_CHUNK = 128  # Gaussians per step inside a tile (the twin only; no effect on results)


def check_raster_inputs(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width]
    flatten_ids: Tensor,  # [M]
    backgrounds: Optional[Tensor],  # [C, D]
    compositing: str,
) -> None:
    """ValueError (expected/given) for bad arguments of either ``rasterize_to_pixels`` twin."""
    if colors.dim() != 3:
        raise ValueError(f"colors: expected shape [C, N, D], given {list(colors.shape)}")
    C, N, D = colors.shape
    th, tw = -(-image_height // tile_size), -(-image_width // tile_size)
    for name, x, shape in (
        ("means2d", means2d, (C, N, 2)),
        ("conics", conics, (C, N, 3)),
        ("opacities", opacities, (C, N)),
        ("isect_offsets", isect_offsets, (C, th, tw)),
    ):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)}, given {list(x.shape)}")
    if flatten_ids.dim() != 1:
        raise ValueError(f"flatten_ids: expected shape [M], given {list(flatten_ids.shape)}")
    if compositing not in COMPOSITING_MODES:
        raise ValueError(f"compositing: expected one of {COMPOSITING_MODES}, given {compositing!r}")
    if backgrounds is not None:
        if compositing != "alpha":
            raise ValueError("backgrounds: not supported with compositing='additive' (expected None)")
        if tuple(backgrounds.shape) != (C, D):
            raise ValueError(f"backgrounds: expected shape {[C, D]}, given {list(backgrounds.shape)}")


def _sigma(delta: Tensor, conics: Tensor) -> Tensor:  # [P, K, 2], [K, 3] -> [P, K]
    dx, dy = delta[..., 0], delta[..., 1]
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy


def _absgrad_hook(buf: Tensor, ids: Tensor):
    def hook(grad: Tensor) -> None:  # grad: [P, K, 2], per-pixel d/d mean2d
        buf.index_add_(0, ids, grad.abs().sum(0).to(buf.dtype))

    return hook


def _tile_alpha(
    xy: Tensor,  # [K, 2]
    con: Tensor,  # [K, 3]
    op: Tensor,  # [K]
    col: Tensor,  # [K, D]
    pix: Tensor,  # [P, 2]
    ids: Tensor,  # [K] flat ids (for absgrad)
    absbuf: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    P, D = pix.shape[0], col.shape[1]
    T = torch.ones(P, dtype=xy.dtype, device=xy.device)
    done = torch.zeros(P, dtype=torch.bool, device=xy.device)
    acc = torch.zeros(P, D, dtype=xy.dtype, device=xy.device)
    for k0 in range(0, xy.shape[0], _CHUNK):
        sl = slice(k0, k0 + _CHUNK)
        delta = xy[None, sl, :] - pix[:, None, :]  # [P, k, 2]
        if absbuf is not None and delta.requires_grad:
            delta.register_hook(_absgrad_hook(absbuf, ids[sl]))
        sigma = _sigma(delta, con[sl])
        alpha = torch.clamp_max(op[None, sl] * torch.exp(-sigma), ALPHA_MAX)
        ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done[:, None]
        alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
        with torch.no_grad():  # which terms contribute: up to (excluding) the first stop
            t_after = T[:, None] * torch.cumprod(1.0 - alpha, dim=1)
            stop = ok & (t_after <= TRANSMITTANCE_EPS)
            contrib = ok & (torch.cumsum(stop.int(), dim=1) == 0)
        alpha = torch.where(contrib, alpha, torch.zeros_like(alpha))
        keep = torch.cumprod(1.0 - alpha, dim=1)  # [P, k]
        t_before = T[:, None] * torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], dim=1)
        acc = acc + (alpha * t_before) @ col[sl]
        T = T * keep[:, -1]
        done = done | stop.any(dim=1)
        if bool(done.all()):
            break
    return acc, T


def _tile_additive(
    xy: Tensor, con: Tensor, op: Tensor, col: Tensor, pix: Tensor, ids: Tensor,
    absbuf: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:  # fmt: skip
    P, D = pix.shape[0], col.shape[1]
    acc = torch.zeros(P, D, dtype=xy.dtype, device=xy.device)
    wsum = torch.zeros(P, dtype=xy.dtype, device=xy.device)
    for k0 in range(0, xy.shape[0], _CHUNK):
        sl = slice(k0, k0 + _CHUNK)
        delta = xy[None, sl, :] - pix[:, None, :]
        if absbuf is not None and delta.requires_grad:
            delta.register_hook(_absgrad_hook(absbuf, ids[sl]))
        sigma = _sigma(delta, con[sl])
        inside = (sigma >= 0) & (sigma <= ADDITIVE_SIGMA_CUT)
        w = torch.where(inside, op[None, sl] * torch.exp(-sigma.clamp(min=0)), torch.zeros_like(sigma))
        acc = acc + w @ col[sl]
        wsum = wsum + w.sum(dim=1)
    return acc, wsum


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    backgrounds: Optional[Tensor] = None,  # [C, D]
    compositing: str = "alpha",
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Composite depth-sorted tile lists into images (reference implementation).

    Args:
        means2d: pixel-space centres. [C, N, 2]
        conics: inverse 2D covariances (a, b, c). [C, N, 3]
        colors: per-view features. [C, N, D]
        opacities: per-view opacities (compensation already applied). [C, N]
        image_width, image_height, tile_size: image and tile geometry.
        isect_offsets: first intersection of each tile. [C, tile_height, tile_width]
        flatten_ids: sorted intersections, indices into the flattened [C * N]. [M]
        backgrounds: alpha mode only. [C, D]
        compositing: "alpha" or "additive" (module docstring).
        absgrad: after backward, ``means2d.absgrad`` [C, N, 2] holds the sum over pixels of
            the absolute per-pixel gradients w.r.t. means2d.

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1].
    """
    check_raster_inputs(
        means2d, conics, colors, opacities, image_width, image_height, tile_size,
        isect_offsets, flatten_ids, backgrounds, compositing,
    )  # fmt: skip
    C, N, D = colors.shape
    W, H, ts = image_width, image_height, tile_size
    _, th, tw = isect_offsets.shape
    dtype, device = means2d.dtype, means2d.device
    M = flatten_ids.shape[0]
    starts = isect_offsets.reshape(-1).to(torch.int64).tolist()
    ends = starts[1:] + [M]
    fids = flatten_ids.to(torch.int64)

    xy_all = means2d.reshape(C * N, 2)
    con_all = conics.reshape(C * N, 3)
    op_all = opacities.reshape(C * N)
    col_all = colors.reshape(C * N, D)
    absbuf = None
    if absgrad:
        absbuf = torch.zeros(C * N, 2, dtype=dtype, device=device)
        means2d.absgrad = absbuf.view(C, N, 2)  # filled in place during backward

    pix_ids: List[Tensor] = []
    out_c: List[Tensor] = []
    out_t: List[Tensor] = []  # transmittance (alpha) or weight sum (additive)
    for cam in range(C):
        for ty in range(th):
            for tx in range(tw):
                t = (cam * th + ty) * tw + tx
                x0, y0 = tx * ts, ty * ts
                xs = torch.arange(x0, min(x0 + ts, W), device=device)
                ys = torch.arange(y0, min(y0 + ts, H), device=device)
                gy, gx = torch.meshgrid(ys, xs, indexing="ij")
                gx, gy = gx.reshape(-1), gy.reshape(-1)
                pix = torch.stack([gx, gy], dim=-1).to(dtype) + 0.5  # [P, 2]
                pix_ids.append(cam * H * W + gy * W + gx)
                ids = fids[starts[t] : ends[t]]
                if compositing == "alpha":
                    acc, T = _tile_alpha(
                        xy_all[ids], con_all[ids], op_all[ids], col_all[ids], pix, ids, absbuf
                    )
                    if backgrounds is not None:
                        acc = acc + T[:, None] * backgrounds[cam][None, :]
                else:
                    acc, T = _tile_additive(
                        xy_all[ids], con_all[ids], op_all[ids], col_all[ids], pix, ids, absbuf
                    )
                out_c.append(acc)
                out_t.append(T)
    idx = torch.cat(pix_ids)
    render_colors = torch.zeros(C * H * W, D, dtype=dtype, device=device).index_put(
        (idx,), torch.cat(out_c)
    )
    t_all = torch.cat(out_t)
    alphas = 1.0 - t_all if compositing == "alpha" else t_all
    render_alphas = torch.zeros(C * H * W, dtype=dtype, device=device).index_put((idx,), alphas)
    return render_colors.reshape(C, H, W, D), render_alphas.reshape(C, H, W, 1)
