"""Triangulation of SIFT matches between posed views: epipolar geometry, a textured plane seen by
three cameras (known answer: the points lie on the plane), bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.splat.triangulate import (
    TriangulationConfig,
    fundamental_from_poses,
    triangulate_views,
)

from ._plane_scene import H, W, calibration, cameras_at, random_texture, render_plane


def test_fundamental_matrix_annihilates_corresponding_pixels():
    cams = cameras_at([[0.3, 0.2, -3.0], [1.5, -0.4, -2.6]])
    w2c, K = cams.w2c.double().numpy(), calibration()
    X = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    xs = []
    for m in w2c:
        h = (K @ m[:3] @ np.c_[X, np.ones(50)].T).T
        xs.append(np.c_[h[:, :2] / h[:, 2:], np.ones(50)])
    Fm = fundamental_from_poses(w2c[0], K, w2c[1], K)
    resid = np.abs(np.sum(xs[1] * (xs[0] @ Fm.T), axis=1)) / np.linalg.norm(Fm)
    assert resid.max() < 1e-9
    assert np.linalg.matrix_rank(Fm, tol=1e-9 * np.abs(Fm).max()) == 2


def test_textured_plane_points_lie_on_the_plane():
    cams = cameras_at([[0.0, 0.0, -3.0], [0.9, 0.1, -2.85], [-0.3, 0.8, -2.9]])
    images = render_plane(cams, random_texture(1), half=1.2)
    tri = triangulate_views(cams, images, TriangulationConfig(min_angle_deg=1.0))
    assert tri.points.shape[1] == 3 and tri.colours.shape == tri.points.shape
    assert len(tri.points) > 200, tri.pair_counts
    assert set(tri.pair_counts) == {(0, 1), (0, 2), (1, 2)}
    z = tri.points[:, 2].abs()
    assert float(z.median()) < 0.005 and float((z < 0.03).float().mean()) > 0.97  # on z = 0
    assert float(tri.points[:, :2].abs().max()) < 1.25  # inside the square
    assert float(tri.colours.min()) >= 0 and float(tri.colours.max()) <= 1


def test_angle_threshold_rejects_narrow_baselines():
    cams = cameras_at([[0.0, 0.0, -3.0], [0.02, 0.0, -3.0]])  # rays ~0.4 degrees apart
    images = render_plane(cams, random_texture(2), half=1.2)
    assert len(triangulate_views(cams, images, TriangulationConfig(min_angle_deg=2.0)).points) == 0


def test_bad_input():
    cams = cameras_at([[0.0, 0.0, -3.0], [1.0, 0.0, -3.0]])
    with pytest.raises(ValueError, match="3 images for 2 cameras"):
        triangulate_views(cams, torch.zeros(3, H, W, 3))
    with pytest.raises(ValueError, match=r"\[V, H, W, 3\]"):
        triangulate_views(cams, torch.zeros(2, H, W))
    empty = triangulate_views(cams, torch.zeros(2, H, W, 3))  # no texture, no features
    assert empty.points.shape == (0, 3) and empty.colours.shape == (0, 3)
