"""Simulated CT acquisitions from real volumes (the sparse-view protocol of R2-Gaussian).

``HU -> mu = mu_water * (1 + HU / 1000)`` with ``mu_water = 0.0206 / mm`` (water at ~60 keV,
:data:`recon.io.units.MU_WATER_PER_MM`), negatives clipped; line integrals by the matched
projector; then noise:

* ``protocol="physical"``: photon counts ``N ~ Poisson(I0 exp(-p)) + Normal(0, sigma)``,
  ``p_noisy = -log(max(N, 1) / I0)``. ``I0`` photons per unattenuated pixel (1e5 by default)
  and ``sigma`` the electronic noise in photons (10 by default; TIGRE's ``addCTnoise`` defaults).
* ``protocol="r2gaussian"``: TIGRE's ``CTnoise.add`` as R2-Gaussian / SAX-NeRF call it: the
  same model applied to ``p / max(p)`` (the most attenuating ray then transmits ``exp(-1)`` of
  ``I0``), scaled back by ``max(p)``.

Both clip the noisy line integrals at 0 (as R2-Gaussian does) and counts at 1 photon before
the logarithm (TIGRE does not, and can return NaN).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.io.units import MU_WATER_PER_MM, hu_to_mu
from recon.io.r2gaussian import write_r2gaussian
from recon.geometry.ct import CTGeometry, circular_angles
from recon.ct.project import Projector
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["MU_WATER_PER_MM", "add_noise", "hu_to_mu", "resample_volume", "simulate_projections", "write_r2gaussian_dataset"]

PROTOCOLS = ("physical", "r2gaussian")


def add_noise(
    line_integrals: torch.Tensor,  # [V, v, u]
    *,
    photons_i0: float = 1e5,
    electronic_noise_std: float = 10.0,
    protocol: str = "physical",
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [V, v, u]
    """Poisson + Gaussian detector noise on line integrals (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise InputError("protocol", f"unknown noise protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    if photons_i0 <= 0 or not math.isfinite(photons_i0):
        raise InputError("photons_i0", f"must be a positive photon count, got {photons_i0}")
    if electronic_noise_std < 0:
        raise InputError("electronic_noise_std", f"must be >= 0, got {electronic_noise_std}")
    p = line_integrals.to(torch.float64)
    scale = 1.0
    if protocol == "r2gaussian":
        scale = float(p.max())
        if scale <= 0:
            return line_integrals.clone()
        p = p / scale
    expected = photons_i0 * torch.exp(-p)
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise_std > 0:
        counts = counts + electronic_noise_std * torch.randn(counts.shape, generator=generator, dtype=counts.dtype, device=counts.device)
    noisy = -torch.log(counts.clamp_min(1.0) / photons_i0) * scale
    return noisy.clamp_min(0.0).to(line_integrals.dtype)


def simulate_projections(
    volume_mu: torch.Tensor | np.ndarray,  # [Z, Y, X] attenuation in 1/mm
    geometry: CTGeometry,
    *,
    noise: bool = True,
    photons_i0: float = 1e5,
    electronic_noise_std: float = 10.0,
    protocol: str = "physical",
    seed: int | None = 0,
    projector: Projector | None = None,
) -> torch.Tensor:  # [V, v, u]
    """Line integrals of an attenuation volume (1/mm, [Z, Y, X]) for every view of
    ``geometry``, optionally with Poisson + Gaussian noise. Use :func:`hu_to_mu` first for HU.
    Returns float32 [V, v, u] on the CPU."""
    vol = torch.as_tensor(np.asarray(volume_mu) if not isinstance(volume_mu, torch.Tensor) else volume_mu)
    vol = vol.to(torch.float32)
    if tuple(vol.shape) != geometry.n_voxel:
        raise InputError("volume_mu", f"shape {list(vol.shape)} does not match the geometry's n_voxel {list(geometry.n_voxel)} (z, y, x)")
    if not torch.isfinite(vol).all():
        raise InputError("volume_mu", "contains NaN/inf")
    if float(vol.min()) < 0:
        logger.warning("simulate_projections: clipping %d negative attenuation values to 0", int((vol < 0).sum()))
        vol = vol.clamp_min(0.0)
    projector = projector or Projector(geometry)
    with torch.no_grad():
        p = projector.forward(vol).cpu()
    if not noise:
        return p
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return add_noise(p, photons_i0=photons_i0, electronic_noise_std=electronic_noise_std, protocol=protocol, generator=gen)


def write_r2gaussian_dataset(
    out_dir: str | Path,
    volume_mu: torch.Tensor | np.ndarray,  # [Z, Y, X] attenuation in 1/mm
    geometry: CTGeometry,
    n_train: int,
    n_test: int,
    *,
    total_angle_deg: float = 360.0,
    start_angle_deg: float = 0.0,
    noise: bool = True,
    photons_i0: float = 1e5,
    electronic_noise_std: float = 10.0,
    protocol: str = "physical",
    seed: int = 0,
) -> Path:
    """Simulate a sparse-view dataset and write it in R2-Gaussian's layout.

    Train views: ``n_train`` angles evenly over ``total_angle_deg`` from ``start_angle_deg``
    (end excluded), with noise. Test views: ``n_test`` sorted uniformly random angles over
    360 deg, without noise (R2-Gaussian's protocol). The scanner (detector, distances, voxel
    grid) comes from ``geometry``; its angles are ignored. Returns the folder.
    """
    if n_train < 1 or n_test < 0:
        raise InputError("n_train/n_test", f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    vol = np.asarray(volume_mu.detach().cpu() if isinstance(volume_mu, torch.Tensor) else volume_mu, dtype=np.float32)
    base = geometry if geometry.vectors is None else None
    if base is None:
        raise InputError("geometry", "R2-Gaussian datasets need a circular geometry, not per-view vectors")
    train_geo = base.with_angles(circular_angles(n_train, total_angle_deg, start_angle_deg))
    rng = np.random.default_rng(seed)
    test_angles = np.sort(rng.random(n_test) * 2.0 * np.pi) + math.radians(start_angle_deg)
    train = simulate_projections(
        vol, train_geo, noise=noise, photons_i0=photons_i0, electronic_noise_std=electronic_noise_std, protocol=protocol, seed=seed
    ).numpy()
    extra: dict[str, Any] = {
        "totalAngle": float(total_angle_deg),
        "startAngle": float(start_angle_deg),
        "noise": bool(noise),
        "possion_noise": float(photons_i0),  # sic: R2-Gaussian's key
        "gaussian_noise": [0.0, float(electronic_noise_std)],
    }
    test_geo = test = None
    if n_test:
        test_geo = base.with_angles(test_angles)
        test = simulate_projections(vol, test_geo, noise=False).numpy()
    return write_r2gaussian(
        out_dir, train_geo, train, volume=vol, test_geometry=test_geo, test_projections=test, scanner_extra=extra
    )


def resample_volume(volume: np.ndarray, voxel_mm: tuple[float, float, float], size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Area-resample [Z, Y, X] to ``size``^3 voxels keeping the physical extent (adaptive average
    pooling when shrinking, trilinear when growing); returns the volume and its new voxel size."""
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    shape = (size, size, size)
    if all(s <= n for s, n in zip(shape, volume.shape)):
        out = torch.nn.functional.interpolate(vol, size=shape, mode="area")
    else:
        out = torch.nn.functional.interpolate(vol, size=shape, mode="trilinear", align_corners=False)
    extent = [n * d for n, d in zip(volume.shape, voxel_mm)]
    return out[0, 0].numpy(), tuple(e / size for e in extent)  # type: ignore[return-value]
