"""A learning-rate decay whose state holds Python floats only, bound to the trainer's horizon.

nerfstudio's ``ExponentialDecayScheduler`` computes its factor with numpy, so ``numpy.float64``
values end up in the optimiser's ``lr`` and the scheduler's ``_last_lr``. torch >= 2.6 loads
checkpoints with ``weights_only=True`` by default, and nerfstudio 1.1.5's ``eval_setup`` (used by
``ns-eval``, ``ns-export``, ``ns-viewer``) then refuses such a checkpoint
("Unsupported global: numpy.core.multiarray.scalar"). This scheduler gives the same decay
(without warmup) with ``float`` values, so our checkpoints load with the stock tools.

Horizon: nerfstudio builds schedulers from the optimiser config alone, so a ``max_steps`` fixed in
a method's config would ignore ``--max-num-iterations``. Here ``max_steps=None`` (the default)
means "the trainer's ``max_num_iterations``": the recon models call :func:`bind_schedules` from
``get_training_callbacks``, where nerfstudio hands them the trainer. Stepping an unbound decay
raises. The factor is a callable object (:class:`DecayFactor`), so ``LambdaLR`` saves its fields
(floats, ints, a bool) in checkpoints and a resumed run decays the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Type

from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler

__all__ = ["ExponentialDecayConfig", "ExponentialDecay", "DecayFactor", "bind_schedules"]


@dataclass
class ExponentialDecayConfig(SchedulerConfig):
    """Exponential decay from the optimiser's rate to ``lr_final`` over ``max_steps``, then constant."""

    _target: Type = field(default_factory=lambda: ExponentialDecay)
    lr_final: Optional[float] = None
    """Final learning rate (None: no decay)."""
    max_steps: Optional[int] = None
    """Steps over which the rate decays (None: the trainer's --max-num-iterations)."""


class DecayFactor:
    """``lr_scale * ratio ** min(step / max_steps, 1)``: the multiplier ``LambdaLR`` applies.

    ``max_steps`` is None until :func:`bind_schedules` sets it (when ``follow_trainer``);
    ``lr_scale`` converts a rate given in data units (e.g. voxels) to parameter units.
    """

    def __init__(self, ratio: float, max_steps: Optional[int]):
        self.ratio = float(ratio)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.follow_trainer = max_steps is None
        self.lr_scale = 1.0

    def __call__(self, step: int) -> float:
        if self.max_steps is None:
            if step == 0:  # LambdaLR evaluates step 0 when it is built, before any binding
                return self.lr_scale
            raise RuntimeError(
                "ExponentialDecay: decay horizon not bound (max_steps=None follows the trainer's "
                "max_num_iterations; call recon_nerfstudio.schedulers.bind_schedules, or give max_steps)"
            )
        return self.lr_scale * float(self.ratio ** min(step / self.max_steps, 1.0))


class ExponentialDecay(Scheduler):
    """``lr(step) = lr_init * (lr_final / lr_init) ** min(step / max_steps, 1)``, as Python floats."""

    config: ExponentialDecayConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        if self.config.max_steps is not None and self.config.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1 or None, given {self.config.max_steps}")
        lr_final = lr_init if self.config.lr_final is None else self.config.lr_final
        if not (lr_init > 0 and lr_final > 0):
            raise ValueError(f"learning rates: expected > 0, given lr_init={lr_init}, lr_final={lr_final}")
        factor = DecayFactor(float(lr_final) / float(lr_init), self.config.max_steps)
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def bind_schedules(optimizers, max_steps: Optional[int], lr_scales: Optional[Mapping[str, float]] = None) -> None:
    """Bind every :class:`DecayFactor` of nerfstudio ``optimizers`` to the run.

    Args:
        optimizers: nerfstudio ``Optimizers`` (its ``schedulers`` dict, by parameter group).
        max_steps: the trainer's ``max_num_iterations``; set on decays built with ``max_steps=None``
            (None: horizons stay as they are, e.g. without a trainer).
        lr_scales: per parameter group, a multiplier of the configured rate (its decay must be a
            :class:`DecayFactor`; ``ValueError`` otherwise).

    Each group's current rate is recomputed for the scheduler's step, so binding is idempotent and
    also right after a checkpoint was loaded.
    """
    if max_steps is not None and int(max_steps) < 1:
        raise ValueError(f"max_steps: expected >= 1, given {max_steps}")
    lr_scales = dict(lr_scales or {})
    for name, sched in optimizers.schedulers.items():
        factors = [fn for fn in getattr(sched, "lr_lambdas", []) if isinstance(fn, DecayFactor)]
        for fn in factors:
            if fn.follow_trainer and max_steps is not None:
                fn.max_steps = int(max_steps)
            if name in lr_scales:
                fn.lr_scale = float(lr_scales[name])
        if factors:
            lr_scales.pop(name, None)
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
    if lr_scales:
        raise ValueError(
            f"lr_scales: parameter groups {sorted(lr_scales)} have no ExponentialDecay scheduler to carry the scale "
            "(their rates are in data units; give them an ExponentialDecayConfig)"
        )
