"""recon.io.nifti: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.io.nifti import read_nifti, write_nifti


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_nifti_roundtrip_with_spacing(tmp_path, name):
    import nibabel as nib

    vol = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    path = write_nifti(tmp_path / name, vol, (2.0, 1.5, 1.0), origin_mm=(10.0, 20.0, 30.0))
    assert path.name == name and sorted(p.name for p in tmp_path.iterdir()) == [name]
    img = nib.load(str(path))
    assert img.shape == (5, 4, 3)  # NIfTI data are [x, y, z]
    np.testing.assert_allclose(np.diag(img.affine)[:3], [1.0, 1.5, 2.0])
    np.testing.assert_allclose(img.affine[:3, 3], [30.0, 20.0, 10.0])
    back, spacing = read_nifti(path)
    np.testing.assert_array_equal(back, vol)
    assert spacing == (2.0, 1.5, 1.0)
