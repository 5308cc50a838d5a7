"""Tests for recon.pipelines.posefree: ``recon fit PHOTOS_DIR`` registers first and refuses partial registrations."""

from __future__ import annotations

import numpy as np
from PIL import Image

from recon.cli import main
from recon.pipelines.posefree import is_photo_folder


def _noise(path, seed, size=(96, 128)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_is_photo_folder(tmp_path):
    assert not is_photo_folder(tmp_path)  # empty
    _noise(tmp_path / "a.png", 0)
    assert is_photo_folder(tmp_path)
    (tmp_path / "transforms.json").write_text("{}")
    assert not is_photo_folder(tmp_path)  # a posed capture
    assert not is_photo_folder(tmp_path / "a.png")


def test_fit_photo_folder_that_does_not_register_exits_2_in_one_line(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _noise(photos / f"{i}.png", i)
    out = tmp_path / "run"
    code = main(["fit", str(photos), "--out", str(out), "--iterations", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "0 of 3 photos registered" in err and "0.png (shares fewer than 30 verified matches" in err
    assert not out.exists()  # setup failed before the run folder was touched


def test_fit_single_photo_exits_2(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _noise(photos / "a.png", 0)
    assert main(["fit", str(photos), "--out", str(tmp_path / "run")]) == 2
    assert "registration needs at least 2" in capsys.readouterr().err
