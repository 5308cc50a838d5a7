"""The `recon` command line: success paths and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recon.cli import main
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from tests.pipelines.conftest import make_capture

TINY = ["--downscale", "16", "--iterations", "8", "--init-points", "500", "--eval-views", "2", "--mvs-max-points", "2000"]


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
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]  # after progress messages, if any
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def _missing_image(fox_dir, tmp):
    return make_capture(fox_dir, tmp / "cap", drop="0003.jpg"), ["--train-views", "3"], "0003.jpg"


def _corrupt_image(fox_dir, tmp):
    cap = make_capture(fox_dir, tmp / "cap", frames=slice(0, 6), copy=True)
    target = cap / "images" / "0001.jpg"
    target.write_bytes(target.read_bytes()[:2000])
    return cap, ["--train-views", "6", "--eval-views", "0"], "0001.jpg"


def _edited_transforms(edit):
    def make(fox_dir, tmp):
        cap = make_capture(fox_dir, tmp / "cap")
        meta = json.loads((cap / "transforms.json").read_text())
        needle = edit(meta)
        (cap / "transforms.json").write_text(json.dumps(meta))
        return cap, ["--train-views", "3"], needle

    return make


def _nan_pose(meta):
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    return meta["frames"][2]["file_path"]


def _non_rigid_pose(meta):
    for row in meta["frames"][4]["transform_matrix"][:3]:
        row[:3] = [2.0 * v for v in row[:3]]  # a scaled rotation
    return "not orthonormal"


def _wrong_size(meta):
    meta["w"], meta["h"] = 1920.0, 1080.0
    return "1080"


def _bad_bytes(content: bytes):
    def make(fox_dir, tmp):
        cap = make_capture(fox_dir, tmp / "cap")
        (cap / "transforms.json").write_bytes(content)
        return cap, ["--train-views", "3"], "transforms.json"

    return make


def _with_args(args, needle):
    return lambda fox_dir, tmp: (make_capture(fox_dir, tmp / "cap"), args, needle)


def _empty(fox_dir, tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty", [], "empty"


BAD_CAPTURES = {
    "missing-image": _missing_image,
    "corrupt-image": _corrupt_image,
    "nan-pose": _edited_transforms(_nan_pose),
    "non-rigid-pose": _edited_transforms(_non_rigid_pose),
    "size-disagrees-with-intrinsics": _edited_transforms(_wrong_size),
    "truncated-transforms": _bad_bytes(b'{"frames": [{"file_path": "images/0001.jpg", '),
    "non-utf8-transforms": _bad_bytes(b'{"frames": []}\xff\xfe'),
    "too-many-train-views": _with_args(["--train-views", "50"], "50"),
    "eval-overlaps-train": _with_args(["--train-views", "0", "1", "2", "--eval-indices", "2", "5"], "also training views"),
    "hull-without-masks": _with_args(["--train-views", "3", "--init", "hull"], "needs masks"),
    "bad-iterations": _with_args(["--train-views", "3", "--iterations", "0"], "--iterations"),
    "empty-folder": _empty,
    "missing-folder": lambda fox_dir, tmp: (tmp / "nope", [], "nope"),
}


@pytest.mark.parametrize("case", list(BAD_CAPTURES))
def test_bad_input_is_one_line_and_writes_no_run_folder(fox_dir, tmp_path, capsys, case):
    """The README's promise: bad input exits 2 with one line naming the problem, and --out is never created."""
    data, args, needle = BAD_CAPTURES[case](fox_dir, tmp_path)
    out = tmp_path / "run"
    code, err = _run_cli(["fit", str(data), "--out", str(out), *TINY, *args], capsys)
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err
    assert not out.exists()


def test_eval_bad_input_is_one_line_and_writes_nothing(capture, tmp_path, capsys):
    out = tmp_path / "run"
    RunDir(out).mark("running", kind="capture")  # an unfinished run
    code, err = _run_cli(["eval", str(out), "--cameras", str(capture / "transforms.json")], capsys)
    assert code == 2 and "not a complete run folder" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    code, err = _run_cli(["eval", str(tmp_path / "nowhere"), "--cameras", str(capture / "transforms.json")], capsys)
    assert code == 2 and "nowhere" in err and "Traceback" not in err, err
    assert not (tmp_path / "nowhere").exists()


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "recon.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("fit", "eval", "export"):
        assert cmd in out.stdout


def test_poses_empty_folder(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    _expect_error(["poses", str(tmp_path / "photos"), "--out", str(tmp_path / "t.json")], capsys, "photos")
    assert not (tmp_path / "t.json").exists()


def test_poses_two_photos_sharing_content_exit_2(tmp_path, capsys):
    """Catalogue: fewer than 3 photos share content -> one line naming the pair, exit 2, nothing written."""
    import shutil

    sample = Path(__file__).resolve().parents[1] / "data" / "fox" / "images"
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("0019.jpg", "0029.jpg"):
        shutil.copy(sample / n, photos / n)
    _expect_error(["poses", str(photos), "--out", str(tmp_path / "out" / "t.json"), "--max-image-size", "480"], capsys,
                  "fewer than 3 photos share content")  # fmt: skip
    assert not (tmp_path / "out").exists()
