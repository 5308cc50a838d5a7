"""recon.io.ct_data: round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.ct_data import ClippedTransmissionWarning, counts_to_line_integrals
from tests.ct.conftest import CT_DATA


def test_counts_to_line_integrals():
    flat = np.full((2, 3), 1000.0)
    dark = np.full((2, 3), 100.0)
    raw = np.stack([np.full((2, 3), 100.0 + 900.0 * np.exp(-k)) for k in (0.5, 2.0)])
    np.testing.assert_allclose(counts_to_line_integrals(raw, dark, flat)[:, 0, 0], [0.5, 2.0], rtol=1e-6)
    # stacks of darks/flats are averaged
    np.testing.assert_allclose(counts_to_line_integrals(raw, np.stack([dark, dark]), np.stack([flat, flat])), counts_to_line_integrals(raw, dark, flat))
    with pytest.raises(InputError, match=r"flat <= dark at 2 pixels \(first at \(0, 2\)\)"):
        counts_to_line_integrals(raw, dark, np.where(np.arange(3) == 2, 50.0, flat))
    with pytest.raises(InputError, match="negative"):
        counts_to_line_integrals(raw - 1000.0, dark, flat)
    bad = raw.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError, match=r"NaN/inf values \(first at index \(1, 1, 1\)\)"):
        counts_to_line_integrals(bad, dark, flat)
    with pytest.raises(InputError, match=r"dark field is \[3, 3\]"):
        counts_to_line_integrals(raw, np.zeros((3, 3)), flat)
    starved = raw.copy()
    starved[0, 0, 0] = 100.0  # no photons
    with pytest.warns(ClippedTransmissionWarning, match="clipped 1 of 12"):
        out = counts_to_line_integrals(starved, dark, flat, min_transmission=1e-4)
    assert out[0, 0, 0] == pytest.approx(-np.log(1e-4))


def test_counts_on_real_synchrotron_data():
    """Savu I13 raw counts: our conversion matches the shipped line integrals (clip 1e-3),
    with its one dead pixel (flat = dark = 0) zeroed."""
    d = np.load(CT_DATA / "savu_dls_i13_24737_parallel.npz")
    with pytest.raises(InputError, match="flat <= dark at 1 pixels"):
        counts_to_line_integrals(d["projections_raw"][:2], d["dark"], d["flat"])
    li = counts_to_line_integrals(d["projections_raw"], d["dark"], d["flat"], min_transmission=1e-3, dead_pixels="zero")
    dead = d["flat"] <= d["dark"]
    np.testing.assert_allclose(li[:, ~dead], d["line_integrals"][:, ~dead], atol=1e-5)
