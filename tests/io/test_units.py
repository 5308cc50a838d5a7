"""recon.io.units: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.io.units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu


def test_hu_mu_roundtrip():
    assert hu_to_mu(np.array([-1000.0]))[0] == pytest.approx(0.0)
    assert hu_to_mu(np.array([0.0]))[0] == pytest.approx(MU_WATER_PER_MM)
    assert hu_to_mu(np.array([-1024.0]))[0] == 0.0  # clipped
    hu = np.array([-500.0, 0.0, 1000.0, 3000.0])
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, rtol=1e-5, atol=1e-2)
