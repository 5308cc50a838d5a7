"""The prepared CUDA-machine check (scripts/device_check_plugins.sh, scripts/bench_raster_gsplat.py):
it must stay runnable although CI has no GPU, so its CPU half runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench_raster_gsplat.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env, timeout=300)


def test_bench_raster_gsplat_cpu_half_runs_and_writes_json(tmp_path):
    out = tmp_path / "raster.json"
    proc = _run("--cpu-only", "--scenes", "1500x64", "800x48x32", "--repeats", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["gaussians"], r["width"], r["height"]) for r in rows] == [(1500, 64, 64), (800, 48, 32)]
    assert all(r["cpu_fwd_s"] > 0 and r["cpu_bwd_s"] > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_raster_gsplat_without_cuda_is_one_line_error():
    proc = _run("--scenes", "1000x32")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["bench_raster_gsplat: torch sees no CUDA device (use --cpu-only for our half alone)"]


def test_bench_raster_gsplat_rejects_bad_scene():
    proc = _run("--cpu-only", "--scenes", "50kx256")
    assert proc.returncode != 0 and "--scenes: '50kx256' is not NxS or NxWxH" in proc.stderr


def test_device_check_script_parses():
    for name in ("device_check_plugins.sh", "device_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], check=True)
