"""recon.io.video: mp4 and GIF round trips (frame count, size, content), odd sizes, the GIF
fallback without imageio-ffmpeg, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.io import video
from recon.io.video import read_video, write_video


def moving_square(n: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """[n, h, w, 3] uint8: a white square moving right over a dark blue background."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 2] = 80
    for i in range(n):
        x = 2 + 3 * i
        frames[i, 16:32, x : x + 16] = 255
    return frames


def test_mp4_round_trip(tmp_path):
    assert video.ffmpeg_available()  # imageio-ffmpeg is a dependency
    frames = moving_square()
    path = write_video(tmp_path / "v.mp4", frames, fps=24)
    assert path == tmp_path / "v.mp4" and path.read_bytes()[4:8] == b"ftyp"
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(24)
    # lossy, but the square is where it was in every frame
    err = np.abs(back.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6
    assert [int(np.argmax(f[24, :, 0] > 128)) for f in back] == [2 + 3 * i for i in range(12)]


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    frames = moving_square(5, 47, 63)
    back, _ = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert back.shape == (5, 48, 64, 3)
    assert np.abs(back[:, :47, :63].astype(int) - frames.astype(int)).mean() < 6


def test_gif_round_trip_and_float_frames(tmp_path):
    frames = moving_square(6)
    path = write_video(tmp_path / "v.gif", frames.astype(np.float32) / 255.0, fps=10)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(10)
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 1  # 3 colours fit a GIF palette


def test_mp4_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    path = write_video(tmp_path / "v.mp4", moving_square(4))
    assert path == tmp_path / "v.gif" and not (tmp_path / "v.mp4").exists()
    assert read_video(path)[0].shape == (4, 48, 64, 3)
    assert "imageio-ffmpeg" in caplog.text


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown video type"):
        write_video(tmp_path / "v.avi", moving_square(2))
    with pytest.raises(ValueError, match="frames"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.mp4", moving_square(2), fps=0)
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40)
    with pytest.raises(InputError, match="not a readable mp4"):
        read_video(tmp_path / "bad.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]  # nothing half-written
