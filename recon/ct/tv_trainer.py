"""Total-variation regularised reconstruction on the voxel grid, two solvers.

``solver="fista"`` (the default, the fast one): over ``x >= 0`` (in units of the normalised
projections),

    sum_rays h(A x - b) / (A 1) + fista_lambda_tv * TV(x)

with ``h`` Huber's loss at ``fista_huber`` (line-integral units; least squares below it, linear
above) and ``TV`` the sum of absolute forward differences, solved by ordered-subsets FISTA with an
exact TV proximal step, preconditioned like SART and warm-started from FDK
(:class:`recon.ct.tv_solver.TVSolver`): 2 passes over 10 view subsets, then 5 subsets (at least
``fista_subset_views`` views each), 110 steps (20 passes at 25 views). One training step is one
subset of views; the run stops early when a whole pass over the subsets changes ``x`` by less
than ``tol`` (relative).

Why Huber: the least-squares version lost 2.3 dB to the Adam solver on a held-out chest. Its
cause, measured (docs/benchmarks.md, "CT: TV speed"): 1e-4 of that scan's rays are photon-starved
(the line integral clipped where the counts hit the floor, ~35x more than on the tuning chest)
and a few 1e-3 are mostly noise; least squares pulls along each of those rays in proportion to
its residual, which streaks the soft tissue. Dropping only the clipped rays recovered 1.4 dB,
a Huber loss 1.9 dB; the Adam solver's L1 loss is robust to them by construction.

``solver="adam"`` (the first TV method): the radiative-Gaussian objective with the voxels
themselves as the parameters: for batches ``s`` of interleaved views,

    L1(A_s x, b_s) + lambda_dssim * (1 - SSIM(A_s x, b_s)) + lambda_tv * TV(x)

with ``TV`` the mean absolute forward difference (:func:`recon.ct.voxelize.tv_3d`), x in units
of the initial volume's maximum. Adam (one learning rate for every voxel, decaying exponentially
to ``lr_final_ratio`` of it), ``x`` clamped at 0 after each step, initialised like the Gaussian
method (FDK + a few OS-SART iterations). It is a compressed-sensing reconstruction in the family
of ASD-POCS (Sidky & Pan 2008; TIGRE ships it), which alternates SART and TV steepest descent;
here one optimiser takes both terms. It takes about 4x the CPU time of the fista default.

Why it exists: on the sparse-view chest benchmark (``docs/benchmarks.md``) TV is the strongest
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

from recon.ct.objective import ProjectionTrainer, projection_loss
from recon.ct.project import torch_threads
from recon.ct.tv_solver import TVSolver, tv_sum
from recon.ct.voxelize import tv_3d
from recon.errors import InputError
from recon.geometry.ct import CTGeometry
from recon.train import exponential_decay

logger = logging.getLogger(__name__)

__all__ = ["TVConfig", "TVTrainer", "fista_schedule"]


@dataclass
class TVConfig:
    """Hyperparameters of :class:`TVTrainer` (fista defaults chosen on three 128^3 training scans
    at 25 views: the LIDC chest, a head-and-neck and an abdomen)."""

    solver: Literal["fista", "adam"] = "fista"
    """'fista' (default): OS-FISTA on a Huber data loss + TV (:mod:`recon.ct.tv_solver`), settings
    chosen on three training scans, 33.4 dB on the held-out 25-view chest against Adam's 32.9 in a
    quarter of its CPU time; 'adam': the Gaussian method's loss on voxels, Adam, 300 steps
    (docs/benchmarks.md, "CT: TV speed")."""
    iterations: int | None = None
    """Steps: fista, one subset of views each (all views after ``fista_full_batch_after``
    passes; default FISTA_ITERATIONS: 20 passes); adam, one batch of ``batch_views`` each
    (default 300)."""
    fista_lambda_tv: float = 5e-5
    """fista: weight of TV (sum of absolute differences, volume in units of the normalised
    projections) against the ray-length-weighted data loss (tuned on the 25-view training chest,
    head-and-neck and abdomen; docs/benchmarks.md, "CT: TV speed")."""
    fista_huber: float = 0.115
    """fista: Huber threshold of the data loss, in line-integral units (0: least squares). Rays
    whose residual exceeds it -- photon-starved rays, whose line integrals are clipped or mostly
    noise -- pull with a bounded force (docs/benchmarks.md, "CT: TV speed")."""
    fista_subsets: int = 5
    """fista: view subsets per pass (one step each) after the warm-up passes, at most
    ``n_views // fista_subset_views``."""
    fista_subset_views: int = 5
    """fista: fewest views in a subset after the warm-up passes (ordered subsets of 2 views
    with momentum diverged at 10 views)."""
    fista_warm_subsets: int = 10
    """fista: view subsets per pass in the first ``fista_warm_passes`` passes (more, smaller
    steps while far from the solution; at most half the number of views)."""
    fista_warm_passes: int = 2
    """fista: passes with ``fista_warm_subsets`` subsets (0: none)."""
    fista_relaxation: float = 1.3
    """fista: step scale over the SART majoriser (1.5 diverged on the chest after 10 passes)."""
    fista_full_batch_after: int = 0
    """fista: passes over the subsets after which every step takes all views (full-batch FISTA
    converges, ordered subsets with momentum can drift; on the 128^3 chest it is ~10x slower
    per pass); 0: subsets throughout."""
    fista_prox_iterations: int = 1
    """fista: dual iterations of the TV proximal step per step (warm-started)."""
    tol: float = 0.0
    """fista: stop when every step of a pass over the views changed ``x`` by less than this
    (relative L2); 0 never stops early."""
    batch_views: int = 5
    """adam: views per step."""
    lambda_tv: float = 0.1
    """adam: weight of the 3D TV term, on the volume in units of the initial volume's maximum."""
    lambda_dssim: float = 0.25
    """adam: weight of D-SSIM on the projections."""
    lr: float = 0.01
    """adam: learning rate, in units of the initial volume's maximum."""
    lr_final_ratio: float = 0.1
    """adam: the learning rate decays exponentially to this fraction at the last step."""
    init: Literal["auto", "fdk", "sart"] = "auto"
    """Starting volume: FDK/FBP, or ``init_sart_iterations`` of OS-SART started from it; 'auto':
    fdk for fista, sart for adam."""
    init_sart_iterations: int = 5
    """OS-SART iterations for init='sart'."""
    init_filter: str = "hann"
    """Ramp filter window of the FDK start."""
    seed: int = 0
    """Seed of the view order (adam)."""

    def resolved(self) -> TVConfig:
        """A copy with the solver's defaults filled in (``iterations``, ``init``)."""
        from dataclasses import replace

        fista = self.solver == "fista"
        iterations = self.iterations if self.iterations is not None else (FISTA_ITERATIONS if fista else 300)
        init = self.init if self.init != "auto" else ("fdk" if fista else "sart")
        return replace(self, iterations=iterations, init=init)

    def validate(self) -> None:
        checks = [
            ("iterations", self.iterations is None or self.iterations >= 0, ">= 0"),
            ("fista_lambda_tv", self.fista_lambda_tv >= 0, ">= 0"),
            ("fista_subsets", self.fista_subsets >= 1, ">= 1"),
            ("fista_subset_views", self.fista_subset_views >= 1, ">= 1"),
            ("fista_huber", self.fista_huber >= 0, ">= 0"),
            ("fista_prox_iterations", self.fista_prox_iterations >= 1, ">= 1"),
            ("fista_full_batch_after", self.fista_full_batch_after >= 0, ">= 0"),
            ("fista_warm_subsets", self.fista_warm_subsets >= 1, ">= 1"),
            ("fista_warm_passes", self.fista_warm_passes >= 0, ">= 0"),
            ("fista_relaxation", 0 < self.fista_relaxation < 2, "in (0, 2)"),
            ("tol", self.tol >= 0, ">= 0"),
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
        if self.solver not in ("fista", "adam"):
            raise InputError("--tv.solver", f"expected 'fista' or 'adam', got {self.solver!r}")
        if self.init not in ("auto", "fdk", "sart"):
            raise InputError("--tv.init", f"expected 'auto', 'fdk' or 'sart', got {self.init!r}")


FISTA_ITERATIONS = 110
"""Default fista steps: 20 passes at 25 views (2 passes over 10 subsets, then 18 over 5)."""


def fista_schedule(config: TVConfig, n_views: int) -> list[int]:
    """Subsets per pass for :class:`recon.ct.tv_solver.TVSolver` (the last entry repeats): the
    warm-up passes (``fista_warm_subsets``, at most ``n_views // 2``), then ``fista_subsets``
    (at most ``n_views // fista_subset_views``), then all views after ``fista_full_batch_after``
    passes."""
    warm = [min(config.fista_warm_subsets, max(1, n_views // 2))] * config.fista_warm_passes
    main = min(config.fista_subsets, max(1, n_views // config.fista_subset_views))
    after = config.fista_full_batch_after
    if not after:
        return warm + [main]
    warm = warm[:after]
    return warm + [main] * (after - len(warm)) + [1]


class TVTrainer(ProjectionTrainer):
    """Runs the optimisation with ``config.solver`` (see the module docstring).

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan (``projections.shape == geometry.projection_shape``).
        config: hyperparameters (``None`` and unset fields: the solver's defaults).
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
        config = config or TVConfig()
        config.validate()
        super().__init__(projections, geometry, config.resolved(), num_threads=num_threads)
        self.converged = False
        self._epoch_change = 0.0  # fista: largest relative change in the current pass
        self.solver: TVSolver | None = None
        cfg = self.config
        if cfg.solver == "fista":
            with torch_threads(num_threads):
                self.solver = TVSolver(self.b, geometry, lam=cfg.fista_lambda_tv, n_subsets=fista_schedule(cfg, geometry.n_views),
                                       prox_iterations=cfg.fista_prox_iterations, relaxation=cfg.fista_relaxation, projector=self.projector,
                                       huber=cfg.fista_huber / self.scale)  # fmt: skip
        if state is not None:
            self.load_state_dict(state)
            return
        with torch_threads(num_threads):
            vol = self.starting_volume(init_volume)
        if self.solver is not None:
            self.vol_max = 1.0
            self.solver.start(vol)
            return
        self.vol_max = float(vol.max()) or 1.0
        self.x = (vol / self.vol_max).clone().requires_grad_(True)  # [Z, Y, X], units of vol_max
        self.optimizer = torch.optim.Adam([self.x], lr=cfg.lr)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (copies)."""
        common = {
            "step": self.step,
            "scale": self.scale,
            "vol_max": self.vol_max,
            "history": self.history,
            "config": asdict(self.config),
            "init_description": self.init_description,
        }
        if self.solver is not None:
            return copy.deepcopy({**common, "solver": self.solver.state_dict(), "converged": self.converged, "epoch_change": self._epoch_change})
        return copy.deepcopy({**common, "x": self.x.detach(), "optimizer": self.optimizer.state_dict(), **self.sampling_state()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(float(state["scale"]) - self.scale) > 1e-6 * self.scale:
            raise InputError("checkpoint", "was made from other projections (their maximum differs)")
        if ("solver" in state) != (self.solver is not None):
            raise InputError("checkpoint", f"was written by the other TV solver (this run uses --tv.solver {self.config.solver})")
        if self.solver is not None:
            self.solver.load_state_dict(state["solver"])
            self.converged = bool(state["converged"])
            self._epoch_change = float(state["epoch_change"])
        else:
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
        """One step (a subset for fista, a batch for adam). Returns the loss terms."""
        if self.solver is not None:
            return self._fista_step()
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

    def _fista_step(self) -> dict[str, float]:
        solver = self.solver
        assert solver is not None
        info = solver.step()
        self.step += 1
        self._epoch_change = max(self._epoch_change, info["change"])
        if info["pass_end"]:
            self.converged = self.config.tol > 0 and self._epoch_change < self.config.tol
            if self.converged:
                logger.info("TV (fista) converged at step %d: every step of the last pass changed x by < %g", self.step, self.config.tol)
            self._epoch_change = 0.0
        tv = float(tv_sum(solver.x))
        return {"loss": info["data"] + solver.lam * tv, "data": info["data"], "tv": tv, "change": info["change"]}

    @torch.no_grad()
    def volume(self) -> Tensor:  # [Z, Y, X] attenuation (1/mm)
        x = self.solver.x if self.solver is not None else self.x.detach()
        return x * (self.vol_max * self.scale)
