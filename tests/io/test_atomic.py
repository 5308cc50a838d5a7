"""recon.io.atomic: readers never see a partial file, an interrupted write keeps the old one."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.io.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    to_jsonable,
)

ROOT = Path(__file__).resolve().parents[2]


def test_write_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(path, b"first") == path
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert os.listdir(path.parent) == ["out.bin"]  # no temp files left behind


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_writer_that_fails_midway_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "metrics.json"
    path.write_bytes(b'{"psnr": 30.0}\n')

    def write(f):
        f.write(b'{"psnr": 12')  # half of the new content, then the writer dies
        f.flush()
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write)
    assert path.read_bytes() == b'{"psnr": 30.0}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", lambda f: (f.write(b"x"), int("not a number")))
    assert os.listdir(tmp_path) == []


def test_permissions_match_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_bytes(tmp_path / "atomic.txt", b"x")  # mkstemp alone would give 0o600
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, mode):
    """``umask 077; recon fit ...`` gives files only the owner can read."""
    code = (
        f"import os; os.umask({umask}); from recon.io.atomic import atomic_write_bytes; "
        f"atomic_write_bytes({str(tmp_path / 'f')!r}, b'x')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode


@dataclasses.dataclass
class _Inner:
    where: Path
    scale: float = 0.5


@dataclasses.dataclass
class _Config:
    name: str
    inner: _Inner
    views: tuple[int, ...] = (1, 2)
    background: torch.Tensor = dataclasses.field(default_factory=lambda: torch.tensor([0.25, 0.5, 1.0]))


def test_json_of_dataclasses_tensors_paths_and_numpy(tmp_path):
    obj = {
        "config": _Config("fox", _Inner(Path("/data/fox"))),
        "psnr": torch.tensor(31.5),
        "counts": np.arange(3, dtype=np.int64),
        "mean": np.float32(0.5),
        "n": np.int64(7),
        "out": tmp_path / "run",
        1: "int keys become strings",
    }
    path = atomic_write_json(tmp_path / "x.json", obj)
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "config"')  # indented, one trailing newline
    assert json.loads(text) == {
        "config": {"name": "fox", "inner": {"where": "/data/fox", "scale": 0.5}, "views": [1, 2], "background": [0.25, 0.5, 1.0]},
        "psnr": 31.5,
        "counts": [0, 1, 2],
        "mean": 0.5,
        "n": 7,
        "out": str(tmp_path / "run"),
        "1": "int keys become strings",
    }
    assert to_jsonable(_Config) is _Config  # a dataclass type is not an instance: left alone


def test_json_that_cannot_be_encoded_keeps_the_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1} and os.listdir(tmp_path) == ["m.json"]


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    from recon.io.atomic import atomic_folder

    target = tmp_path / "series"
    with atomic_folder(target) as tmp:
        (tmp / "a.dcm").write_bytes(b"1")
        assert not target.exists()  # nothing visible until done
    assert sorted(p.name for p in target.iterdir()) == ["a.dcm"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "b.dcm").write_bytes(b"2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.dcm"]  # the old folder, untouched
    with atomic_folder(target) as tmp:
        (tmp / "c.dcm").write_bytes(b"3")
    assert sorted(p.name for p in target.iterdir()) == ["c.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no temporary folders left
