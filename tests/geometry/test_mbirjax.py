"""recon.geometry.mbirjax: our cone-beam conventions in mbirjax's terms.

The pure conversions are tested here without mbirjax. The projector agreement test runs mbirjax
in an interpreter that has it (``RECON_MBIRJAX_PYTHON``, else ``/tmp/mbir-venv/bin/python``,
else this one) and is skipped when none does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ct.project import Projector
from recon.errors import InputError
from recon.geometry.ct import CTGeometry, circular_angles
from recon.geometry.mbirjax import MbirjaxCone, volume_from_mbirjax, volume_to_mbirjax
from tests.ct.conftest import cone_geometry

ROOT = Path(__file__).resolve().parents[2]


def _geometry(**kw) -> CTGeometry:
    args = dict(n_views=6, det=(20, 28), n_voxel=(10, 12, 14), voxel_mm=(2.0, 1.5, 1.25), detector_pixel_mm=(1.6, 1.2))
    args.update(kw)
    return cone_geometry(**args)


def test_parameters_in_alu():
    geo = _geometry()
    m = MbirjaxCone.from_geometry(geo)
    assert m.alu_mm == 1.2
    assert m.sinogram_shape == (6, 20, 28)
    assert m.source_detector_dist_alu == pytest.approx(400.0 / 1.2)
    assert m.source_iso_dist_alu == pytest.approx(250.0 / 1.2)
    assert m.recon_shape == (12, 14, 10)  # (rows = y, columns = x, slices = z)
    assert m.delta_voxel_alu == pytest.approx(1.25 / 1.2)
    assert m.voxel_row_aspect == pytest.approx(1.5 / 1.25)
    assert m.voxel_slice_aspect == pytest.approx(2.0 / 1.25)
    assert m.delta_det_row_alu == pytest.approx(1.6 / 1.2) and m.delta_det_channel_alu == 1.0
    np.testing.assert_allclose(m.angles_rad, np.asarray(circular_angles(6)) + math.pi / 2)
    assert MbirjaxCone.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.set_params_kwargs()["recon_shape"] == (12, 14, 10)


def test_volume_layout_round_trip_and_units():
    rng = np.random.default_rng(0)
    vol = rng.random((4, 5, 6)).astype(np.float32)
    x = volume_to_mbirjax(vol, 2.0)
    assert x.shape == (5, 6, 4) and x.dtype == np.float32 and x.flags.c_contiguous
    # voxel (k, j, i) of ours is (Y-1-j, i, Z-1-k) of mbirjax's, times the ALU in mm
    assert x[5 - 1 - 1, 3, 4 - 1 - 2] == pytest.approx(vol[2, 1, 3] * 2.0)
    np.testing.assert_allclose(volume_from_mbirjax(x, 2.0), vol, rtol=1e-6)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"mode": "parallel"}, "cone-beam scans only"),
        ({"offset_detector_mm": (0.0, 0.5)}, "offsets"),
        ({"offset_origin_mm": (1.0, 0.0, 0.0)}, "offsets"),
    ],
)
def test_unchecked_geometries_are_refused(change, needle):
    with pytest.raises(InputError, match=needle):
        MbirjaxCone.from_geometry(_geometry(**change))


def test_bad_arrays_are_refused():
    with pytest.raises(InputError, match=r"\[z, y, x\]"):
        volume_to_mbirjax(np.zeros((3, 4)), 1.0)
    with pytest.raises(InputError, match="rows, columns, slices"):
        volume_from_mbirjax(np.zeros((3, 4)), 1.0)


def _mbirjax_python() -> str | None:
    candidates = [os.environ.get("RECON_MBIRJAX_PYTHON"), "/tmp/mbir-venv/bin/python", sys.executable]
    for exe in candidates:
        if exe and Path(exe).is_file():
            ok = subprocess.run([exe, "-c", "import mbirjax"], capture_output=True)
            if ok.returncode == 0:
                return exe
    return None


WORKER = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
from recon.geometry.ct import CTGeometry
from recon.geometry.mbirjax import MbirjaxCone, volume_to_mbirjax
folder = sys.argv[1]
m = MbirjaxCone.from_geometry(CTGeometry.from_json(folder + "/geometry.json"))
x = volume_to_mbirjax(np.load(folder + "/volume.npy"), m.alu_mm)
np.save(folder + "/mbirjax.npy", np.asarray(m.model(ror_mask=False).forward_project(x), dtype=np.float32))
"""


def test_mbirjax_projects_like_our_projector(tmp_path):
    """A smooth, asymmetric object: mbirjax's forward projection through this mapping matches
    ours to 2 % on this coarse grid (the two projector models differ; 0.20-0.25 % on the 128^3 chests);
    rows upside down give 73 %, a half-voxel shift 6 %."""
    exe = _mbirjax_python()
    if exe is None:
        pytest.skip("no interpreter with mbirjax (set RECON_MBIRJAX_PYTHON or make /tmp/mbir-venv)")
    geo = CTGeometry(mode="cone", dsd_mm=700.0, dso_mm=500.0, n_detector=(40, 48), detector_pixel_mm=(2.0, 2.0),
                     n_voxel=(20, 24, 28), voxel_mm=(2.2, 1.9, 1.9), angles_rad=circular_angles(5))  # fmt: skip
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in geo.n_voxel), indexing="ij")
    vol = (0.02 * np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2 + (z - 0.25) ** 2) / 0.25)).astype(np.float32)
    vol += (0.01 * np.exp(-((x + 0.35) ** 2 + (y - 0.3) ** 2 + (z + 0.4) ** 2) / 0.12)).astype(np.float32)
    geo.to_json(tmp_path / "geometry.json")
    np.save(tmp_path / "volume.npy", vol)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([exe, "-c", WORKER, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = np.load(tmp_path / "mbirjax.npy")
    with torch.no_grad():
        ours = Projector(geo).forward(torch.from_numpy(vol)).numpy()
    assert theirs.shape == ours.shape
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    assert rel < 0.03, rel
    flipped = float(np.linalg.norm(theirs[:, ::-1] - ours) / np.linalg.norm(ours))  # rows upside down
    assert flipped > 10 * rel
