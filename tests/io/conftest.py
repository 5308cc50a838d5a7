"""Fixtures of the CT format tests: a small non-cubic cone-beam geometry and data on it."""

from __future__ import annotations

import numpy as np
import pytest

from recon.geometry.ct import CTGeometry
from tests.ct.conftest import cone_geometry


@pytest.fixture
def geo() -> CTGeometry:
    # non-cubic volume and detector so axis mix-ups show
    return cone_geometry(n_views=5, det=(6, 8), n_voxel=(3, 4, 5), voxel_mm=(2.0, 1.5, 1.0), offset_origin_mm=(1.0, 2.0, 3.0), offset_detector_mm=(0.5, -0.25))


def ct_data_on(geo: CTGeometry, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random(geo.projection_shape).astype(np.float32), rng.random(geo.n_voxel).astype(np.float32)
