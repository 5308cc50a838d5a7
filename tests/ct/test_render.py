"""recon.ct.render: turning MIPs and slice sweeps (frame counts, sizes, orientation, windows)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.ct.render import auto_window, rotating_mip, slice_sweep


def dot_volume() -> np.ndarray:
    """[Z=10, Y=16, X=20] zeros with one bright voxel block at high z, +x side, -y side."""
    vol = np.zeros((10, 16, 20), np.float32)
    vol[7:9, 3:5, 15:17] = 1000.0
    return vol


def test_mip_frames_turn_the_volume():
    vol = dot_volume()
    frames = rotating_mip(vol, (1.0, 1.0, 1.0), 4, window=(0.0, 1000.0))
    assert frames.shape == (4, 10, 20, 3) and frames.dtype == np.uint8
    bright = [np.argwhere(f[..., 0] > 128) for f in frames]
    # frame 0 looks along +y: x to the right, z up (row 0 is the top slice)
    assert set(bright[0][:, 1]) == {15, 16} and set(bright[0][:, 0]) == {1, 2}
    # a quarter turn: the volume turns clockwise seen from +z, (x, y) = (+6, -4) mm -> (-4, -6)
    assert set(bright[1][:, 1]) == {5, 6} and set(bright[1][:, 0]) == {1, 2}
    # a half turn puts the dot on the other side of the axis, at the same height
    assert bright[2][:, 1].max() < 10 and set(bright[2][:, 0]) == {1, 2}


def test_mip_keeps_the_physical_aspect():
    frames = rotating_mip(dot_volume(), (2.5, 0.5, 0.5), 2)
    assert frames.shape[1:3] == (50, 20)  # 10 slices of 2.5 mm at 0.5 mm pixels


@pytest.mark.parametrize("axis, n, size", [("axial", 10, (16, 20)), ("coronal", 16, (20, 20)), ("sagittal", 20, (20, 16))])
def test_slice_sweeps(axis, n, size):
    frames = slice_sweep(dot_volume(), (2.0, 1.0, 1.0), axis, window=(0.0, 1000.0))
    assert frames.shape == (n, *size, 3)
    lit = [i for i, f in enumerate(frames) if f.max() > 128]
    assert lit == {"axial": [7, 8], "coronal": [3, 4], "sagittal": [15, 16]}[axis]
    if axis != "axial":  # +z up: the dot near the top
        assert np.argwhere(frames[lit[0], ..., 0] > 128)[:, 0].max() < 6
    assert len(slice_sweep(dot_volume(), (2.0, 1.0, 1.0), axis, n_frames=3)) == 3


def test_window_and_bad_input():
    assert auto_window(np.arange(1001.0)) == pytest.approx((5.0, 995.0))
    assert auto_window(np.zeros(5)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="axis"):
        slice_sweep(dot_volume(), (1.0, 1.0, 1.0), "oblique")
    with pytest.raises(ValueError, match="voxel_mm"):
        rotating_mip(dot_volume(), (1.0, 1.0), 3)
    with pytest.raises(ValueError, match="n_frames"):
        rotating_mip(dot_volume(), (1.0, 1.0, 1.0), 0)
