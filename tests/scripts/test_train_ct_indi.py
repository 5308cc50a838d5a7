"""scripts/train_ct_indi.py end to end on the CPU, tiny: one training volume, one 8-view scan, a
19k-parameter network, 4 steps, then --resume to 6; the weights it writes load with
``recon.prior.ct_indi.load_indi`` and refine a volume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon.prior.ct_indi import indi_refine, load_indi
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(ROOT / "scripts/train_ct_indi.py"), "--names", "vtk_headsq_ct", "--scans-per-volume", "1",
        "--views-min", "8", "--views-max", "8", "--steps", str(steps), "--crop", "32", "--batch", "2",
        "--channels", "8", "16", "--skip-tune", "--checkpoint-every", "2", "--weights-out", str(tmp_path / "w"),
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_train_ct_indi_on_cpu_then_resume(tmp_path):
    if not (SHARED_DATA / "ct" / "vtk_headsq_ct.npz").is_file():
        pytest.fail(f"shared data missing: {SHARED_DATA / 'ct'}")
    first = _train(tmp_path, 4)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "reconstructing 1 TV" in first.stdout and any((tmp_path / "cache").rglob("*.npy"))  # cached
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert (info["steps"], info["stopped_by"], info["device"]) == (4, "steps", "cpu")
    model = load_indi(tmp_path / "w")
    assert sum(p.numel() for p in model.parameters()) < 50_000
    vol = torch.rand(6, 32, 32) * 0.02
    out = torch.as_tensor(indi_refine(vol, model, steps=1))
    assert out.shape == vol.shape and torch.isfinite(out).all()
    again = _train(tmp_path, 6, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reconstructing" not in again.stdout  # the cached TV volume is reused
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert info["steps"] == 6 and (tmp_path / "out" / "checkpoints" / "ckpt_0000006.pt").is_file()
