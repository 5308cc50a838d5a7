"""Small captures built from the shared fox data for end-to-end tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def make_capture(src: Path, dst: Path, frames: slice = slice(0, 12), drop: str | None = None, copy: bool = False) -> Path:
    """A capture folder with a subset of fox frames; images symlinked (or copied when ``copy``)."""
    meta = json.loads((src / "transforms.json").read_text())
    meta["frames"] = meta["frames"][frames]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "images").mkdir()
    for fr in meta["frames"]:
        name = Path(fr["file_path"]).name
        if name == drop:
            continue
        if copy:
            shutil.copy(src / fr["file_path"], dst / "images" / name)
        else:
            (dst / "images" / name).symlink_to(src / fr["file_path"])
    (dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    return dst


@pytest.fixture
def small_fox(fox_dir, tmp_path) -> Path:
    return make_capture(fox_dir, tmp_path / "fox12")


@pytest.fixture(scope="session")
def tiny_ct_scan(tmp_path_factory) -> Path:
    """A 24^3 Shepp-Logan phantom in HU, simulated as a noisy 12-view cone-beam scan (R2-Gaussian layout)."""
    import numpy as np

    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct_simulate import CTSimulateConfig

    vol = shepp_logan_3d((24, 24, 24)).astype(np.float32)
    hu = -1000.0 + 1200.0 * vol / vol.max()
    folder = tmp_path_factory.mktemp("tiny_ct")
    np.savez(folder / "phantom.npz", volume=hu.astype(np.float32), spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    CTSimulateConfig(folder / "phantom.npz", views=12, out=folder / "scan", n_test=0, detector=40).run()
    return folder / "scan"


@pytest.fixture(scope="session")
def tiny_capture_run(tmp_path_factory) -> Path:
    """A complete capture run of 3 fox views at 1/16 resolution, 10 steps (68x120 renders): for
    the exporters, which read runs and never write into them (tests pass --out)."""
    from recon.pipelines.capture import CaptureFitConfig
    from tests.conftest import FOX

    if not (FOX / "transforms.json").exists():
        pytest.fail(f"shared data missing: {FOX} (the project expects ../shared/data beside it)")
    root = tmp_path_factory.mktemp("tiny_capture")
    capture = make_capture(FOX, root / "fox12")
    CaptureFitConfig(data=capture, out=root / "run", preset="plain", train_views=(3,), eval_views=1, downscale=16.0,
                     iterations=10, init_points=500).run()  # fmt: skip
    return root / "run"


@pytest.fixture(scope="session")
def tiny_ct_run(tiny_ct_scan, tmp_path_factory) -> Path:
    """A complete FDK run of the tiny 12-view scan (24^3 voxels of 2 mm)."""
    from recon.pipelines.ct import CTFitConfig

    out = tmp_path_factory.mktemp("tiny_ct_run") / "run"
    CTFitConfig(tiny_ct_scan, method="fdk", out=out).run()
    return out
