"""Seeding and the global random state (torch, numpy, Python) as a checkpoint can hold it.

Trainers draw their own random choices from generators they own and save (``state_dict``);
what still comes from the global generators (torch's default generator in densification noise
and dropout, numpy's legacy one in third-party code) is saved by the training loop with
:func:`rng_state` and restored with :func:`set_rng_state`, so a resumed run continues the same
random sequence. The state holds only tensors and plain Python values, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's (legacy global) and torch's default generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global random state: ``{"torch": uint8 tensor, "numpy": {...}, "python": [...]}``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [int(version), list(internal), gauss],
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
