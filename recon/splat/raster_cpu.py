"""Fast CPU tile compositor: numba kernels behind a ``torch.autograd.Function``.

Same signature and rules as the reference twin ``raster_torch.rasterize_to_pixels`` (see its
module docstring for the alpha/additive compositing rules); this module also holds the numba
twin of ``tiles.isect_tiles`` (``bin_gaussians``).

Design
------
* Binning: per camera, Gaussians are visited in (stable) depth order and their tiles are
  written with a counting sort, giving intersections sorted by (camera, tile, depth) in O(M).
* Forward: one task per (camera, tile), scheduled dynamically (chunk size 1) over the numba
  threads. Inside a tile, Gaussians are the outer loop (front to back) and only the pixels
  inside the ellipse where a term can pass the threshold are visited (rows from the ellipse's
  extent, columns by solving the quadratic per row, with slack; the exact per-pixel tests
  still decide). Along a row exp(-sigma) is updated by two products instead of one exp.
  Per-pixel state (transmittance in float64, accumulated colour, last contributing index)
  lives in small per-tile arrays, so each pixel sees exactly the sequential order and rules;
  rows whose pixels have all stopped are skipped.
* Backward: back to front per tile, recovering T from the float64 final transmittance. Each
  (tile, Gaussian) intersection is owned by one tile, so its gradient goes to its own slot row
  (no races, deterministic); slots are then summed per Gaussian in intersection order.
* Arithmetic inside the kernels is float64; arrays are float32 (int32 ids, int64 offsets), so
  each kernel is compiled once (``cache=True``: the first ever call compiles, ~40 s on two
  busy cores, and caches; later processes load in ~1 s). ``parallel_chunksize`` is set to 1
  only around the two per-tile loops (array expressions in other kernels would be split into
  one-element chunks).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .raster_torch import (
    ADDITIVE_SIGMA_CUT,
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    COMPOSITING_MODES,
    TRANSMITTANCE_EPS,
    check_raster_inputs,
)
from .tiles import depth_bits, tile_rects

__all__ = ["bin_gaussians", "rasterize_to_pixels", "warmup"]

# Slot layout of the per-intersection gradient rows: [v_xy(2), v_conic(3), v_opac, |v_xy|(2), v_colors(D)]
_S_XY, _S_CON, _S_OP, _S_ABS, _S_COL = 0, 2, 5, 6, 8

_BBOX_REL = 1e-6  # relative slack on the sigma cut (pixel ranges only bound the exact tests)
_BBOX_PAD = 1e-3  # pixels of slack on the pixel ranges


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _bin_kernel(rects, order, dbits, tile_width, tile_height, n_bits):
    # rects int32 [C, N, 4]; order int64 [C, N]; dbits int64 [C, N]
    C = rects.shape[0]
    N = rects.shape[1]
    n_tiles = tile_width * tile_height
    counts = np.zeros(C * n_tiles + 1, np.int64)
    for cam in prange(C):
        base = cam * n_tiles + 1
        for g in range(N):
            for ty in range(rects[cam, g, 1], rects[cam, g, 3]):
                for tx in range(rects[cam, g, 0], rects[cam, g, 2]):
                    counts[base + ty * tile_width + tx] += 1
    offsets = np.cumsum(counts)  # [C * n_tiles + 1]; offsets[t] = first intersection of tile t
    M = offsets[C * n_tiles]
    flatten_ids = np.empty(M, np.int32)
    isect_ids = np.empty(M, np.int64)
    cursor = offsets[:-1].copy()
    for cam in prange(C):
        c64 = np.int64(cam)
        base = c64 * n_tiles
        for j in range(N):
            g = order[cam, j]
            for ty in range(rects[cam, g, 1], rects[cam, g, 3]):
                for tx in range(rects[cam, g, 0], rects[cam, g, 2]):
                    tile = np.int64(ty * tile_width + tx)
                    pos = cursor[base + tile]
                    cursor[base + tile] = pos + 1
                    flatten_ids[pos] = np.int32(c64 * N + g)
                    isect_ids[pos] = (c64 << (32 + n_bits)) | (tile << 32) | dbits[cam, g]
    return flatten_ids, isect_ids, offsets


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N] int
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Numba twin of ``tiles.isect_tiles`` + ``tiles.isect_offset_encode``.

    Returns:
        tiles_per_gauss [C, N] int32, isect_ids [M] int64, flatten_ids [M] int32,
        isect_offsets [C, tile_height, tile_width] int32.
    """
    C, N = radii.shape
    rects = tile_rects(means2d, radii, tile_size, tile_width, tile_height)  # [C, N, 4]
    tiles_per_gauss = (rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])
    order = torch.argsort(depths.detach(), dim=1, stable=True)
    n_bits = (tile_width * tile_height).bit_length()
    fids, isect_ids, offsets = _bin_kernel(
        rects.contiguous().numpy(),
        order.to(torch.int64).contiguous().numpy(),
        depth_bits(depths).contiguous().numpy(),
        tile_width,
        tile_height,
        n_bits,
    )
    isect_offsets = torch.from_numpy(offsets[:-1].astype(np.int32)).reshape(C, tile_height, tile_width)
    return (
        tiles_per_gauss.to(torch.int32),
        torch.from_numpy(isect_ids),
        torch.from_numpy(fids),
        isect_offsets,
    )


# --------------------------------------------------------------------------------------------
# Compositing kernels
# --------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def _row_range(my, a, b, c, cut, y0, y1):
    """Rows y in [ys, ye] of the tile whose pixel centres may satisfy sigma <= cut."""
    det = a * c - b * b
    if cut < 0.0:
        return 0, -1
    if det <= 0.0 or a <= 0.0 or c <= 0.0:
        return y0, y1 - 1
    ry = math.sqrt(2.0 * cut * a / det) + _BBOX_PAD  # max |dy| on the ellipse: sqrt(2 cut Sigma_yy)
    ys = max(float(y0), math.ceil(my - ry - 0.5))
    ye = min(float(y1 - 1), math.floor(my + ry - 0.5))
    if ys > ye:
        return 0, -1
    return int(ys), int(ye)


@njit(cache=True, fastmath=False)
def _col_range(mx, dy, a, b, c, cut, x0, x1):
    """Pixels x in [xs, xe] of one row whose centre may satisfy sigma <= cut.

    sigma(dx) = 0.5 a dx^2 + b dy dx + 0.5 c dy^2 with dx = mx - (x + 0.5): solve the quadratic.
    """
    if a <= 0.0:
        return x0, x1 - 1
    disc = (b * dy) * (b * dy) - a * (c * dy * dy - 2.0 * cut)
    if disc < 0.0:
        return 0, -1
    sq = math.sqrt(disc)
    d_lo = (-b * dy - sq) / a
    d_hi = (-b * dy + sq) / a
    xs = max(float(x0), math.ceil(mx - 0.5 - d_hi - _BBOX_PAD))
    xe = min(float(x1 - 1), math.floor(mx - 0.5 - d_lo + _BBOX_PAD))
    if xs > xe:
        return 0, -1
    return int(xs), int(xe)


@njit(cache=True, fastmath=False)
def _cut_for(op, additive):
    """Largest sigma at which a term can still count (alpha >= 1/255, or the additive cutoff),
    slightly enlarged: the ranges it gives only bound the exact per-pixel tests."""
    if additive:
        cut = ADDITIVE_SIGMA_CUT
    elif op < ALPHA_THRESHOLD:
        return -1.0
    else:
        cut = math.log(op / ALPHA_THRESHOLD)
    return cut * (1.0 + _BBOX_REL) + _BBOX_REL


# Along a row, exp(-sigma) is updated by products: with dx -> dx - 1,
#   sigma changes by d1 = 0.5 a (1 - 2 dx) - b dy, and d1 itself grows by a,
# so E <- E * R, R <- R * exp(-a). The ranges keep sigma <= cut (<= 18 + slack), so E never
# underflows; forward and backward run the same recurrence and take the same decisions.


@njit(cache=True, fastmath=False)
def _forward_tile(
    t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, additive,
    out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    cam = t // n_tiles
    tile = t - cam * n_tiles
    ty = tile // tile_width
    tx = tile - ty * tile_width
    x0 = tx * tile_size
    y0 = ty * tile_size
    x1 = min(x0 + tile_size, width)
    y1 = min(y0 + tile_size, height)
    pw = x1 - x0
    P = pw * (y1 - y0)
    D = colors.shape[1]
    start = offsets[t]
    end = offsets[t + 1]
    # T: transmittance (alpha) or weight sum (additive)
    T = np.ones(P) if not additive else np.zeros(P)
    acc = np.zeros((P, D))
    last = np.full(P, -1, np.int32)
    done = np.zeros(P, np.bool_)
    row_done = np.zeros(y1 - y0, np.int64)
    n_done = 0
    for idx in range(start, end):
        g = flatten_ids[idx]
        op = float(opacities[g])
        cut = _cut_for(op, additive)
        mx = float(means2d[g, 0])
        my = float(means2d[g, 1])
        a = float(conics[g, 0])
        b = float(conics[g, 1])
        c = float(conics[g, 2])
        ys, ye = _row_range(my, a, b, c, cut, y0, y1)
        q = math.exp(-a)
        for y in range(ys, ye + 1):
            if row_done[y - y0] == pw:
                continue
            dy = my - (y + 0.5)
            xs, xe = _col_range(mx, dy, a, b, c, cut, x0, x1)
            if xs > xe:
                continue
            dx = mx - (xs + 0.5)
            e = math.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
            r = math.exp(-(0.5 * a * (1.0 - 2.0 * dx) - b * dy))
            p = (y - y0) * pw + xs - x0
            for _x in range(xs, xe + 1):
                if not done[p]:
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if additive:
                        if sigma >= 0.0 and sigma <= ADDITIVE_SIGMA_CUT:
                            w = op * e
                            for k in range(D):
                                acc[p, k] += w * colors[g, k]
                            T[p] += w
                    elif sigma >= 0.0:
                        alpha = min(ALPHA_MAX, op * e)
                        if alpha >= ALPHA_THRESHOLD:
                            next_t = T[p] * (1.0 - alpha)
                            if next_t <= TRANSMITTANCE_EPS:
                                done[p] = True
                                row_done[y - y0] += 1
                                n_done += 1
                            else:
                                vis = alpha * T[p]
                                for k in range(D):
                                    acc[p, k] += vis * colors[g, k]
                                T[p] = next_t
                                last[p] = idx
                e *= r
                r *= q
                dx -= 1.0
                p += 1
        if n_done == P:
            break
    for y in range(y0, y1):
        for x in range(x0, x1):
            p = (y - y0) * pw + x - x0
            for k in range(D):
                v = acc[p, k]
                if has_bg:
                    v += T[p] * backgrounds[cam, k]
                out_colors[cam, y, x, k] = v
            out_alphas[cam, y, x] = T[p] if additive else 1.0 - T[p]
            t_final[cam, y, x] = T[p]
            last_ids[cam, y, x] = last[p]


@njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(
    means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _forward_tile(
            t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
            width, height, tile_size, tile_width, n_tiles, additive,
            out_colors, out_alphas, t_final, last_ids,
        )  # fmt: skip


@njit(cache=True, fastmath=False)
def _backward_tile(
    t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, additive,
    t_final, last_ids, v_colors, v_alphas, slots,
):  # fmt: skip
    cam = t // n_tiles
    tile = t - cam * n_tiles
    ty = tile // tile_width
    tx = tile - ty * tile_width
    x0 = tx * tile_size
    y0 = ty * tile_size
    x1 = min(x0 + tile_size, width)
    y1 = min(y0 + tile_size, height)
    pw = x1 - x0
    P = pw * (y1 - y0)
    D = colors.shape[1]
    start = offsets[t]
    end = offsets[t + 1]
    if start == end:
        return
    T = np.empty(P)  # running transmittance, recovered back to front
    t_fin = np.empty(P)
    last = np.empty(P, np.int64)
    row_last = np.full(y1 - y0, start - 1, np.int64)  # max over the row of last
    v_c = np.empty((P, D))
    v_a = np.empty(P)
    bg_dot = np.zeros(P)
    buf = np.zeros((P, D))  # colour accumulated behind the current Gaussian
    max_last = start - 1
    for y in range(y0, y1):
        for x in range(x0, x1):
            p = (y - y0) * pw + x - x0
            T[p] = t_final[cam, y, x]
            t_fin[p] = t_final[cam, y, x]
            last[p] = last_ids[cam, y, x] if not additive else end - 1
            row_last[y - y0] = max(row_last[y - y0], last[p])
            v_a[p] = v_alphas[cam, y, x]
            for k in range(D):
                v_c[p, k] = v_colors[cam, y, x, k]
                if has_bg:
                    bg_dot[p] += backgrounds[cam, k] * v_c[p, k]
        max_last = max(max_last, row_last[y - y0])
    v_rgb = np.empty(D)
    for idx in range(end - 1, start - 1, -1):
        for j in range(slots.shape[1]):
            slots[idx, j] = 0.0
        if idx > max_last:
            continue
        g = flatten_ids[idx]
        op = float(opacities[g])
        cut = _cut_for(op, additive)
        mx = float(means2d[g, 0])
        my = float(means2d[g, 1])
        a = float(conics[g, 0])
        b = float(conics[g, 1])
        c = float(conics[g, 2])
        ys, ye = _row_range(my, a, b, c, cut, y0, y1)
        q = math.exp(-a)
        v_x = 0.0
        v_y = 0.0
        v_ca = 0.0
        v_cb = 0.0
        v_cc = 0.0
        v_op = 0.0
        abs_x = 0.0
        abs_y = 0.0
        for k in range(D):
            v_rgb[k] = 0.0
        for y in range(ys, ye + 1):
            if idx > row_last[y - y0]:
                continue
            dy = my - (y + 0.5)
            xs, xe = _col_range(mx, dy, a, b, c, cut, x0, x1)
            if xs > xe:
                continue
            dx = mx - (xs + 0.5)
            e = math.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
            r = math.exp(-(0.5 * a * (1.0 - 2.0 * dx) - b * dy))
            p = (y - y0) * pw + xs - x0
            for _x in range(xs, xe + 1):
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                vis = e
                use = idx <= last[p] and sigma >= 0.0
                v_sigma = 0.0
                grad_geo = False
                if use and additive:
                    if sigma <= ADDITIVE_SIGMA_CUT:
                        w = op * vis
                        v_w = v_a[p]
                        for k in range(D):
                            v_rgb[k] += w * v_c[p, k]
                            v_w += colors[g, k] * v_c[p, k]
                        v_sigma = -w * v_w
                        v_op += vis * v_w
                        grad_geo = True
                elif use:
                    alpha = min(ALPHA_MAX, op * vis)
                    if alpha >= ALPHA_THRESHOLD:
                        ra = 1.0 / (1.0 - alpha)
                        T[p] *= ra
                        tp = T[p]
                        fac = alpha * tp
                        v_alpha = 0.0
                        for k in range(D):
                            v_rgb[k] += fac * v_c[p, k]
                            v_alpha += (colors[g, k] * tp - buf[p, k] * ra) * v_c[p, k]
                        v_alpha += t_fin[p] * ra * v_a[p]
                        if has_bg:
                            v_alpha -= t_fin[p] * ra * bg_dot[p]
                        for k in range(D):
                            buf[p, k] += colors[g, k] * fac
                        if op * vis <= ALPHA_MAX:  # else clamped: no gradient to sigma/opacity
                            v_sigma = -op * vis * v_alpha
                            v_op += vis * v_alpha
                            grad_geo = True
                if grad_geo:
                    v_ca += 0.5 * v_sigma * dx * dx
                    v_cb += v_sigma * dx * dy
                    v_cc += 0.5 * v_sigma * dy * dy
                    gx = v_sigma * (a * dx + b * dy)
                    gy = v_sigma * (b * dx + c * dy)
                    v_x += gx
                    v_y += gy
                    abs_x += abs(gx)
                    abs_y += abs(gy)
                e *= r
                r *= q
                dx -= 1.0
                p += 1
        slots[idx, 0] = v_x
        slots[idx, 1] = v_y
        slots[idx, 2] = v_ca
        slots[idx, 3] = v_cb
        slots[idx, 4] = v_cc
        slots[idx, 5] = v_op
        slots[idx, 6] = abs_x
        slots[idx, 7] = abs_y
        for k in range(D):
            slots[idx, 8 + k] = v_rgb[k]


@njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(
    means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    t_final, last_ids, v_colors, v_alphas, slots,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _backward_tile(
            t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
            width, height, tile_size, tile_width, n_tiles, additive,
            t_final, last_ids, v_colors, v_alphas, slots,
        )  # fmt: skip


@njit(parallel=True, cache=True, fastmath=False)
def _reduce_slots(slots, flatten_ids, offsets, n_cameras, n_tiles, n_rows):
    """Sum slot rows per Gaussian (in intersection order: deterministic). Cameras in parallel."""
    out = np.zeros((n_rows, slots.shape[1]))
    for cam in prange(n_cameras):
        for i in range(offsets[cam * n_tiles], offsets[(cam + 1) * n_tiles]):
            g = flatten_ids[i]
            for j in range(slots.shape[1]):
                out[g, j] += slots[i, j]
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# autograd wrapper
# --------------------------------------------------------------------------------------------
def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _offsets_np(isect_offsets: Tensor, n_isects: int) -> np.ndarray:
    flat = isect_offsets.reshape(-1).to(torch.int64)
    return np.ascontiguousarray(np.append(flat.numpy(), np.int64(n_isects)))


class _Dynamic:
    """Dynamic scheduling (chunks of one tile) for the numba parallel loops."""

    def __enter__(self):
        self._old = numba.get_parallel_chunksize()
        numba.set_parallel_chunksize(1)

    def __exit__(self, *exc):
        numba.set_parallel_chunksize(self._old)


class _RasterizeToPixelsCPU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, means2d, conics, colors, opacities, backgrounds,
        width, height, tile_size, isect_offsets, flatten_ids, additive, absgrad,
    ):  # fmt: skip
        C, N, D = colors.shape
        _, th, tw = isect_offsets.shape
        offsets = _offsets_np(isect_offsets, flatten_ids.shape[0])
        fids = _np(flatten_ids.to(torch.int32))
        has_bg = backgrounds is not None
        bg = _np(backgrounds) if has_bg else np.zeros((C, D), np.float32)
        out_colors = np.empty((C, height, width, D), np.float32)
        out_alphas = np.empty((C, height, width), np.float32)
        t_final = np.empty((C, height, width), np.float64)
        last_ids = np.empty((C, height, width), np.int32)
        arrays = (
            _np(means2d).reshape(C * N, 2),
            _np(conics).reshape(C * N, 3),
            _np(colors).reshape(C * N, D),
            _np(opacities).reshape(C * N),
            bg,
        )
        with _Dynamic():
            _forward_kernel(
                *arrays, has_bg, fids, offsets, width, height, tile_size, tw, tw * th, C,
                additive, out_colors, out_alphas, t_final, last_ids,
            )  # fmt: skip
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds)
        ctx.np_state = (arrays, fids, offsets, t_final, last_ids)
        ctx.meta = (C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg)
        render_colors = torch.from_numpy(out_colors)
        render_alphas = torch.from_numpy(out_alphas)[..., None]
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        means2d, conics, colors, opacities, backgrounds = ctx.saved_tensors
        arrays, fids, offsets, t_final, last_ids = ctx.np_state
        C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg = ctx.meta
        v_c = _np(v_render_colors.to(torch.float32))
        v_a = _np(v_render_alphas.to(torch.float32)).reshape(C, height, width)
        slots = np.empty((fids.shape[0], _S_COL + D), np.float32)
        with _Dynamic():
            _backward_kernel(
                *arrays, has_bg, fids, offsets, width, height, tile_size, tw, tw * th, C,
                additive, t_final, last_ids, v_c, v_a, slots,
            )  # fmt: skip
        grads = torch.from_numpy(_reduce_slots(slots, fids, offsets, C, tw * th, C * N))
        grads = grads.reshape(C, N, _S_COL + D)
        v_means2d = grads[..., _S_XY:_S_CON]
        v_conics = grads[..., _S_CON:_S_OP]
        v_opacities = grads[..., _S_OP]
        v_colors = grads[..., _S_COL:]
        if absgrad:
            means2d.absgrad = grads[..., _S_ABS:_S_COL].clone()
        v_backgrounds = None
        if has_bg and ctx.needs_input_grad[4]:
            t_fin = torch.from_numpy(t_final).to(torch.float32)[..., None]
            v_backgrounds = (v_render_colors * t_fin).sum(dim=(1, 2))
        return (
            v_means2d, v_conics, v_colors, v_opacities, v_backgrounds,
            None, None, None, None, None, None, None,
        )  # fmt: skip


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
    """Numba twin of ``raster_torch.rasterize_to_pixels`` (float32 CPU tensors only).

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1]; differentiable w.r.t.
        means2d, conics, colors, opacities and backgrounds. With ``absgrad`` the backward pass
        sets ``means2d.absgrad`` [C, N, 2].
    """
    check_raster_inputs(
        means2d, conics, colors, opacities, image_width, image_height, tile_size,
        isect_offsets, flatten_ids, backgrounds, compositing,
    )  # fmt: skip
    for name, x in (("means2d", means2d), ("conics", conics), ("colors", colors), ("opacities", opacities)) + (
        (("backgrounds", backgrounds),) if backgrounds is not None else ()
    ):
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"{name}: expected float32 on cpu, given {x.dtype} on {x.device}")
    return _RasterizeToPixelsCPU.apply(
        means2d, conics, colors, opacities, backgrounds,
        int(image_width), int(image_height), int(tile_size), isect_offsets, flatten_ids,
        compositing == "additive", bool(absgrad),
    )  # fmt: skip


def warmup() -> float:
    """Compile (or load from the numba cache) every kernel on a tiny scene; returns seconds."""
    import time

    t0 = time.perf_counter()
    C, N, W, H, ts = 1, 3, 8, 8, 4
    g = torch.Generator().manual_seed(0)
    means2d = (torch.rand(C, N, 2, generator=g) * 8).requires_grad_()
    conics = torch.tensor([[0.5, 0.0, 0.5]]).repeat(C, N, 1).requires_grad_()
    colors = torch.rand(C, N, 3, generator=g).requires_grad_()
    opac = torch.full((C, N), 0.5).requires_grad_()
    radii = torch.full((C, N), 3, dtype=torch.int32)
    depths = torch.rand(C, N, generator=g) + 1
    _, _, fids, offs = bin_gaussians(means2d, radii, depths, ts, 2, 2)
    for mode in COMPOSITING_MODES:
        bg = torch.zeros(C, 3).requires_grad_() if mode == "alpha" else None
        rc, ra = rasterize_to_pixels(means2d, conics, colors, opac, W, H, ts, offs, fids, bg, mode)
        (rc.sum() + ra.sum()).backward()
    return time.perf_counter() - t0
