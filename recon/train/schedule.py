"""Learning-rate schedules: the one exponential decay every trainer uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["exponential_decay", "set_learning_rate"]


def exponential_decay(base: float, step: int, n_steps: int, final_ratio: float) -> float:
    """``base`` decayed exponentially from step 0 to ``base * final_ratio`` at ``n_steps``:
    ``base * final_ratio ** (step / n_steps)`` (3DGS's means schedule, R2-Gaussian's, Adam's in
    the TV method). ``n_steps < 1`` counts as 1."""
    return base * final_ratio ** (step / max(1, n_steps))


def set_learning_rate(optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer], lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optimizers``."""
    opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr
