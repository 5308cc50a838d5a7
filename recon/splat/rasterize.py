"""``rasterization``: gsplat 1.4.0's entry point, with CPU backends and additive compositing.

Backends are chosen here and only here:

* ``"auto"``: gsplat's CUDA ``rasterization`` for CUDA tensors (gsplat imported lazily),
  the numba CPU path for CPU tensors;
* ``"gsplat"``: gsplat's CUDA kernels (CUDA tensors, alpha compositing only);
* ``"cpu"``: numba kernels, float32 CPU tensors: projection + SH colours in one pass each way
  (``fused_cpu.project_and_shade``; when ``viewmats``/``Ks`` need gradients, e.g. pose
  refinement, or ``covars`` are given, the torch twin ``project_and_shade_torch`` projects
  instead), binning and compositing in ``raster_cpu``;
* ``"torch"``: the plain-PyTorch twins (``project_and_shade_torch``, ``tiles``,
  ``raster_torch``), any float dtype and device; slow, meant for tests and debugging.

``rasterize_params`` renders the raw parameters of a 3DGS trainer (``GaussianModel.params``:
log-scales, opacity logits, ``sh0`` / ``shN``); on the CPU backend the activations run inside
the projection kernel, elsewhere it is ``rasterization(**activate_params(params, d), ...)``.

The CPU backends implement gsplat's non-packed pinhole path; options they cannot honour
(``packed=True``, ``sparse_grad=True``, ``distributed=True``, other camera models) raise
``ValueError``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from . import raster_torch
from .projection import fully_fused_projection
from .sh import MAX_SH_DEGREE, num_sh_bases, spherical_harmonics
from .tiles import isect_offset_encode, isect_tiles, tile_grid

__all__ = [
    "BACKENDS",
    "RENDER_MODES",
    "activate_params",
    "project_and_shade_torch",
    "rasterization",
    "rasterize_params",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gsplat", "cpu", "torch")
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def _shape(x: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def _check_shape(name: str, x: Tensor | None, expected: tuple[int | None, ...], text: str) -> None:
    if x is None:
        raise ValueError(f"{name}: expected a tensor of shape {text}, given None")
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {text}, given {type(x).__name__}")  # noqa: TRY004
    ok = x.dim() == len(expected) and all(e is None or s == e for s, e in zip(x.shape, expected))
    if not ok:
        raise ValueError(f"{name}: expected shape {text}, given {_shape(x)}")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, given {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "cpu"
    return backend


def _gsplat_rasterization(**kwargs):
    try:
        from gsplat import rasterization as gs_rasterization
    except ImportError as err:  # pragma: no cover - gsplat is a declared dependency
        raise ImportError(
            "backend='gsplat' needs gsplat with its CUDA extension: pip install gsplat==1.4.0 "
            "(or use backend='cpu' with CPU tensors)"
        ) from err
    return gs_rasterization(**kwargs)


def _bin_torch(means2d, radii, depths, tile_size, tile_width, tile_height):
    """Torch twin of ``raster_cpu.bin_gaussians`` (same outputs)."""
    tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(
        means2d, radii, depths, tile_size, tile_width, tile_height
    )
    offsets = isect_offset_encode(isect_ids, radii.shape[0], tile_width, tile_height)
    return tiles_per_gauss, isect_ids, flatten_ids, offsets


def _check_inputs(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
    tile_size, backgrounds, render_mode, rasterize_mode, channel_chunk, covars, compositing,
) -> tuple[int, int, int]:  # fmt: skip
    """Shape/option checks of ``rasterization``; returns N, C and the colour channels."""
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
        given = _shape(means) if isinstance(means, Tensor) else type(means).__name__
        raise ValueError(f"means: expected shape [N, 3], given {given}")
    N = means.shape[0]
    if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        given = _shape(viewmats) if isinstance(viewmats, Tensor) else type(viewmats).__name__
        raise ValueError(f"viewmats: expected shape [C, 4, 4], given {given}")
    C = viewmats.shape[0]
    if C == 0:
        raise ValueError("viewmats: expected at least one camera, given C=0")
    _check_shape("Ks", Ks, (C, 3, 3), f"[C={C}, 3, 3]")
    if covars is None:
        _check_shape("quats", quats, (N, 4), f"[N={N}, 4]")
        _check_shape("scales", scales, (N, 3), f"[N={N}, 3]")
    else:
        _check_shape("covars", covars, (N, 3, 3), f"[N={N}, 3, 3]")
    _check_shape("opacities", opacities, (N,), f"[N={N}]")
    if not isinstance(colors, Tensor):
        raise ValueError(f"colors: expected a tensor, given {type(colors).__name__}")  # noqa: TRY004
    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))):
            raise ValueError(f"colors: expected shape [N={N}, D] or [C={C}, N={N}, D], given {_shape(colors)}")
        n_channels = colors.shape[-1]
    else:
        if not isinstance(sh_degree, int) or not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree: expected None or an int in [0, {MAX_SH_DEGREE}], given {sh_degree!r}")
        if not (
            (colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3)
            or (colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[3] == 3)
        ):
            raise ValueError(
                f"colors: expected SH coefficients [N={N}, K, 3] or [C={C}, N={N}, K, 3], given {_shape(colors)}"
            )
        if colors.shape[-2] < num_sh_bases(sh_degree):
            raise ValueError(
                f"colors: sh_degree={sh_degree} needs K >= {num_sh_bases(sh_degree)}, given K={colors.shape[-2]}"
            )
        n_channels = 3
    for name, val in (("width", width), ("height", height), ("tile_size", tile_size), ("channel_chunk", channel_chunk)):
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            raise ValueError(f"{name}: expected a positive int, given {val!r}")
    for name, val, allowed in (
        ("render_mode", render_mode, RENDER_MODES),
        ("rasterize_mode", rasterize_mode, RASTERIZE_MODES),
        ("compositing", compositing, raster_torch.COMPOSITING_MODES),
    ):
        if val not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, given {val!r}")
    if backgrounds is not None:
        if compositing == "additive":
            raise ValueError("backgrounds: not supported with compositing='additive' (expected None)")
        _check_shape("backgrounds", backgrounds, (C, n_channels), f"[C={C}, D={n_channels}]")
    return N, C, n_channels


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor | None,  # [N, 4]
    scales: Tensor | None,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: Tensor | None = None,  # [N, 3, 3]
    compositing: str = "alpha",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Rasterise N 3D Gaussians into C pinhole images (gsplat 1.4.0 semantics).

    Args:
        means: world-space centres. [N, 3]
        quats: wxyz rotations, not necessarily normalised. [N, 4]
        scales: activated scales. [N, 3]
        opacities: activated opacities (additive mode: any per-Gaussian weight). [N]
        colors: features [N, D] or [C, N, D]; SH coefficients [N, K, 3] or [C, N, K, 3]
            when ``sh_degree`` is set (colour = max(SH + 0.5, 0), as gsplat).
        viewmats: OpenCV world-to-camera matrices. [C, 4, 4]
        Ks: pinhole intrinsics. [C, 3, 3]
        width, height: image size in pixels.
        near_plane, far_plane, radius_clip, eps2d: projection/culling (``projection.py``).
        sh_degree: SH degree to evaluate (0..3) or None for plain features.
        packed, sparse_grad, distributed, camera_model: only the gsplat backend supports
            ``packed=True``, ``sparse_grad=True``, ``distributed=True`` and non-pinhole cameras.
        tile_size: tile edge in pixels.
        backgrounds: alpha mode only, added as ``T_final * bg``; for "D"/"ED" it is replaced
            by zeros, as in gsplat. [C, D]
        render_mode: "RGB", "D" (accumulated z: sum w_i z_i), "ED" (D / alpha), "RGB+D",
            "RGB+ED" (depth as last channel).
        absgrad: after backward, ``meta["means2d"].absgrad`` [C, N, 2] holds the per-Gaussian
            sum of absolute per-pixel gradients w.r.t. means2d.
        rasterize_mode: "classic" or "antialiased" (opacity times the eps2d compensation).
        channel_chunk: gsplat renders channels in chunks of this size; the CPU backends render
            all channels in one pass (same result) and only validate it.
        covars: optional world-space covariances used instead of quats/scales (which are then
            ignored, as in gsplat). [N, 3, 3]
        compositing: "alpha" (front-to-back 3DGS) or "additive" (X-ray: sum_i w_i c_i with
            w_i = opacity_i exp(-sigma); render_alphas = sum_i w_i). See ``raster_torch``.
            Additive mode culls and bins with a 6-std radius (``meta["radii"]`` too), so every
            term with sigma <= 18 is included whatever the tiling.
        backend: "auto", "gsplat", "cpu" or "torch" (module docstring).

    Returns:
        render_colors [C, H, W, X] (X = D, 1 or D + 1 with render_mode), render_alphas
        [C, H, W, 1], and meta: "means2d" [C, N, 2] (its ``.grad`` after backward is the
        screen-space gradient used by densification), "radii" [C, N] int32, "depths" [C, N],
        "conics" [C, N, 3], "opacities" [C, N], "camera_ids"/"gaussian_ids" (None:
        non-packed), "tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets",
        "width", "height", "n_cameras", "tile_width", "tile_height", "tile_size", "backend",
        "compositing".
    """
    N, C, n_channels = _check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
        tile_size, backgrounds, render_mode, rasterize_mode, channel_chunk, covars, compositing,
    )  # fmt: skip
    device = means.device
    backend = _resolve_backend(backend, device)
    log.debug("rasterization: backend=%s compositing=%s C=%d N=%d %dx%d", backend, compositing, C, N, width, height)
    if backend == "gsplat":
        if device.type != "cuda":
            raise ValueError(f"backend='gsplat': expected CUDA tensors, given device {device}")
        if compositing != "alpha":
            raise ValueError(
                "compositing='additive': not supported by backend='gsplat' (expected backend='cpu' or 'torch')"
            )
        render_colors, render_alphas, meta = _gsplat_rasterization(
            means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
            viewmats=viewmats, Ks=Ks, width=width, height=height, near_plane=near_plane,
            far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree,
            packed=packed, tile_size=tile_size, backgrounds=backgrounds, render_mode=render_mode,
            sparse_grad=sparse_grad, absgrad=absgrad, rasterize_mode=rasterize_mode,
            channel_chunk=channel_chunk, distributed=distributed, camera_model=camera_model,
            covars=covars,
        )  # fmt: skip
        meta.update(backend="gsplat", compositing="alpha")
        return render_colors, render_alphas, meta

    # CPU backends: non-packed pinhole only, one dtype and device throughout.
    for name, given, supported in (
        ("packed", packed, False),
        ("sparse_grad", sparse_grad, False),
        ("distributed", distributed, False),
        ("camera_model", camera_model, "pinhole"),
    ):
        if given != supported:
            raise ValueError(
                f"{name}: backend={backend!r} supports only {supported!r}, given {given!r} "
                "(use CUDA tensors with backend='gsplat')"
            )
    tensors = {"means": means, "opacities": opacities, "colors": colors, "viewmats": viewmats, "Ks": Ks}
    tensors.update({"covars": covars} if covars is not None else {"quats": quats, "scales": scales})
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    for name, x in tensors.items():
        if x.dtype != means.dtype or x.device != device or not x.dtype.is_floating_point:
            raise ValueError(
                f"{name}: expected floating dtype {means.dtype} on {device} like means, given {x.dtype} on {x.device}"
            )
    if backend == "cpu":
        if device.type != "cpu" or means.dtype != torch.float32:
            raise ValueError(
                f"backend='cpu': expected float32 CPU tensors, given {means.dtype} on {device} "
                "(use backend='torch' for float64)"
            )
        from . import raster_cpu  # numba: imported only when used

        bin_fn, raster_fn = raster_cpu.bin_gaussians, raster_cpu.rasterize_to_pixels
    else:
        bin_fn, raster_fn = _bin_torch, raster_torch.rasterize_to_pixels

    # ---------------------------------------------------------------- projection + colours
    # Additive mode bins each Gaussian wherever a term can pass its cutoff (sigma <= 18, i.e.
    # 6 std), so the X-ray image does not depend on tile boundaries; alpha mode keeps gsplat's 3.
    radius_sigmas = math.sqrt(2.0 * raster_torch.ADDITIVE_SIGMA_CUT) if compositing == "additive" else 3.0
    fused = backend == "cpu" and covars is None and not (viewmats.requires_grad or Ks.requires_grad)
    shade_fn = _project_and_shade_fused if fused else project_and_shade_torch
    sh_colors = colors if sh_degree is not None else None
    radii, means2d, depths, conics, opacities_cn, feats = shade_fn(
        means, quats, scales, opacities, sh_colors, viewmats, Ks, width, height, sh_degree=sh_degree,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        calc_compensations=rasterize_mode == "antialiased", radius_sigmas=radius_sigmas, covars=covars,
    )  # fmt: skip
    if sh_degree is None:
        feats = colors.expand(C, N, n_channels) if colors.dim() == 2 else colors  # [C, N, D]
    return _composite(
        means2d, radii, depths, conics, opacities_cn, feats, backgrounds, width, height, tile_size,
        render_mode, compositing, absgrad, bin_fn, raster_fn, backend, C,
    )  # fmt: skip


def _project_and_shade_fused(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *,
                             sh_degree, covars=None, **kw):  # fmt: skip
    from . import fused_cpu  # numba: imported only when used

    colors_cn = colors if colors is None or colors.dim() == 3 else None
    if colors is not None and colors_cn is None:  # per-camera SH [C, N, K, 3]: twin
        return project_and_shade_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                       sh_degree=sh_degree, covars=covars, **kw)  # fmt: skip
    return fused_cpu.project_and_shade(
        means, quats, scales, opacities, colors_cn, viewmats, Ks, width, height, sh_degree, **kw
    )


def project_and_shade_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor | None,  # [N, 4]
    scales: Tensor | None,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor | None,  # [N, K, 3] or [C, N, K, 3] SH coefficients, or None
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int | None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    radius_sigmas: float = 3.0,
    covars: Tensor | None = None,  # [N, 3, 3]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Projection and SH colours in plain PyTorch: the reference twin of
    ``fused_cpu.project_and_shade`` (differentiable w.r.t. every floating input).

    Returns:
        radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], opacities
        [C, N] (times the antialiasing compensation when ``calc_compensations``), colours
        [C, N, 3] = ``max(SH + 0.5, 0)`` (SH masked to 0 where culled, as gsplat) or None when
        ``sh_degree`` is None.
    """
    C, N = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, compensations = fully_fused_projection(
        means, quats, scales, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, calc_compensations=calc_compensations,
        covars=covars, radius_sigmas=radius_sigmas,
    )  # fmt: skip
    opacities_cn = opacities[None, :].expand(C, N)
    if compensations is not None:
        opacities_cn = opacities_cn * compensations
    feats = None
    if sh_degree is not None:
        campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        shs = colors.expand(C, *colors.shape) if colors.dim() == 3 else colors  # [C, N, K, 3]
        feats = spherical_harmonics(sh_degree, dirs, shs, masks=radii > 0)
        feats = torch.clamp_min(feats + 0.5, 0.0)  # as gsplat (Inria's convention)
    return radii, means2d, depths, conics, opacities_cn, feats


def _composite(
    means2d, radii, depths, conics, opacities_cn, feats, backgrounds, width, height, tile_size,
    render_mode, compositing, absgrad, bin_fn, raster_fn, backend, C,
):  # fmt: skip
    """Depth channels, binning and compositing; returns (colours, alphas, meta)."""
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        if bg is not None:
            bg = torch.zeros_like(bg[:, :1])

    # ---------------------------------------------------------------- binning + compositing
    tile_width, tile_height = tile_grid(width, height, tile_size)
    tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = bin_fn(
        means2d, radii, depths, tile_size, tile_width, tile_height
    )
    render_colors, render_alphas = raster_fn(
        means2d, conics, feats, opacities_cn, width, height, tile_size, isect_offsets,
        flatten_ids, backgrounds=bg, compositing=compositing, absgrad=absgrad,
    )  # fmt: skip
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)],
            dim=-1,
        )

    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities_cn,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "backend": backend,
        "compositing": compositing,
    }
    return render_colors, render_alphas, meta


def activate_params(
    params: Mapping[str, Tensor],  # means, quats, scales (log), opacities (logit), sh0, shN
    sh_degree: int,
) -> dict[str, Tensor]:
    """The 3DGS activations (``GaussianModel.activated``) in plain PyTorch: unit quaternions,
    ``exp`` scales, ``sigmoid`` opacities, SH coefficients ``cat([sh0, shN[:, :(d+1)^2 - 1]])``.
    The reference twin of the activations that ``rasterize_params`` fuses on the CPU."""
    colors = torch.cat([params["sh0"], params["shN"][:, : num_sh_bases(sh_degree) - 1]], dim=1)
    return {
        "means": params["means"],
        "quats": torch.nn.functional.normalize(params["quats"], dim=-1),
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "colors": colors,
    }


def rasterize_params(
    params: Mapping[str, Tensor],  # GaussianModel.params (raw): see below
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    backgrounds: Tensor | None = None,  # [C, 3]
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    tile_size: int = 16,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render raw 3DGS trainer parameters: ``rasterization(**activate_params(params, d), ...)``
    with the activations fused into the CPU kernels.

    Args:
        params: ``means`` [N, 3], ``quats`` [N, 4] (wxyz, any norm), ``scales`` [N, 3] (log
            std devs), ``opacities`` [N] (logits), ``sh0`` [N, 1, 3], ``shN`` [N, K - 1, 3]
            with (sh_degree + 1)^2 <= K (``GaussianModel.params``).
        sh_degree: SH degree to evaluate; higher bands of ``shN`` get zero gradients.
        other arguments: as ``rasterization``.

    Returns:
        As ``rasterization``. On the CPU backend (float32 CPU tensors, viewmats and Ks without
        gradient) projection, SH and activations run in one numba pass each way
        (``fused_cpu.project_and_shade_raw``) and gradients go straight to ``params``; otherwise
        this is exactly ``rasterization(**activate_params(params, sh_degree), ...)``.
    """
    missing = [k for k in ("means", "quats", "scales", "opacities", "sh0", "shN") if k not in params]
    if missing:
        raise ValueError(f"params: missing {missing} (expected GaussianModel.params)")
    means = params["means"]
    N = means.shape[0] if isinstance(means, Tensor) and means.dim() == 2 else -1
    for name, shape in (("means", (N, 3)), ("quats", (N, 4)), ("scales", (N, 3)), ("opacities", (N,)), ("sh0", (N, 1, 3))):
        if tuple(params[name].shape) != shape or N < 0:
            raise ValueError(f"params[{name!r}]: expected shape {list(shape)}, given {list(params[name].shape)}")
    shN = params["shN"]
    if shN.dim() != 3 or shN.shape[0] != N or shN.shape[2] != 3 or shN.shape[1] + 1 < num_sh_bases(sh_degree):
        raise ValueError(f"params['shN']: expected [N={N}, K-1 >= {num_sh_bases(sh_degree) - 1}, 3], given {list(shN.shape)}")
    device = means.device
    fused = (
        _resolve_backend(backend, device) == "cpu"
        and device.type == "cpu"
        and all(params[k].dtype == torch.float32 for k in ("means", "quats", "scales", "opacities", "sh0", "shN"))
        and not (viewmats.requires_grad or Ks.requires_grad)
    )
    if not fused:
        return rasterization(
            **activate_params(params, sh_degree), viewmats=viewmats, Ks=Ks, width=width, height=height,
            sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
            rasterize_mode=rasterize_mode, absgrad=absgrad, tile_size=tile_size, eps2d=eps2d,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, backend=backend,
        )  # fmt: skip
    from . import fused_cpu, raster_cpu  # numba: imported only when used

    C = viewmats.shape[0]
    # shapes/options checked by the shared checker (on the activated layout it describes)
    _check_inputs(
        means, params["quats"], params["scales"], params["opacities"],
        torch.empty(N, num_sh_bases(sh_degree), 3), viewmats, Ks, width, height, sh_degree,
        tile_size, backgrounds, render_mode, rasterize_mode, 32, None, "alpha",
    )  # fmt: skip
    radii, means2d, depths, conics, opacities_cn, feats = fused_cpu.project_and_shade_raw(
        means, params["quats"], params["scales"], params["opacities"], params["sh0"], shN,
        viewmats, Ks, width, height, sh_degree, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    return _composite(
        means2d, radii, depths, conics, opacities_cn, feats, backgrounds, width, height, tile_size,
        render_mode, "alpha", absgrad, raster_cpu.bin_gaussians, raster_cpu.rasterize_to_pixels, "cpu", C,
    )  # fmt: skip
