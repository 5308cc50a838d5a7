"""recon.io.dicom: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.dicom import read_dicom_series, write_dicom_series
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
