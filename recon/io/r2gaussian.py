"""R2-Gaussian dataset folders: ``meta_data.json`` + ``proj_train/*.npy`` + ``proj_test/*.npy`` +
``vol_gt.npy`` (read and written).

The layout stores the volume as ``[x, y, z]``, projections flipped upside down
(``tigre.Ax(...)[:, ::-1, :]``), ``nVoxel``/``dVoxel``/``sVoxel``/``offOrigin`` in (x, y, z) and
``offDetector`` in (u, v) (``nDetector``/``dDetector`` in (v, u)); conversions to recon's
conventions happen here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError
from recon.geometry.ct import CTGeometry
from recon.io.arrays import read_npy
from recon.io.atomic import atomic_save_npy, atomic_write_json
from recon.io.ct_data import CTData, check_projections
from recon.io.json_file import read_json
from recon.io.paths import dataset_path

logger = logging.getLogger(__name__)

__all__ = ["r2_geometry", "r2_scanner", "read_r2gaussian", "write_r2gaussian"]

_R2_SCANNER_KEYS = frozenset(
    {
        "mode", "filter", "DSD", "DSO", "nDetector", "sDetector", "dDetector", "nVoxel", "sVoxel", "dVoxel",
        "offOrigin", "offDetector", "accuracy", "totalAngle", "startAngle", "noise", "possion_noise", "gaussian_noise",
    }
)
_R2_TOP_KEYS = frozenset({"scanner", "vol", "ct", "bbox", "radius", "proj_train", "proj_test"})


def r2_geometry(cfg: Mapping[str, Any], angles: np.ndarray, where: str | Path) -> CTGeometry:
    """R2-Gaussian / NAF scanner dict ((x, y, z) volume fields, offDetector (u, v)) -> CTGeometry;
    errors name the file ``where``."""
    try:
        return _r2_geometry_fields(cfg, angles, where)
    except (ValueError, TypeError) as err:  # InputError is a ValueError
        if isinstance(err, InputError) and err.where == str(where):
            raise
        raise InputError(where, f"scanner geometry: {err}") from None


def _r2_geometry_fields(cfg: Mapping[str, Any], angles: np.ndarray, where: str | Path) -> CTGeometry:

    def vec(key: str, n: int, required: bool = True) -> np.ndarray | None:
        if cfg.get(key) is None:
            if required:
                raise InputError(where, f"scanner field {key!r} is missing")
            return None
        v = np.asarray(cfg[key], dtype=np.float64).reshape(-1)
        if v.size != n:
            raise InputError(where, f"scanner field {key!r} must have {n} entries, got {v.size}")
        return v

    n_vox = vec("nVoxel", 3)
    d_vox = vec("dVoxel", 3, False)
    if d_vox is None:
        d_vox = vec("sVoxel", 3) / n_vox
    n_det = vec("nDetector", 2)
    d_det = vec("dDetector", 2, False)
    if d_det is None:
        d_det = vec("sDetector", 2) / n_det
    off_origin = vec("offOrigin", 3, False)
    off_det = vec("offDetector", 2, False)
    mode = str(cfg.get("mode", "cone"))
    if mode not in ("cone", "parallel"):
        raise InputError(where, f"scanner mode {mode!r} is not 'cone' or 'parallel'")
    return CTGeometry(
        mode=mode,
        dsd_mm=float(cfg["DSD"]) if cfg.get("DSD") is not None else None,
        dso_mm=float(cfg["DSO"]) if cfg.get("DSO") is not None else None,
        n_detector=tuple(int(x) for x in n_det),
        detector_pixel_mm=tuple(d_det),
        n_voxel=tuple(int(x) for x in n_vox[::-1]),
        voxel_mm=tuple(d_vox[::-1]),
        offset_origin_mm=(0.0, 0.0, 0.0) if off_origin is None else tuple(off_origin[::-1]),
        offset_detector_mm=(0.0, 0.0) if off_det is None else (float(off_det[1]), float(off_det[0])),
        angles_rad=tuple(np.asarray(angles, dtype=np.float64)),
    )


def r2_scanner(geometry: CTGeometry) -> dict[str, Any]:
    """CTGeometry -> R2-Gaussian / NAF scanner dict (no angles)."""
    if geometry.vectors is not None:
        raise InputError("geometry", "R2-Gaussian / NAF files hold circular geometries only, not per-view vectors")
    if geometry.mode == "fan":
        raise InputError("geometry", "R2-Gaussian / NAF files hold cone or parallel beams, not fan beams")
    return {
        "mode": geometry.mode,
        "filter": None,
        "DSD": geometry.dsd_mm,
        "DSO": geometry.dso_mm,
        "nDetector": list(geometry.n_detector),
        "sDetector": list(geometry.detector_size_mm),
        "dDetector": list(geometry.detector_pixel_mm),
        "nVoxel": list(geometry.n_voxel[::-1]),
        "sVoxel": list(geometry.volume_size_mm[::-1]),
        "dVoxel": list(geometry.voxel_mm[::-1]),
        "offOrigin": list(geometry.offset_origin_mm[::-1]),
        "offDetector": [geometry.offset_detector_mm[1], geometry.offset_detector_mm[0]],
        "accuracy": 0.5,
    }


def read_r2gaussian(folder: str | Path, *, load_volume: bool = True, allow_outside_paths: bool = False) -> CTData:
    """Read an R2-Gaussian dataset folder -> :class:`CTData` (train projections and geometry,
    test projections/geometry, ``vol_gt.npy`` as the volume). Lengths are taken as mm.

    Files listed in ``meta_data.json`` must lie inside ``folder`` unless ``allow_outside_paths``."""
    folder = Path(folder)
    meta_path = folder / "meta_data.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "not found (expected an R2-Gaussian folder with meta_data.json)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise InputError(meta_path, f"expected a JSON object, got {type(meta).__name__}")
    unknown = sorted(set(meta) - _R2_TOP_KEYS)
    if unknown:
        raise InputError(meta_path, f"unknown keys {unknown} (expected some of {sorted(_R2_TOP_KEYS)})")
    cfg = meta.get("scanner")
    if not isinstance(cfg, Mapping):
        raise InputError(meta_path, "missing 'scanner' section")
    unknown = sorted(set(cfg) - _R2_SCANNER_KEYS)
    if unknown:
        raise InputError(meta_path, f"unknown scanner keys {unknown} (expected some of {sorted(_R2_SCANNER_KEYS)})")

    def load_split(split: str) -> tuple[np.ndarray, np.ndarray] | None:
        entries = meta.get(split)
        if not entries:
            return None
        if not isinstance(entries, list):
            raise InputError(meta_path, f"'{split}' is a {type(entries).__name__} (expected a list of projections)")
        projs, angles = [], []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "file_path" not in entry or "angle" not in entry:
                raise InputError(meta_path, f"{split}[{i}] must have 'file_path' and 'angle'")
            extra = sorted(set(entry) - {"file_path", "angle"})
            if extra:
                raise InputError(meta_path, f"{split}[{i}] has unknown keys {extra}")
            if not isinstance(entry["file_path"], str):
                raise InputError(meta_path, f"{split}[{i}] 'file_path' is {entry['file_path']!r} (expected a string)")
            path = dataset_path(folder, entry["file_path"], meta_path, f"{split}[{i}] file_path", allow_outside=allow_outside_paths)
            if not path.exists():
                raise InputError(path, f"projection listed in {split} is missing")
            proj = read_npy(path, "projection")
            if proj.ndim != 2:
                raise InputError(path, f"expected a 2D [v, u] projection, got shape {list(proj.shape)}")
            projs.append(proj[::-1])  # R2-Gaussian stores TIGRE projections flipped in v
            try:
                angles.append(float(entry["angle"]))
            except (TypeError, ValueError):
                raise InputError(meta_path, f"{split}[{i}] 'angle' is {entry['angle']!r} (expected a number in radians)") from None
        shapes = {p.shape for p in projs}
        if len(shapes) != 1:
            raise InputError(meta_path, f"{split} projections have different shapes {sorted(shapes)}")
        return np.stack(projs).astype(np.float32), np.asarray(angles)

    train = load_split("proj_train")
    if train is None:
        raise InputError(meta_path, "no proj_train entries")
    geometry = r2_geometry(cfg, train[1], meta_path)
    projections = check_projections(train[0], geometry, meta_path, "proj_train projections")
    test = load_split("proj_test")
    test_geometry = test_projections = None
    if test is not None:
        test_geometry = geometry.with_angles(test[1])
        test_projections = check_projections(test[0], test_geometry, meta_path, "proj_test projections")
    volume = None
    vol_name = meta.get("vol", meta.get("ct"))
    if load_volume and vol_name:
        if not isinstance(vol_name, str):
            raise InputError(meta_path, f"'vol' is {vol_name!r} (expected a file name)")
        vol_path = dataset_path(folder, vol_name, meta_path, "'vol'", allow_outside=allow_outside_paths)
        if not vol_path.exists():
            raise InputError(vol_path, "volume listed in meta_data.json is missing")
        vol = read_npy(vol_path, "volume")
        if vol.ndim != 3:
            raise InputError(vol_path, f"expected a 3D [x, y, z] volume, got shape {list(vol.shape)}")
        volume = np.ascontiguousarray(np.transpose(vol, (2, 1, 0))).astype(np.float32)
        if volume.shape != geometry.n_voxel:
            raise InputError(vol_path, f"volume is {list(vol.shape)} (x, y, z) but scanner nVoxel is {list(geometry.n_voxel[::-1])}")
        check_finite(volume, vol_path, "volume")
    return CTData(
        geometry=geometry,
        projections=projections,
        volume=volume,
        test_geometry=test_geometry,
        test_projections=test_projections,
        meta={"source": str(folder), "scanner": dict(cfg), "format": "r2gaussian"},
    )


def write_r2gaussian(
    out_dir: str | Path,
    geometry: CTGeometry,
    projections: np.ndarray,  # [V, v, u]
    *,
    volume: np.ndarray | None = None,  # [Z, Y, X]
    test_geometry: CTGeometry | None = None,
    test_projections: np.ndarray | None = None,  # [V_test, v, u]
    scanner_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an R2-Gaussian dataset folder (``meta_data.json``, ``proj_train/``, ``proj_test/``,
    ``vol_gt.npy``) in its conventions (see the module docstring). Returns the folder."""
    out_dir = Path(out_dir)
    projections = check_projections(projections, geometry, "projections")
    scanner = r2_scanner(geometry)
    if scanner_extra:
        unknown = sorted(set(scanner_extra) - _R2_SCANNER_KEYS)
        if unknown:
            raise InputError("scanner_extra", f"unknown scanner keys {unknown}")
        scanner.update(scanner_extra)
    meta: dict[str, Any] = {"scanner": scanner}
    if volume is not None:
        volume = np.asarray(volume, dtype=np.float32)
        if volume.shape != geometry.n_voxel:
            raise InputError("volume", f"shape {list(volume.shape)} does not match n_voxel {list(geometry.n_voxel)} (z, y, x)")
        atomic_save_npy(out_dir / "vol_gt.npy", np.ascontiguousarray(np.transpose(volume, (2, 1, 0))))
        meta["vol"] = "vol_gt.npy"
    size = np.asarray(geometry.volume_size_mm[::-1])
    off = np.asarray(geometry.offset_origin_mm[::-1])
    meta["bbox"] = [(off - size / 2).tolist(), (off + size / 2).tolist()]
    splits = [("proj_train", geometry, projections)]
    if test_projections is not None:
        if test_geometry is None:
            raise InputError("test_geometry", "needed with test_projections")
        splits.append(("proj_test", test_geometry, check_projections(test_projections, test_geometry, "test_projections")))
    for split, geo, proj in splits:
        entries = []
        for i in range(proj.shape[0]):
            name = f"{split}/{split}_{i:04d}.npy"
            atomic_save_npy(out_dir / name, np.ascontiguousarray(proj[i][::-1]))
            entries.append({"file_path": name, "angle": float(geo.angles_rad[i])})
        meta[split] = entries
    if "proj_test" not in meta:
        meta["proj_test"] = []
    atomic_write_json(out_dir / "meta_data.json", meta)
    return out_dir


