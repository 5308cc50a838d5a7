"""recon.io.r2gaussian: round trips and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recon.errors import InputError
from recon.geometry.ct import circular_angles
from recon.io.r2gaussian import read_r2gaussian, write_r2gaussian
from tests.io.conftest import ct_data_on


def test_r2gaussian_layout_and_roundtrip(tmp_path, geo):
    proj, vol = ct_data_on(geo)
    test_geo = geo.with_angles([0.1, 2.0])
    test_proj = np.random.default_rng(1).random(test_geo.projection_shape).astype(np.float32)
    out = write_r2gaussian(tmp_path / "case", geo, proj, volume=vol, test_geometry=test_geo, test_projections=test_proj)
    meta = json.loads((out / "meta_data.json").read_text())
    assert set(meta) == {"scanner", "vol", "bbox", "proj_train", "proj_test"}
    sc = meta["scanner"]
    assert sc["nVoxel"] == [5, 4, 3] and sc["dVoxel"] == [1.0, 1.5, 2.0]  # (x, y, z)
    assert sc["nDetector"] == [6, 8] and sc["offDetector"] == [-0.25, 0.5]  # (v, u) and (u, v)
    assert sc["offOrigin"] == [3.0, 2.0, 1.0]
    assert meta["proj_train"][1] == {"file_path": "proj_train/proj_train_0001.npy", "angle": pytest.approx(geo.angles_rad[1])}
    np.testing.assert_array_equal(np.load(out / "vol_gt.npy"), vol.transpose(2, 1, 0))  # [x, y, z]
    np.testing.assert_array_equal(np.load(out / "proj_train/proj_train_0001.npy"), proj[1][::-1])  # flipped in v
    back = read_r2gaussian(out)
    assert back.geometry == geo
    np.testing.assert_array_equal(back.projections, proj)
    np.testing.assert_array_equal(back.volume, vol)
    np.testing.assert_array_equal(back.test_projections, test_proj)
    np.testing.assert_allclose(back.test_geometry.angles, [0.1, 2.0])


def test_r2gaussian_errors(tmp_path, geo):
    proj, vol = ct_data_on(geo)
    out = write_r2gaussian(tmp_path / "case", geo, proj, volume=vol)
    meta = json.loads((out / "meta_data.json").read_text())
    meta["scanner"]["weird"] = 1
    meta["scanner"]["zz"] = 2
    (out / "meta_data.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"unknown scanner keys \['weird', 'zz'\]"):
        read_r2gaussian(out)
    del meta["scanner"]["weird"], meta["scanner"]["zz"]
    meta["scanner"]["nDetector"] = [6, 9]
    (out / "meta_data.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"6x8 pixels but the geometry's detector is 6x9"):
        read_r2gaussian(out)
    with pytest.raises(InputError, match="meta_data.json: not found"):
        read_r2gaussian(tmp_path / "nothing")


def test_angles_in_geometry_match_r2_protocol():
    np.testing.assert_allclose(circular_angles(50)[1], 2 * np.pi / 50)
