"""scripts/bench_fox.py's view protocols and the --unseen options of scripts/bench_fit_speed.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.bench_fox import protocol_views, unseen_views

ROOT = Path(__file__).resolve().parents[2]


def test_unseen_views_avoid_every_view_the_default_was_chosen_on(fox_dir):
    train, evals = unseen_views(fox_dir, 8, 6)
    protocol_train, protocol_eval = protocol_views(fox_dir, [4, 8], 8)
    seen = set(protocol_train[8]) | set(protocol_train[4]) | set(protocol_eval)
    assert len(evals) == 8 and len(set(evals)) == 8 and not set(evals) & seen
    assert len(train) == 6 and len(set(train)) == 6 and not set(train) & (seen | set(evals))
    assert evals == sorted(evals) and train == sorted(train)
    assert unseen_views(fox_dir, 8, 6) == (train, evals)  # deterministic
    assert unseen_views(fox_dir, 8, 0) == ([], evals)  # the evaluation views do not depend on N


def test_disjoint_k_needs_unseen(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_fit_speed.py"), "--disjoint-k", "6", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--disjoint-k needs --unseen" in proc.stderr
    assert not any(tmp_path.iterdir())
