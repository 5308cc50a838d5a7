"""recon.splat.fit_schedule: resolution schedule, view downsampling, step count, early stop."""

from __future__ import annotations

import pytest
import torch

from recon.splat.fit_schedule import (
    EarlyStop,
    ResolutionSchedule,
    auto_iterations,
    downsample_view,
)
from recon.splat.rasterize import rasterization


def test_resolution_schedule():
    s = ResolutionSchedule()
    assert [s.scale_at(i, 100) for i in (0, 29, 30, 99, 150)] == [0.5, 0.5, 1.0, 1.0, 1.0]
    s3 = ResolutionSchedule(scales=(0.25, 0.5, 1.0), fractions=(0.1, 0.3, 1.0))
    assert [s3.scale_at(i, 100) for i in (5, 15, 50)] == [0.25, 0.5, 1.0]
    for bad in ({"scales": (0.5,), "fractions": (0.3, 1.0)}, {"scales": (0.0, 1.0)}, {"fractions": (0.5, 0.9)}):
        with pytest.raises(ValueError):
            ResolutionSchedule(**bad)


def test_downsample_view_keeps_the_scene_aligned(scene):
    # a render at half resolution with the scaled intrinsics ~= the full render averaged 2x2
    s = scene(n=30, width=48, height=40, seed=8, sigma_px=(2.0, 5.0))
    full, _, _ = rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], 48, 40)
    small_gt, K2, w, h = downsample_view(full, s["Ks"], 0.5)
    assert (w, h) == (24, 20) and small_gt.shape == (1, 20, 24, 3)
    half, _, _ = rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], K2, w, h)
    assert (half - small_gt).abs().mean() < 0.03  # same image, blurred differently
    img, K1, w1, h1 = downsample_view(full, s["Ks"], 1.0)
    assert img is full and torch.equal(K1, s["Ks"]) and (w1, h1) == (48, 40)


def test_auto_iterations():
    assert auto_iterations(8, 100_000) == 2500
    assert auto_iterations(4, 20_000) == 1100
    assert auto_iterations(60, 100_000) == 15_500
    assert auto_iterations(1, 0) == 1000 and auto_iterations(1000, 10**7) == 30_000
    with pytest.raises(ValueError):
        auto_iterations(0, 10)


def test_early_stop():
    stop = EarlyStop(patience=3, min_rel_improvement=0.01, min_fraction=0.5)
    state = stop.initialize_state(n_views=4, iterations=200)
    decisions = []
    for step in range(200):
        epoch = step // 4
        loss = 1.0 / (1 + epoch) if epoch < 20 else 1.0 / 21 + 0.001 * (step % 4)  # flat after 20 epochs
        decisions.append(stop.update(state, step, loss))
    first = decisions.index(True)
    assert first + 1 == state["stopped_at"] and first + 1 >= 100  # not before min_fraction
    assert state["since_best"] >= 3
    keep_going = EarlyStop(patience=3)
    st = keep_going.initialize_state(2, 100)
    assert not any(keep_going.update(st, i, 1.0 / (i + 1)) for i in range(100))  # always improving
