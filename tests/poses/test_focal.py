"""Tests for recon.poses.focal: relative poses, triplet cycle errors, the focal-length search."""

from __future__ import annotations

import numpy as np
import pytest

from recon.poses.focal import consistent_pairs, cycle_errors_deg, relative_poses, search_focal

W, H, F_TRUE = 640, 480, 560.0


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _scene(n_views=3, n_points=300, seed=0):
    """Cameras on an arc looking at a point cloud; exact projections, matches by index."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (n_points, 3))
    kps, keep = [], np.ones(n_points, bool)
    for i in range(n_views):
        r = _rot([0.1, 1, 0.05], -30 + 60 * i / max(1, n_views - 1))  # 30 deg apart (3 views)
        t = np.array([0.0, 0.0, 4.0])
        xc = pts @ r.T + t
        uv = F_TRUE * xc[:, :2] / xc[:, 2:] + [W / 2, H / 2]
        keep &= (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
        kps.append(uv + rng.normal(0, 0.3, uv.shape))
    idx = np.flatnonzero(keep)
    matches = {(a, b): np.stack([idx, idx], 1) for a in range(n_views) for b in range(a + 1, n_views)}
    return kps, matches


def test_cycle_error_is_small_at_the_true_focal_and_grows_away_from_it():
    kps, matches = _scene()
    at = {f: cycle_errors_deg(relative_poses(kps, matches, W, H, f)) for f in (400.0, F_TRUE, 800.0)}
    assert all(len(e) == 1 for e in at.values())
    assert at[F_TRUE][0] < 0.3
    assert at[400.0][0] > 1.0 and at[800.0][0] > 1.0  # 30 deg baselines: 1.5 deg at -29 %


def test_search_focal_known_answer():
    kps, matches = _scene()
    res = search_focal(kps, matches, W, H)
    assert res.focal_px == pytest.approx(F_TRUE, rel=0.03)
    assert res.n_triplets == 1 and res.cycle_deg < 0.5
    assert len(res.scores) > 10 and all(f > 0 for f, _ in res.scores)
    # With a prior (EXIF) the search stays around it and finds the same answer.
    res2 = search_focal(kps, matches, W, H, centre_px=500.0)
    assert res2.focal_px == pytest.approx(F_TRUE, rel=0.03)
    assert min(f for f, _ in res2.scores) >= 500.0 * 0.74


def test_search_focal_without_a_triplet_is_undecided():
    kps, matches = _scene()
    two = {(0, 1): matches[(0, 1)]}  # one pair: any focal length fits it
    res = search_focal(kps, two, W, H)
    assert res.focal_px is None and res.n_triplets == 0


def test_consistent_pairs_drops_a_pair_outside_closing_triplets():
    kps, matches = _scene(n_views=4)
    pairs = relative_poses(kps, matches, W, H, F_TRUE)
    assert len(consistent_pairs(pairs)) == 6
    # Corrupt every pair touching view 3: no triplet with view 3 closes any more.
    for ab in [(0, 3), (1, 3), (2, 3)]:
        pairs[ab].rot_b_from_a = pairs[ab].rot_b_from_a @ _rot([1, 0, 0], 30)
    kept = consistent_pairs(pairs)
    assert set(kept) == {(0, 1), (1, 2), (0, 2)}


def test_relative_poses_needs_min_inliers():
    kps, matches = _scene()
    few = {ab: m[:10] for ab, m in matches.items()}
    assert relative_poses(kps, few, W, H, F_TRUE, min_inliers=30) == {}
