"""Tiny inputs: a nerfstudio capture cut from the shared fox (6 frames, pre-downscaled 8x, 135 x 240)
and a simulated CT scan (16^3 phantom, 12 + 2 views on a 32^2 detector)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

FOX_FRAMES = (0, 7, 14, 21, 28, 35)
"""Six of the 42 fox frames, spread over the capture."""
DOWNSCALE = 8


def make_tiny_fox(fox_dir: Path, out: Path, frames=FOX_FRAMES, downscale: int = DOWNSCALE) -> Path:
    """``out/transforms.json`` with ``frames``, ``images/`` symlinked, ``images_<d>/`` resized with PIL."""
    meta = json.loads((fox_dir / "transforms.json").read_text())
    kept = [meta["frames"][i] for i in frames]
    (out / "images").mkdir(parents=True)
    (out / f"images_{downscale}").mkdir()
    for frame in kept:
        src = fox_dir / frame["file_path"]
        name = Path(frame["file_path"]).name
        (out / "images" / name).symlink_to(src.resolve())
        with Image.open(src) as im:
            size = (round(im.width / downscale), round(im.height / downscale))
            im.convert("RGB").resize(size, Image.BILINEAR).save(out / f"images_{downscale}" / name, quality=95)
    (out / "transforms.json").write_text(json.dumps({**meta, "frames": kept}, indent=1))
    return out


@pytest.fixture(scope="session")
def tiny_fox(tmp_path_factory) -> Path:
    from tests.conftest import FOX

    if not (FOX / "transforms.json").exists():
        pytest.fail(f"shared data missing: {FOX} (the project expects ../shared/data beside it)")
    return make_tiny_fox(FOX, tmp_path_factory.mktemp("tiny_fox"))


def make_ct_scan(out: Path) -> Path:
    """A 16^3 Shepp-Logan phantom (HU, 2 mm voxels) simulated as 12 cone-beam views + 2 test views, 32^2 detector."""
    import numpy as np

    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct_simulate import CTSimulateConfig

    vol = shepp_logan_3d((16, 16, 16)).astype(np.float32)
    hu = -1000.0 + 1200.0 * vol / vol.max()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "phantom.npz", volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    CTSimulateConfig(out / "phantom.npz", views=12, out=out / "scan", n_test=2, detector=32).run()
    return out / "scan"


@pytest.fixture(scope="session")
def ct_scan(tmp_path_factory) -> Path:
    """R2-Gaussian folder of the tiny simulated CT scan (:func:`make_ct_scan`)."""
    return make_ct_scan(tmp_path_factory.mktemp("ct"))
