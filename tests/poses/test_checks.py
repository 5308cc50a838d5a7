"""Tests for recon.poses.checks: the per-view confidence and the problems a model is refused for."""

from __future__ import annotations

import math

import pytest

from recon.poses.checks import CheckLimits, ViewStats, reconstruction_problems


def _good(name="a.jpg", **kw):
    base = dict(name=name, n_points=300, reproj_px=0.8, front_fraction=1.0,
                pair_disagreement_deg=0.5, inside_points=False)
    base.update(kw)
    return ViewStats(**base)


def test_good_model_has_no_problems():
    stats = {n: _good(n) for n in ("a.jpg", "b.jpg", "c.jpg")}
    assert reconstruction_problems(stats, 1400.0, 1080, 1920) == {}
    assert stats["a.jpg"].confidence > 0.95


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(n_points=5), "sees only 5 triangulated points"),
        (dict(reproj_px=9.0), "reprojection error 9.0 px"),
        (dict(front_fraction=0.5), "in front of it"),
        (dict(inside_points=True), "inside the reconstructed points"),
        (dict(pair_disagreement_deg=40.0), "disagrees with every two-view estimate"),
    ],
)
def test_each_view_check_fails_the_view(change, expected):
    stats = {"a.jpg": _good("a.jpg"), "b.jpg": _good("b.jpg", **change)}
    problems = reconstruction_problems(stats, 1400.0, 1080, 1920)
    assert list(problems) == ["b.jpg"] and expected in problems["b.jpg"]
    assert stats["b.jpg"].confidence < stats["a.jpg"].confidence


@pytest.mark.parametrize("focal", [100.0, 9000.0])
def test_implausible_focal_fails_the_model(focal):
    problems = reconstruction_problems({"a.jpg": _good()}, focal, 1080, 1920)
    assert "implausible focal length" in problems["*"]


def test_unconfirmed_view_has_half_confidence_and_passes():
    s = _good(pair_disagreement_deg=math.nan)
    assert s.confidence == pytest.approx(0.5)
    assert reconstruction_problems({"a.jpg": s}, 1400.0, 1080, 1920, CheckLimits()) == {}
