"""Sparse-view CT with a learned slice prior, sampled DDS-style (Decomposed Diffusion Sampler,
Chung, Lee & Ye, ICLR 2024; the TV term across slices after DiffusionMBIR, Chung et al. CVPR 2023).

The prior is a 2D diffusion model on axial slices (:class:`recon.prior.ct_diffusion.SliceDiffusion`,
model units ``x = mu / mu_water - 1``). The sampler starts from a reconstruction (OS-FISTA TV or
FDK), noises it to timestep ``t_start`` and walks ``steps`` DDIM steps down to 0. At each step
``t`` (all slices at once):

1. **Tweedie**: the network's estimate of the clean slices ``x0`` and of the noise ``eps`` at ``x_t``;
2. **data consistency** (in 3D, in attenuation units): ``cg_iterations`` conjugate-gradient
   steps on ``(A^T W A + gamma I) mu = A^T W b + gamma mu0`` started at ``mu0 = x0`` (``A`` the
   matched projector, ``W`` = 1 / ray length as in SART; ``gamma`` = ``cg_damping`` x the mean
   of ``A^T W A 1``; with ``gamma = 0`` this is CGLS, whose few steps stay in a Krylov subspace
   around ``x0``: DDS's "tangent" update, :func:`data_consistency`);
3. **TV across slices**: the exact proximal step of ``tv_z * TV_z`` (absolute differences along z
   only, in model units; :func:`recon.ct.tv_solver.tv_prox` with ``axes=(0,)``, dual warm-started
   from the previous step) and ``mu >= 0``;
4. **re-noising** to the next timestep (DDIM with ``eta``): ``x_{t'} = sqrt(ab') x0' +
   sqrt(1 - ab' - s^2) eps + s z``, ``s = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab')``.

The volume after the last step's data consistency and TV is the result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from recon.ct.project import Projector
from recon.ct.tv_solver import tv_prox
from recon.errors import InputError
from recon.geometry.ct import CTGeometry

if TYPE_CHECKING:  # the model module imports diffusers (seconds): only dds_reconstruct loads it
    from recon.prior.ct_diffusion import SliceDiffusion

logger = logging.getLogger(__name__)

__all__ = ["DiffusionConfig", "data_consistency", "dds_reconstruct", "ray_weights", "timestep_schedule"]


@dataclass
class DiffusionConfig:
    """Hyperparameters of ``recon ct fit --method diffusion`` (:func:`dds_reconstruct`)."""

    weights: Path | None = None
    """Folder of the slice diffusion model (config.json + diffusion_pytorch_model.safetensors);
    default: the shipped recon/prior/weights/ct_diffusion."""
    steps: int = 10
    """DDIM reverse steps from --diffusion.t-start down to 0 (one network pass over every slice each)."""
    t_start: int = 100
    """Timestep the starting volume is noised to (0..999; higher: more of the prior, less of the start)."""
    init: Literal["tv", "fdk"] = "tv"
    """Starting volume: OS-FISTA TV (--tv.* settings, solver fista) or FDK (Hann)."""
    init_volume: Path | None = None
    """Start from this volume instead (.npy, [z, y, x] attenuation in 1/mm on the scan's grid,
    e.g. a TV run's volume.npy); --diffusion.init is then not used."""
    cg_iterations: int = 3
    """Conjugate-gradient steps of the data-consistency update per reverse step."""
    cg_damping: float = 0.0
    """Weight of staying near the denoised estimate in the data-consistency solve, as a fraction
    of the mean diagonal of A^T W A (0: plain CGLS from the estimate, as DDS)."""
    tv_z: float = 0.005
    """Weight of TV across slices (z), in model units (HU / 1000); 0 switches it off."""
    tv_z_iterations: int = 5
    """Dual iterations of the z-TV proximal step per reverse step (warm-started)."""
    eta: float = 0.5
    """DDIM stochasticity (0: deterministic, 1: DDPM-like)."""
    batch_slices: int = 16
    """Slices per network call."""
    seed: int = 0
    """Seed of the noise."""

    def validate(self) -> None:
        checks = [
            ("steps", self.steps >= 1, ">= 1"),
            ("t_start", 0 <= self.t_start <= 999, "in 0..999"),
            ("cg_iterations", self.cg_iterations >= 0, ">= 0"),
            ("cg_damping", self.cg_damping >= 0, ">= 0"),
            ("tv_z", self.tv_z >= 0, ">= 0"),
            ("tv_z_iterations", self.tv_z_iterations >= 1, ">= 1"),
            ("eta", 0 <= self.eta <= 1, "in [0, 1]"),
            ("batch_slices", self.batch_slices >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"--diffusion.{name.replace('_', '-')}", f"must be {want}, got {getattr(self, name)}")
        if self.init not in ("tv", "fdk"):
            raise InputError("--diffusion.init", f"expected 'tv' or 'fdk', got {self.init!r}")


def timestep_schedule(t_start: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``t_start`` down to 0, evenly spaced, distinct (fewer when
    ``t_start + 1 < steps``)."""
    ts = np.round(np.linspace(t_start, 0, steps)).astype(int).tolist()
    out: list[int] = []
    for t in ts:
        if not out or t < out[-1]:
            out.append(int(t))
    return out


def ray_weights(projector: Projector, geometry: CTGeometry) -> Tensor:  # -> [V, v, u]
    """SART's row weights ``1 / (A 1)`` (1 / ray length in the volume; 0 for rays that miss it)."""
    with torch.no_grad():
        ray = projector.forward(torch.ones(geometry.n_voxel))
        hit = ray > 1e-6 * max(geometry.voxel_mm)
        return torch.where(hit, 1.0 / ray.clamp_min(1e-12), torch.zeros_like(ray))


@torch.no_grad()
def data_consistency(
    mu0: Tensor,  # [Z, Y, X] attenuation, 1/mm
    projections: Tensor,  # [V, v, u] line integrals
    projector: Projector,
    weights: Tensor,  # [V, v, u] row weights W
    *,
    iterations: int = 3,
    damping: float = 0.0,
) -> Tensor:  # [Z, Y, X]
    """``iterations`` conjugate-gradient steps on ``(A^T W A + damping I) mu = A^T W b + damping
    mu0`` from ``mu0`` (CGLS when ``damping = 0``: the weighted residual ``||A mu - b||_W`` never
    increases). Returns the new volume (``mu0`` is not changed)."""
    if mu0.dim() != 3 or weights.shape != projections.shape:
        raise InputError("data_consistency", f"expected mu0 [Z, Y, X] and weights shaped like the projections, got {list(mu0.shape)}, {list(weights.shape)} vs {list(projections.shape)}")
    x = mu0.clone()
    if iterations <= 0:
        return x
    r = projector.backproject(weights * (projections - projector.forward(x)))  # the damping term is 0 at mu0
    p = r.clone()
    rs = float((r * r).sum())
    for _ in range(iterations):
        if rs <= 0.0:
            break
        ap = projector.backproject(weights * projector.forward(p))
        if damping > 0:
            ap = ap + damping * p
        pap = float((p * ap).sum())
        if pap <= 0.0:
            break
        alpha = rs / pap
        x.add_(p, alpha=alpha)
        r.sub_(ap, alpha=alpha)
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


ProgressFn = Callable[[int, int, dict], None]


@torch.no_grad()
def dds_reconstruct(
    projections: Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    model: SliceDiffusion,
    init_volume: Tensor | np.ndarray,  # [Z, Y, X] attenuation, 1/mm
    config: DiffusionConfig | None = None,
    *,
    projector: Projector | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:  # [Z, Y, X] attenuation, 1/mm
    """Reconstruct with the slice prior (module docstring) from ``init_volume``.

    Args:
        projections: [V, v, u] line integrals of the scan.
        geometry: the scan (axial slices are the volume's z planes; sides multiples of
            ``model.size_multiple``).
        model: the slice diffusion model.
        init_volume: [Z, Y, X] starting reconstruction (1/mm).
        config: sampler settings (defaults: :class:`DiffusionConfig`).
        projector: reuse a :class:`Projector` of ``geometry``.
        progress: called as ``progress(step, total, record)`` after each reverse step.

    Returns:
        [Z, Y, X] attenuation (1/mm), >= 0.
    """
    from recon.prior.ct_diffusion import SliceDiffusion, from_model_units, to_model_units

    cfg = config or DiffusionConfig()
    cfg.validate()
    if not isinstance(model, SliceDiffusion):
        raise InputError("model", f"expected a SliceDiffusion, got {type(model).__name__}")
    b = torch.as_tensor(np.asarray(projections) if not isinstance(projections, Tensor) else projections).float()
    if tuple(b.shape) != geometry.projection_shape:
        raise InputError("projections", f"expected shape {list(geometry.projection_shape)} (views, v, u), got {list(b.shape)}")
    mu = torch.as_tensor(np.asarray(init_volume) if not isinstance(init_volume, Tensor) else init_volume).float().clamp_min(0)
    if tuple(mu.shape) != geometry.n_voxel:
        raise InputError("init_volume", f"expected shape {list(geometry.n_voxel)} (z, y, x), got {list(mu.shape)}")
    m = model.size_multiple
    if geometry.n_voxel[1] % m or geometry.n_voxel[2] % m:
        raise InputError("geometry", f"the slice diffusion model needs slice sides that are multiples of {m}; the grid is {list(geometry.n_voxel)} (z, y, x)")
    projector = projector or Projector(geometry, num_threads=None)
    w = ray_weights(projector, geometry)
    scale = float(model.config.value_scale_per_mm)
    damping = 0.0
    if cfg.cg_damping > 0:
        damping = cfg.cg_damping * float(projector.backproject(w * projector.forward(torch.ones(geometry.n_voxel))).mean())
    ts = timestep_schedule(cfg.t_start, cfg.steps)
    ab = model.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x = to_model_units(mu, scale)
    a0 = float(ab[ts[0]])
    x_t = math.sqrt(a0) * x + math.sqrt(1.0 - a0) * torch.randn(x.shape, generator=gen)
    p_dual = torch.zeros((3, *x.shape)) if cfg.tv_z > 0 else None
    ones = torch.ones_like(x)
    for i, t in enumerate(ts):
        est = model.denoise(x_t, t, batch=cfg.batch_slices)
        mu = from_model_units(est.x0, scale).clamp_min(0)
        mu = data_consistency(mu, b, projector, w, iterations=cfg.cg_iterations, damping=damping)
        u = mu / scale  # = x + 1 >= 0 after the prox
        if p_dual is not None:
            u, p_dual = tv_prox(u, cfg.tv_z, ones, p=p_dual, iterations=cfg.tv_z_iterations, axes=(0,))
        else:
            u = u.clamp_min(0)
        x0 = u - 1.0
        record = {"t": float(t)}
        if i + 1 < len(ts):
            t_next = ts[i + 1]
            a_t, a_n = float(ab[t]), float(ab[t_next])
            sigma = cfg.eta * math.sqrt(max((1.0 - a_n) / (1.0 - a_t), 0.0) * max(1.0 - a_t / a_n, 0.0)) if a_t < 1.0 else 0.0
            dir_coef = math.sqrt(max(1.0 - a_n - sigma * sigma, 0.0))
            x_t = math.sqrt(a_n) * x0 + dir_coef * est.eps
            if sigma > 0:
                x_t = x_t + sigma * torch.randn(x0.shape, generator=gen)
        if progress is not None:
            progress(i + 1, len(ts), record)
    return from_model_units(x0, scale).clamp_min(0)
