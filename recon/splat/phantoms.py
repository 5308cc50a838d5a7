"""Synthetic Gaussian scenes with a known surface (the splat counterpart of
:mod:`recon.ct.phantoms`): what mesh extraction is measured against.

:func:`sphere_gaussians` covers a sphere with flat, nearly opaque Gaussian discs (their
shortest axis along the sphere's normal), so that the rendered surface is the sphere;
:func:`sphere_cameras` looks at it from all around.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.geometry.cameras import CameraSet, Intrinsics, rotation_to_quaternion
from recon.splat.camera_paths import look_at
from recon.splat.model import GaussianModel, rgb_to_sh

__all__ = ["fibonacci_sphere", "sphere_cameras", "sphere_gaussians"]


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors ``[n, 3]`` (golden-angle spiral, z from 1 to -1)."""
    if n < 1:
        raise ValueError(f"n: expected >= 1, given {n}")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sphere_gaussians(
    radius: float = 1.0,
    n: int = 4000,
    *,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
    opacity: float = 0.98,
    thickness: float = 0.05,
    overlap: float = 1.0,
) -> GaussianModel:
    """``n`` flat Gaussians on the sphere of ``radius`` around ``centre``: tangential scale
    ``overlap`` times the mean spacing ``sqrt(4 pi r^2 / n)``, normal scale ``thickness`` times
    that; colours vary smoothly with the position (texture for renders); SH degree 0."""
    if not radius > 0 or n < 4:
        raise ValueError(f"radius > 0 and n >= 4 expected, given {radius}, {n}")
    normal = fibonacci_sphere(n)
    helper = np.where(np.abs(normal[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    t1 = np.cross(helper, normal)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normal, t1)
    rot = torch.from_numpy(np.stack([t1, t2, normal], axis=2))  # columns: the Gaussian's axes
    spacing = math.sqrt(4.0 * math.pi * radius * radius / n)
    s = spacing * overlap
    scales = torch.log(torch.tensor([s, s, s * thickness], dtype=torch.float64)).expand(n, 3)
    rgb = 0.5 + 0.4 * np.stack([np.sin(3 * normal[:, 0]), np.sin(3 * normal[:, 1] + 1), np.cos(3 * normal[:, 2])], axis=1)
    means = torch.from_numpy(radius * normal + np.asarray(centre, dtype=np.float64))
    return GaussianModel.from_params({
        "means": means.float(),
        "quats": rotation_to_quaternion(rot).float(),
        "scales": scales.float().clone(),
        "opacities": torch.full((n,), math.log(opacity / (1.0 - opacity))),
        "sh0": rgb_to_sh(torch.from_numpy(rgb).float())[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    })  # fmt: skip


def sphere_cameras(
    n: int = 24,
    distance: float = 3.0,
    *,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
    size: tuple[int, int] = (96, 96),
    fov_deg: float = 50.0,
) -> CameraSet:
    """``n`` pinhole cameras ``size = (width, height)`` spread over the sphere of ``distance``
    around ``centre`` (Fibonacci directions), looking at it, +z up."""
    width, height = size
    target = torch.tensor(centre, dtype=torch.float64)
    eyes = torch.from_numpy(fibonacci_sphere(n) * distance) + target
    w2c = look_at(eyes, target, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return CameraSet(w2c.float(), [Intrinsics(f, f, width / 2.0, height / 2.0, width, height)] * n)
