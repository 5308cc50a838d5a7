"""DICOM CT series (pydicom): read and written.

One CT slice per file, rows = y, columns = x, ``ImageOrientationPatient`` ``[1, 0, 0, 0, 1, 0]``,
``ImagePositionPatient`` = world position of the slice's first voxel; stored values
``round((HU - intercept) / slope)`` as int16. On reading, slices are sorted along the slice
normal and rescaled to HU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from recon.errors import InputError
from recon.io.atomic import atomic_write_path
from recon.io.volume_checks import check_spacing, check_volume

logger = logging.getLogger(__name__)

__all__ = ["read_dicom_series", "write_dicom_series"]


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
    vol = check_volume(volume_hu, folder).astype(np.float64)
    dz, dy, dx = check_spacing(voxel_mm, folder)
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


