"""Fewer capture steps for the same quality: a coarse-to-fine resolution schedule, a step count
tied to the numbers of views and Gaussians, and an early stop on the training loss.

Pieces for the capture trainer (``recon.pipelines``) to wire in; each is a dataclass of
hyperparameters with an explicit state dict and hook methods, like ``DensifyStrategy``:

* :class:`ResolutionSchedule` — train at a fraction of the resolution first (``scale_at(step)``
  and ``downsample_view`` give the image, intrinsics and size for a step). Early steps fit
  coarse structure; a 2x smaller image is ~4x fewer pixels to composite and blur.
* :func:`auto_iterations` — steps from the number of training views (epochs per view) and the
  initial Gaussians, clamped.
* :class:`EarlyStop` — stop when the epoch-mean training loss (one epoch = every training view
  once) has not improved by ``min_rel_improvement`` for ``patience`` epochs, never before
  ``min_fraction`` of the planned steps (densification should be over by then).

The ``fewview`` preset (``recon fit``'s default) trains 1000 steps with the first half at half
resolution (``--coarse-to-fine 0.5``); ``--early-stop`` and ``--auto-iterations`` stay opt-in.
docs/benchmarks.md ("Fewer steps for the same quality") records what was measured, on held-out
views too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = ["EarlyStop", "ResolutionSchedule", "auto_iterations", "downsample_view"]


@dataclass
class ResolutionSchedule:
    """Coarse-to-fine training resolution: ``scales[i]`` until ``fractions[i]`` of the run.

    The default trains at 1/2 resolution for the first 30 % of the steps (densification then
    sees half-resolution gradients; its statistics are normalised by the image size, so its
    thresholds keep their meaning), then at full resolution.
    """

    scales: tuple[float, ...] = (0.5, 1.0)
    """Resolution factors, coarse to fine, each in (0, 1]; the last should be 1."""
    fractions: tuple[float, ...] = (0.3, 1.0)
    """Fraction of the run at which each scale ends (increasing, the last 1)."""

    def __post_init__(self) -> None:
        if len(self.scales) != len(self.fractions) or not self.scales:
            raise ValueError(f"scales and fractions: expected equal non-empty lengths, given {self.scales}, {self.fractions}")
        if any(not 0.0 < s <= 1.0 for s in self.scales):
            raise ValueError(f"scales: expected values in (0, 1], given {self.scales}")
        if list(self.fractions) != sorted(self.fractions) or self.fractions[-1] != 1.0:
            raise ValueError(f"fractions: expected increasing values ending at 1, given {self.fractions}")

    def scale_at(self, step: int, iterations: int) -> float:
        """Resolution factor of ``step`` (0-based) in a run of ``iterations`` steps."""
        f = step / max(1, iterations)
        for scale, end in zip(self.scales, self.fractions):
            if f < end:
                return scale
        return self.scales[-1]


def downsample_view(
    image: Tensor,  # [B, H, W, C]
    Ks: Tensor,  # [B, 3, 3]
    scale: float,
) -> tuple[Tensor, Tensor, int, int]:
    """Image (area average) and intrinsics at ``scale`` of the resolution.

    Returns:
        image [B, h, w, C], Ks [B, 3, 3], w, h with ``h = round(H * scale)``; the intrinsics
        follow the pixel-edge convention of the rasteriser (pixel centres at +0.5), so the
        same scene point lands on the same fraction of the image.
    """
    if image.dim() != 4 or Ks.shape != (image.shape[0], 3, 3):
        raise ValueError(f"image [B, H, W, C] and Ks [B, 3, 3] expected, given {list(image.shape)}, {list(Ks.shape)}")
    if scale == 1.0:
        return image, Ks, image.shape[2], image.shape[1]
    H, W = image.shape[1:3]
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    small = F.interpolate(image.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1).contiguous()
    K = Ks.clone()
    K[:, 0] *= w / W  # fx, cx (and the skew entry, 0)
    K[:, 1] *= h / H  # fy, cy
    return small, K, w, h


def auto_iterations(
    n_views: int,
    n_gaussians: int,
    epochs: float = 250.0,
    per_100k_gaussians: float = 500.0,
    minimum: int = 1000,
    maximum: int = 30_000,
) -> int:
    """Steps for a capture fit: ``epochs`` passes over the training views, plus
    ``per_100k_gaussians`` per 100k initial Gaussians (more to place), clamped.

    The defaults give 2500 steps for 8 views and 100k Gaussians (today's default is 3000 for
    any number of views), 1500 for 4 views and 20k Gaussians, and 15000 for 60 views.
    """
    if n_views < 1 or n_gaussians < 0:
        raise ValueError(f"n_views >= 1 and n_gaussians >= 0 expected, given {n_views}, {n_gaussians}")
    steps = epochs * n_views + per_100k_gaussians * n_gaussians / 100_000
    return int(min(maximum, max(minimum, round(steps))))


@dataclass
class EarlyStop:
    """Stop when the training loss has stopped improving.

    The loss of one view is noisy and differs between views, so the signal is the mean loss over
    an epoch (``n_views`` consecutive steps, every view once with the trainer's epoch order).
    Usage::

        stopper = EarlyStop()
        state = stopper.initialize_state(n_views=8, iterations=3000)
        for step in ...:
            loss = train_step(...)
            if stopper.update(state, step, loss):
                break
    """

    patience: int = 20
    """Epochs without a relative improvement of ``min_rel_improvement`` before stopping."""
    min_rel_improvement: float = 0.005
    """Relative decrease of the best epoch-mean loss that counts as progress."""
    min_fraction: float = 0.85
    """Never stop before this fraction of the planned steps (keep it after densification)."""

    def initialize_state(self, n_views: int, iterations: int) -> dict[str, Any]:
        if n_views < 1 or iterations < 1:
            raise ValueError(f"n_views and iterations: expected >= 1, given {n_views}, {iterations}")
        return {"n_views": n_views, "iterations": iterations, "sum": 0.0, "n": 0, "best": math.inf,
                "since_best": 0, "epochs": 0, "stopped_at": None}  # fmt: skip

    def update(self, state: dict[str, Any], step: int, loss: float) -> bool:
        """Record the loss of ``step``; True when training should stop after it."""
        state["sum"] += float(loss)
        state["n"] += 1
        if state["n"] < state["n_views"]:
            return False
        mean = state["sum"] / state["n"]
        state["sum"], state["n"] = 0.0, 0
        state["epochs"] += 1
        if mean < state["best"] * (1.0 - self.min_rel_improvement):
            state["best"] = mean
            state["since_best"] = 0
        else:
            state["since_best"] += 1
        stop = state["since_best"] >= self.patience and step + 1 >= self.min_fraction * state["iterations"]
        if stop and state["stopped_at"] is None:
            state["stopped_at"] = step + 1
        return stop

