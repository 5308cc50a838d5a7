"""scripts/diagnose_repair_pairs.py on a tiny pairs folder: per-kind L1 before/after, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/diagnose_repair_pairs.py"


def write_pairs(run: Path, n: int = 4) -> None:
    folder = run / "prior" / "pairs"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kinds = []
    for i in range(n):
        target = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        degraded = np.clip(target.astype(int) + rng.integers(-40, 41, target.shape), 0, 255).astype(np.uint8)
        Image.fromarray(target).save(folder / f"target_{i:03d}.png")
        Image.fromarray(degraded).save(folder / f"degraded_{i:03d}.png")
        kinds.append(f"{'under-fitted' if i % 2 else 'leave-out'} {i:04d}.jpg step 100")
    (folder / "pairs.json").write_text(json.dumps({"kinds": kinds}))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_reports_l1_per_kind_before_and_after(tmp_path):
    write_pairs(tmp_path)
    proc = run(str(tmp_path), "--setting", "all:3:1e-3", "--setting", "under-fitted:2:1e-3:noinit")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "prior" / "diagnosis.json").read_text())
    assert result["n_pairs"] == 4 and set(result["before"]) == {"leave-out", "under-fitted"}
    assert 0.05 < result["before"]["leave-out"] < 0.15  # uniform noise of +-40 / 255
    first, second = result["after"]
    assert first["trained_on"] == "all" and first["zero_init"] and not second["zero_init"]
    assert set(first["l1"]) == {"leave-out", "under-fitted"} and all(v >= 0 for v in first["l1"].values())


def test_missing_pairs_and_unknown_kind_are_one_line_errors(tmp_path):
    proc = run(str(tmp_path / "nope"))
    assert proc.returncode != 0 and "pairs.json: missing" in proc.stderr
    write_pairs(tmp_path)
    proc = run(str(tmp_path), "--setting", "perturbed:2:1e-3")
    assert proc.returncode == 2 and "no pairs of that kind" in proc.stderr
    proc = run(str(tmp_path), "--setting", "all:2")
    assert proc.returncode != 0 and "expected KIND:STEPS:LR" in proc.stderr
