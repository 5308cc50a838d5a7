"""TIFF volume stacks: multi-page float32 ``[z, y, x]`` (ImageJ hyperstack with the voxel
spacing): read and written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError
from recon.io.atomic import atomic_write_path
from recon.io.volume_checks import check_spacing, check_volume

logger = logging.getLogger(__name__)

__all__ = ["read_tiff_stack", "write_tiff_stack"]


def write_tiff_stack(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None) -> Path:
    """Write a [z, y, x] volume as a multi-page float32 TIFF (ImageJ hyperstack, spacing in mm)."""
    import tifffile

    vol = check_volume(volume, path).astype(np.float32)
    dz, dy, dx = check_spacing(voxel_mm, path)
    return atomic_write_path(
        path,
        lambda p: tifffile.imwrite(p, vol, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata={"spacing": dz, "unit": "mm", "axes": "ZYX"}),
    )


def read_tiff_stack(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a multi-page TIFF -> ([z, y, x] float32, voxel_mm (z, y, x) or ``None`` if the file
    carries no ImageJ spacing)."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    with tifffile.TiffFile(path) as tif:
        vol = tif.asarray().astype(np.float32)
        spacing = None
        ij = tif.imagej_metadata
        if ij and "spacing" in ij:
            page = tif.pages[0]
            xr = page.tags.get("XResolution")
            yr = page.tags.get("YResolution")
            if xr is not None and yr is not None:
                dx = xr.value[1] / xr.value[0]
                dy = yr.value[1] / yr.value[0]
                spacing = (float(ij["spacing"]), float(dy), float(dx))
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise InputError(path, f"expected a 3D stack, got shape {list(vol.shape)}")
    check_finite(vol, path, "volume")
    return vol, spacing


