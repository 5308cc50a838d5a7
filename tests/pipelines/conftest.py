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
