"""A small soak of the local backend (issue 16, item 6), through the code of
``scripts/soak_batch.py``: 24 tiny CT jobs, one corrupt input of each kind the script makes, one
job whose worker is SIGKILLed after its first checkpoint, then the same batch again. The 100-job
soak and its figures: ``docs/benchmarks.md`` ("Reliability")."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT

DRIVER_GROWTH_MB = 16.0
"""Bound on the driver's resident memory growth from the first to the last of the 24 jobs
(measured: about +1.4 MiB; a driver keeping each job's volume or log would exceed it)."""
WORKER_PEAK_GROWTH_MB = 32.0
"""Bound on the rise of the good jobs' median peak RSS in their workers, first half to last half
(measured: about +7 MiB, within the jitter of the jobs' allocations)."""


@pytest.fixture(scope="module")
def soak_batch():
    spec = importlib.util.spec_from_file_location("soak_batch", ROOT / "scripts" / "soak_batch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_soak_good_jobs_complete_bad_ones_reported_killed_one_resumes(soak_batch, tmp_path):
    r = soak_batch.soak(tmp_path, n=24, seed=0, corrupt_fraction=4 / 24, kill_fraction=1 / 24, kill_iterations=100)
    assert r["failures"] == []
    assert r["roles"] == {"good": 19, "kill": 1, **{kind: 1 for kind in soak_batch.CORRUPTIONS}}
    assert (r["first"]["exit_code"], r["rerun"]["exit_code"]) == (1, 1)
    assert r["first"]["statuses"] == {"complete": 19, "failed": 4, "out of memory": 1}
    assert r["rerun"]["statuses"] == {"skipped": 19, "failed": 4, "complete": 1}
    assert len(r["first"]["samples"]) == 24 and list(r["first"]["killed"]) == [n for n, e in r["errors"].items() if e["role"] == "kill"]
    m = r["memory"]
    assert m["driver_growth_mb"] < DRIVER_GROWTH_MB, m
    assert m["worker_peak_median_last_half_mb"] - m["worker_peak_median_first_half_mb"] < WORKER_PEAK_GROWTH_MB, m
