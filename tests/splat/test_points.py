"""Initialisation helpers: look-at centre, scene bounds, statistical outlier (floater) removal."""

from __future__ import annotations

import pytest
import torch

from recon.splat.points import look_at_centre, statistical_outliers


def _w2c_looking_at_origin(centres: torch.Tensor) -> torch.Tensor:
    out = []
    for c in centres:
        fwd = -c / c.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        rot = torch.stack([right, torch.linalg.cross(fwd, right), fwd])
        m = torch.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ c
        out.append(m)
    return torch.stack(out)


def test_look_at_centre_known_answer():
    centres = torch.tensor([[3.0, 0.0, 0.5], [0.0, 3.0, -0.5], [-3.0, 0.0, 0.2], [0.0, -3.0, 0.1]])
    assert torch.allclose(look_at_centre(_w2c_looking_at_origin(centres)), torch.zeros(3), atol=1e-5)


def test_outliers_removes_planted_far_points_and_keeps_the_cluster():
    g = torch.Generator().manual_seed(0)
    cluster = torch.randn(2000, 3, generator=g) * 0.5
    far = torch.tensor([[20.0, 0, 0], [0, -15.0, 0], [0, 0, 30.0], [12.0, 12.0, 0], [-25.0, 5.0, 5.0]])
    pts = torch.cat([cluster, far])
    out = statistical_outliers(pts, k=16, std_ratio=3.0)
    assert out.shape == (2005,) and out.dtype == torch.bool
    assert bool(out[-5:].all())  # every planted floater
    assert int(out[:-5].sum()) < 0.01 * 2000  # at most 1% of the cluster (its sparse fringe)


def test_outliers_threshold_known_answer_and_small_inputs():
    # 1-D points: neighbours' mean distances are 1, 1, 1, 1 and 10 for the last one (k=1)
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0], [13.0, 0, 0]])
    # d = [1, 1, 1, 1, 10]: mean 2.8, std 3.6 -> limit 2.8 + r * 3.6
    assert statistical_outliers(pts, k=1, std_ratio=1.9).tolist() == [False] * 4 + [True]  # 9.64 < 10
    assert not bool(statistical_outliers(pts, k=1, std_ratio=2.1).any())  # 10.36 > 10
    assert statistical_outliers(torch.zeros(2, 3)).tolist() == [False, False]
    assert statistical_outliers(torch.zeros(0, 3)).shape == (0,)


def test_outliers_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        statistical_outliers(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="k"):
        statistical_outliers(torch.zeros(10, 3), k=0)
    with pytest.raises(ValueError, match="std_ratio"):
        statistical_outliers(torch.zeros(10, 3), std_ratio=-1.0)
