"""NAF / SAX-NeRF pickles (read and written).

They give lengths in mm but their projections were computed with the geometry in metres; the
reader multiplies them by 1000 so that reconstructing in the mm geometry returns the values of
the pickle's ``image``. Unpickling runs code: see :func:`read_naf_pickle`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import pickle

from recon.checks import check_finite
from recon.errors import InputError
from recon.geometry.ct import CTGeometry
from recon.io.atomic import atomic_write_path
from recon.io.ct_data import CTData, check_projections
from recon.io.r2gaussian import r2_geometry, r2_scanner

logger = logging.getLogger(__name__)

__all__ = ["NAF_PROJECTION_SCALE", "read_naf_pickle", "write_naf_pickle"]

_NAF_KEYS = frozenset(
    {
        "numTrain", "numVal", "DSD", "DSO", "nDetector", "dDetector", "sDetector", "nVoxel", "dVoxel", "sVoxel",
        "offOrigin", "offDetector", "accuracy", "mode", "filter", "totalAngle", "startAngle", "randomAngle",
        "convert", "rescale_slope", "rescale_intercept", "normalize", "noise", "image", "train", "val",
        "possion_noise", "gaussian_noise",
    }
)
NAF_PROJECTION_SCALE = 1000.0
"""NAF projections are line integrals over metres; multiply by this for mm geometries."""


def read_naf_pickle(path: str | Path, *, trust: bool = False) -> CTData:
    """Read a NAF / SAX-NeRF ``*.pickle`` -> :class:`CTData` (train = ``train``, test = ``val``,
    volume = ``image``). Projections are rescaled by :data:`NAF_PROJECTION_SCALE`.

    Unpickling runs code the file names, so this refuses unless ``trust`` (``--trust-pickle``):
    only for files from a source you trust. ``recon ct convert`` writes such a file once as an
    R2-Gaussian folder, which holds only arrays and JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    if not trust:
        raise InputError(path, "is a pickle, and loading a pickle runs code from the file: pass --trust-pickle if you trust its "
                               "source, or convert it once with 'recon ct convert FILE --trust-pickle --out DIR'")  # fmt: skip
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - a local dataset file chosen by the user
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except (pickle.UnpicklingError, EOFError) as err:
        raise InputError(path, f"not a readable pickle ({err})") from None
    if not isinstance(data, Mapping):
        raise InputError(path, f"expected a dict, got {type(data).__name__}")
    unknown = sorted(set(data) - _NAF_KEYS)
    if unknown:
        raise InputError(path, f"unknown NAF keys {unknown} (expected some of {sorted(_NAF_KEYS)})")

    def split(name: str) -> tuple[np.ndarray, np.ndarray] | None:
        part = data.get(name)
        if part is None:
            return None
        if not isinstance(part, Mapping) or "projections" not in part or "angles" not in part:
            raise InputError(path, f"'{name}' must hold 'projections' and 'angles'")
        extra = sorted(set(part) - {"projections", "angles"})
        if extra:
            raise InputError(path, f"'{name}' has unknown keys {extra}")
        proj = np.asarray(part["projections"], dtype=np.float32)
        if proj.ndim != 3:
            raise InputError(path, f"'{name}' projections must be [views, v, u], got shape {list(proj.shape)}")
        return proj[:, ::-1, :] * NAF_PROJECTION_SCALE, np.asarray(part["angles"], dtype=np.float64).reshape(-1)

    train = split("train")
    if train is None:
        raise InputError(path, "no 'train' projections")
    geometry = r2_geometry(data, train[1], path)
    projections = check_projections(train[0], geometry, path, "train projections")
    for key, n in (("numTrain", projections.shape[0]),):
        if data.get(key) is not None and int(data[key]) != n:
            raise InputError(path, f"{key} = {data[key]} but 'train' holds {n} projections")
    test = split("val")
    test_geometry = test_projections = None
    if test is not None:
        test_geometry = geometry.with_angles(test[1])
        test_projections = check_projections(test[0], test_geometry, path, "val projections")
    volume = None
    if data.get("image") is not None:
        img = np.asarray(data["image"], dtype=np.float32)
        if img.shape != geometry.n_voxel[::-1]:
            raise InputError(path, f"image is {list(img.shape)} but nVoxel is {list(geometry.n_voxel[::-1])} (x, y, z)")
        volume = np.ascontiguousarray(np.transpose(img, (2, 1, 0)))
        check_finite(volume, path, "image")
    meta = {k: data[k] for k in data if k not in ("image", "train", "val")}
    meta.update({"source": str(path), "format": "naf"})
    return CTData(geometry, projections, volume, test_geometry, test_projections, meta)


def write_naf_pickle(
    path: str | Path,
    geometry: CTGeometry,
    projections: np.ndarray,  # [V, v, u]
    *,
    volume: np.ndarray | None = None,  # [Z, Y, X]
    test_geometry: CTGeometry | None = None,
    test_projections: np.ndarray | None = None,  # [V_test, v, u]
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a NAF / SAX-NeRF pickle (inverse of :func:`read_naf_pickle`)."""
    projections = check_projections(projections, geometry, "projections")
    data: dict[str, Any] = r2_scanner(geometry)
    angles = geometry.angles
    total = float(np.degrees(angles.max() - angles.min() + (np.median(np.diff(np.sort(angles))) if angles.size > 1 else 0.0)))
    data.update(
        {
            "numTrain": int(projections.shape[0]),
            "numVal": 0,
            "totalAngle": total,
            "startAngle": float(np.degrees(angles.min())),
            "randomAngle": False,
            "convert": False,
            "rescale_slope": 1.0,
            "rescale_intercept": 0.0,
            "normalize": False,
            "noise": 0,
            "train": {"projections": projections[:, ::-1, :] / NAF_PROJECTION_SCALE, "angles": angles},
        }
    )
    if test_projections is not None:
        if test_geometry is None:
            raise InputError("test_geometry", "needed with test_projections")
        tp = check_projections(test_projections, test_geometry, "test_projections")
        data["numVal"] = int(tp.shape[0])
        data["val"] = {"projections": tp[:, ::-1, :] / NAF_PROJECTION_SCALE, "angles": test_geometry.angles}
    if volume is not None:
        volume = np.asarray(volume, dtype=np.float32)
        if volume.shape != geometry.n_voxel:
            raise InputError("volume", f"shape {list(volume.shape)} does not match n_voxel {list(geometry.n_voxel)}")
        data["image"] = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))
    if extra:
        unknown = sorted(set(extra) - _NAF_KEYS)
        if unknown:
            raise InputError("extra", f"unknown NAF keys {unknown}")
        data.update(extra)

    def _write(p: Path) -> None:
        with open(p, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write_path(path, _write)


