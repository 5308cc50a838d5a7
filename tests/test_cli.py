"""The `recon` command line: success paths and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recon.cli import main
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from tests.pipelines.conftest import make_capture

TINY = ["--downscale", "16", "--iterations", "8", "--init-points", "500", "--eval-views", "2"]


@pytest.fixture
def capture(fox_dir, tmp_path):
    return make_capture(fox_dir, tmp_path / "cap")


def _run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_fit_export_eval(capture, tmp_path, capsys, fox_dir):
    out = tmp_path / "run"
    code, err = _run_cli(["fit", str(capture), "--train-views", "3", "--out", str(out), *TINY], capsys)
    assert code == 0, err
    assert "splat.ply" in err and "metrics.json" in err
    code, err = _run_cli(["export", str(out), "--format", "ply", "--out", str(tmp_path / "x.ply")], capsys)
    assert code == 0, err
    assert read_splat_ply(tmp_path / "x.ply")["means"].shape[0] > 0
    other = make_capture(fox_dir, tmp_path / "other", frames=slice(30, 32))
    code, err = _run_cli(["eval", str(out), "--cameras", str(other / "transforms.json")], capsys)
    assert code == 0, err
    assert json.loads((out / "eval_transforms" / "metrics.json").read_text())["mean"]["n_views"] == 2


def _expect_error(args, capsys, *needles):
    code, err = _run_cli(args, capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    msg = " ".join(lines)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_image_file(fox_dir, tmp_path, capsys):
    cap = make_capture(fox_dir, tmp_path / "cap", drop="0003.jpg")
    out = tmp_path / "run"
    _expect_error(["fit", str(cap), "--out", str(out), "--train-views", "3", *TINY], capsys, "0003.jpg")
    assert not RunDir(out).is_complete()


def test_corrupt_image(fox_dir, tmp_path, capsys):
    cap = make_capture(fox_dir, tmp_path / "cap", frames=slice(0, 6), copy=True)
    target = cap / "images" / "0001.jpg"
    target.write_bytes(target.read_bytes()[:2000])
    out = tmp_path / "run"
    _expect_error(["fit", str(cap), "--out", str(out), "--train-views", "6", *TINY[:-2], "--eval-views", "0"],
                  capsys, "0001.jpg")
    assert not (out / "run.json").exists()


def test_too_many_train_views(capture, tmp_path, capsys):
    _expect_error(["fit", str(capture), "--train-views", "50", "--out", str(tmp_path / "r"), *TINY], capsys, "50")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _expect_error(["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY], capsys, "empty")


def test_nan_pose(capture, tmp_path, capsys):
    meta = json.loads((capture / "transforms.json").read_text())
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    (capture / "transforms.json").write_text(json.dumps(meta))
    _expect_error(["fit", str(capture), "--out", str(tmp_path / "r"), *TINY], capsys, meta["frames"][2]["file_path"])


def test_image_size_disagrees_with_intrinsics(capture, tmp_path, capsys):
    meta = json.loads((capture / "transforms.json").read_text())
    meta["w"], meta["h"] = 1920.0, 1080.0
    (capture / "transforms.json").write_text(json.dumps(meta))
    _expect_error(["fit", str(capture), "--out", str(tmp_path / "r"), "--train-views", "3", *TINY], capsys, "1080")


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "recon.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("fit", "eval", "export"):
        assert cmd in out.stdout


def test_poses_empty_folder(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    _expect_error(["poses", str(tmp_path / "photos"), "--out", str(tmp_path / "t.json")], capsys, "photos")
    assert not (tmp_path / "t.json").exists()
