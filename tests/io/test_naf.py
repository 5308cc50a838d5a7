"""recon.io.naf: round trips and bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.naf import NAF_PROJECTION_SCALE, read_naf_pickle, write_naf_pickle
from tests.io.conftest import ct_data_on


def test_naf_pickle_roundtrip_and_units(tmp_path, geo):
    proj, vol = ct_data_on(geo)
    path = write_naf_pickle(tmp_path / "case.pickle", geo, proj, volume=vol)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert raw["nVoxel"] == [5, 4, 3] and raw["numTrain"] == 5
    np.testing.assert_allclose(raw["train"]["projections"], proj[:, ::-1, :] / NAF_PROJECTION_SCALE, rtol=1e-6)
    np.testing.assert_array_equal(raw["image"], vol.transpose(2, 1, 0))
    with pytest.raises(InputError, match="runs code from the file: pass --trust-pickle"):
        read_naf_pickle(path)  # refused unless trusted: unpickling runs code
    back = read_naf_pickle(path, trust=True)
    assert back.geometry == geo
    np.testing.assert_allclose(back.projections, proj, rtol=1e-6)
    np.testing.assert_array_equal(back.volume, vol)
    raw["mystery"] = 1
    with open(path, "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(InputError, match=r"unknown NAF keys \['mystery'\]"):
        read_naf_pickle(path, trust=True)
