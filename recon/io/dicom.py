"""DICOM CT series (pydicom): read and written.

Writing: one CT image per file (``slice_0000.dcm``, ... in order of increasing z), rows = y,
columns = x, stored values ``round((HU - intercept) / slope)`` as int16 with ``RescaleSlope``,
``RescaleIntercept`` and ``RescaleType`` HU. The whole folder is written atomically (a
temporary folder, then renamed). Geometry tags:

- ``PixelSpacing`` = (row spacing dy, column spacing dx), ``SliceThickness`` and
  ``SpacingBetweenSlices`` = dz;
- ``ImageOrientationPatient`` and ``ImagePositionPatient`` (the centre of the slice's first
  voxel) in DICOM's patient frame (LPS: x -> patient left, y -> posterior, z -> superior),
  from the world positions of the voxels and ``frame``, the patient frame those world
  coordinates are in:

  ======  ====================================  ==================================
  frame   ``ImageOrientationPatient``           ``ImagePositionPatient`` of slice k
  ======  ====================================  ==================================
  LPS     ``[1, 0, 0, 0, 1, 0]``                ``(x0, y0, z0 + k dz)``
  RAS     ``[-1, 0, 0, 0, -1, 0]``              ``(-x0, -y0, z0 + k dz)``
  ======  ====================================  ==================================

  ``RAS`` is how :func:`recon.io.nifti.write_nifti` labels world coordinates (its affine maps
  voxels to world (x, y, z) as NIfTI's RAS+), so a series written with ``frame="RAS"`` and a
  NIfTI file of the same volume put every voxel at the same place in a viewer (3D Slicer,
  SimpleITK, ITK-SNAP);
- ``StudyInstanceUID``, ``SeriesInstanceUID``, ``FrameOfReferenceUID``: given (to make
  re-exports of one run land in one study) or new; ``SOPInstanceUID`` of slice k derived
  from the series UID and k;
- ``SeriesDescription`` (64 characters at most) and ``ImageComments`` /
  ``DerivationDescription`` (how the volume was made), ``ImageType``
  ``DERIVED\\SECONDARY\\AXIAL``, ``Manufacturer`` "sparse-recon", ``WindowCenter`` /
  ``WindowWidth``.

Reading: slices sorted along the slice normal (from ``ImageOrientationPatient`` and
``ImagePositionPatient``), rescaled to HU, returned as stored ([z, y, x] = [slice, row,
column]); :func:`read_dicom_geometry` adds the origin, axes and UIDs.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError
from recon.io.atomic import atomic_folder, atomic_write_path
from recon.io.volume_checks import check_spacing, check_volume

logger = logging.getLogger(__name__)

__all__ = ["FRAMES", "read_dicom_geometry", "read_dicom_series", "write_dicom_series"]

FRAMES = ("LPS", "RAS")
"""Patient frames the world coordinates given to :func:`write_dicom_series` can be in."""

_AXES = {"LPS": (1.0, 1.0), "RAS": (-1.0, -1.0)}  # sign of world x and y in DICOM's LPS


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "~"


def write_dicom_series(
    folder: str | Path,
    volume_hu: np.ndarray,  # [z, y, x] Hounsfield units
    voxel_mm: Sequence[float] | None = None,
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    frame: Literal["LPS", "RAS"] = "LPS",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    patient_id: str = "ANON",
    series_description: str = "sparse-recon",
    description: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    date: datetime.datetime | None = None,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a [z, y, x] HU volume as a DICOM CT series in ``folder`` (see the module docstring).

    ``voxel_mm`` and ``origin_mm`` (world position of voxel 0's centre) are (z, y, x);
    ``frame`` says which patient frame the world coordinates are in. ``description`` goes to
    ``ImageComments`` and ``DerivationDescription``; ``date`` (default now) to the study,
    series and content dates; ``window`` (centre, width) to ``WindowCenter`` / ``WindowWidth``
    (default: the 1st-99th percentile range). A folder already at ``folder`` is replaced only
    when it holds nothing but ``.dcm`` files (an earlier series).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    vol = check_volume(volume_hu, folder).astype(np.float64)
    dz, dy, dx = check_spacing(voxel_mm, folder)
    if frame not in FRAMES:
        raise ValueError(f"frame: expected one of {FRAMES}, given {frame!r}")
    if rescale_slope <= 0:
        raise InputError("rescale_slope", f"must be > 0, got {rescale_slope}")
    stored = np.round((vol - rescale_intercept) / rescale_slope)
    info = np.iinfo(np.int16)
    if stored.min() < info.min or stored.max() > info.max:
        raise InputError(folder, f"HU range {vol.min():.1f}..{vol.max():.1f} does not fit int16 with slope {rescale_slope} and intercept {rescale_intercept}")
    if folder.exists():
        others = [p.name for p in folder.iterdir()] if folder.is_dir() else [folder.name]
        others = [n for n in others if not n.lower().endswith(".dcm")]
        if others:
            raise InputError(folder, f"exists and holds other files than a DICOM series ({', '.join(sorted(others)[:3])}); choose an empty folder")
    stored = stored.astype(np.int16)
    study = study_uid or generate_uid()
    series = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid(entropy_srcs=[series, "frame"])
    when = date or datetime.datetime.now()
    day, time_ = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    if window is None:
        lo, hi = np.percentile(vol, [1.0, 99.0])
        window = (float(lo + hi) / 2.0, max(float(hi - lo), 1.0))
    sx, sy = _AXES[frame]
    oz, oy, ox = (float(x) for x in origin_mm)
    Z, Y, X = vol.shape
    with atomic_folder(folder) as tmp:
        for k in range(Z):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_uid
            ds.Modality = "CT"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.Manufacturer = "sparse-recon"
            ds.PatientID = patient_id
            ds.PatientName = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.ReferringPhysicianName = ""
            ds.AccessionNumber = ""
            ds.StudyID = "1"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
            ds.SeriesDescription = _clip(series_description, 64)
            if description:
                ds.ImageComments = _clip(description, 10240)
                ds.DerivationDescription = _clip(description, 1024)
            ds.SeriesNumber = 1
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            ds.PositionReferenceIndicator = ""
            ds.KVP = ""
            ds.PatientPosition = ""
            ds.ImageOrientationPatient = [sx, 0.0, 0.0, 0.0, sy, 0.0]
            ds.ImagePositionPatient = [sx * ox, sy * oy, oz + k * dz]
            ds.SliceLocation = oz + k * dz
            ds.PixelSpacing = [dy, dx]  # row spacing (between rows, along y), column spacing (along x)
            ds.SliceThickness = dz
            ds.SpacingBetweenSlices = dz
            ds.Rows, ds.Columns = Y, X
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = f"{rescale_slope:.10g}"
            ds.RescaleIntercept = f"{rescale_intercept:.10g}"
            ds.RescaleType = "HU"
            ds.WindowCenter = f"{window[0]:.6g}"
            ds.WindowWidth = f"{window[1]:.6g}"
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            target = tmp / f"slice_{k:04d}.dcm"
            atomic_write_path(target, lambda p, ds=ds: ds.save_as(p, enforce_file_format=True))
    del pydicom
    return folder


def _read_slices(folder: Path) -> tuple[list[tuple[Path, Any]], np.ndarray, np.ndarray]:
    """The series' image files sorted along the slice normal: ``[(file, dataset)]``, the
    orientation ``[6]`` and the sorted positions along the normal ``[Z]``."""
    import pydicom

    if not folder.is_dir():
        raise InputError(folder, "not a folder of DICOM files")
    slices = []
    for f in sorted(folder.iterdir()):
        if f.is_dir() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception as err:  # noqa: BLE001 - pydicom raises several types for bad files
            if f.suffix.lower() in (".dcm", ".dicom") or _has_dicm_marker(f):
                raise InputError(f, f"not a readable DICOM file ({' '.join(str(err).split())[:200]})") from None
            continue  # another kind of file (README, thumbnails): not part of the series
        if "PixelData" not in ds:
            if f.suffix.lower() in (".dcm", ".dicom"):
                raise InputError(f, "has no pixel data (truncated, or not an image slice)")
            continue
        _check_pixel_bytes(f, ds)
        slices.append((f, ds))
    if not slices:
        raise InputError(folder, "no DICOM images found (expected one .dcm file per slice)")
    first = slices[0][1]
    try:
        iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    except AttributeError:
        raise InputError(slices[0][0], "missing ImageOrientationPatient") from None
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise InputError(slices[0][0], f"ImageOrientationPatient is {list(iop)} (expected 6 numbers)")
    normal = np.cross(iop[:3], iop[3:])
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} series; expected one")
    pos = []
    for f, ds in slices:
        if not hasattr(ds, "ImagePositionPatient"):
            raise InputError(f, "missing ImagePositionPatient")
        try:
            pos.append(float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)))
        except (TypeError, ValueError):
            raise InputError(f, f"ImagePositionPatient is {ds.ImagePositionPatient!r} (expected 3 numbers)") from None
    order = np.argsort(pos, kind="stable")
    ordered, pos_sorted = [slices[i] for i in order], np.asarray(pos)[order]
    same = np.flatnonzero(np.abs(np.diff(pos_sorted)) < 1e-6)
    if same.size:
        a, b = ordered[same[0]][0].name, ordered[same[0] + 1][0].name
        raise InputError(folder, f"duplicated slice: {a} and {b} are at the same position {pos_sorted[same[0]]:.3f} mm")
    return ordered, iop, pos_sorted


def _slice_gap(folder: Path, slices: list, pos: np.ndarray) -> float:
    if len(slices) > 1:
        gaps = np.diff(pos)
        dz = float(np.median(gaps))
        if dz <= 0 or np.any(np.abs(gaps - dz) > 0.01 * dz + 1e-3):
            at = int(np.argmax(np.abs(gaps - dz)))
            raise InputError(folder, f"slices are not evenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm, median {dz:.3f}; "
                                     f"a missing or misplaced slice next to {slices[at + 1][0].name})")  # fmt: skip
        return dz
    return float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a folder of single-slice DICOM files -> ([z, y, x] float32 HU, voxel_mm (z, y, x)).

    Slices are sorted along the slice normal (from ``ImageOrientationPatient`` and
    ``ImagePositionPatient``); the z spacing comes from the slice positions.
    """
    folder = Path(folder)
    slices, _iop, pos = _read_slices(folder)
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(shapes) != 1:
        raise InputError(folder, f"slices have different sizes {sorted(shapes)}")
    vol = np.empty((len(slices), *shapes.pop()), dtype=np.float32)
    for i, (f, ds) in enumerate(slices):
        try:
            slope = float(getattr(ds, "RescaleSlope", 1.0))
            intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        except (TypeError, ValueError):
            raise InputError(f, f"RescaleSlope / RescaleIntercept are not numbers ({getattr(ds, 'RescaleSlope', None)!r}, "
                                f"{getattr(ds, 'RescaleIntercept', None)!r})") from None  # fmt: skip
        try:
            pixels = ds.pixel_array
        except Exception as err:  # noqa: BLE001  pydicom raises several types for bad pixel data
            raise InputError(f, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from None
        vol[i] = pixels.astype(np.float64) * slope + intercept
    try:
        dy, dx = (float(x) for x in slices[0][1].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise InputError(slices[0][0], "missing or malformed PixelSpacing (expected 2 numbers in mm)") from None
    check_finite(vol, folder, "volume")
    return vol, check_spacing((_slice_gap(folder, slices, pos), dy, dx), folder)


def _has_dicm_marker(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _check_pixel_bytes(path: Path, ds: Any) -> None:  # ds: a pydicom Dataset
    """Refuse a slice whose Rows x Columns disagree with the pixel bytes it holds, before allocating."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(getattr(ds, "BitsAllocated", 16))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "missing or malformed Rows / Columns / BitsAllocated") from None
    if rows <= 0 or cols <= 0 or bits not in (8, 16, 32, 64):
        raise InputError(path, f"declares {rows}x{cols} pixels of {bits} bits (expected positive sizes and 8/16/32/64 bits)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = bool(syntax is not None and syntax.is_compressed)
    except (ValueError, AttributeError):
        raise InputError(path, f"unknown TransferSyntaxUID {str(syntax)[:64]!r}") from None
    expected = rows * cols * frames * samples * bits // 8
    held = len(ds.PixelData)
    if not compressed and held < expected:
        raise InputError(path, f"header declares {rows}x{cols} pixels ({expected} bytes) but the slice holds {held} bytes (truncated or corrupt)")


def read_dicom_geometry(folder: str | Path) -> dict[str, Any]:
    """Where the series lies, in DICOM's patient frame (LPS, mm): ``origin_lps_mm`` (centre of the
    first voxel of the first slice after sorting), ``row_direction`` / ``column_direction`` /
    ``slice_direction`` (unit vectors along x, y and z of the [z, y, x] array that
    :func:`read_dicom_series` returns), ``voxel_mm`` (z, y, x), ``shape``, and the tags
    ``study_uid``, ``series_uid``, ``frame_of_reference_uid``, ``series_description``,
    ``description``, ``rescale_slope``, ``rescale_intercept``."""
    folder = Path(folder)
    slices, iop, pos = _read_slices(folder)
    first = slices[0][1]
    dy, dx = (float(x) for x in first.PixelSpacing)
    return {
        "origin_lps_mm": [float(v) for v in first.ImagePositionPatient],
        "row_direction": iop[:3].tolist(),
        "column_direction": iop[3:].tolist(),
        "slice_direction": np.cross(iop[:3], iop[3:]).tolist(),
        "voxel_mm": (_slice_gap(folder, slices, pos), dy, dx),
        "shape": (len(slices), int(first.Rows), int(first.Columns)),
        "study_uid": str(getattr(first, "StudyInstanceUID", "")),
        "series_uid": str(getattr(first, "SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(getattr(first, "FrameOfReferenceUID", "")),
        "series_description": str(getattr(first, "SeriesDescription", "")),
        "description": str(getattr(first, "ImageComments", "")),
        "rescale_slope": float(getattr(first, "RescaleSlope", 1.0)),
        "rescale_intercept": float(getattr(first, "RescaleIntercept", 0.0)),
    }
