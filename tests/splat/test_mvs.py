"""Plane-sweep stereo: the plane homography, depth maps of a textured plane (known answer), the
consistency filter, the depth range from sparse points, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.splat.mvs import (
    PlaneSweepConfig,
    depth_points,
    depth_range_from_points,
    plane_homography,
    plane_sweep,
    stereo_points,
)

from ._plane_scene import H, W, calibration, cameras_at, random_texture, render_plane

CENTRES = [[0.0, 0.0, -3.0], [0.6, 0.1, -2.9], [-0.3, 0.5, -2.95]]


def test_plane_homography_maps_points_of_the_plane():
    cams = cameras_at(CENTRES[:2])
    w2c, K = cams.w2c.double().numpy(), calibration()
    rel = w2c[1] @ np.linalg.inv(w2c[0])
    depth = 2.5
    xy = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 2))
    X_ref = np.c_[xy * depth, np.full(20, depth)]  # on the plane z = depth of camera 0
    x_ref = (K @ X_ref.T).T
    X_src = X_ref @ rel[:3, :3].T + rel[:3, 3]
    x_src = (K @ X_src.T).T
    mapped = (plane_homography(K, K, rel, depth) @ x_ref.T).T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], x_src[:, :2] / x_src[:, 2:], atol=1e-9)


def _true_depth(cams, v: int) -> np.ndarray:
    """Depth of the plane z = 0 at every pixel of view ``v``, ``[H, W]``."""
    m = np.linalg.inv(cams.w2c[v].double().numpy())
    K = calibration()
    ys, xs = np.mgrid[0:H, 0:W]
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs, float)], -1) @ m[:3, :3].T
    return -m[2, 3] / rays[..., 2]  # camera-frame z where the world ray meets z = 0


def test_depth_maps_of_a_textured_plane():
    cams = cameras_at(CENTRES)
    images = render_plane(cams, random_texture(3), half=1.5)
    maps = plane_sweep(cams, images, (2.0, 4.5), PlaneSweepConfig(n_depths=64, window=7))
    assert maps.depth.shape == maps.ncc.shape == maps.keep.shape == (3, H, W)
    for v in range(3):
        keep = maps.keep[v].numpy()
        assert keep.mean() > 0.3
        rel = np.abs(maps.depth[v].numpy() - _true_depth(cams, v)) / _true_depth(cams, v)
        assert np.median(rel[keep]) < 0.01 and (rel[keep] < 0.03).mean() > 0.95
    pts, cols = depth_points(cams, images, maps)
    assert pts.shape == cols.shape == (int(maps.keep.sum()), 3)
    assert float(pts[:, 2].abs().median()) < 0.02


def test_consistency_filter_removes_views_that_disagree():
    cams = cameras_at(CENTRES)
    images = render_plane(cams, random_texture(4), half=1.5)
    images[2] = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0))  # unrelated view
    loose = plane_sweep(cams, images, (2.0, 4.5), PlaneSweepConfig(n_depths=48, min_consistent=1))
    strict = plane_sweep(cams, images, (2.0, 4.5), PlaneSweepConfig(n_depths=48, min_consistent=2))
    assert int(strict.keep.sum()) < 0.2 * int(loose.keep.sum())  # only 1 view can agree now
    assert float(loose.keep[2].float().mean()) < 0.05  # the noise view matches nothing


def test_depth_range_from_points_and_stereo_points():
    cams = cameras_at(CENTRES)
    pts = torch.tensor(np.random.default_rng(1).uniform(-1, 1, (100, 3)), dtype=torch.float32)
    pts[:, 2] = 0
    near, far = depth_range_from_points(cams, pts)
    assert 0.6 * 2.0 < near < 0.6 * 3.0 and 1.6 * 3.0 < far < 1.6 * 4.0
    assert depth_range_from_points(cams, pts[:2]) is None  # 6 depths < 8
    images = render_plane(cams, random_texture(5), half=1.5)
    out, cols, how = stereo_points(cams, images, pts, torch.full((100, 3), 0.5), PlaneSweepConfig(n_depths=48))
    assert len(out) == len(cols) > 100 and "plane-sweep points" in how and "+ 100 triangulated" in how
    assert float(out[:, 2].abs().median()) < 0.03


def test_bad_input():
    cams = cameras_at(CENTRES[:2])
    imgs = torch.zeros(2, H, W, 3)
    with pytest.raises(ValueError, match="0 < near < far"):
        plane_sweep(cams, imgs, (3.0, 2.0))
    with pytest.raises(ValueError, match="3 images for 2 cameras"):
        plane_sweep(cams, torch.zeros(3, H, W, 3), (1.0, 2.0))
    with pytest.raises(ValueError, match="at least 2 views"):
        plane_sweep(cams.subset([0]), imgs[:1], (1.0, 2.0))
    with pytest.raises(ValueError, match="odd"):
        plane_sweep(cams, imgs, (1.0, 2.0), PlaneSweepConfig(window=4))
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        depth_range_from_points(cams, torch.zeros(4, 2))
