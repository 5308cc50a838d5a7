"""recon_nerfstudio.schedulers: float-only exponential decay bound to the trainer's horizon."""

from __future__ import annotations

import io
import math

import pytest
import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
from torch import nn

from recon_nerfstudio.schedulers import DecayFactor, ExponentialDecayConfig, bind_schedules


def make_optimizers(**schedulers) -> Optimizers:
    """One Adam (lr 1.0) per keyword, with that scheduler config (None: no scheduler)."""
    config = {name: {"optimizer": AdamOptimizerConfig(lr=1.0), "scheduler": sched} for name, sched in schedulers.items()}
    params = {name: [nn.Parameter(torch.zeros(3))] for name in schedulers}
    return Optimizers(config, params)


def lr(optimizers: Optimizers, name: str) -> float:
    return optimizers.optimizers[name].param_groups[0]["lr"]


def advance(optimizers: Optimizers, n: int) -> None:
    for step in range(n):
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(step)


@pytest.mark.parametrize("max_num_iterations", [10, 40])
def test_decay_follows_bound_horizon(max_num_iterations):
    opts = make_optimizers(a=ExponentialDecayConfig(lr_final=0.01))
    bind_schedules(opts, max_num_iterations)
    advance(opts, max_num_iterations // 2)
    assert lr(opts, "a") == pytest.approx(0.1)  # halfway in log space
    advance(opts, max_num_iterations)
    assert lr(opts, "a") == pytest.approx(0.01)  # then constant
    assert type(lr(opts, "a")) is float


def test_explicit_max_steps_is_kept():
    opts = make_optimizers(a=ExponentialDecayConfig(lr_final=0.01, max_steps=4))
    bind_schedules(opts, 100)
    advance(opts, 4)
    assert lr(opts, "a") == pytest.approx(0.01)


def test_unbound_horizon_raises_on_first_step():
    opts = make_optimizers(a=ExponentialDecayConfig(lr_final=0.01))
    assert lr(opts, "a") == 1.0
    with pytest.raises(RuntimeError, match="horizon not bound"):
        advance(opts, 1)


def test_lr_scale_is_applied_once_and_kept():
    opts = make_optimizers(means=ExponentialDecayConfig(lr_final=0.1), other=None)
    bind_schedules(opts, 10, {"means": 2.0})
    bind_schedules(opts, 10, {"means": 2.0})  # idempotent
    assert lr(opts, "means") == pytest.approx(2.0) and lr(opts, "other") == 1.0
    advance(opts, 10)
    assert lr(opts, "means") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="other"):
        bind_schedules(opts, 10, {"other": 2.0})
    with pytest.raises(ValueError, match="max_steps"):
        bind_schedules(opts, 0)


def test_state_round_trips_through_weights_only_checkpoint():
    opts = make_optimizers(a=ExponentialDecayConfig(lr_final=0.01))
    bind_schedules(opts, 20, {"a": 3.0})
    advance(opts, 5)
    buffer = io.BytesIO()
    torch.save({"schedulers": {k: s.state_dict() for k, s in opts.schedulers.items()},
                "optimizers": {k: o.state_dict() for k, o in opts.optimizers.items()}}, buffer)  # fmt: skip
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["schedulers"]["a"]["lr_lambdas"][0] == {"ratio": 0.01, "max_steps": 20, "follow_trainer": True, "lr_scale": 3.0}
    fresh = make_optimizers(a=ExponentialDecayConfig(lr_final=0.01))
    fresh.load_optimizers(saved["optimizers"])
    fresh.load_schedulers(saved["schedulers"])
    advance(opts, 5)
    advance(fresh, 5)
    assert lr(fresh, "a") == pytest.approx(lr(opts, "a")) == pytest.approx(3.0 * 0.01 ** (10 / 20))


def test_bad_config():
    with pytest.raises(ValueError, match="max_steps"):
        make_optimizers(a=ExponentialDecayConfig(lr_final=0.01, max_steps=0))
    with pytest.raises(ValueError, match="learning rates"):
        make_optimizers(a=ExponentialDecayConfig(lr_final=-1.0))
    assert DecayFactor(0.5, 2)(1) == pytest.approx(math.sqrt(0.5))
