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

Training (:class:`GaussianTrainer`)
-----------------------------------
Loss per step: L1 + ``lambda_dssim`` D-SSIM on the projections of a batch of views (R2-Gaussian:
0.25) + ``lambda_tv`` 3D total variation of a voxelised patch (random ``tv_patch`` cube) or of
the whole volume (voxel path). Adam; learning rates decay exponentially. Density control
(R2-Gaussian): every ``densify_every`` steps the ``densify_fraction`` of Gaussians with the
largest mean projected-position gradient are cloned (small; both copies get half the density,
so the field is unchanged) or split in two (large; samples with scales / 1.6 and 0.6x the
density); Gaussians with tiny densities or huge scales are pruned.
Projections are handled in units of ``scale = max(projections)`` (R2-Gaussian normalises its
data), so learning rates and thresholds do not depend on the scanner's units.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.geometry.ct import CTGeometry, normalize_view_indices
from recon.ct.objective import ViewBatches, checked_projections, exponential_lr, initial_volume, projection_loss, seed_all
from recon.ct.project import Projector, torch_threads
from recon.ct.voxelize import VoxelGrid, tv_3d, voxelize
from recon.errors import InputError
from recon.splat.rasterize import rasterization
from recon.splat.strategy import (  # row ops that carry Adam moments
    duplicate_rows,
    remove_rows,
    split_rows,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PARALLEL_SOURCE_FACTOR",
    "GaussianFitConfig",
    "GaussianProgress",
    "GaussianTrainer",
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
    centers: Tensor  # [C, 3] camera centres = sources (world mm)
    width: int  # detector columns (after binning)
    height: int  # detector rows (after binning)
    views: tuple[int, ...]  # view indices into the geometry
    binning: int = 1

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> XrayCameras:
        return XrayCameras(
            self.viewmats.to(device, dtype), self.Ks.to(device, dtype), self.centers.to(device, dtype),
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
    D, U, V = rays.detector_center_mm[sel], rays.u_mm[sel], rays.v_mm[sel]
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
    centers: Tensor,  # [C, 3] sources (mm)
) -> Tensor:  # [C, N]
    """``sqrt(2 pi / (r^T Sigma^{-1} r))`` (mm) with ``r`` the unit vector from each source to
    each centre: the integral of a unit-peak 3D Gaussian along the ray through its centre."""
    R = _rotmat(quats)  # [N, 3, 3]
    r = means[None, :, :] - centers[:, None, :]  # [C, N, 3]
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
    colors = line_integral_factors(means, quats, scales, cams.centers)[..., None]  # [C, N, 1]
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
        """``means`` [N, 3], ``quats`` [N, 4] (unit), ``scales`` [N, 3] (mm), ``densities`` [N] (1/mm)."""
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
        zc, yc, xc = (torch.as_tensor(c, dtype=torch.float32) for c in geometry.voxel_centers_mm())
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


# =============================================================================== training
@dataclass
class GaussianFitConfig:
    """Hyperparameters of :class:`GaussianTrainer` (defaults tuned for 128^3, 25-75 views on a CPU)."""

    iterations: int = 500
    """Optimisation steps (128^3, 25 views: ~1 s each on 2 CPU cores, after ~30 s of
    initialisation). 500 with ``lambda_tv`` 0.1 was the best of the sweep in
    ``scripts/ablate_ct_gaussian.py`` on the 25-view chest (200: 36.34 dB, 400: 36.79, 500: 36.97)."""
    render: Literal["voxel", "splat"] = "voxel"
    """'voxel': voxelise + matched projector (the simulator's forward model; any beam); 'splat':
    R2-Gaussian's X-ray splatting through the shared rasteriser (cone/fan; parallel via a distant source)."""
    batch_views: int = 5
    """Views per step."""
    init: Literal["fdk", "sart"] = "sart"
    """Volume the Gaussians are sampled from: FDK/FBP (R2-Gaussian) or ``init_sart_iterations`` of OS-SART started from FDK."""
    init_sart_iterations: int = 5
    """OS-SART iterations for init='sart'."""
    init_filter: str = "hann"
    """Ramp filter window of the FDK initialisation."""
    n_gaussians: int = 400_000
    """Initial number of Gaussians (at most the number of voxels above the threshold)."""
    init_threshold: float = 0.05
    """Sample centres where the initial volume exceeds this fraction of its maximum."""
    init_scale: float = 0.6
    """Multiplier of the nearest-neighbour initial scale (0.6: less overlap, sharper and ~4x cheaper to voxelise than 1.0)."""
    init_fit_steps: int = 30
    """Adam steps fitting the sampled Gaussians to the initial volume (voxel-space L2) before
    training on projections; 0 keeps R2-Gaussian's plain sampling."""
    lr_means: float = 0.1
    """Adam learning rate of the centres, in voxels (x the smallest voxel size)."""
    lr_scales: float = 0.01
    """Adam learning rate of the log-scales."""
    lr_quats: float = 0.01
    """Adam learning rate of the quaternions."""
    lr_densities: float = 0.05
    """Adam learning rate of the densities (relative: x the initial median density for softplus)."""
    lr_final_ratio: float = 0.1
    """All learning rates decay exponentially to this fraction at the last step."""
    lambda_dssim: float = 0.25
    """Weight of D-SSIM on the projections (R2-Gaussian 0.25)."""
    lambda_tv: float = 0.1
    """Weight of the 3D TV regulariser (R2-Gaussian: 0.05 on its own scales), on volumes in units
    of the initial volume's maximum (swept at 200 steps on the 25-view chest: 0.05 35.98 dB,
    0.1 36.34, 0.15 36.16, 0.2 35.85)."""
    tv_patch: int = 32
    """Edge of the random TV cube (splat path); the voxel path regularises the whole volume."""
    support_sigmas: float = 3.0
    """Voxeliser support in standard deviations."""
    eps2d: float = 0.1
    """Splat low-pass filter (pixel^2), mass-preserving."""
    densify_from: int = 100
    """First step of density control."""
    densify_until: int = 400
    """Last step of density control."""
    densify_every: int = 50
    """Steps between density-control passes."""
    densify_fraction: float = 0.02
    """Fraction of the Gaussians cloned/split per density-control pass: those with the largest
    mean projected-position gradient (R2-Gaussian thresholds the gradient; a fraction does not
    depend on the render path, image size or loss scale)."""
    densify_scale: float = 1.5
    """Gaussians larger than this many voxels are split, smaller ones cloned."""
    max_gaussians: int = 450_000
    """Never grow beyond this many Gaussians."""
    prune_density: float = 1e-3
    """Prune Gaussians whose density is below this fraction of the initial volume's maximum."""
    max_scale_voxels: float = 10.0
    """Prune Gaussians wider than this many voxels."""
    seed: int = 0
    """Seed of the initialisation, view order, TV patches and splits."""

    def validate(self) -> None:
        checks = [
            ("iterations", self.iterations >= 0, ">= 0"),
            ("batch_views", self.batch_views >= 1, ">= 1"),
            ("n_gaussians", self.n_gaussians >= 4, ">= 4"),
            ("init_threshold", 0.0 <= self.init_threshold < 1.0, "in [0, 1)"),
            ("lambda_dssim", self.lambda_dssim >= 0, ">= 0"),
            ("lambda_tv", self.lambda_tv >= 0, ">= 0"),
            ("tv_patch", self.tv_patch >= 2, ">= 2"),
            ("support_sigmas", self.support_sigmas > 0, "> 0"),
            ("eps2d", self.eps2d >= 0, ">= 0"),
            ("lr_final_ratio", 0 < self.lr_final_ratio <= 1, "in (0, 1]"),
            ("max_gaussians", self.max_gaussians >= self.n_gaussians, ">= n_gaussians"),
            ("densify_every", self.densify_every >= 1, ">= 1"),
            ("densify_fraction", 0.0 <= self.densify_fraction <= 1.0, "in [0, 1]"),
            ("init_sart_iterations", self.init_sart_iterations >= 0, ">= 0"),
            ("init_fit_steps", self.init_fit_steps >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"--{name.replace('_', '-')}", f"must be {expected}, got {getattr(self, name)}")
        if self.render not in ("voxel", "splat"):
            raise InputError("--render", f"expected 'voxel' or 'splat', got {self.render!r}")
        if self.init not in ("fdk", "sart"):
            raise InputError("--init", f"expected 'fdk' or 'sart', got {self.init!r}")


@dataclass(frozen=True)
class GaussianProgress:
    """Passed to the trainer's callback after every step."""

    step: int
    n_steps: int
    loss: float
    l1: float
    n_gaussians: int
    elapsed_s: float


class GaussianTrainer:
    """Fits :class:`RadiativeGaussians` to projections (see the module docstring).

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan (``projections.shape == geometry.projection_shape``).
        config: hyperparameters.
        init_volume: [Z, Y, X] volume to initialise from; computed from ``config.init`` when None.
        state: a :meth:`state_dict` to continue from (skips the initialisation).
        num_threads: CPU threads policy (see :func:`recon.ct.project.torch_threads`).
    """

    def __init__(
        self,
        projections: Tensor | np.ndarray,  # [V, v, u]
        geometry: CTGeometry,
        config: GaussianFitConfig | None = None,
        *,
        init_volume: Tensor | np.ndarray | None = None,  # [Z, Y, X]
        state: dict[str, Any] | None = None,
        num_threads: int | str | None = "auto",
    ) -> None:
        self.config = cfg = config or GaussianFitConfig()
        cfg.validate()
        b, scale = checked_projections(projections, geometry)
        if cfg.render == "splat":
            xray_cameras(geometry, [0])  # refuses unsupported detectors before any work
        self.geometry = geometry
        self.num_threads = num_threads
        self.scale = scale
        self.b = b  # normalised projections
        self.grid = VoxelGrid.from_geometry(geometry)
        self.projector = Projector(geometry, num_threads=None)
        seed_all(cfg.seed)
        self.step = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []
        self._cameras: dict[tuple[int, ...], XrayCameras] = {}
        self._rng = np.random.default_rng(cfg.seed)
        self._batches = ViewBatches(geometry.n_views, cfg.batch_views, self._rng)
        if state is not None:
            self.init_description = str(state.get("init_description", "checkpoint"))
            self.load_state_dict(state)
            return
        with torch_threads(num_threads):
            self._init_model(init_volume)
        self.optimizers = self._make_optimizers()
        self._reset_gradient_stats()

    # ------------------------------------------------------------------ setup
    def _init_volume(self) -> Tensor:
        cfg = self.config
        return initial_volume(self.b, self.geometry, init=cfg.init, filter=cfg.init_filter, sart_iterations=cfg.init_sart_iterations, projector=self.projector)

    def _init_model(self, init_volume) -> None:
        cfg = self.config
        if init_volume is None:
            vol = self._init_volume()
            self.init_description = f"{cfg.init}" + (f" ({cfg.init_sart_iterations} OS-SART iterations)" if cfg.init == "sart" else f" ({cfg.init_filter})")
        else:
            vol = torch.as_tensor(np.asarray(init_volume) if not isinstance(init_volume, Tensor) else init_volume).float() / self.scale
            self.init_description = "given volume"
        vol = vol.clamp_min(0)
        self.vol_max = float(vol.max()) or 1.0
        self.model = RadiativeGaussians.from_volume(
            vol, self.geometry, cfg.n_gaussians, threshold=cfg.init_threshold, scale_multiplier=cfg.init_scale,
            support_sigmas=cfg.support_sigmas, seed=cfg.seed, density_unit=self.vol_max,
        )  # fmt: skip
        if cfg.init_fit_steps:
            self._fit_to_volume(vol, cfg.init_fit_steps)
        logger.info("initialised %d Gaussians from %s", self.model.num_gaussians, self.init_description)

    def _fit_to_volume(self, vol: Tensor, steps: int) -> None:
        """Adam on all parameters, mean squared error to ``vol`` (normalised) on the grid."""
        opts = self._make_optimizers()
        target = vol / self.vol_max
        for it in range(steps):
            decay = 0.1 ** (it / max(1, steps))
            for name, lr in self._base_lrs().items():
                for g in opts[name].param_groups:
                    g["lr"] = lr * decay
            pred = voxelize(**self.model.activated(), grid=self.grid, support_sigmas=self.config.support_sigmas)
            loss = ((pred / self.vol_max - target) ** 2).mean()
            loss.backward()
            for opt in opts.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
        self.init_fit_mse = float(loss.detach())

    def _base_lrs(self) -> dict[str, float]:
        cfg = self.config
        vox = float(min(self.geometry.voxel_mm))
        return {"means": cfg.lr_means * vox, "scales": cfg.lr_scales, "quats": cfg.lr_quats, "densities": cfg.lr_densities}

    def _make_optimizers(self) -> dict[str, torch.optim.Adam]:
        return {
            name: torch.optim.Adam([{"params": [self.model.params[name]], "lr": lr, "name": name}], eps=1e-15)
            for name, lr in self._base_lrs().items()
        }

    def _cams(self, views: tuple[int, ...]) -> XrayCameras:
        cams = self._cameras.get(views)
        if cams is None:
            cams = self._cameras[views] = xray_cameras(self.geometry, list(views))
        return cams

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (copies, safe to keep while training goes on)."""
        import copy

        return copy.deepcopy({
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "model": self.model.state_dict_full(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "grad_accum": self._grad_accum,
            "grad_count": self._grad_count,
            "order": list(self._batches.order),
            "rng": {"numpy": self._rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()},
            "scale": self.scale,
            "vol_max": self.vol_max,
            "history": self.history,
            "config": asdict(self.config),
            "init_description": self.init_description,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(float(state["scale"]) - self.scale) > 1e-6 * self.scale:
            raise InputError("checkpoint", "was trained on other projections (their maximum differs)")
        self.model = RadiativeGaussians.from_state(state["model"])
        self.vol_max = float(state["vol_max"])
        self.optimizers = self._make_optimizers()
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self._grad_accum = state["grad_accum"]
        self._grad_count = state["grad_count"]
        self._batches.order = list(state["order"])
        self._rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        self.history = list(state.get("history", []))

    # ------------------------------------------------------------------ training
    def _set_lrs(self) -> None:
        cfg = self.config
        for name, lr in self._base_lrs().items():
            for g in self.optimizers[name].param_groups:
                g["lr"] = exponential_lr(lr, self.step, cfg.iterations, cfg.lr_final_ratio)

    def projection_loss(self, pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:  # [C, H, W] each
        """L1 + ``lambda_dssim`` D-SSIM between rendered and measured projections; returns
        (loss, l1) (:func:`recon.ct.objective.projection_loss`; the nerfstudio plugin calls it)."""
        return projection_loss(pred, gt, self.config.lambda_dssim)

    def train_step(self) -> dict[str, float]:
        """One optimisation step (and density control when due). Returns the loss terms."""
        cfg = self.config
        views = self._batches.next()
        self._set_lrs()
        gt = self.b[list(views)]
        act = self.model.activated()
        unit = 1.0 / self.vol_max  # TV on volumes in units of the initial maximum
        tv = torch.zeros(())
        means2d = None
        if cfg.render == "voxel":
            vol = voxelize(**act, grid=self.grid, support_sigmas=cfg.support_sigmas)
            pred = self.projector.forward(vol, views)
            if cfg.lambda_tv > 0:
                tv = tv_3d(vol * unit)
        else:
            pred, meta = render_xray(**act, cameras=self._cams(views), eps2d=cfg.eps2d)
            means2d = meta["means2d"]
            means2d.retain_grad()
            if cfg.lambda_tv > 0:
                tv = tv_3d(self.tv_patch(act) * unit)
        loss, l1 = self.projection_loss(pred, gt)
        total = loss + cfg.lambda_tv * tv
        total.backward()
        self.accumulate_gradients(means2d, len(views))
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step += 1
        if cfg.densify_from <= self.step <= cfg.densify_until and self.step % cfg.densify_every == 0 and self.step < cfg.iterations:
            self.density_control()
        return {"loss": float(total.detach()), "l1": float(l1.detach()), "tv": float(tv.detach())}

    def tv_patch(self, act: dict[str, Tensor]) -> Tensor:
        """The Gaussians voxelised on a random ``tv_patch``-sized sub-grid (for the TV term) [z, y, x]."""
        size = [min(self.config.tv_patch, n) for n in self.grid.shape]
        start = [int(self._rng.integers(0, n - s + 1)) for n, s in zip(self.grid.shape, size)]
        return voxelize(**act, grid=self.grid.crop(start, size), support_sigmas=self.config.support_sigmas)

    def accumulate_gradients(self, means2d: Tensor | None, n_views: int) -> None:  # means2d [C, N, 2]
        """Running mean of the projected-position gradient norm (pixels), per Gaussian."""
        cfg = self.config
        if not (cfg.densify_from - cfg.densify_every < self.step + 1 <= cfg.densify_until):
            return
        if means2d is not None and means2d.grad is not None:
            g = means2d.grad.norm(dim=-1)  # [C, N]
            seen = g > 0
            self._grad_accum += g.sum(0).detach()
            self._grad_count += seen.sum(0).float()
        else:  # voxel path: 3D centre gradient times the detector pixel size at the isocentre
            grad = self.model.params["means"].grad
            if grad is None:
                return
            self._grad_accum += grad.norm(dim=-1).detach() * self._iso_pixel_mm() / n_views
            self._grad_count += (grad.abs().sum(-1) > 0).float()

    def _reset_gradient_stats(self) -> None:
        n, device = self.model.num_gaussians, self.model.params["means"].device
        self._grad_accum = torch.zeros(n, device=device)
        self._grad_count = torch.zeros(n, device=device)

    def _iso_pixel_mm(self) -> float:
        g = self.geometry
        mag = (g.dsd_mm / g.dso_mm) if (g.mode != "parallel" and g.dsd_mm and g.dso_mm) else 1.0
        return float(g.detector_pixel_mm[1]) / mag

    @torch.no_grad()
    def density_control(self) -> None:
        """Clone/split the Gaussians with the largest mean positional gradients, prune faint and huge ones."""
        cfg = self.config
        params, opts = self.model.params, self.optimizers
        n0 = self.model.num_gaussians
        grads = self._grad_accum / self._grad_count.clamp_min(1.0)
        vox = float(min(self.geometry.voxel_mm))
        scales = torch.exp(params["scales"]).max(dim=-1).values
        room = max(0, cfg.max_gaussians - n0)
        k = min(room, round(cfg.densify_fraction * n0))
        device = params["means"].device
        cand = torch.zeros(n0, dtype=torch.bool, device=device)
        seen = self._grad_count > 0
        if k > 0 and bool(seen.any()):
            k = min(k, int(seen.sum()))
            cand[torch.topk(torch.where(seen, grads, torch.full_like(grads, -1.0)), k).indices] = True
        state = {"grad_accum": self._grad_accum, "grad_count": self._grad_count}
        clone = cand & (scales <= cfg.densify_scale * vox)
        split = cand & (scales > cfg.densify_scale * vox)
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone:
            # both copies carry half the density: the field stays the same
            half = self.model.inverse_density(self.model.activate_density(params["densities"][clone]) * 0.5)
            params["densities"].data[clone] = half
            duplicate_rows(params, opts, state, clone)
            split = torch.cat([split, torch.zeros(n_clone, dtype=torch.bool, device=device)])
        if n_split:
            # two samples with scales / 1.6 and 0.6x the density keep the local attenuation about equal
            d = self.model.activate_density(params["densities"][split])
            params["densities"].data[split] = self.model.inverse_density(d * 0.6)
            split_rows(params, opts, state, split, revised_opacity=False)
        dens = self.model.activate_density(params["densities"])
        wide = torch.exp(params["scales"]).max(dim=-1).values > cfg.max_scale_voxels * vox
        prune = (dens < cfg.prune_density * self.vol_max * 1.0) | wide
        n_prune = int(prune.sum())
        if n_prune and n_prune < self.model.num_gaussians:
            remove_rows(params, opts, state, prune)
        self._reset_gradient_stats()
        logger.debug("density control at step %d: %d cloned, %d split, %d pruned -> %d", self.step, n_clone, n_split, n_prune, self.model.num_gaussians)

    def fit(
        self,
        callback: Callable[[GaussianProgress], bool | None] | None = None,
        checkpoint: Callable[[int, dict], None] | None = None,
        checkpoint_every: int = 0,
    ) -> RadiativeGaussians:
        """Train until ``config.iterations`` steps. ``callback`` after every step (return True
        to stop); ``checkpoint(step, state_dict)`` every ``checkpoint_every`` steps."""
        cfg = self.config
        start = time.perf_counter() - self.elapsed_s
        with torch_threads(self.num_threads):
            while self.step < cfg.iterations:
                terms = self.train_step()
                self.elapsed_s = time.perf_counter() - start
                rec = {"step": self.step, "time_s": round(self.elapsed_s, 3), "n_gaussians": self.model.num_gaussians, **terms}
                self.history.append(rec)
                if checkpoint is not None and checkpoint_every and self.step % checkpoint_every == 0 and self.step < cfg.iterations:
                    checkpoint(self.step, self.state_dict())
                if callback is not None:
                    prog = GaussianProgress(self.step, cfg.iterations, terms["loss"], terms["l1"], self.model.num_gaussians, self.elapsed_s)
                    if callback(prog) is True:
                        logger.info("Gaussian fit stopped by callback at step %d", self.step)
                        break
        return self.model

    @torch.no_grad()
    def volume(self) -> Tensor:  # [Z, Y, X] attenuation (1/mm)
        """The reconstruction: the Gaussians voxelised on the geometry's grid, in 1/mm."""
        with torch_threads(self.num_threads):
            return self.model.voxelize(self.grid, support_sigmas=self.config.support_sigmas) * self.scale
