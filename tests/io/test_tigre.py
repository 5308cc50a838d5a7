"""recon.io.tigre: round trips and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon.errors import InputError
from recon.io.tigre import read_projection_stack, write_projection_stack
from tests.io.conftest import ct_data_on


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_projection_stack_with_sidecar(tmp_path, geo, suffix):
    proj, _ = ct_data_on(geo)
    path = write_projection_stack(tmp_path / f"scan{suffix}", proj, geo)
    assert (tmp_path / "scan.json").exists()
    back = read_projection_stack(path)
    assert back.geometry == geo
    np.testing.assert_array_equal(back.projections, proj)


def test_projection_stack_tigre_yaml_and_errors(tmp_path, geo):
    proj, _ = ct_data_on(geo)
    np.save(tmp_path / "scan.npy", proj)
    import yaml

    tig = geo.to_tigre_dict()
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump(tig))
    assert read_projection_stack(tmp_path / "scan.npy").geometry == geo
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump({**tig, "angles": tig["angles"][:4]}))
    with pytest.raises(InputError, match="5 projections but 4 angles"):
        read_projection_stack(tmp_path / "scan.npy")
    other = dataclasses.replace(geo, n_detector=(6, 9))
    with pytest.raises(InputError, match="6x8 pixels but the geometry's detector is 6x9"):
        read_projection_stack(tmp_path / "scan.npy", other)
    bad = proj.copy()
    bad[0, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="NaN/inf"):
        read_projection_stack(tmp_path / "bad.npy", geo)
    with pytest.raises(InputError, match="no geometry given"):
        read_projection_stack(tmp_path / "bad.npy")
