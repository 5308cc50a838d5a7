"""Pieces shared by the projection-domain optimisers (radiative Gaussians, TV on voxels).

* :func:`initial_volume`: FDK/FBP (Parker weights on short scans), optionally followed by a few
  OS-SART iterations -- the starting point of both methods.
* :func:`projection_loss`: L1 + ``lambda_dssim`` D-SSIM between rendered and measured
  projections (R2-Gaussian's data term).
* :class:`ViewBatches`: fixed interleaved view groups (views k, k + n, k + 2n, ...: spread in
  angle, and the projector's ray tables stay cached), visited in a random order per epoch.
* :class:`ProjectionTrainer`: the set-up every such trainer shares (normalised projections, the
  projector, seeding, view batches, the starting volume, ``fit``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.geometry.ct import CTGeometry
from recon.ct.project import Projector
from recon.errors import InputError
from recon.metrics import ssim
from recon.train import seed_everything, train

__all__ = ["ProjectionTrainer", "ViewBatches", "checked_projections", "coverage_is_short", "initial_volume", "projection_loss"]


def checked_projections(projections: Tensor | np.ndarray, geometry: CTGeometry) -> tuple[Tensor, float]:  # [V, v, u]
    """Validate [V, v, u] line integrals against ``geometry``; returns (projections / scale as
    float32, scale = their largest absolute value, 1 if all are zero)."""
    if not isinstance(geometry, CTGeometry):
        raise InputError("geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
    b = torch.as_tensor(np.asarray(projections) if not isinstance(projections, Tensor) else projections).float()
    if tuple(b.shape) != geometry.projection_shape:
        raise InputError("projections", f"expected shape {list(geometry.projection_shape)} (views, v, u), got {list(b.shape)}")
    if not torch.isfinite(b).all():
        raise InputError("projections", "contains NaN/inf")
    scale = float(b.abs().max()) or 1.0
    return b / scale, scale


def coverage_is_short(geometry: CTGeometry) -> bool:
    """True when the scan covers less than a full turn (FDK then needs Parker weights)."""
    from recon.ct.analytic import view_weights

    if geometry.mode == "parallel":
        return False
    return view_weights(geometry)[1] == "short"


def initial_volume(
    projections: Tensor,  # [V, v, u]
    geometry: CTGeometry,
    *,
    init: str = "sart",
    filter: str = "hann",
    sart_iterations: int = 5,
    projector: Projector | None = None,
) -> Tensor:  # [Z, Y, X], >= 0
    """FDK/FBP with the ``filter`` window; with ``init == "sart"`` then ``sart_iterations`` of
    OS-SART (5 subsets) started from it."""
    from recon.ct.analytic import fdk

    short = "parker" if coverage_is_short(geometry) else "error"
    vol = fdk(projections, geometry, filter=filter, short_scan=short, num_threads=None).clamp_min(0)
    if init == "sart" and sart_iterations > 0:
        from recon.ct.sart import os_sart

        vol = os_sart(projections, geometry, sart_iterations, n_subsets=min(5, geometry.n_views), init=vol, projector=projector, num_threads=None)
    return vol.clamp_min(0)


def projection_loss(pred: Tensor, gt: Tensor, lambda_dssim: float) -> tuple[Tensor, Tensor]:  # [C, H, W] each
    """L1 + ``lambda_dssim`` (1 - SSIM) between rendered and measured projections; returns
    (loss, l1). SSIM uses the measured views' range: it is the SSIM of both divided by that
    range, which float32 CPU tensors of at least 11x11 pixels get from the fused numba kernels of
    :mod:`recon.splat.ssim_cpu` (~5x faster than the ``conv2d`` twin, :func:`recon.metrics.ssim`,
    which every other tensor uses; tests compare the two)."""
    l1 = (pred - gt).abs().mean()
    loss = l1
    if lambda_dssim > 0:
        rng = float(gt.max() - gt.min()) or 1.0
        if pred.device.type == "cpu" and pred.dtype == torch.float32 and min(pred.shape[-2:]) >= 11:
            from recon.splat import ssim_cpu  # numba: imported only when used

            s = ssim_cpu.ssim((pred / rng)[..., None], (gt.to(torch.float32) / rng)[..., None])
        else:
            s = ssim(pred[..., None], gt[..., None], data_range=rng)
        loss = loss + lambda_dssim * (1.0 - s.mean())
    return loss, l1


class ViewBatches:
    """Batches of about ``batch_views`` views: ``ceil(V / batch_views)`` interleaved groups,
    each epoch in a fresh random order drawn from ``rng``. ``order`` (the groups left in this
    epoch) is the state a checkpoint saves."""

    def __init__(self, n_views: int, batch_views: int, rng: np.random.Generator) -> None:
        from recon.ct.sart import subset_order

        self.n_groups = math.ceil(n_views / min(batch_views, n_views))
        self.groups = [tuple(int(v) for v in g) for g in subset_order(n_views, self.n_groups)]
        self.rng = rng
        self.order: list[int] = []

    def next(self) -> tuple[int, ...]:
        if not self.order:
            self.order = [int(v) for v in self.rng.permutation(self.n_groups)]
        return self.groups[self.order.pop()]


class ProjectionTrainer:
    """What the projection-domain trainers (:class:`recon.ct.gaussian_trainer.GaussianTrainer`,
    :class:`recon.ct.tv_trainer.TVTrainer`) share; they implement :class:`recon.train.Trainer`.

    Args:
        projections: [V, v, u] line integrals (stored as ``b`` = projections / ``scale``).
        geometry: the scan (``projections.shape == geometry.projection_shape``).
        config: hyperparameters with ``validate()``, ``seed``, ``batch_views``, ``iterations``,
            ``init``, ``init_filter``, ``init_sart_iterations``.
        num_threads: CPU threads policy (see :func:`recon.ct.project.torch_threads`).
    """

    def __init__(self, projections: Tensor | np.ndarray, geometry: CTGeometry, config: Any, *, num_threads: int | str | None = "auto") -> None:
        config.validate()
        self.config = config
        self.b, self.scale = checked_projections(projections, geometry)  # [V, v, u] normalised, and the scale
        self.geometry = geometry
        self.num_threads = num_threads
        self.projector = Projector(geometry, num_threads=None)
        seed_everything(config.seed)
        self.step = 0
        self.history: list[dict] = []
        self._rng = np.random.default_rng(config.seed)
        self._batches = ViewBatches(geometry.n_views, config.batch_views, self._rng)
        self.init_description = "checkpoint"

    def starting_volume(self, init_volume: Tensor | np.ndarray | None) -> Tensor:  # -> [Z, Y, X], in units of ``scale``, >= 0
        """The given volume (1/mm) or ``config.init``'s (FDK, or FDK + OS-SART); sets ``init_description``."""
        cfg = self.config
        if init_volume is None:
            vol = initial_volume(self.b, self.geometry, init=cfg.init, filter=cfg.init_filter, sart_iterations=cfg.init_sart_iterations, projector=self.projector)
            self.init_description = f"{cfg.init}" + (f" ({cfg.init_sart_iterations} OS-SART iterations)" if cfg.init == "sart" else f" ({cfg.init_filter})")
        else:
            vol = torch.as_tensor(np.asarray(init_volume) if not isinstance(init_volume, Tensor) else init_volume).float() / self.scale
            if tuple(vol.shape) != self.geometry.n_voxel:
                raise InputError("init_volume", f"expected shape {list(self.geometry.n_voxel)} (z, y, x), got {list(vol.shape)}")
            self.init_description = "given volume"
        return vol.clamp_min(0)

    def sampling_state(self) -> dict[str, Any]:
        """The view order and the trainer's generator, for :meth:`state_dict`."""
        return {"order": list(self._batches.order), "rng": self._rng.bit_generator.state}

    def load_sampling_state(self, state: dict[str, Any]) -> None:
        self._batches.order = [int(v) for v in state["order"]]
        self._rng.bit_generator.state = state["rng"]

    def volume(self) -> Tensor:  # [Z, Y, X] attenuation (1/mm)
        raise NotImplementedError

    def fit(self, **loop_options: Any) -> Tensor:
        """Train to ``config.iterations`` steps with :func:`recon.train.train` (in memory unless
        ``run=`` is given; other keywords are the loop's) and return :meth:`volume`."""
        from recon.ct.project import torch_threads

        with torch_threads(self.num_threads):
            train(self, self.config.iterations, **loop_options)  # type: ignore[arg-type]
        return self.volume()
