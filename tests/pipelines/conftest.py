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
