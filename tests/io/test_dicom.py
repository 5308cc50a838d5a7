"""recon.io.dicom: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.dicom import read_dicom_geometry, read_dicom_series, write_dicom_series
from recon.io.formats import read_volume


def test_dicom_series_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, size=(4, 6, 5)).astype(np.float32)
    write_dicom_series(tmp_path / "dcm", hu, (2.5, 0.7, 0.6))
    import pydicom

    ds = pydicom.dcmread(tmp_path / "dcm" / "slice_0002.dcm")
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024.0 and list(map(float, ds.PixelSpacing)) == [0.7, 0.6]
    back, spacing = read_dicom_series(tmp_path / "dcm")
    np.testing.assert_array_equal(back, hu)
    assert spacing == pytest.approx((2.5, 0.7, 0.6))
    # a finer rescale slope keeps half-HU values
    write_dicom_series(tmp_path / "fine", hu / 2, (1.0, 1.0, 1.0), rescale_slope=0.5)
    np.testing.assert_array_equal(read_volume(tmp_path / "fine")[0], hu / 2)
    with pytest.raises(InputError, match="does not fit int16"):
        write_dicom_series(tmp_path / "x", hu * 100, (1, 1, 1))


ORIGIN = (10.0, -20.0, 30.0)  # (z, y, x) world position of voxel 0's centre
SPACING = (2.5, 0.7, 0.6)


def _hu(shape=(5, 6, 7), seed=1):
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.float32)


@pytest.mark.parametrize("frame, direction", [("RAS", (-1, 0, 0, 0, -1, 0, 0, 0, 1)), ("LPS", (1, 0, 0, 0, 1, 0, 0, 0, 1))])
def test_simpleitk_reads_one_volume_with_the_geometry_written(tmp_path, frame, direction):
    """An independent reader (ITK's DICOM series reader) sees one volume, the same voxels, at the
    world positions given; with frame RAS exactly where ITK puts the NIfTI of the same volume."""
    import SimpleITK as sitk

    from recon.io.nifti import write_nifti

    hu = _hu()
    write_dicom_series(tmp_path / "dcm", hu, SPACING, origin_mm=ORIGIN, frame=frame)
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(tmp_path / "dcm"))
    assert len(ids) == 1
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm"), ids[0]))
    img = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)  # [z, y, x]
    np.testing.assert_allclose(img.GetSpacing(), SPACING[::-1])
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-12)
    sign = -1.0 if frame == "RAS" else 1.0
    np.testing.assert_allclose(img.GetOrigin(), (sign * ORIGIN[2], sign * ORIGIN[1], ORIGIN[0]))
    if frame == "RAS":
        nii = sitk.ReadImage(str(write_nifti(tmp_path / "v.nii.gz", hu, SPACING, origin_mm=ORIGIN)))
        np.testing.assert_allclose(img.GetOrigin(), nii.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(img.GetDirection(), nii.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(img.GetSpacing(), nii.GetSpacing(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(nii), hu)
        # one voxel, one place: the same physical point in both images
        for idx in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
            np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(idx), nii.TransformIndexToPhysicalPoint(idx), atol=1e-5)


def test_geometry_uids_and_description_are_written(tmp_path):
    import datetime

    import pydicom

    hu = _hu()
    write_dicom_series(tmp_path / "a", hu, SPACING, origin_mm=ORIGIN, frame="RAS", study_uid="1.2.3.4", series_uid="1.2.3.4.5",
                       series_description="recon fdk 12 views", description="made by a test", date=datetime.datetime(2026, 1, 2, 3, 4, 5),
                       rescale_slope=0.5, rescale_intercept=-1000.0)  # fmt: skip
    geo = read_dicom_geometry(tmp_path / "a")
    assert geo["study_uid"] == "1.2.3.4" and geo["series_uid"] == "1.2.3.4.5" and geo["frame_of_reference_uid"]
    assert geo["row_direction"] == [-1.0, 0.0, 0.0] and geo["column_direction"] == [0.0, -1.0, 0.0] and geo["slice_direction"] == [0.0, 0.0, 1.0]
    assert geo["origin_lps_mm"] == [-30.0, 20.0, 10.0] and geo["voxel_mm"] == pytest.approx(SPACING) and geo["shape"] == (5, 6, 7)
    assert geo["series_description"] == "recon fdk 12 views" and geo["description"] == "made by a test"
    assert (geo["rescale_slope"], geo["rescale_intercept"]) == (0.5, -1000.0)
    ds = pydicom.dcmread(tmp_path / "a" / "slice_0003.dcm")
    assert ds.StudyDate == "20260102" and ds.SeriesTime == "030405" and list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert float(ds.SliceThickness) == 2.5 and float(ds.SpacingBetweenSlices) == 2.5 and ds.InstanceNumber == 4
    assert [float(v) for v in ds.ImagePositionPatient] == [-30.0, 20.0, 10.0 + 3 * 2.5]
    assert ds.RescaleType == "HU" and float(ds.WindowWidth) > 0
    # slices of one series have distinct instance UIDs, derived from the series UID (a re-export is the same series)
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in sorted((tmp_path / "a").iterdir())]
    assert len(set(uids)) == 5
    write_dicom_series(tmp_path / "b", hu, SPACING, series_uid="1.2.3.4.5")
    assert [pydicom.dcmread(p).SOPInstanceUID for p in sorted((tmp_path / "b").iterdir())] == uids
    back, _ = read_dicom_series(tmp_path / "a")
    np.testing.assert_array_equal(back, hu)


def test_rewriting_replaces_a_series_but_not_other_files(tmp_path):
    write_dicom_series(tmp_path / "s", _hu((4, 3, 3)), SPACING)
    write_dicom_series(tmp_path / "s", _hu((2, 3, 3)), SPACING)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["slice_0000.dcm", "slice_0001.dcm"]
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="other files than a DICOM series.*notes.txt"):
        write_dicom_series(tmp_path / "mixed", _hu(), SPACING)
    assert [p.name for p in (tmp_path / "mixed").iterdir()] == ["notes.txt"]


def test_an_interrupted_write_leaves_no_series(tmp_path, monkeypatch):
    import pydicom.dataset

    calls = []
    real = pydicom.dataset.Dataset.save_as

    def fail_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_dicom_series(tmp_path / "s", _hu(), SPACING)
    assert list(tmp_path.iterdir()) == []
