"""Total-variation regularised reconstruction on the voxel grid.

The radiative-Gaussian objective with the voxels themselves as the parameters: over ``x >= 0``
(in units of the initial volume's maximum), for batches ``s`` of interleaved views,

    L1(A_s x, b_s) + lambda_dssim * (1 - SSIM(A_s x, b_s)) + lambda_tv * TV(x)

with ``A`` the matched projector, ``b`` the projections scaled to a maximum of 1 and ``TV`` the
anisotropic 3D total variation (:func:`recon.ct.voxelize.tv_3d`, mean absolute forward
difference). Adam (one learning rate for every voxel, decaying exponentially to
``lr_final_ratio`` of it), ``x`` clamped at 0 after each step, initialised like the Gaussian
method (FDK + a few OS-SART iterations). It is a compressed-sensing reconstruction in the family
of ASD-POCS (Sidky & Pan 2008; TIGRE ships it), which alternates SART and TV steepest descent;
here one optimiser takes both terms.

Why it exists: on the sparse-view chest benchmark (``docs/benchmarks.md``) it is the strongest
method we have, faster and better than the Gaussians, and the yardstick any representation has
to beat.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recon.geometry.ct import CTGeometry
from recon.ct.objective import ProjectionTrainer, projection_loss
from recon.ct.project import torch_threads
from recon.ct.voxelize import tv_3d
from recon.errors import InputError
from recon.train import exponential_decay

logger = logging.getLogger(__name__)

__all__ = ["TVConfig", "TVTrainer"]


@dataclass
class TVConfig:
    """Hyperparameters of :class:`TVTrainer` (defaults tuned on the 128^3 chest at 25 views)."""

    iterations: int = 300
    """Adam steps (128^3, 25 views, 5 views per step: ~0.3 s each on 2 CPU cores)."""
    batch_views: int = 5
    """Views per step."""
    lambda_tv: float = 0.1
    """Weight of the 3D TV term, on the volume in units of the initial volume's maximum."""
    lambda_dssim: float = 0.25
    """Weight of D-SSIM on the projections."""
    lr: float = 0.01
    """Adam learning rate, in units of the initial volume's maximum."""
    lr_final_ratio: float = 0.1
    """The learning rate decays exponentially to this fraction at the last step."""
    init: Literal["fdk", "sart"] = "sart"
    """Starting volume: FDK/FBP, or ``init_sart_iterations`` of OS-SART started from it."""
    init_sart_iterations: int = 5
    """OS-SART iterations for init='sart'."""
    init_filter: str = "hann"
    """Ramp filter window of the FDK start."""
    seed: int = 0
    """Seed of the view order."""

    def validate(self) -> None:
        checks = [
            ("iterations", self.iterations >= 0, ">= 0"),
            ("batch_views", self.batch_views >= 1, ">= 1"),
            ("lambda_tv", self.lambda_tv >= 0, ">= 0"),
            ("lambda_dssim", self.lambda_dssim >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("lr_final_ratio", 0 < self.lr_final_ratio <= 1, "in (0, 1]"),
            ("init_sart_iterations", self.init_sart_iterations >= 0, ">= 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"--tv.{name.replace('_', '-')}", f"must be {want}, got {getattr(self, name)}")
        if self.init not in ("fdk", "sart"):
            raise InputError("--tv.init", f"expected 'fdk' or 'sart', got {self.init!r}")


class TVTrainer(ProjectionTrainer):
    """Runs the optimisation (see the module docstring).

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan (``projections.shape == geometry.projection_shape``).
        config: hyperparameters.
        init_volume: [Z, Y, X] starting volume (1/mm); computed from ``config.init`` when None.
        state: a :meth:`state_dict` to continue from (skips the initialisation).
        num_threads: CPU threads policy (see :func:`recon.ct.project.torch_threads`).
    """

    config: TVConfig

    def __init__(
        self,
        projections: Tensor | np.ndarray,  # [V, v, u]
        geometry: CTGeometry,
        config: TVConfig | None = None,
        *,
        init_volume: Tensor | np.ndarray | None = None,  # [Z, Y, X]
        state: dict[str, Any] | None = None,
        num_threads: int | str | None = "auto",
    ) -> None:
        super().__init__(projections, geometry, config or TVConfig(), num_threads=num_threads)
        if state is not None:
            self.load_state_dict(state)
            return
        with torch_threads(num_threads):
            vol = self.starting_volume(init_volume)
        self.vol_max = float(vol.max()) or 1.0
        self.x = (vol / self.vol_max).clone().requires_grad_(True)  # [Z, Y, X], units of vol_max
        self.optimizer = torch.optim.Adam([self.x], lr=self.config.lr)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (copies)."""
        return copy.deepcopy({
            "step": self.step,
            "x": self.x.detach(),
            "optimizer": self.optimizer.state_dict(),
            **self.sampling_state(),
            "scale": self.scale,
            "vol_max": self.vol_max,
            "history": self.history,
            "config": asdict(self.config),
            "init_description": self.init_description,
        })  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(float(state["scale"]) - self.scale) > 1e-6 * self.scale:
            raise InputError("checkpoint", "was made from other projections (their maximum differs)")
        x = torch.as_tensor(state["x"]).float()
        if tuple(x.shape) != self.geometry.n_voxel:
            raise InputError("checkpoint", f"holds a {list(x.shape)} volume, the geometry's grid is {list(self.geometry.n_voxel)}")
        self.x = x.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.x], lr=self.config.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_sampling_state(state)
        self.vol_max = float(state["vol_max"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.init_description = str(state.get("init_description", "checkpoint"))

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict[str, float]:
        """One Adam step on a batch of views. Returns the loss terms."""
        cfg = self.config
        views = self._batches.next()
        for g in self.optimizer.param_groups:
            g["lr"] = exponential_decay(cfg.lr, self.step, cfg.iterations, cfg.lr_final_ratio)
        pred = self.projector.forward(self.x * self.vol_max, views)
        loss, l1 = projection_loss(pred, self.b[list(views)], cfg.lambda_dssim)
        tv = tv_3d(self.x) if cfg.lambda_tv > 0 else torch.zeros(())
        total = loss + cfg.lambda_tv * tv
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.x.clamp_(min=0.0)
        self.step += 1
        return {"loss": float(total.detach()), "l1": float(l1.detach()), "tv": float(tv.detach())}

    @torch.no_grad()
    def volume(self) -> Tensor:  # [Z, Y, X] attenuation (1/mm)
        return self.x.detach() * (self.vol_max * self.scale)
