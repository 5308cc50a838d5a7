"""A tiny nerfstudio capture cut from the shared fox: 6 frames, pre-downscaled 8x (135 x 240)."""

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
