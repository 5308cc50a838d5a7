"""Tests for recon.geometry.view_selection: deterministic, spread, disjoint view selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from recon.geometry.cameras import CameraSet, Intrinsics
from recon.errors import InputError
from recon.io.formats import load_capture
from recon.geometry.view_selection import farthest_point_views, split_views


def cameras_at(centres: torch.Tensor) -> CameraSet:
    """Identity-rotation cameras at the given centres (w2c translation = -centre)."""
    w2c = torch.eye(4).repeat(len(centres), 1, 1)
    w2c[:, :3, 3] = -centres
    return CameraSet(w2c, [Intrinsics(10.0, 10.0, 5.0, 5.0, 10, 10)] * len(centres))


def min_pairwise(centres: torch.Tensor, idx) -> float:
    p = centres[list(idx)].double()
    d = torch.cdist(p, p)
    d.fill_diagonal_(float("inf"))
    return d.min().item()


def test_fps_known_answer_on_a_line():
    centres = torch.tensor([[float(x), 0.0, 0.0] for x in range(11)])  # 0..10, centroid at 5
    assert farthest_point_views(centres, 1) == [5]
    assert farthest_point_views(centres, 3) == [5, 0, 10]  # tie 0 vs 10 -> lower index first
    assert farthest_point_views(centres, 5) == [5, 0, 10, 2, 7]  # ties -> lowest index
    assert farthest_point_views(centres, 3, start=0) == [0, 10, 5]
    assert sorted(farthest_point_views(centres, 11)) == list(range(11))


def test_fps_duplicates_and_prefix():
    centres = torch.zeros(4, 3)
    assert farthest_point_views(centres, 4) == [0, 1, 2, 3]  # all tied: distinct, in index order
    pts = torch.randn(30, 3)
    assert farthest_point_views(pts, 8)[:4] == farthest_point_views(pts, 4)


@pytest.mark.parametrize(
    "centres,k,start",
    [
        (torch.zeros(5, 2), 2, None),
        (torch.zeros(5, 3), 0, None),
        (torch.zeros(5, 3), 6, None),
        (torch.zeros(5, 3), True, None),
        (torch.zeros(5, 3), 2, 5),
        (torch.full((5, 3), float("nan")), 2, None),
    ],
)
def test_fps_bad_input(centres, k, start):
    with pytest.raises(ValueError):
        farthest_point_views(centres, k, start)


def test_fox_deterministic_and_spread(fox_dir):
    cap = load_capture(fox_dir)
    centres = cap.cameras.centres()
    rng = np.random.default_rng(0)
    for k in (3, 4, 6, 8):
        picks = farthest_point_views(centres, k)
        assert picks == farthest_point_views(centres.clone(), k) and len(set(picks)) == k
        ours = min_pairwise(centres, picks)
        random = [min_pairwise(centres, rng.choice(len(cap), k, replace=False)) for _ in range(200)]
        assert ours > np.percentile(random, 90), (k, ours, np.percentile(random, 90))
    train, evals = split_views(cap, 4)
    assert (train, evals) == split_views(cap, 4)
    assert len(train) == 4 and len(evals) == 8 and not set(train) & set(evals)
    assert train == sorted(farthest_point_views(centres, 4))


def test_split_explicit_and_counts():
    cams = cameras_at(torch.randn(12, 3))
    train, evals = split_views(cams, [7, 2, 5], n_eval=4)
    assert train == [2, 5, 7] and len(evals) == 4 and not set(train) & set(evals)
    assert all(0 <= i < 12 for i in evals)
    train, evals = split_views(cams, 12, n_eval=0)
    assert train == list(range(12)) and evals == []


def test_split_few_left_warns(caplog):
    cams = cameras_at(torch.randn(6, 3))
    with caplog.at_level(logging.WARNING, logger="recon.geometry.view_selection"):
        train, evals = split_views(cams, 4, n_eval=8)
    assert len(evals) == 2 and sorted(train + evals) == list(range(6))
    assert "only 2 views" in caplog.text


@pytest.mark.parametrize(
    "train,n_eval,match",
    [
        (0, 8, "asks for 0 views"),
        (7, 8, "asks for 7 views but the capture has 6"),
        ([1, 6], 8, "index 6 is out of range"),
        ([-1], 8, "index -1 is out of range"),
        ([1, 2, 1], 8, "repeats view 1"),
        ([], 8, "is empty"),
        ([1.5], 8, "integer"),
        (6, 1, "leaving none to evaluate"),
        (2, -1, "n_eval"),
    ],
)
def test_split_errors(train, n_eval, match):
    cams = cameras_at(torch.randn(6, 3))
    with pytest.raises(InputError, match=match):
        split_views(cams, train, n_eval=n_eval)
