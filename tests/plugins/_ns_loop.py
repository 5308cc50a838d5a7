"""nerfstudio's training iteration (``Trainer.train_iteration`` and its callbacks), in process,
for the plugin tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import torch
from nerfstudio.engine.callbacks import (
    TrainingCallbackAttributes,
    TrainingCallbackLocation,
)
from nerfstudio.engine.optimizers import Optimizers


def ns_callbacks(pipe, config, max_num_iterations: int | None):
    """Optimizers for ``pipe``'s parameter groups and the pipeline's training callbacks (what
    ``Trainer.setup`` builds); ``max_num_iterations=None`` gives the callbacks no trainer."""
    optimizers = Optimizers(copy.deepcopy(config.optimizers), pipe.get_param_groups())
    trainer = (
        None
        if max_num_iterations is None
        else SimpleNamespace(
            config=SimpleNamespace(max_num_iterations=max_num_iterations)
        )
    )
    attrs = TrainingCallbackAttributes(
        optimizers=optimizers, grad_scaler=None, pipeline=pipe, trainer=trainer
    )
    return optimizers, pipe.get_training_callbacks(attrs)


def finite_with_gaussians(loss: torch.Tensor, metrics: dict) -> None:
    """A ``check`` for :func:`ns_train_steps`: the loss is finite and Gaussians remain."""
    assert torch.isfinite(loss) and int(metrics["gaussian_count"]) > 0


def ns_train_steps(
    pipe,
    config,
    n_steps: int,
    max_num_iterations: int | None = None,
    schedulers: bool = True,
    check: Callable[[torch.Tensor, dict], None] | None = None,
):
    """Run ``n_steps`` training iterations; ``check(loss, metrics)`` after each.
    Returns ``(optimizers, losses)`` with ``losses`` a list of ``n_steps`` floats."""
    optimizers, callbacks = ns_callbacks(pipe, config, max_num_iterations)
    losses = []
    for step in range(n_steps):
        pipe.train()
        for cb in callbacks:
            cb.run_callback_at_location(
                step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION
            )
        optimizers.zero_grad_all()
        _, loss_dict, metrics = pipe.get_train_loss_dict(step)
        loss = sum(loss_dict.values())
        loss.backward()
        optimizers.optimizer_step_all()
        if schedulers:
            optimizers.scheduler_step_all(step)
        for cb in callbacks:
            cb.run_callback_at_location(
                step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION
            )
        if check is not None:
            check(loss, metrics)
        losses.append(loss.item())
    return optimizers, losses
