"""Analytic test phantoms on a voxel grid ([z, y, x] arrays), anti-aliased by supersampling."""

from __future__ import annotations

import numpy as np

from recon.errors import InputError

__all__ = ["ball", "shepp_logan_3d", "SHEPP_LOGAN_3D"]

# Modified 3D Shepp-Logan (Toft / Yu-Ye-Wang intensities): value, semi-axes (a, b, c) along
# (x, y, z), centre (x0, y0, z0), rotation about z in degrees; coordinates in [-1, 1]^3.
SHEPP_LOGAN_3D = (
    (1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18.0),
    (-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0.0),
    (0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0.0),
    (0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0.0),
    (0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0.0),
    (0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0.0),
    (0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0.0),
)


def _grid(shape: tuple[int, int, int], supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised sub-voxel coordinates in [-1, 1] along (z, y, x), supersampled."""
    out = []
    for n in shape:
        k = supersample
        sub = (np.arange(n * k) + 0.5) / (n * k) * 2.0 - 1.0
        out.append(sub)
    z, y, x = out
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _downsample(fine: np.ndarray, k: int) -> np.ndarray:
    Z, Y, X = (s // k for s in fine.shape)
    return fine.reshape(Z, k, Y, k, X, k).mean(axis=(1, 3, 5))


def ball(shape: tuple[int, int, int], radius: float = 0.5, value: float = 1.0, supersample: int = 4) -> np.ndarray:
    """Uniform ball of ``radius`` (fraction of the half-extent of each axis) centred in a
    [Z, Y, X] grid; float32 with partial-volume edges."""
    if len(shape) != 3 or min(shape) < 1:
        raise InputError("shape", f"expected 3 positive sizes (z, y, x), got {shape}")
    z, y, x = _grid(tuple(shape), supersample)
    fine = ((x * x + y * y + z * z) <= radius * radius).astype(np.float32) * value
    return _downsample(fine, supersample).astype(np.float32)


def shepp_logan_3d(shape: tuple[int, int, int], supersample: int = 2) -> np.ndarray:
    """Modified 3D Shepp-Logan phantom on a [Z, Y, X] grid spanning [-1, 1]^3; values 0..1."""
    if len(shape) != 3 or min(shape) < 1:
        raise InputError("shape", f"expected 3 positive sizes (z, y, x), got {shape}")
    z, y, x = _grid(tuple(shape), supersample)
    fine = np.zeros((z.shape[0], y.shape[1], x.shape[2]), dtype=np.float32)
    for val, a, b, c, x0, y0, z0, phi in SHEPP_LOGAN_3D:
        t = np.deg2rad(phi)
        ct, st = np.cos(t), np.sin(t)
        xr = (x - x0) * ct + (y - y0) * st
        yr = -(x - x0) * st + (y - y0) * ct
        inside = (xr / a) ** 2 + (yr / b) ** 2 + ((z - z0) / c) ** 2 <= 1.0
        fine += np.float32(val) * inside
    return np.clip(_downsample(fine, supersample), 0.0, None).astype(np.float32)
