"""Small batch inputs: two tiny CT scans, a corrupt scan, the 12-frame fox capture, and a manifest of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import FOX
from tests.pipelines.conftest import make_capture

CT_OPTIONS = {"method": "tv", "tv.iterations": 20, "checkpoint_every": 5}
CAPTURE_OPTIONS = {"preset": "plain", "downscale": 16, "iterations": 10, "init_points": 500, "train_views": 3,
                   "eval_views": 2, "checkpoint_every": 5}  # fmt: skip


def simulate_scan(folder: Path, size: int = 16, views: int = 10, seed: int = 0) -> Path:
    """A ``size``^3 Shepp-Logan phantom scan on a ``size``^2 detector (R2-Gaussian layout, with its
    reference volume): a TV step takes milliseconds."""
    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct_simulate import CTSimulateConfig

    vol = shepp_logan_3d((size, size, size)).astype(np.float32)
    hu = -1000.0 + 1200.0 * vol / vol.max()
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "phantom.npz", volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    out = folder / "scan"
    CTSimulateConfig(folder / "phantom.npz", views=views, out=out, n_test=0, detector=size, seed=seed).run()
    return out


@pytest.fixture(scope="session")
def batch_inputs(tmp_path_factory) -> Path:
    """``inputs/``: ``scans/a``, ``scans/b`` (two 16^3 scans, different noise), ``scans/corrupt``
    (a malformed meta_data.json) and ``captures/fox`` (12 fox frames)."""
    root = tmp_path_factory.mktemp("inputs")
    scans = root / "scans"
    scans.mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        simulate_scan(root / f"sim_{name}", seed=seed).rename(scans / name)
    (scans / "corrupt").mkdir()
    (scans / "corrupt" / "meta_data.json").write_text('{"scanner": ')
    if not (FOX / "transforms.json").exists():
        pytest.fail(f"shared data missing: {FOX}")
    make_capture(FOX, root / "captures" / "fox")
    return root


def write_manifest(path: Path, jobs: list[dict], defaults: dict | None = None, **top) -> Path:
    doc = {**top, "defaults": defaults or {"ct": dict(CT_OPTIONS), "capture": dict(CAPTURE_OPTIONS)}, "jobs": jobs}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mixed_manifest(batch_inputs) -> Path:
    """Two CT scans, one capture, one corrupt scan (the issue's test batch)."""
    return write_manifest(batch_inputs / "batch.yaml", [
        {"kind": "ct", "data": "scans/a"},
        {"kind": "ct", "data": "scans/b"},
        {"kind": "capture", "data": "captures/fox"},
        {"kind": "ct", "data": "scans/corrupt"},
    ])  # fmt: skip


def read_report(out: Path) -> dict[str, dict]:
    import csv

    with open(out / "report.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.fixture(scope="session")
def local_batch(mixed_manifest, tmp_path_factory) -> tuple[int, Path]:
    """The mixed manifest run once on the local backend (2 worker processes): (exit code, OUT)."""
    from recon.cli import main

    out = tmp_path_factory.mktemp("local") / "out"
    code = main(["batch", str(mixed_manifest), "--out", str(out), "--jobs", "2"])
    return code, out


LONG_TV = {"method": "tv", "tv.iterations": 2000, "checkpoint_every": 10}
"""A CT job long enough to be stopped after its first checkpoint (16^3: a few ms per step, so
2000 steps outlast the driver's 0.2 s polling and the stop reaching the worker on a quiet machine)."""


def long_manifest(folder: Path, scan: Path) -> Path:
    """One :data:`LONG_TV` job named ``long``."""
    return write_manifest(folder / "long.yaml", [{"kind": "ct", "data": str(scan), "name": "long"}], {"ct": LONG_TV})


@pytest.fixture(scope="session")
def long_whole(batch_inputs, tmp_path_factory) -> Path:
    """The ``long`` job run once without interruption (local backend, 1 thread like a Ray task
    with one CPU): the run folder interrupted runs must end up equal to."""
    from recon.cli import main

    root = tmp_path_factory.mktemp("long")
    out = root / "whole"
    assert main(["batch", str(long_manifest(root, batch_inputs / "scans" / "a")), "--out", str(out), "--jobs", "1", "--cpus-per-job", "1"]) == 0
    return out / "long"
