"""Which reader for this path: the dispatchers over the format modules of :mod:`recon.io`.

- :func:`load_capture`: photo captures (nerfstudio / instant-ngp, Blender, COLMAP, LLFF);
- :func:`load_ct_data`: CT projection datasets (R2-Gaussian, NAF / SAX-NeRF, projection stacks
  with a TIGRE geometry);
- :func:`read_volume` / :func:`write_volume` / :func:`load_volume_file`: volumes (``.npy``,
  ``.npz``, NIfTI, TIFF, DICOM series).

Each raises :class:`~recon.errors.InputError` naming the path when nothing recognisable is there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from recon.errors import InputError
from recon.io.arrays import read_npy, read_npz
from recon.io.atomic import atomic_save_npy
from recon.io.capture import Capture
from recon.io.colmap import load_colmap
from recon.io.ct_data import CTData
from recon.io.dicom import read_dicom_series, write_dicom_series
from recon.io.llff import load_llff
from recon.io.naf import read_naf_pickle
from recon.io.nifti import read_nifti, write_nifti
from recon.io.r2gaussian import read_r2gaussian
from recon.io.tiff import read_tiff_stack, write_tiff_stack
from recon.io.tigre import read_projection_stack
from recon.io.transforms import load_transforms_json
from recon.io.volume_checks import check_volume

__all__ = ["load_capture", "load_ct_data", "load_volume_file", "read_volume", "write_volume"]

_STACK_SUFFIXES = (".npy", ".tif", ".tiff")


def load_capture(
    path: str | Path, split: str | None = None, *, check_images: bool = True, allow_outside_paths: bool = False
) -> Capture:
    """Read a capture, detecting its layout.

    Args:
        path: a capture folder, or its ``transforms.json`` / ``transforms_<split>.json`` /
            ``poses_bounds.npy`` file.
        split: Blender split (``train``, ``val``, ``test``; default ``train``), or for a
            nerfstudio ``transforms.json`` the name of a ``<split>_filenames`` list to select.
            Not accepted for COLMAP and LLFF.
        check_images: raise if an image or mask file is missing (turn off to read cameras
            only, e.g. for rendering novel views; image sizes must then be in the file).

    Returns:
        The :class:`Capture`.

    Raises:
        InputError: nothing recognisable at ``path``, or any file in it is bad.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist (expected a capture folder or its transforms.json)")
    if path.is_file():
        if path.name == "poses_bounds.npy":
            _no_split(split, "LLFF", path)
            return load_llff(path.parent)
        m = re.fullmatch(r"transforms_(\w+)\.json", path.name)
        if m:
            if split is not None and split != m.group(1):
                raise InputError(
                    path, f"is the '{m.group(1)}' split but split='{split}' was asked for"
                )
            return load_transforms_json(path, format="blender", check_images=check_images, allow_outside_paths=allow_outside_paths)
        if path.suffix == ".json":
            return load_transforms_json(path, split=split, check_images=check_images, allow_outside_paths=allow_outside_paths)
        raise InputError(
            path,
            "is not a capture file (expected transforms.json, transforms_<split>.json or "
            "poses_bounds.npy, or a capture folder)",
        )
    if split is not None and (path / f"transforms_{split}.json").is_file():
        return load_transforms_json(
            path / f"transforms_{split}.json", format="blender", check_images=check_images, allow_outside_paths=allow_outside_paths
        )
    if (path / "transforms.json").is_file():
        return load_transforms_json(
            path / "transforms.json", split=split, check_images=check_images, allow_outside_paths=allow_outside_paths
        )
    blender = sorted(path.glob("transforms_*.json"))
    if blender:
        want = path / f"transforms_{split or 'train'}.json"
        if not want.is_file():
            found = ", ".join(p.name for p in blender)
            raise InputError(want, f"does not exist (found {found})")
        return load_transforms_json(want, format="blender", check_images=check_images, allow_outside_paths=allow_outside_paths)
    if (path / "sparse").is_dir():
        _no_split(split, "COLMAP", path)
        return load_colmap(path, check_images=check_images)
    if (path / "poses_bounds.npy").is_file():
        _no_split(split, "LLFF", path)
        return load_llff(path)
    raise InputError(
        path,
        "no recognisable capture (expected transforms.json, transforms_train.json, "
        "sparse/0/ with a COLMAP model, or poses_bounds.npy)",
    )


def _no_split(split: str | None, fmt: str, path: Path) -> None:
    if split is not None:
        raise InputError(path, f"is a {fmt} capture, which has no splits (got split='{split}')")


def load_ct_data(path: str | Path, *, trust_pickle: bool = False, allow_outside_paths: bool = False) -> CTData:
    """Read any CT projection dataset recon reads, by what ``path`` is:

    * a folder with ``meta_data.json``: R2-Gaussian layout (:func:`read_r2gaussian`);
    * ``*.pickle`` / ``*.pkl``: NAF / SAX-NeRF (:func:`read_naf_pickle`; only with ``trust_pickle``:
      unpickling runs code);
    * ``*.npy`` / ``*.tif[f]``: a projection stack with a same-stem ``.json``/``.yaml`` geometry
      beside it (TIGRE's keys or :class:`CTGeometry`'s);
    * ``*.json`` / ``*.yaml`` / ``*.yml``: a geometry file with a same-stem stack beside it.

    Files an R2-Gaussian ``meta_data.json`` lists outside its folder are refused unless
    ``allow_outside_paths``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found (expected an R2-Gaussian folder, a NAF pickle, or a projection stack with its geometry)")
    if path.is_dir():
        if (path / "meta_data.json").is_file():
            return read_r2gaussian(path, allow_outside_paths=allow_outside_paths)
        raise InputError(path, "folder has no meta_data.json (expected an R2-Gaussian dataset)")
    name = path.name.lower()
    if name.endswith((".pickle", ".pkl")):
        return read_naf_pickle(path, trust=trust_pickle)
    if name.endswith(_STACK_SUFFIXES):
        return read_projection_stack(path)
    if name.endswith((".json", ".yaml", ".yml")):
        stem = path.name[: -len(path.suffix)]
        for ext in _STACK_SUFFIXES:
            stack = path.with_name(stem + ext)
            if stack.is_file():
                return read_projection_stack(stack, path)
        raise InputError(path, f"geometry file without a projection stack beside it (expected {stem}.npy, .tif or .tiff)")
    raise InputError(path, "unknown CT data type (expected an R2-Gaussian folder, .pickle/.pkl, .npy/.tif stack, or .json/.yaml geometry)")


def load_volume_file(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a volume -> ([Z, Y, X] float32, voxel_mm (z, y, x) or None): ``.npz`` with a
    ``volume`` key (and optional ``spacing_mm_zyx``; the layout of the shared data), or
    anything :func:`read_volume` reads (.npy, NIfTI, TIFF, DICOM folder)."""
    path = Path(path)
    if path.name.lower().endswith(".npz"):
        z = read_npz(path)
        keys = sorted(z)
        if "volume" not in z:
            raise InputError(path, f"has no 'volume' array (keys: {keys})")
        unknown = sorted(set(keys) - {"volume", "spacing_mm_zyx"})
        if unknown:
            raise InputError(path, f"unknown keys {unknown} (expected 'volume' and optional 'spacing_mm_zyx')")
        vol = np.asarray(z["volume"], dtype=np.float32)
        spacing = tuple(float(s) for s in z["spacing_mm_zyx"].reshape(-1)) if "spacing_mm_zyx" in z else None
        if vol.ndim != 3:
            raise InputError(path, f"'volume' must be 3D [z, y, x], got shape {list(vol.shape)}")
        if not np.all(np.isfinite(vol)):
            raise InputError(path, "'volume' contains NaN/inf")
        if spacing is not None and (len(spacing) != 3 or any(not s > 0 for s in spacing)):
            raise InputError(path, f"'spacing_mm_zyx' must be 3 positive numbers, got {spacing}")
        return vol, spacing
    return read_volume(path)


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a volume by type -> ([z, y, x] float32, voxel_mm (z, y, x) or ``None``): ``.npy``,
    ``.nii``/``.nii.gz``, ``.tif``/``.tiff``, or a folder of DICOM slices."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith(".npy"):
        return check_volume(read_npy(path, "volume"), path).astype(np.float32), None
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return read_nifti(path)
    if name.endswith(".tif") or name.endswith(".tiff"):
        return read_tiff_stack(path)
    raise InputError(path, "unknown volume type (expected .npy, .nii, .nii.gz, .tif, .tiff or a DICOM folder)")


def write_volume(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None) -> Path:
    """Write a [z, y, x] volume by extension: ``.npy``, ``.nii``/``.nii.gz``, ``.tif``/``.tiff``;
    any other path is a folder for a DICOM series (the volume must then be in HU)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npy"):
        return atomic_save_npy(path, check_volume(volume, path))
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return write_nifti(path, volume, voxel_mm)
    if name.endswith(".tif") or name.endswith(".tiff"):
        return write_tiff_stack(path, volume, voxel_mm)
    if path.suffix:
        raise InputError(path, "unknown volume type (expected .npy, .nii, .nii.gz, .tif, .tiff or a folder for DICOM)")
    return write_dicom_series(path, volume, voxel_mm)
