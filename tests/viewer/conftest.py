"""Tiny synthetic run folders (``recon_viewer.synthetic``) and a server started on a free port."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from recon_viewer import start
from recon_viewer.synthetic import write_capture_run, write_ct_run

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("VIEWER_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts" / "viewer"))
"""Screenshots of the browser tests land here (``runs/`` is git-ignored; CI can keep it)."""


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("viewer-runs")


@pytest.fixture(scope="session")
def capture_run(runs_root) -> Path:
    """A complete capture run: 3000 Gaussians (SH degree 1), 6 train + 2 eval cameras, 64x64 images."""
    return write_capture_run(runs_root / "capture")


@pytest.fixture(scope="session")
def capture_run_b(runs_root) -> Path:
    """A second capture of the same cameras (another seed, SH degree 0): the side-by-side partner."""
    return write_capture_run(runs_root / "capture_b", n_gaussians=1500, sh_degree=0, seed=1, images=False)


@pytest.fixture(scope="session")
def ct_run(runs_root) -> Path:
    """A complete CT run: 32x48x48 chest phantom (attenuation), reference, cone-beam geometry."""
    return write_ct_run(runs_root / "ct")


@pytest.fixture(scope="session")
def old_capture_run(runs_root) -> Path:
    """A capture run without cameras.json (written by an older recon)."""
    return write_capture_run(runs_root / "old_capture", n_gaussians=600, cameras=False)


@pytest.fixture(scope="session")
def failed_run(runs_root) -> Path:
    """A capture run that failed: run.json has an error, no metrics.json."""
    return write_capture_run(runs_root / "failed", n_gaussians=400, status="failed", images=False)


@pytest.fixture(scope="session")
def ct_old_run(runs_root) -> Path:
    """A CT run without geometry.json or reference, and a metrics.json without mu_water_per_mm."""
    out = write_ct_run(runs_root / "ct_old", reference=False, geometry=False)
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["mu_water_per_mm"], metrics["units"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.fixture
def running_run(tmp_path) -> Path:
    """A capture run still training: no splat.ply yet, no metrics.json (fresh per test: tests change it)."""
    out = write_capture_run(tmp_path / "running", n_gaussians=500, status="running", images=False)
    shutil.move(out / "splat.ply", tmp_path / "splat.ply.later")
    return out


@pytest.fixture
def serve_runs():
    """Start a viewer for some runs on 127.0.0.1 and a free port; stopped after the test."""
    servers = []

    def _serve(*runs: Path, host: str = "127.0.0.1"):
        server = start([str(r) for r in runs], host=host, port=0).serve_in_thread()
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
