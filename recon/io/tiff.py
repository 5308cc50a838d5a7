"""TIFF volume stacks: multi-page float32 ``[z, y, x]`` (ImageJ hyperstack with the voxel
spacing): read and written."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError
from recon.io.arrays import check_declared_size
from recon.io.atomic import atomic_write_path
from recon.io.volume_checks import check_spacing, check_volume

logger = logging.getLogger(__name__)

__all__ = ["read_tiff_array", "read_tiff_stack", "write_tiff_stack"]


def write_tiff_stack(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None) -> Path:
    """Write a [z, y, x] volume as a multi-page float32 TIFF (ImageJ hyperstack, spacing in mm)."""
    import tifffile

    vol = check_volume(volume, path).astype(np.float32)
    dz, dy, dx = check_spacing(voxel_mm, path)
    return atomic_write_path(
        path,
        lambda p: tifffile.imwrite(p, vol, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata={"spacing": dz, "unit": "mm", "axes": "ZYX"}),
    )


def read_tiff_array(path: str | Path, what: str = "stack") -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """The first series of a TIFF file as stored (its size checked against the file and memory
    before it is decoded) -> (array, ImageJ voxel_mm (z, y, x) or ``None``); every failure is
    an :class:`InputError` naming the file."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found" if not path.exists() else "is not a file")
    problems = _TiffWarnings()
    tiff_log = logging.getLogger("tifffile")
    tiff_log.addHandler(problems)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(path, "holds no images")
            series = tif.series[0]
            if series.dtype is None or series.dtype.kind not in "biuf":
                raise InputError(path, f"has pixel type {series.dtype} (expected integer or float samples)")
            compressed = any(getattr(pg, "compression", 1) != 1 for pg in series.pages[:1])
            check_declared_size(path, tuple(series.shape), series.dtype.itemsize, path.stat().st_size, compressed=compressed, what=what)
            size = path.stat().st_size
            for page in tif.pages:
                ends = [o + n for o, n in zip(getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ()))]
                if ends and max(ends) > size:
                    raise InputError(path, f"page data end at byte {max(ends)} but the file has {size} bytes (truncated)")
            arr = series.asarray()
            if problems.messages:  # tifffile logs, rather than raises, on a broken page chain
                raise InputError(path, f"corrupt or truncated TIFF ({problems.messages[0][:200]})")
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
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, EOFError, KeyError, IndexError, TypeError, RuntimeError, ZeroDivisionError, struct.error) as err:
        raise InputError(path, f"not a readable TIFF ({' '.join(str(err).split())[:200]})") from None
    finally:
        tiff_log.removeHandler(problems)
    return arr, spacing


class _TiffWarnings(logging.Handler):
    """Collects what tifffile logs at WARNING and above while one file is read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def read_tiff_stack(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a multi-page TIFF -> ([z, y, x] float32, voxel_mm (z, y, x) or ``None`` if the file
    carries no ImageJ spacing)."""
    path = Path(path)
    vol, spacing = read_tiff_array(path, "volume")
    vol = vol.astype(np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise InputError(path, f"expected a 3D stack, got shape {list(vol.shape)}")
    check_finite(vol, path, "volume")
    return vol, spacing
