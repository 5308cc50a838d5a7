"""Projection stacks (``.npy`` / ``.tif``) with a TIGRE-style (or recon) geometry ``.json`` /
``.yaml`` beside them (same stem): read and written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recon.errors import InputError
from recon.geometry.ct import CTGeometry
from recon.io.arrays import read_npy
from recon.io.atomic import atomic_save_npy, atomic_write_path
from recon.io.ct_data import CTData, check_projections
from recon.io.tiff import read_tiff_array

logger = logging.getLogger(__name__)

__all__ = ["read_projection_stack", "write_projection_stack"]

_GEOMETRY_SUFFIXES = (".json", ".yaml", ".yml")


def _sidecar(path: Path) -> Path | None:
    stem = path.name
    for ext in (".npy", ".tiff", ".tif"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    for suffix in _GEOMETRY_SUFFIXES:
        cand = path.with_name(stem + suffix)
        if cand.exists():
            return cand
    return None


def read_projection_stack(path: str | Path, geometry: CTGeometry | str | Path | None = None) -> CTData:
    """Read a projection stack (``.npy`` [V, v, u] or multi-page TIFF) with its geometry.

    ``geometry`` may be a :class:`CTGeometry`, a JSON/YAML file (this package's keys or TIGRE's,
    with ``angles`` in radians), or ``None`` to use the file beside the stack with the same
    stem (``scan.npy`` -> ``scan.json`` / ``scan.yaml``). Checks that there is one angle per
    projection, that the detector size matches and that the data are finite.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "projection stack not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        proj = read_npy(path, "projection stack")
    elif suffix in (".tif", ".tiff"):
        proj = read_tiff_array(path, "projection stack")[0]
        if proj.ndim == 2:
            proj = proj[None]
    else:
        raise InputError(path, f"unknown projection stack type {suffix!r} (expected .npy, .tif or .tiff)")
    if geometry is None:
        side = _sidecar(path)
        if side is None:
            raise InputError(path, f"no geometry given and no {', '.join(path.stem + s for s in _GEOMETRY_SUFFIXES)} beside it")
        geometry = side
    geo_source = None
    if not isinstance(geometry, CTGeometry):
        geo_source = str(geometry)
        geometry = CTGeometry.from_file(geometry)
    projections = check_projections(proj, geometry, path)
    return CTData(geometry, projections, meta={"source": str(path), "geometry_source": geo_source, "format": "stack"})


def write_projection_stack(path: str | Path, projections: np.ndarray, geometry: CTGeometry) -> Path:
    """Write [V, v, u] projections (``.npy`` or ``.tif``) and the geometry JSON beside them."""
    path = Path(path)
    projections = check_projections(projections, geometry, path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        atomic_save_npy(path, projections)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        atomic_write_path(path, lambda p: tifffile.imwrite(p, projections))
    else:
        raise InputError(path, f"unknown projection stack type {suffix!r} (expected .npy, .tif or .tiff)")
    geometry.to_json(path.with_name(path.name[: -len(path.suffix)] + ".json"))
    return path


