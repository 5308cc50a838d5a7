"""Iso-surfaces of CT volumes: marching cubes at a Hounsfield value, in mm in the scanner frame.

:func:`iso_surface` converts the iso value from HU to attenuation with the run's water value
(``mu = mu_water (1 + HU / 1000)``, :func:`recon.io.units.hu_to_mu`), runs scikit-image's
marching cubes (Lewiner) on the ``[z, y, x]`` volume, and places the vertices at the world
positions of the voxel centres (:meth:`recon.geometry.ct.CTGeometry.voxel_centres_mm`). The
volume is padded with one voxel below the iso value on every side first, so that a surface cut
by the volume's border is closed there: the mesh is watertight before any decimation. Then
Open3D's Taubin smoothing (volume-preserving) and quadric decimation
(:func:`recon.geometry.mesh.clean_mesh`).

Faces are counter-clockwise seen from outside (normals point from dense to less dense), so a
closed mesh's signed volume is positive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from recon.errors import InputError
from recon.geometry.mesh import Mesh, clean_mesh
from recon.io.units import hu_to_mu

logger = logging.getLogger(__name__)

__all__ = ["ISO_PRESETS", "iso_hu", "iso_surface"]

ISO_PRESETS: dict[str, float] = {"bone": 300.0, "skin": -500.0}
"""Named iso values in HU: ``bone`` (cortical and most trabecular bone) and ``skin`` (the
air/soft-tissue boundary)."""


def iso_hu(value: str | float) -> float:
    """An iso value in HU from a preset name (:data:`ISO_PRESETS`) or a number."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in ISO_PRESETS:
            return ISO_PRESETS[key]
        try:
            value = float(key)
        except ValueError:
            raise InputError("--iso", f"expected a value in HU or one of {', '.join(ISO_PRESETS)}, given {value!r}") from None
    out = float(value)
    if not math.isfinite(out):
        raise InputError("--iso", f"expected a finite value in HU, given {value!r}")
    return out


def iso_surface(
    volume: np.ndarray,  # [Z, Y, X] attenuation in 1/mm
    voxel_mm: Sequence[float],  # (z, y, x)
    iso: float,  # HU
    *,
    mu_water_per_mm: float,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),  # (z, y, x) world position of voxel 0's centre
    smooth_iterations: int = 10,
    target_faces: int | None = 200_000,
    components: int | None = None,
) -> Mesh:
    """The closed iso-surface at ``iso`` HU of an attenuation volume ``[Z, Y, X]``, vertices in
    world mm ``(x, y, z)`` (voxel ``(k, j, i)``'s centre at ``origin + (k, j, i) * voxel_mm`` in
    (z, y, x)), smoothed and decimated (see the module docstring). ``components`` keeps the
    largest connected pieces (None: all). An iso value outside the volume's range raises
    :class:`InputError` (there is no surface)."""
    from skimage.measure import marching_cubes

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"volume: expected [Z, Y, X] with at least 2 voxels per axis, given {list(vol.shape)}")
    if len(voxel_mm) != 3 or any(not float(v) > 0 for v in voxel_mm):
        raise ValueError(f"voxel_mm: expected 3 positive sizes (z, y, x), given {voxel_mm}")
    if not mu_water_per_mm > 0:
        raise ValueError(f"mu_water_per_mm: expected > 0, given {mu_water_per_mm}")
    level = float(hu_to_mu(np.float64(iso), mu_water_per_mm, clip=False))
    lo, hi = float(np.nanmin(vol)), float(np.nanmax(vol))
    if not lo < level < hi:
        hu_lo, hu_hi = (1000.0 * (v / mu_water_per_mm - 1.0) for v in (lo, hi))
        raise InputError("--iso", f"{iso:g} HU is outside the volume's range {hu_lo:.0f}..{hu_hi:.0f} HU: no surface there")
    below = min(lo, level) - abs(level - lo) - 1e-6
    padded = np.pad(vol, 1, mode="constant", constant_values=below)
    spacing = tuple(float(v) for v in voxel_mm)
    verts_zyx, faces, _normals, _values = marching_cubes(padded, level=level, spacing=spacing, allow_degenerate=False)
    oz, oy, ox = (float(o) for o in origin_mm)
    dz, dy, dx = spacing
    # padded index 1 is voxel 0. scikit-image's faces are clockwise seen from outside in index
    # order (z, y, x); swapping to (x, y, z), an odd permutation, makes them counter-clockwise.
    verts = np.stack([verts_zyx[:, 2] - dx + ox, verts_zyx[:, 1] - dy + oy, verts_zyx[:, 0] - dz + oz], axis=1)
    mesh = Mesh(verts, faces.astype(np.int64))
    raw = mesh.n_faces
    mesh = clean_mesh(mesh, components=components, smooth_iterations=smooth_iterations, target_faces=target_faces)
    logger.info("iso-surface at %g HU: %d faces, %d after smoothing (%d) and decimation", iso, raw, mesh.n_faces, smooth_iterations)
    return mesh
