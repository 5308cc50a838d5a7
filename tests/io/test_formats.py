"""recon.io.formats: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.formats import read_volume, write_volume
from recon.io.tiff import read_tiff_stack, write_tiff_stack


def test_tiff_and_npy_and_dispatch(tmp_path):
    vol = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    write_tiff_stack(tmp_path / "v.tif", vol, (2.0, 1.5, 1.0))
    back, spacing = read_tiff_stack(tmp_path / "v.tif")
    np.testing.assert_array_equal(back, vol)
    assert spacing == pytest.approx((2.0, 1.5, 1.0))
    write_volume(tmp_path / "v.npy", vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.npy")[0], vol)
    with pytest.raises(InputError, match="unknown volume type"):
        write_volume(tmp_path / "v.mhd", vol)
    with pytest.raises(InputError, match="3D"):
        write_volume(tmp_path / "v.npy", vol[0])
