"""A learning-rate decay whose state holds Python floats only.

nerfstudio's ``ExponentialDecayScheduler`` computes its factor with numpy, so ``numpy.float64``
values end up in the optimiser's ``lr`` and the scheduler's ``_last_lr``. torch >= 2.6 loads
checkpoints with ``weights_only=True`` by default, and nerfstudio 1.1.5's ``eval_setup`` (used by
``ns-eval``, ``ns-export``, ``ns-viewer``) then refuses such a checkpoint
("Unsupported global: numpy.core.multiarray.scalar"). This scheduler gives the same decay
(without warmup) with ``float`` values, so our checkpoints load with the stock tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Type

from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler

__all__ = ["ExponentialDecayConfig", "ExponentialDecay"]


@dataclass
class ExponentialDecayConfig(SchedulerConfig):
    """Exponential decay from the optimiser's rate to ``lr_final`` over ``max_steps``, then constant."""

    _target: Type = field(default_factory=lambda: ExponentialDecay)
    lr_final: Optional[float] = None
    """Final learning rate (None: no decay)."""
    max_steps: int = 30000
    """Steps over which the rate decays."""


class ExponentialDecay(Scheduler):
    """``lr(step) = lr_init * (lr_final / lr_init) ** min(step / max_steps, 1)``, as Python floats."""

    config: ExponentialDecayConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        if self.config.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1, given {self.config.max_steps}")
        lr_final = lr_init if self.config.lr_final is None else self.config.lr_final
        if not (lr_init > 0 and lr_final > 0):
            raise ValueError(f"learning rates: expected > 0, given lr_init={lr_init}, lr_final={lr_final}")
        ratio = float(lr_final) / float(lr_init)
        max_steps = int(self.config.max_steps)

        def factor(step: int) -> float:
            return float(ratio ** min(step / max_steps, 1.0))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
