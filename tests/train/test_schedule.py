"""recon.train.schedule: the one exponential decay and setting learning rates."""

from __future__ import annotations

import pytest
import torch

from recon.train.schedule import exponential_decay, set_learning_rate


def test_exponential_decay_endpoints_and_midpoint():
    assert exponential_decay(0.5, 0, 100, 0.1) == pytest.approx(0.5)
    assert exponential_decay(0.5, 50, 100, 0.1) == pytest.approx(0.5 * 0.1**0.5)
    assert exponential_decay(0.5, 100, 100, 0.1) == pytest.approx(0.05)
    assert exponential_decay(0.5, 3, 0, 0.1) == pytest.approx(0.5 * 0.1**3)  # n_steps < 1 counts as 1


def test_exponential_decay_matches_torch_exponential_lr():
    """Same schedule as ExponentialLR with gamma = ratio ** (1 / n) (what the pose refiner used)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / 40))
    for step in range(40):
        assert opt.param_groups[0]["lr"] == pytest.approx(exponential_decay(1e-3, step, 40, 0.01), rel=1e-9)
        opt.step()
        sched.step()


def test_set_learning_rate_sets_every_group_of_every_optimizer():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    o1 = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    o2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    set_learning_rate([o1, o2], 0.25)
    assert [g["lr"] for g in o1.param_groups + o2.param_groups] == [0.25, 0.25, 0.25]
    set_learning_rate(o2, 0.5)
    assert o2.param_groups[0]["lr"] == 0.5
