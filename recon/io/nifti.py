"""NIfTI volumes (``.nii`` / ``.nii.gz``, nibabel): read and written.

The data array is written ``[x, y, z]`` with a diagonal affine (voxel spacing, and the world
position of voxel 0), our world (x, y, z) used as-is; on reading, the image is first
reoriented to the closest canonical (RAS) axes, then transposed to ``[z, y, x]``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError
from recon.io.arrays import check_declared_size
from recon.io.atomic import atomic_write_path
from recon.io.volume_checks import check_spacing, check_volume

logger = logging.getLogger(__name__)

__all__ = ["read_nifti", "write_nifti"]


def write_nifti(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None, origin_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Path:
    """Write a [z, y, x] volume as NIfTI (``.nii`` / ``.nii.gz``); ``voxel_mm`` and ``origin_mm``
    (world position of voxel 0's centre) are (z, y, x)."""
    import nibabel as nib

    vol = check_volume(volume, path)
    dz, dy, dx = check_spacing(voxel_mm, path)
    oz, oy, ox = (float(x) for x in origin_mm)
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = [ox, oy, oz]
    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(vol, (2, 1, 0))), affine)
    img.header.set_xyzt_units("mm")
    name = Path(path).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(path).suffix
    tmp_target = Path(path)

    def _write(p: Path) -> None:
        real = p.with_name(p.name + suffix) if not p.name.endswith(suffix) else p
        nib.save(img, str(real))
        if real != p:
            real.replace(p)

    return atomic_write_path(tmp_target, _write)


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read NIfTI -> ([z, y, x] float32 volume, voxel_mm (z, y, x)); reoriented to the closest
    canonical (RAS) axes first."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except Exception as err:  # noqa: BLE001 - nibabel raises several types for bad files
        raise InputError(path, f"not a readable NIfTI file ({err})") from None
    header = img.header
    try:
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 0
        check_declared_size(path, tuple(int(n) for n in img.shape), dtype.itemsize, path.stat().st_size - offset,
                            compressed=path.name.lower().endswith(".gz"), what="image")  # fmt: skip
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, TypeError, IndexError, zlib.error, nib.orientations.OrientationError) as err:  # truncated, not gzip, bad header values
        raise InputError(path, f"data cannot be read ({' '.join(str(err).split())[:200]})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {list(data.shape)}")
    zooms = img.header.get_zooms()[:3]
    vol = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    check_finite(vol, path, "volume")
    return vol, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


