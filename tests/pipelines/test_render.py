"""``recon render``: videos of capture runs along camera paths (frame count, size, the camera
path written beside them and rendered again) and of CT runs (turning MIP, slice sweeps), and
one-line errors for runs and options it cannot render."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from recon.cli import main
from recon.io.run import RunDir
from recon.io.video import read_video


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _train_size(run_dir) -> tuple[int, int]:
    """(width, height) of the run's first training camera."""
    views = json.loads((run_dir / "cameras.json").read_text())["views"]
    first = next(v for v in views if v["split"] == "train")
    return int(first["width"]), int(first["height"])


@pytest.mark.parametrize("path", ["orbit", "spiral", "interp"])
def test_capture_paths_give_the_frames_asked_for(tiny_capture_run, tmp_path, capsys, path):
    out = tmp_path / f"{path}.mp4"
    code, err = _cli(["render", str(tiny_capture_run), "--path", path, "--frames", "6", "--out", str(out)], capsys)
    assert code == 0, err
    frames, fps = read_video(out)
    w, h = _train_size(tiny_capture_run)
    assert frames.shape == (6, h + h % 2, w + w % 2, 3) and fps == pytest.approx(30.0)
    assert frames.std() > 1.0  # the fox, not a blank background
    assert (tmp_path / f"{path}.json").is_file() and "6 frames" in err


def test_camera_path_file_renders_again_as_a_gif(tiny_capture_run, tmp_path, capsys):
    first = tmp_path / "orbit.mp4"
    code, err = _cli(["render", str(tiny_capture_run), "--frames", "4", "--scale", "0.5", "--fps", "8", "--out", str(first)], capsys)
    assert code == 0, err
    again = tmp_path / "again.gif"
    code, err = _cli(["render", str(tiny_capture_run), "--path", str(tmp_path / "orbit.json"), "--out", str(again)], capsys)
    assert code == 0, err
    a, _ = read_video(first)
    b, fps = read_video(again)
    assert b.shape[0] == 4 and fps == pytest.approx(8.0, rel=0.05)  # frames and rate from the file
    assert abs(b.shape[1] - a.shape[1]) <= 1 and abs(b.shape[2] - a.shape[2]) <= 1
    # the same cameras: the GIF's frames look like the mp4's (palette and H.264 losses aside)
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    diff = np.abs(a[:, :h, :w].astype(float) - b[:, :h, :w].astype(float)).mean()
    assert diff < 12.0, diff


@pytest.mark.parametrize("path, frames", [("mip", 5), ("axial", None), ("coronal", 7)])
def test_ct_videos(tiny_ct_run, tmp_path, capsys, path, frames):
    out = tmp_path / f"{path}.gif"
    args = ["render", str(tiny_ct_run), "--path", path, "--out", str(out)] + (["--frames", str(frames)] if frames else [])
    code, err = _cli(args, capsys)
    assert code == 0, err
    video, _ = read_video(out)
    n_slices = np.load(tiny_ct_run / "volume.npy").shape[0]
    assert video.shape[0] == (frames or n_slices) and video.shape[-1] == 3
    assert video.max() > 100  # the phantom shows


def _incomplete(run_dir):
    RunDir(run_dir).mark("running")
    return "not a complete CT run"


def _corrupt(run_dir):
    (run_dir / "volume.npy").write_bytes(b"\x93NUMPY")
    return "volume.npy"


@pytest.mark.parametrize("damage", [_incomplete, _corrupt], ids=["incomplete", "corrupt"])
def test_bad_ct_runs_are_one_line_errors(tiny_ct_run, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run_dir)
    needle = damage(run_dir)
    code, err = _cli(["render", str(run_dir), "--out", str(tmp_path / "v.mp4")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{capture}", "--path", "mip"], "does not apply to a capture run"),
        (["{ct}", "--path", "orbit"], "does not apply to a ct run"),
        (["{capture}", "--path", "{tmp}/none.json"], "camera-path file not found"),
        (["{capture}", "--out", "{tmp}/v.avi"], "unknown video type"),
        (["{capture}", "--frames", "0"], "--frames"),
        (["{tmp}/nowhere"], "run folder not found"),
    ],
    ids=["mip-of-capture", "orbit-of-ct", "missing-path-file", "avi", "zero-frames", "missing-run"],
)
def test_bad_render_options_are_one_line_errors(tiny_capture_run, tiny_ct_run, tmp_path, capsys, args, needle):
    args = ["render"] + [a.format(capture=tiny_capture_run, ct=tiny_ct_run, tmp=tmp_path) for a in args]
    code, err = _cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    assert not (tiny_capture_run / "export").exists() and not (tiny_ct_run / "export").exists()
