"""CT file formats: projection datasets, raw detector counts, volumes, HU <-> attenuation.

Every reader returns arrays in the conventions of :mod:`recon.geometry.ct`: volumes
``[z, y, x]``, projections ``[views, v, u]`` with row 0 the top (+z) detector row (TIGRE's
layout), geometry in mm. Conversions happen here, at the boundary:

* R2-Gaussian folders (``meta_data.json`` + ``proj_train/*.npy`` + ``proj_test/*.npy`` +
  ``vol_gt.npy``) and NAF / SAX-NeRF pickles store the volume as ``[x, y, z]``, projections
  flipped upside down (``tigre.Ax(...)[:, ::-1, :]``), ``nVoxel``/``dVoxel``/``sVoxel``/
  ``offOrigin`` in (x, y, z) and ``offDetector`` in (u, v) (``nDetector``/``dDetector`` in
  (v, u)). NAF pickles give lengths in mm but their projections were computed with the
  geometry in metres; the reader multiplies them by 1000 so that reconstructing in the mm
  geometry returns the values of the pickle's ``image``.
* NIfTI: the data array is written ``[x, y, z]`` with a diagonal affine (voxel spacing, and the
  world position of voxel 0), our world (x, y, z) used as-is; on reading, the image is first
  reoriented to the closest canonical (RAS) axes, then transposed to ``[z, y, x]``.
* DICOM series: one CT slice per file, rows = y, columns = x, ``ImageOrientationPatient``
  ``[1, 0, 0, 0, 1, 0]``, ``ImagePositionPatient`` = world position of the slice's first voxel;
  stored values ``round((HU - intercept) / slope)`` as int16. On reading, slices are sorted
  along the slice normal and rescaled to HU.
* TIFF stacks: multi-page float32 ``[z, y, x]`` (ImageJ hyperstack with the voxel spacing).
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recon.checks import check_finite
from recon.io.atomic import atomic_save_npy, atomic_write_path, atomic_write_text
from recon.geometry.ct import CTGeometry
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "MU_WATER_PER_MM",
    "CTData",
    "ClippedTransmissionWarning",
    "hu_to_mu",
    "mu_to_hu",
    "counts_to_line_integrals",
    "read_r2gaussian",
    "write_r2gaussian",
    "read_naf_pickle",
    "write_naf_pickle",
    "read_projection_stack",
    "write_projection_stack",
    "read_volume",
    "write_volume",
    "read_nifti",
    "write_nifti",
    "read_dicom_series",
    "write_dicom_series",
    "read_tiff_stack",
    "write_tiff_stack",
]

MU_WATER_PER_MM = 0.0206
"""Linear attenuation of water at ~60 keV, 1/mm (NIST XCOM: mu/rho = 0.2059 cm^2/g)."""


# ---------------------------------------------------------------------- HU <-> attenuation
def hu_to_mu(hu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM, *, clip: bool = True) -> np.ndarray:
    """Hounsfield units -> linear attenuation in 1/mm: ``mu = mu_water * (1 + HU / 1000)``
    (air, -1000 HU, is 0). Negative results (below -1000 HU) are clipped to 0 when ``clip``."""
    mu = mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0)
    if clip:
        mu = np.maximum(mu, 0.0)
    return mu.astype(np.float32)


def mu_to_hu(mu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation in 1/mm -> Hounsfield units (inverse of :func:`hu_to_mu`)."""
    return (1000.0 * (np.asarray(mu, dtype=np.float64) / mu_water_per_mm - 1.0)).astype(np.float32)


# ---------------------------------------------------------------------- data container
@dataclass
class CTData:
    """Projections with their geometry, and whatever else a dataset holds."""

    geometry: CTGeometry
    projections: np.ndarray  # [V, v, u] float32 line integrals (dimensionless)
    volume: np.ndarray | None = None  # [Z, Y, X] ground truth / reference, if present
    test_geometry: CTGeometry | None = None
    test_projections: np.ndarray | None = None  # [V_test, v, u]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def angles_rad(self) -> np.ndarray:
        return self.geometry.angles


def _check_projections(proj: np.ndarray, geometry: CTGeometry, where: str | Path, what: str = "projections") -> np.ndarray:
    proj = np.asarray(proj)
    if proj.ndim != 3:
        raise InputError(where, f"{what} must be a [views, v, u] stack, got shape {list(proj.shape)}")
    if proj.shape[0] != geometry.n_views:
        raise InputError(where, f"{proj.shape[0]} {what} but {geometry.n_views} angles; expected one angle per projection")
    if tuple(proj.shape[1:]) != geometry.n_detector:
        raise InputError(
            where, f"{what} are {proj.shape[1]}x{proj.shape[2]} pixels but the geometry's detector is "
            f"{geometry.n_detector[0]}x{geometry.n_detector[1]} (v x u)"
        )
    proj = proj.astype(np.float32, copy=False)
    check_finite(proj, where, what)
    return proj


# ---------------------------------------------------------------------- raw counts
class ClippedTransmissionWarning(UserWarning):
    """Some transmissions ``(raw - dark) / (flat - dark)`` were at or below the minimum and were
    clipped before the logarithm."""


def counts_to_line_integrals(
    raw: np.ndarray,  # [V, v, u] or [v, u]
    dark: np.ndarray,  # [v, u] or [k, v, u] (averaged over k)
    flat: np.ndarray,  # [v, u] or [k, v, u] (averaged over k)
    *,
    min_transmission: float = 1e-6,
    dead_pixels: str = "error",
    where: str = "counts",
) -> np.ndarray:  # like raw, float32
    """Detector counts -> line integrals ``-log((raw - dark) / (flat - dark))``.

    Errors for NaN/inf or negative counts and for pixels where ``flat <= dark`` (dead pixels;
    ``dead_pixels="zero"`` sets their line integrals to 0 with a warning instead).
    Transmissions ``<= min_transmission`` (photon starvation, dark noise) are clipped to it with
    a :class:`ClippedTransmissionWarning` that says how many.
    """
    if dead_pixels not in ("error", "zero"):
        raise InputError("dead_pixels", f"expected 'error' or 'zero', got {dead_pixels!r}")
    raw = np.asarray(raw, dtype=np.float64)
    dark = np.asarray(dark, dtype=np.float64)
    flat = np.asarray(flat, dtype=np.float64)
    if raw.ndim not in (2, 3):
        raise InputError(where, f"raw counts must be [views, v, u] or [v, u], got shape {list(raw.shape)}")
    det = raw.shape[-2:]
    for name, arr in (("dark", dark), ("flat", flat)):
        if arr.ndim == 3:
            arr = arr.mean(axis=0)
        if arr.shape != det:
            raise InputError(where, f"{name} field is {list(arr.shape)} but projections are {list(det)} (v, u)")
        if name == "dark":
            dark = arr
        else:
            flat = arr
    for name, arr in (("raw", raw), ("dark", dark), ("flat", flat)):
        check_finite(arr, where, f"{name} counts")
        if np.any(arr < 0):
            raise InputError(where, f"{name} counts contain {int((arr < 0).sum())} negative values; expected counts >= 0")
    bad = flat <= dark
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        if dead_pixels == "error":
            raise InputError(
                where, f"flat <= dark at {int(bad.sum())} pixels (first at {first}); expected a brighter flat field "
                "(dead_pixels='zero' zeroes them)"
            )
        logger.warning("%s: %d dead pixels (flat <= dark, first at %s) set to line integral 0", where, int(bad.sum()), first)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (raw - dark) / (flat - dark)
    t = np.where(bad, 1.0, t)
    low = t <= min_transmission
    if low.any():
        warnings.warn(
            f"{where}: clipped {int(low.sum())} of {t.size} transmissions <= {min_transmission:g} before the log",
            ClippedTransmissionWarning,
            stacklevel=2,
        )
        t = np.maximum(t, min_transmission)
    return (-np.log(t)).astype(np.float32)


# ---------------------------------------------------------------------- R2-Gaussian layout
_R2_SCANNER_KEYS = frozenset(
    {
        "mode", "filter", "DSD", "DSO", "nDetector", "sDetector", "dDetector", "nVoxel", "sVoxel", "dVoxel",
        "offOrigin", "offDetector", "accuracy", "totalAngle", "startAngle", "noise", "possion_noise", "gaussian_noise",
    }
)
_R2_TOP_KEYS = frozenset({"scanner", "vol", "ct", "bbox", "radius", "proj_train", "proj_test"})


def _r2_geometry(cfg: Mapping[str, Any], angles: np.ndarray, where: str | Path) -> CTGeometry:
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


def _r2_scanner(geometry: CTGeometry) -> dict[str, Any]:
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


def read_r2gaussian(folder: str | Path, *, load_volume: bool = True) -> CTData:
    """Read an R2-Gaussian dataset folder -> :class:`CTData` (train projections and geometry,
    test projections/geometry, ``vol_gt.npy`` as the volume). Lengths are taken as mm."""
    folder = Path(folder)
    meta_path = folder / "meta_data.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(meta_path, "not found (expected an R2-Gaussian folder with meta_data.json)") from None
    except json.JSONDecodeError as err:
        raise InputError(meta_path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
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
        projs, angles = [], []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "file_path" not in entry or "angle" not in entry:
                raise InputError(meta_path, f"{split}[{i}] must have 'file_path' and 'angle'")
            extra = sorted(set(entry) - {"file_path", "angle"})
            if extra:
                raise InputError(meta_path, f"{split}[{i}] has unknown keys {extra}")
            path = folder / entry["file_path"]
            try:
                proj = np.load(path)
            except FileNotFoundError:
                raise InputError(path, f"projection listed in {split} is missing") from None
            if proj.ndim != 2:
                raise InputError(path, f"expected a 2D [v, u] projection, got shape {list(proj.shape)}")
            projs.append(proj[::-1])  # R2-Gaussian stores TIGRE projections flipped in v
            angles.append(float(entry["angle"]))
        shapes = {p.shape for p in projs}
        if len(shapes) != 1:
            raise InputError(meta_path, f"{split} projections have different shapes {sorted(shapes)}")
        return np.stack(projs).astype(np.float32), np.asarray(angles)

    train = load_split("proj_train")
    if train is None:
        raise InputError(meta_path, "no proj_train entries")
    geometry = _r2_geometry(cfg, train[1], meta_path)
    projections = _check_projections(train[0], geometry, meta_path, "proj_train projections")
    test = load_split("proj_test")
    test_geometry = test_projections = None
    if test is not None:
        test_geometry = geometry.with_angles(test[1])
        test_projections = _check_projections(test[0], test_geometry, meta_path, "proj_test projections")
    volume = None
    vol_name = meta.get("vol", meta.get("ct"))
    if load_volume and vol_name:
        vol_path = folder / vol_name
        try:
            vol = np.load(vol_path)
        except FileNotFoundError:
            raise InputError(vol_path, "volume listed in meta_data.json is missing") from None
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
    projections = _check_projections(projections, geometry, "projections")
    scanner = _r2_scanner(geometry)
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
        splits.append(("proj_test", test_geometry, _check_projections(test_projections, test_geometry, "test_projections")))
    for split, geo, proj in splits:
        entries = []
        for i in range(proj.shape[0]):
            name = f"{split}/{split}_{i:04d}.npy"
            atomic_save_npy(out_dir / name, np.ascontiguousarray(proj[i][::-1]))
            entries.append({"file_path": name, "angle": float(geo.angles_rad[i])})
        meta[split] = entries
    if "proj_test" not in meta:
        meta["proj_test"] = []
    atomic_write_text(out_dir / "meta_data.json", json.dumps(meta, indent=4) + "\n")
    return out_dir


# ---------------------------------------------------------------------- NAF / SAX-NeRF pickle
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


def read_naf_pickle(path: str | Path) -> CTData:
    """Read a NAF / SAX-NeRF ``*.pickle`` -> :class:`CTData` (train = ``train``, test = ``val``,
    volume = ``image``). Projections are rescaled by :data:`NAF_PROJECTION_SCALE`."""
    path = Path(path)
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
    geometry = _r2_geometry(data, train[1], path)
    projections = _check_projections(train[0], geometry, path, "train projections")
    for key, n in (("numTrain", projections.shape[0]),):
        if data.get(key) is not None and int(data[key]) != n:
            raise InputError(path, f"{key} = {data[key]} but 'train' holds {n} projections")
    test = split("val")
    test_geometry = test_projections = None
    if test is not None:
        test_geometry = geometry.with_angles(test[1])
        test_projections = _check_projections(test[0], test_geometry, path, "val projections")
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
    projections = _check_projections(projections, geometry, "projections")
    data: dict[str, Any] = _r2_scanner(geometry)
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
        tp = _check_projections(test_projections, test_geometry, "test_projections")
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


# ---------------------------------------------------------------------- projection stacks
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
        proj = np.load(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        proj = tifffile.imread(path)
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
    projections = _check_projections(proj, geometry, path)
    return CTData(geometry, projections, meta={"source": str(path), "geometry_source": geo_source, "format": "stack"})


def write_projection_stack(path: str | Path, projections: np.ndarray, geometry: CTGeometry) -> Path:
    """Write [V, v, u] projections (``.npy`` or ``.tif``) and the geometry JSON beside them."""
    path = Path(path)
    projections = _check_projections(projections, geometry, path)
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


# ---------------------------------------------------------------------- volumes
def _check_volume(volume: np.ndarray, where: str | Path) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError(where, f"expected a 3D [z, y, x] volume, got shape {list(vol.shape)}")
    check_finite(vol.astype(np.float64, copy=False) if vol.dtype.kind == "f" else vol, where, "volume")
    return vol


def _spacing(voxel_mm: Sequence[float] | None, where: str | Path) -> tuple[float, float, float]:
    if voxel_mm is None:
        return (1.0, 1.0, 1.0)
    v = np.asarray(voxel_mm, dtype=np.float64).reshape(-1)
    if v.size != 3 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(where, f"voxel_mm must be 3 positive sizes (z, y, x), got {voxel_mm}")
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def write_nifti(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None, origin_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Path:
    """Write a [z, y, x] volume as NIfTI (``.nii`` / ``.nii.gz``); ``voxel_mm`` and ``origin_mm``
    (world position of voxel 0's centre) are (z, y, x)."""
    import nibabel as nib

    vol = _check_volume(volume, path)
    dz, dy, dx = _spacing(voxel_mm, path)
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
    except Exception as err:  # nibabel raises several types for bad files
        raise InputError(path, f"not a readable NIfTI file ({err})") from None
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {list(data.shape)}")
    zooms = img.header.get_zooms()[:3]
    vol = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    check_finite(vol, path, "volume")
    return vol, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def write_dicom_series(
    folder: str | Path,
    volume_hu: np.ndarray,  # [z, y, x] Hounsfield units
    voxel_mm: Sequence[float] | None = None,
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    patient_id: str = "ANON",
    series_description: str = "sparse-recon",
) -> Path:
    """Write a [z, y, x] HU volume as a DICOM CT series (``slice_0000.dcm``, ...), int16 pixels
    ``round((HU - intercept) / slope)``; ``voxel_mm`` and ``origin_mm`` are (z, y, x)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    vol = _check_volume(volume_hu, folder).astype(np.float64)
    dz, dy, dx = _spacing(voxel_mm, folder)
    if rescale_slope <= 0:
        raise InputError("rescale_slope", f"must be > 0, got {rescale_slope}")
    stored = np.round((vol - rescale_intercept) / rescale_slope)
    info = np.iinfo(np.int16)
    if stored.min() < info.min or stored.max() > info.max:
        raise InputError(folder, f"HU range {vol.min():.1f}..{vol.max():.1f} does not fit int16 with slope {rescale_slope} and intercept {rescale_intercept}")
    stored = stored.astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    oz, oy, ox = (float(x) for x in origin_mm)
    Z, Y, X = vol.shape
    for k in range(Z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ox, oy, oz + k * dz]
        ds.SliceLocation = oz + k * dz
        ds.PixelSpacing = [dy, dx]  # row spacing (between rows, along y), column spacing (along x)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = Y, X
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{rescale_slope:.10g}"
        ds.RescaleIntercept = f"{rescale_intercept:.10g}"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        target = folder / f"slice_{k:04d}.dcm"
        atomic_write_path(target, lambda p, ds=ds: ds.save_as(p, enforce_file_format=True))
    del pydicom
    return folder


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a folder of single-slice DICOM files -> ([z, y, x] float32 HU, voxel_mm (z, y, x)).

    Slices are sorted along the slice normal (from ``ImageOrientationPatient`` and
    ``ImagePositionPatient``); the z spacing comes from the slice positions.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder of DICOM files")
    slices = []
    for f in sorted(folder.iterdir()):
        if f.is_dir() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue  # not DICOM
        if "PixelData" not in ds:
            continue
        slices.append((f, ds))
    if not slices:
        raise InputError(folder, "no DICOM images found")
    first = slices[0][1]
    try:
        iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    except AttributeError:
        raise InputError(slices[0][0], "missing ImageOrientationPatient") from None
    normal = np.cross(iop[:3], iop[3:])
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} series; expected one")
    pos = []
    for f, ds in slices:
        if not hasattr(ds, "ImagePositionPatient"):
            raise InputError(f, "missing ImagePositionPatient")
        pos.append(float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)))
    order = np.argsort(pos)
    pos_sorted = np.asarray(pos)[order]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(shapes) != 1:
        raise InputError(folder, f"slices have different sizes {sorted(shapes)}")
    vol = np.empty((len(slices), *shapes.pop()), dtype=np.float32)
    for out_i, i in enumerate(order):
        f, ds = slices[i]
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        vol[out_i] = ds.pixel_array.astype(np.float64) * slope + intercept
    dy, dx = (float(x) for x in first.PixelSpacing)
    if len(slices) > 1:
        gaps = np.diff(pos_sorted)
        dz = float(np.median(gaps))
        if dz <= 0 or np.any(np.abs(gaps - dz) > 0.01 * dz + 1e-3):
            raise InputError(folder, f"slices are not evenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm)")
    else:
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    return vol, (dz, dy, dx)


def write_tiff_stack(path: str | Path, volume: np.ndarray, voxel_mm: Sequence[float] | None = None) -> Path:
    """Write a [z, y, x] volume as a multi-page float32 TIFF (ImageJ hyperstack, spacing in mm)."""
    import tifffile

    vol = _check_volume(volume, path).astype(np.float32)
    dz, dy, dx = _spacing(voxel_mm, path)
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


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a volume by type -> ([z, y, x] float32, voxel_mm (z, y, x) or ``None``): ``.npy``,
    ``.nii``/``.nii.gz``, ``.tif``/``.tiff``, or a folder of DICOM slices."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith(".npy"):
        if not path.exists():
            raise InputError(path, "not found")
        vol = np.load(path)
        return _check_volume(vol, path).astype(np.float32), None
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
        return atomic_save_npy(path, _check_volume(volume, path))
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return write_nifti(path, volume, voxel_mm)
    if name.endswith(".tif") or name.endswith(".tiff"):
        return write_tiff_stack(path, volume, voxel_mm)
    if path.suffix:
        raise InputError(path, "unknown volume type (expected .npy, .nii, .nii.gz, .tif, .tiff or a folder for DICOM)")
    return write_dicom_series(path, volume, voxel_mm)
