"""Training: one loop for every trainer (checkpoints, exact resume, log, progress, a clean stop),
the learning-rate schedule and the seeding every trainer shares.

Layering: below the trainers (``recon.splat.trainer``, ``recon.ct.*_trainer``), which use its
schedules and seeding; the loop itself knows trainers only through the :class:`Trainer`
interface. Pipelines drive trainers with :func:`train`.
"""

from recon.train.loop import CHECKPOINT_FORMAT, Interrupted, ProgressFn, Trainer, read_checkpoint, train
from recon.train.schedule import exponential_decay, set_learning_rate
from recon.train.seed import rng_state, seed_everything, set_rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "Interrupted",
    "ProgressFn",
    "Trainer",
    "exponential_decay",
    "read_checkpoint",
    "rng_state",
    "seed_everything",
    "set_learning_rate",
    "set_rng_state",
    "train",
]
