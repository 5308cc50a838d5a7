"""Exact resume: a real ``recon`` subprocess interrupted (SIGINT) after its first checkpoint and
resumed with ``--resume`` ends with the same parameters as an uninterrupted run, bit for bit on the
CPU. The uninterrupted and resumed runs go through the same CLI entry point in this process.

Both runs use the same seed; everything random (view order, densification noise, dropout,
initialisation) must come back from the checkpoint for this to hold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.io.ply import read_splat_ply
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _recon(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "recon.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _run(args: list[str]) -> None:
    """``recon args`` in this process (the numba kernels are compiled once for the whole test)."""
    assert main(args) == 0


def _interrupt_after_checkpoint(args: list[str], out: Path, first_ckpt: int) -> None:
    """Start ``recon args``, SIGINT it as soon as the checkpoint of step ``first_ckpt`` exists."""
    ckpt = out / "checkpoints" / f"ckpt_{first_ckpt:07d}.pt"
    proc = _recon(args)
    deadline = time.monotonic() + 600
    while not ckpt.exists():
        assert proc.poll() is None, f"exited before its first checkpoint:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "interrupted", (status, output)


CAPTURE = ["--train-views", "3", "--eval-views", "1", "--downscale", "16", "--init-points", "2000",
           "--iterations", "50", "--checkpoint-every", "10", "--seed", "3"]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--preset", "plain", "--densify.start-iter", "5", "--densify.every", "7",
                      "--densify.grow-grad2d", "1e-5", "--reg.dropout", "0.2"], id="gaussians"),
        pytest.param(["--preset", "plain", "--densify.start-iter", "5", "--densify.every", "7",
                      "--densify.grow-grad2d", "1e-5", "--selective-adam"], id="gaussians-fused-selective"),
        pytest.param(["--preset", "plain", "--densify.start-iter", "5", "--densify.every", "7",
                      "--cpu-kernels", "reference"], id="gaussians-reference"),
        pytest.param(["--preset", "plain", "--pose-rounds", "2", "--pose-round-steps", "3", "--pose-round-levels", "2"],
                     id="gaussians-pose-rounds"),  # rounds after steps 17 and 33
        pytest.param(["--preset", "plain", "--model", "anchored", "--anchored.max-anchors", "200", "--anchored.prune-every", "15"], id="anchored"),
    ],
)
def test_capture_resume_is_exact(small_fox, tmp_path, extra):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _run(["fit", str(small_fox), "--out", str(whole), *CAPTURE, *extra])
    first = 20 if "--pose-rounds" in extra else 10  # after the first round (step 17): the cameras come from the checkpoint
    _interrupt_after_checkpoint(["fit", str(small_fox), "--out", str(cut), *CAPTURE, *extra], cut, first)
    _run(["fit", str(small_fox), "--out", str(cut), *CAPTURE, *extra, "--resume"])
    a, b = read_splat_ply(whole / "splat.ply"), read_splat_ply(cut / "splat.ply")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume: max |diff| {float((a[key] - b[key]).abs().max())}"
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (whole, cut))
    assert ma["eval"]["mean"] == mb["eval"]["mean"]
    assert ma.get("pose_rounds") == mb.get("pose_rounds")
    assert (whole / "cameras.json").read_text() == (cut / "cameras.json").read_text()


@pytest.mark.parametrize("method", ["tv", "tv-fista", "gaussian", "sart"])
def test_ct_resume_is_exact(tiny_ct_scan, tmp_path, method):
    steps = {"tv": ["--iterations", "300", "--checkpoint-every", "10", "--tv.solver", "adam"],
             "tv-fista": ["--iterations", "60", "--checkpoint-every", "10", "--tv.solver", "fista", "--tv.fista-full-batch-after", "2"],
             "gaussian": ["--iterations", "200", "--checkpoint-every", "10", "--gaussian.densify-every", "7", "--gaussian.densify-from", "5", "--gaussian.n-gaussians", "3000"],
             "sart": ["--iterations", "60", "--checkpoint-every", "5"]}[method]  # fmt: skip
    args = ["ct", "fit", str(tiny_ct_scan), "--method", method.split("-")[0], *steps, "--seed", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _run([*args, "--out", str(whole)])
    _interrupt_after_checkpoint([*args, "--out", str(cut)], cut, 5 if method == "sart" else 10)
    _run([*args, "--out", str(cut), "--resume"])
    a, b = np.load(whole / "volume.npy"), np.load(cut / "volume.npy")
    assert np.array_equal(a, b), f"volumes differ after resume: max |diff| {np.abs(a - b).max()}"
