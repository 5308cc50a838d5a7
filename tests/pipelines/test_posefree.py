"""Tests for recon.pipelines.posefree: ``recon fit PHOTOS_DIR`` registers first and refuses partial registrations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


def test_fit_photo_folder_with_pose_rounds_records_them(tmp_path):
    """``recon fit PHOTOS --pose-rounds 1`` on 3 shipped fox photos: the round's per-view changes
    and focal factor land in registration.json and metrics.json, and transforms.json / cameras.json
    hold the registered cameras."""
    import json
    import shutil
    from pathlib import Path

    from recon.io.run import RunDir

    sample = Path(__file__).resolve().parents[2] / "data" / "fox" / "images"
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("0019.jpg", "0072.jpg", "0108.jpg"):
        shutil.copy(sample / n, photos / n)
    out = tmp_path / "run"
    args = ["fit", str(photos), "--out", str(out), "--iterations", "12", "--downscale", "4", "--preset", "plain",
            "--init", "random", "--init-points", "1500", "--pose-rounds", "1", "--pose-round-steps", "4"]  # fmt: skip
    assert main(args) == 0
    reg = json.loads((out / "registration.json").read_text())
    (rnd,) = reg["photometric_rounds"]
    assert rnd["step"] == 6 and rnd["views"] == ["0019.jpg", "0072.jpg", "0108.jpg"] and len(rnd["rot_deg"]) == 3
    assert rnd["l1_after"] <= rnd["l1_before"]
    assert reg["focal_px"] == pytest.approx(reg["focal_px_sfm"] * rnd["focal_scale"], rel=1e-9)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pose_rounds"][0]["focal_scale"] == rnd["focal_scale"]
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["fl_x"] == pytest.approx(reg["focal_px"], rel=1e-9)
    _, cams = RunDir(out).read_cameras()["train"]
    if rnd["accepted"]:  # the cameras.json poses are the registered ones, not the SfM ones
        from recon.io.formats import load_capture

        back = load_capture(out / "transforms.json", allow_outside_paths=True)
        torch.testing.assert_close(back.cameras.w2c.double(), cams.w2c.double(), atol=1e-5, rtol=0)


def test_pose_rounds_options_are_checked():
    from recon.errors import InputError
    from recon.splat.config import SplatTrainConfig

    with pytest.raises(InputError, match="--pose-rounds.*below --iterations"):
        SplatTrainConfig(iterations=5, pose_rounds=5).validate()
    with pytest.raises(InputError, match="--refine-poses"):
        SplatTrainConfig(pose_rounds=1, refine_poses=True).validate()
    with pytest.raises(InputError, match="--pose-round-steps"):
        SplatTrainConfig(pose_rounds=1, pose_round_steps=0).validate()
    SplatTrainConfig(pose_rounds=2).validate()


def test_fit_two_overlapping_photos_exits_2(tmp_path, capsys):
    """Catalogue: fewer than 3 photos share content -> one line naming the pair, exit 2, no run folder."""
    import shutil
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "data" / "fox" / "images"
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("0019.jpg", "0029.jpg"):
        shutil.copy(sample / n, photos / n)
    out = tmp_path / "run"
    assert main(["fit", str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fewer than 3 photos share content" in err and "0019.jpg-0029.jpg" in err, err
    assert not out.exists()
