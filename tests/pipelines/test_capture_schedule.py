"""The fewer-steps switches of the capture fit wired into the trainer: --coarse-to-fine,
--early-stop, --auto-iterations (the pieces themselves: tests/splat/test_fit_schedule.py)."""

from __future__ import annotations

import json

import pytest

from recon.errors import InputError
from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig
from recon.splat.fit_schedule import EarlyStop, auto_iterations


def _cfg(data, out, **kw) -> CaptureFitConfig:
    base = {
        "data": data, "out": out, "preset": "plain", "train_views": (3,), "eval_views": 1, "downscale": 16.0,
        "iterations": 12, "init_points": 500, "checkpoint_every": 0,
    }  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base)


def test_coarse_to_fine_trains_at_half_resolution_first(small_fox, tmp_path):
    job = _cfg(small_fox, tmp_path / "c", iterations=10, coarse_to_fine=0.4).setup()
    trainer = job.trainer
    W, H = trainer.train.width, trainer.train.height
    sizes = []
    for _ in range(10):
        stats = trainer.train_step()
        sizes.append(stats.get("scale", 1.0))
        # the image the strategy saw this step: its size is what densification normalises by
    assert sizes[:4] == [pytest.approx(round(W * 0.5) / W)] * 4 and sizes[4:] == [1.0] * 6, sizes
    _, _, w, h = trainer._view_at_scale(0)
    assert (w, h) == (W, H)  # step 10 of 10: full resolution


def test_coarse_view_keeps_points_on_the_same_image_fraction(small_fox, tmp_path):
    trainer = _cfg(small_fox, tmp_path / "k", iterations=10, coarse_to_fine=0.5).setup().trainer
    full_K = trainer.train.cameras.Ks()[0]
    gt, Ks, w, h = trainer._view_at_scale(0)
    assert gt.shape == (1, h, w, 3) and w == round(trainer.train.width / 2)
    assert float(Ks[0, 0, 2] / w) == pytest.approx(float(full_K[0, 2] / trainer.train.width), rel=1e-6)
    assert float(Ks[0, 1, 1] / h) == pytest.approx(float(full_K[1, 1] / trainer.train.height), rel=1e-6)


def test_early_stop_ends_the_run_and_is_reported(small_fox, tmp_path):
    out = tmp_path / "e"
    job = _cfg(small_fox, out, iterations=60, early_stop=True).setup()
    job.trainer.stopper = EarlyStop(patience=1, min_rel_improvement=0.9, min_fraction=0.2)  # stops at the first chance
    metrics = job.run()
    stopped = metrics["early_stop"]["stopped_at"]
    assert stopped is not None and 12 <= stopped < 60, metrics["early_stop"]
    assert metrics["iterations"] == stopped
    assert RunDir(out).is_complete()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["early_stop"] == {"stopped_at": stopped, "planned": 60}


def test_early_stop_state_survives_a_checkpoint(small_fox, tmp_path):
    job = _cfg(small_fox, tmp_path / "s", iterations=30, early_stop=True).setup()
    for _ in range(7):
        job.trainer.train_step()
    state = job.trainer.state_dict()
    assert state["early_stop"]["epochs"] == 2 and state["iterations"] == 30
    other = _cfg(small_fox, tmp_path / "s2", iterations=30, early_stop=True).setup().trainer
    other.load_state_dict(state)
    assert other.stop_state == state["early_stop"]


def test_auto_iterations_follow_views_and_points(small_fox, tmp_path):
    job = _cfg(small_fox, tmp_path / "a", auto_iterations=True, init_points=500).setup()
    assert job.config.iterations == auto_iterations(3, 500) == 1000  # the floor for 3 views
    assert job.trainer.strategy.stop_iter <= 1000 and job.trainer.stop_state is None


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_coarse_to_fine_fraction_is_checked(small_fox, tmp_path, bad):
    with pytest.raises(InputError, match="--coarse-to-fine"):
        _cfg(small_fox, tmp_path / "b", coarse_to_fine=bad).setup()
