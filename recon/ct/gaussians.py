"""Radiative Gaussians for CT (after R2-Gaussian, Zha et al., NeurIPS 2024): model, X-ray
splatting, initialisation from a volume, density control and the training loop.

Model
-----
``N`` 3D Gaussians with centres ``mu`` (world x, y, z in mm), rotations (wxyz quaternions),
scales (stored as log mm) and densities ``rho`` (attenuation per mm at the centre, stored
through a softplus). The attenuation field is ``mu(x) = sum_i rho_i exp(-1/2 (x - mu_i)^T
Sigma_i^{-1} (x - mu_i))``; :func:`recon.ct.voxelize.voxelize` samples it at voxel centres.

X-ray splatting (``render="splat"``)
------------------------------------
Every cone-beam view is a pinhole camera: the source is the camera centre, the detector the
image plane (OpenCV frame: x along the detector's u step, y along its v step, z from the source
to the detector), ``fx = f_mm / du``, ``fy = f_mm / dv`` with ``f_mm`` the source-detector
plane distance, and the principal point where the perpendicular from the source meets the
detector (this is where ``offset_detector_mm`` enters). Pixel ``(r, c)`` is image point
``(c + 0.5, r + 0.5)``, the shared rasteriser's convention. Parallel beams use the same model
with a very distant source (``PARALLEL_SOURCE_FACTOR`` times the scene size behind the detector;
magnification error below 1e-4 across the object); fan beams are cone beams with one row.

The rasteriser composites additively, ``I(p) = sum_i opacity_i exp(-1/2 d^T conic_i d) c_i``
with the EWA 2D Gaussian of each 3D one. R2-Gaussian's rectification makes this the line
integral: with ``opacity_i = rho_i`` and the per-view colour

    c_i = sqrt(2 pi / (r^T Sigma_i^{-1} r)),   r = unit vector from the source to mu_i,

the pixel on the ray through the centre gets exactly ``int rho_i G_i(s + t r) dt`` (a 3D
Gaussian integrates along a line to ``sqrt(2 pi / r^T Sigma^{-1} r)`` times its peak on that
line); neighbouring pixels follow the EWA footprint (first-order exact).
``rasterize_mode="antialiased"`` with a small ``eps2d`` keeps the splat's integral over the
detector unchanged (gsplat's compensation), so the low-pass filter does not add mass.
Units: mm for lengths, 1/mm for densities, projections dimensionless.

Voxel path (``render="voxel"``)
-------------------------------
Voxelise the Gaussians on the reconstruction grid and project the volume with the matched
projector :class:`recon.ct.project.Projector` (any geometry, including parallel and fan).
Both paths are differentiable; the splat path is R2-Gaussian's renderer, the voxel path is
the same forward model the simulator and SART use.

Training: :mod:`recon.ct.gaussian_trainer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.geometry.ct import CTGeometry, normalize_view_indices
from recon.ct import _activate_numba
from recon.ct.voxelize import VoxelGrid, voxelize
from recon.errors import InputError
from recon.splat.rasterize import rasterization

logger = logging.getLogger(__name__)

__all__ = [
    "PARALLEL_SOURCE_FACTOR",
    "PARAM_NAMES",
    "RadiativeGaussians",
    "XrayCameras",
    "line_integral_factors",
    "render_xray",
    "xray_cameras",
]

PARALLEL_SOURCE_FACTOR = 1e4
"""Parallel beams: the pinhole's centre sits this many scene sizes behind the detector."""

PARAM_NAMES = ("means", "quats", "scales", "densities")


# =============================================================================== cameras
@dataclass(frozen=True)
class XrayCameras:
    """Pinhole cameras of some views of a CT scan (see the module docstring)."""

    viewmats: Tensor  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor  # [C, 3, 3] intrinsics in (binned) detector pixels
    centres: Tensor  # [C, 3] camera centres = sources (world mm)
    width: int  # detector columns (after binning)
    height: int  # detector rows (after binning)
    views: tuple[int, ...]  # view indices into the geometry
    binning: int = 1

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> XrayCameras:
        return XrayCameras(
            self.viewmats.to(device, dtype), self.Ks.to(device, dtype), self.centres.to(device, dtype),
            self.width, self.height, self.views, self.binning,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.views)


def xray_cameras(
    geometry: CTGeometry,
    views: slice | Sequence[int] | np.ndarray | None = None,
    *,
    binning: int = 1,
    dtype: torch.dtype = torch.float32,
) -> XrayCameras:
    """Pinhole cameras (viewmats [C, 4, 4], Ks [C, 3, 3]) of the selected views of ``geometry``.

    ``binning`` b > 1 describes detectors binned b x b (``nv`` and ``nu`` must be multiples of
    b; see :func:`bin_projections`). Raises :class:`InputError` for detectors whose u and v
    steps are not orthogonal, or whose plane faces away from the source.
    """
    if not isinstance(geometry, CTGeometry):
        raise InputError("geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
    if not isinstance(binning, int) or binning < 1:
        raise InputError("binning", f"expected a positive int, got {binning!r}")
    nv, nu = geometry.n_detector
    if nv % binning or nu % binning:
        raise InputError("binning", f"detector {nv}x{nu} is not a multiple of binning {binning}")
    idx = normalize_view_indices(views, geometry.n_views)
    rays = geometry.per_view_rays()
    sel = np.asarray(idx, dtype=np.int64)
    D, U, V = rays.detector_centre_mm[sel], rays.u_mm[sel], rays.v_mm[sel]
    du, dv = np.linalg.norm(U, axis=1), np.linalg.norm(V, axis=1)
    xh, yh = U / du[:, None], V / dv[:, None]
    if np.any(np.abs(np.sum(xh * yh, axis=1)) > 1e-6):
        raise InputError("geometry", "detector u and v steps are not orthogonal; the splat renderer needs a flat rectangular detector (use render='voxel')")
    zh = np.cross(xh, yh)
    if rays.is_parallel:
        r = rays.ray_direction[sel] / np.linalg.norm(rays.ray_direction[sel], axis=1, keepdims=True)
        if np.any(np.abs(np.sum(r * zh, axis=1)) < 1.0 - 1e-6):
            raise InputError("geometry", "parallel rays are not perpendicular to the detector; use render='voxel'")
        scene = float(np.linalg.norm(geometry.volume_size_mm) + np.linalg.norm(geometry.detector_size_mm))
        scene += float(np.max(np.linalg.norm(D, axis=1)))
        S = D - PARALLEL_SOURCE_FACTOR * scene * zh
    else:
        S = rays.source_mm[sel]
    f_mm = np.sum((D - S) * zh, axis=1)
    if np.any(f_mm <= 0):
        raise InputError("geometry", "the detector plane faces away from the source in some views")
    P = S + f_mm[:, None] * zh  # principal point on the detector
    a = np.sum((P - D) * xh, axis=1) / du  # pixels from the detector centre along u
    b = np.sum((P - D) * yh, axis=1) / dv
    C = len(idx)
    R = np.stack([xh, yh, zh], axis=1)  # [C, 3, 3] rows = camera axes in world
    viewmats = np.zeros((C, 4, 4))
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = -np.einsum("cij,cj->ci", R, S)
    viewmats[:, 3, 3] = 1.0
    Ks = np.zeros((C, 3, 3))
    Ks[:, 0, 0] = f_mm / du / binning
    Ks[:, 1, 1] = f_mm / dv / binning
    Ks[:, 0, 2] = (a + nu / 2.0) / binning
    Ks[:, 1, 2] = (b + nv / 2.0) / binning
    Ks[:, 2, 2] = 1.0
    t = lambda x: torch.as_tensor(x, dtype=dtype)
    return XrayCameras(t(viewmats), t(Ks), t(S), nu // binning, nv // binning, tuple(idx), binning)


def bin_projections(projections: Tensor, binning: int) -> Tensor:  # [V, v, u] -> [V, v/b, u/b]
    """Mean over ``binning`` x ``binning`` pixel blocks (detector binning)."""
    if binning == 1:
        return projections
    return F.avg_pool2d(projections[:, None], binning)[:, 0]


# =============================================================================== rendering
def _rotmat(quats: Tensor) -> Tensor:  # [N, 4] -> [N, 3, 3]
    from recon.splat.projection import quat_to_rotmat

    return quat_to_rotmat(quats)


def line_integral_factors(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] activated (mm)
    centres: Tensor,  # [C, 3] sources (mm)
) -> Tensor:  # [C, N]
    """``sqrt(2 pi / (r^T Sigma^{-1} r))`` (mm) with ``r`` the unit vector from each source to
    each centre: the integral of a unit-peak 3D Gaussian along the ray through its centre."""
    R = _rotmat(quats)  # [N, 3, 3]
    r = means[None, :, :] - centres[:, None, :]  # [C, N, 3]
    r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    local = torch.einsum("nji,cnj->cni", R, r) / scales[None]  # R^T r / s
    return torch.sqrt(2.0 * math.pi / (local * local).sum(-1).clamp_min(1e-20))


def render_xray(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] activated (mm)
    densities: Tensor,  # [N] activated (1/mm)
    cameras: XrayCameras,
    *,
    eps2d: float = 0.1,
    backend: str = "auto",
) -> tuple[Tensor, dict]:  # [C, H, W], meta
    """Line-integral images [C, H, W] of the Gaussians in ``cameras`` by additive splatting
    through :func:`recon.splat.rasterize.rasterization` (module docstring). Returns the images
    and the rasteriser's meta (``meta["means2d"]`` carries the screen-space gradient)."""
    if means.dim() != 2 or means.shape[1] != 3:
        raise InputError("means", f"expected [N, 3], got {list(means.shape)}")
    cams = cameras.to(means.device, means.dtype)
    colors = line_integral_factors(means, quats, scales, cams.centres)[..., None]  # [C, N, 1]
    if backend == "auto":
        backend = "cpu" if (means.device.type == "cpu" and means.dtype == torch.float32) else "torch"
    img, _alpha, meta = rasterization(
        means, quats, scales, densities, colors, cams.viewmats, cams.Ks, cams.width, cams.height,
        near_plane=1e-3, eps2d=eps2d, rasterize_mode="antialiased", compositing="additive", backend=backend,
    )  # fmt: skip
    return img[..., 0], meta


# =============================================================================== model
def _inv_softplus(x: Tensor) -> Tensor:
    x = x.clamp_min(1e-12)
    return torch.where(x > 20.0, x, torch.log(torch.expm1(x)))


class _ActivateNumba(torch.autograd.Function):
    """Unit quaternions, exp scales and activated densities in one numba pass each way."""

    @staticmethod
    def forward(ctx, quats, log_scales, raw_dens, softplus: bool, unit: float):
        q, s, d = torch.empty_like(quats), torch.empty_like(log_scales), torch.empty_like(raw_dens)
        qn, rn = quats.detach().numpy(), raw_dens.detach().numpy()
        _activate_numba.activate_forward(qn, log_scales.detach().numpy(), rn, softplus, unit, q.numpy(), s.numpy(), d.numpy())
        ctx.save_for_backward(quats, raw_dens, s, d)
        ctx.softplus, ctx.unit = softplus, unit
        return q, s, d

    @staticmethod
    def backward(ctx, g_q, g_s, g_d):
        quats, raw_dens, s, d = ctx.saved_tensors
        g_q, g_s, g_d = (torch.zeros_like(t) if g is None else g.detach().contiguous() for g, t in ((g_q, quats), (g_s, s), (g_d, d)))
        gq, gs, gd = torch.empty_like(quats), torch.empty_like(s), torch.empty_like(d)
        _activate_numba.activate_backward(
            quats.detach().numpy(), raw_dens.detach().numpy(), ctx.softplus, ctx.unit, s.numpy(), d.numpy(),
            g_q.numpy(), g_s.numpy(), g_d.numpy(), gq.numpy(), gs.numpy(), gd.numpy(),
        )  # fmt: skip
        return gq, gs, gd, None, None


class RadiativeGaussians(nn.Module):
    """Raw parameters in one ``ParameterDict``: ``means`` [N, 3] (mm), ``quats`` [N, 4] (wxyz),
    ``scales`` [N, 3] (log mm), ``densities`` [N] (pre-activation; softplus or exp).

    ``density_unit`` multiplies the activated densities (the trainer works in units of the
    projections' maximum; see :class:`GaussianTrainer`)."""

    def __init__(self, params: dict[str, Tensor], density_activation: str = "softplus", density_unit: float = 1.0):
        super().__init__()
        if density_activation not in ("softplus", "exp"):
            raise InputError("density_activation", f"expected 'softplus' or 'exp', got {density_activation!r}")
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise InputError("params", f"missing {missing}")
        n = params["means"].shape[0]
        for name, shape in (("means", (n, 3)), ("quats", (n, 4)), ("scales", (n, 3)), ("densities", (n,))):
            if tuple(params[name].shape) != shape:
                raise InputError(f"params.{name}", f"expected shape {list(shape)}, got {list(params[name].shape)}")
        self.params = nn.ParameterDict({k: nn.Parameter(params[k].detach().clone().float()) for k in PARAM_NAMES})
        self.density_activation = density_activation
        self.density_unit = float(density_unit)

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def activate_density(self, raw: Tensor) -> Tensor:
        return (F.softplus(raw) if self.density_activation == "softplus" else torch.exp(raw)) * self.density_unit

    def inverse_density(self, value: Tensor) -> Tensor:
        v = value / self.density_unit
        return _inv_softplus(v) if self.density_activation == "softplus" else torch.log(v.clamp_min(1e-20))

    def activated(self) -> dict[str, Tensor]:
        """``means`` [N, 3], ``quats`` [N, 4] (unit), ``scales`` [N, 3] (mm), ``densities`` [N] (1/mm).
        Contiguous CPU float32 parameters go through one fused numba pass each way
        (:mod:`recon.ct._activate_numba`); others through the torch ops (its reference twin)."""
        p = self.params
        raw = (p["quats"], p["scales"], p["densities"])
        if _activate_numba.AVAILABLE and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in raw):
            q, s, d = _ActivateNumba.apply(*raw, self.density_activation == "softplus", self.density_unit)
            return {"means": p["means"], "quats": q, "scales": s, "densities": d}
        return self._activated_torch()

    def _activated_torch(self) -> dict[str, Tensor]:
        """Reference twin of :meth:`activated` (torch ops and autograd)."""
        p = self.params
        return {
            "means": p["means"],
            "quats": F.normalize(p["quats"], dim=-1),
            "scales": torch.exp(p["scales"]),
            "densities": self.activate_density(p["densities"]),
        }

    def render(self, cameras: XrayCameras, *, eps2d: float = 0.1, backend: str = "auto") -> tuple[Tensor, dict]:
        """Projections [C, H, W] by X-ray splatting (:func:`render_xray`)."""
        return render_xray(**self.activated(), cameras=cameras, eps2d=eps2d, backend=backend)

    def voxelize(self, grid: VoxelGrid | CTGeometry, *, support_sigmas: float = 3.0, backend: str = "auto") -> Tensor:
        """Attenuation [Z, Y, X] at the voxel centres of ``grid`` (:func:`recon.ct.voxelize.voxelize`)."""
        return voxelize(**self.activated(), grid=grid, support_sigmas=support_sigmas, backend=backend)

    def state_dict_full(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "density_activation": self.density_activation,
            "density_unit": self.density_unit,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RadiativeGaussians:
        return cls(state["params"], state["density_activation"], state["density_unit"])

    # ------------------------------------------------------------------ initialisation
    @classmethod
    def from_volume(
        cls,
        volume: Tensor | np.ndarray,  # [Z, Y, X] attenuation (1/mm), e.g. FDK
        geometry: CTGeometry,
        n_gaussians: int = 50_000,
        *,
        threshold: float = 0.05,
        scale_multiplier: float = 1.0,
        min_scale_voxels: float = 0.5,
        max_scale_voxels: float = 6.0,
        normalize: bool = True,
        support_sigmas: float = 3.0,
        density_activation: str = "softplus",
        density_unit: float = 1.0,
        seed: int = 0,
    ) -> RadiativeGaussians:
        """Gaussians sampled from a volume (R2-Gaussian's FDK initialisation).

        Centres: ``n_gaussians`` voxel centres drawn uniformly without replacement among the
        voxels above ``threshold`` times the volume's maximum (all of them if there are fewer),
        jittered within their voxel. Scales: isotropic, ``scale_multiplier`` times the RMS
        distance to the 3 nearest centres, clamped to [``min_scale_voxels``,
        ``max_scale_voxels``] voxels. Densities: the volume's value at the centre; with
        ``normalize`` divided by the unit-density sum of all Gaussians there (one voxelisation),
        so the initial field reproduces the volume where the Gaussians overlap (R2-Gaussian
        instead multiplies by a fixed 0.15).
        """
        vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, Tensor) else volume.detach().cpu()).float()
        if tuple(vol.shape) != geometry.n_voxel:
            raise InputError("volume", f"expected shape {list(geometry.n_voxel)} (z, y, x), got {list(vol.shape)}")
        if not torch.isfinite(vol).all():
            raise InputError("volume", "contains NaN/inf")
        if n_gaussians < 1:
            raise InputError("n_gaussians", f"must be >= 1, got {n_gaussians}")
        vol = vol.clamp_min(0.0)
        vmax = float(vol.max())
        if vmax <= 0:
            raise InputError("volume", "is zero everywhere; nothing to initialise from")
        cand = torch.nonzero(vol.reshape(-1) > threshold * vmax).squeeze(1)
        gen = torch.Generator().manual_seed(int(seed))
        if cand.numel() > n_gaussians:
            cand = cand[torch.randperm(cand.numel(), generator=gen)[:n_gaussians]]
        n = int(cand.numel())
        if n < 4:
            raise InputError("volume", f"only {n} voxels above threshold {threshold} x max; lower the threshold")
        _Z, Y, X = geometry.n_voxel
        k, rem = cand // (Y * X), cand % (Y * X)
        j, i = rem // X, rem % X
        zc, yc, xc = (torch.as_tensor(c, dtype=torch.float32) for c in geometry.voxel_centres_mm())
        dz, dy, dx = geometry.voxel_mm
        jitter = (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([dx, dy, dz])
        means = torch.stack([xc[i], yc[j], zc[k]], dim=-1) + jitter
        from scipy.spatial import cKDTree

        pts = means.double().numpy()
        dist, _ = cKDTree(pts).query(pts, k=4)
        rms = torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(1))).float()
        vox = float(min(geometry.voxel_mm))
        sigma = (rms * scale_multiplier).clamp(min_scale_voxels * vox, max_scale_voxels * vox)
        values = vol[k, j, i].clamp_min(1e-6 * vmax)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        log_scales = torch.log(sigma)[:, None].repeat(1, 3)
        dens = values
        if normalize:
            with torch.no_grad():
                cover = voxelize(means, quats, torch.exp(log_scales), torch.ones(n), geometry, support_sigmas=support_sigmas)
            dens = values / cover[k, j, i].clamp_min(1.0)
        model = cls(
            {"means": means, "quats": quats, "scales": log_scales, "densities": torch.zeros(n)},
            density_activation, density_unit,
        )  # fmt: skip
        with torch.no_grad():
            model.params["densities"].copy_(model.inverse_density(dens))
        return model


