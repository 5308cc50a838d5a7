from __future__ import annotations

import math

import numpy as np
import pytest

from recon.ct.phantoms import ball, shepp_logan_3d
from recon.errors import InputError


def test_ball_volume_fraction():
    b = ball((32, 32, 32), radius=0.5, supersample=4)
    assert b.sum() / b.size == pytest.approx(4 / 3 * math.pi * 0.5**3 / 8, rel=0.01)
    assert b.max() == 1.0 and b.min() == 0.0


def test_shepp_logan_range_and_shape():
    s = shepp_logan_3d((16, 20, 24))
    assert s.shape == (16, 20, 24) and s.dtype == np.float32
    assert s.min() >= 0 and s.max() <= 1.0 + 1e-6
    assert s[8, 10, 12] == pytest.approx(0.2, abs=0.05)  # brain-like interior
    with pytest.raises(InputError):
        shepp_logan_3d((16, 16))
