"""Training radiative Gaussians on CT projections (:class:`GaussianTrainer`, after R2-Gaussian).

Loss per step: L1 + ``lambda_dssim`` D-SSIM on the projections of a batch of views (R2-Gaussian:
0.25) + ``lambda_tv`` 3D total variation of a voxelised patch (random ``tv_patch`` cube) or of
the whole volume (voxel path). Adam; learning rates decay exponentially. Density control
(R2-Gaussian): every ``densify_every`` steps the ``densify_fraction`` of Gaussians with the
largest mean projected-position gradient are cloned (small; both copies get half the density,
so the field is unchanged) or split in two (large; samples with scales / 1.6 and 0.6x the
density); Gaussians with tiny densities or huge scales are pruned.
Projections are handled in units of ``scale = max(projections)`` (R2-Gaussian normalises its
data), so learning rates and thresholds do not depend on the scanner's units.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recon.geometry.ct import CTGeometry
from recon.ct.objective import ProjectionTrainer, projection_loss
from recon.ct.project import torch_threads
from recon.ct.voxelize import VoxelGrid, spatial_order, tv_3d, voxelize
from recon.errors import InputError
from recon.train import exponential_decay, set_learning_rate
from recon.splat.strategy import (  # row ops that carry Adam moments
    duplicate_rows,
    remove_rows,
    reorder_rows,
    split_rows,
)

from recon.ct.gaussians import RadiativeGaussians, XrayCameras, render_xray, xray_cameras
from recon.splat.adam import FusedAdam

logger = logging.getLogger(__name__)

__all__ = ["GaussianFitConfig", "GaussianTrainer"]


@dataclass
class GaussianFitConfig:
    """Hyperparameters of :class:`GaussianTrainer` (defaults tuned for 128^3, 25-75 views on a CPU)."""

    iterations: int = 500
    """Optimisation steps (128^3, 25 views, 400k Gaussians: ~0.22 s each on 2 CPU cores, after
    ~10 s of initialisation; docs/benchmarks.md). 500 with ``lambda_tv`` 0.1 was the best of the sweep in
    ``scripts/ablate_ct_gaussian.py`` on the 25-view chest (200: 36.34 dB, 400: 36.79, 500: 36.97)."""
    render: Literal["voxel", "splat"] = "voxel"
    """'voxel': voxelise + matched projector (the simulator's forward model; any beam); 'splat':
    R2-Gaussian's X-ray splatting through the shared rasteriser (cone/fan; parallel via a distant source)."""
    batch_views: int = 5
    """Views per step."""
    init: Literal["fdk", "sart"] = "sart"
    """Volume the Gaussians are sampled from: FDK/FBP (R2-Gaussian) or ``init_sart_iterations`` of OS-SART started from FDK."""
    init_sart_iterations: int = 5
    """OS-SART iterations for init='sart'."""
    init_filter: str = "hann"
    """Ramp filter window of the FDK initialisation."""
    n_gaussians: int = 400_000
    """Initial number of Gaussians (at most the number of voxels above the threshold)."""
    init_threshold: float = 0.05
    """Sample centres where the initial volume exceeds this fraction of its maximum."""
    init_scale: float = 0.6
    """Multiplier of the nearest-neighbour initial scale (0.6: less overlap, sharper and ~4x cheaper to voxelise than 1.0)."""
    init_fit_steps: int = 30
    """Adam steps fitting the sampled Gaussians to the initial volume (voxel-space L2) before
    training on projections; 0 keeps R2-Gaussian's plain sampling."""
    lr_means: float = 0.1
    """Adam learning rate of the centres, in voxels (x the smallest voxel size)."""
    lr_scales: float = 0.01
    """Adam learning rate of the log-scales."""
    lr_quats: float = 0.01
    """Adam learning rate of the quaternions."""
    lr_densities: float = 0.05
    """Adam learning rate of the densities (relative: x the initial median density for softplus)."""
    lr_final_ratio: float = 0.1
    """All learning rates decay exponentially to this fraction at the last step."""
    lambda_dssim: float = 0.25
    """Weight of D-SSIM on the projections (R2-Gaussian 0.25)."""
    lambda_tv: float = 0.1
    """Weight of the 3D TV regulariser (R2-Gaussian: 0.05 on its own scales), on volumes in units
    of the initial volume's maximum (swept at 200 steps on the 25-view chest: 0.05 35.98 dB,
    0.1 36.34, 0.15 36.16, 0.2 35.85)."""
    tv_patch: int = 32
    """Edge of the random TV cube (splat path); the voxel path regularises the whole volume."""
    support_sigmas: float = 3.0
    """Voxeliser support in standard deviations."""
    eps2d: float = 0.1
    """Splat low-pass filter (pixel^2), mass-preserving."""
    densify_from: int = 100
    """First step of density control."""
    densify_until: int = 400
    """Last step of density control."""
    densify_every: int = 50
    """Steps between density-control passes."""
    densify_fraction: float = 0.02
    """Fraction of the Gaussians cloned/split per density-control pass: those with the largest
    mean projected-position gradient (R2-Gaussian thresholds the gradient; a fraction does not
    depend on the render path, image size or loss scale)."""
    densify_scale: float = 1.5
    """Gaussians larger than this many voxels are split, smaller ones cloned."""
    max_gaussians: int = 450_000
    """Never grow beyond this many Gaussians."""
    prune_density: float = 1e-3
    """Prune Gaussians whose density is below this fraction of the initial volume's maximum."""
    max_scale_voxels: float = 10.0
    """Prune Gaussians wider than this many voxels."""
    seed: int = 0
    """Seed of the initialisation, view order, TV patches and splits."""

    def validate(self) -> None:
        checks = [
            ("iterations", self.iterations >= 0, ">= 0"),
            ("batch_views", self.batch_views >= 1, ">= 1"),
            ("n_gaussians", self.n_gaussians >= 4, ">= 4"),
            ("init_threshold", 0.0 <= self.init_threshold < 1.0, "in [0, 1)"),
            ("lambda_dssim", self.lambda_dssim >= 0, ">= 0"),
            ("lambda_tv", self.lambda_tv >= 0, ">= 0"),
            ("tv_patch", self.tv_patch >= 2, ">= 2"),
            ("support_sigmas", self.support_sigmas > 0, "> 0"),
            ("eps2d", self.eps2d >= 0, ">= 0"),
            ("lr_final_ratio", 0 < self.lr_final_ratio <= 1, "in (0, 1]"),
            ("max_gaussians", self.max_gaussians >= self.n_gaussians, ">= n_gaussians"),
            ("densify_every", self.densify_every >= 1, ">= 1"),
            ("densify_fraction", 0.0 <= self.densify_fraction <= 1.0, "in [0, 1]"),
            ("init_sart_iterations", self.init_sart_iterations >= 0, ">= 0"),
            ("init_fit_steps", self.init_fit_steps >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"--{name.replace('_', '-')}", f"must be {expected}, got {getattr(self, name)}")
        if self.render not in ("voxel", "splat"):
            raise InputError("--render", f"expected 'voxel' or 'splat', got {self.render!r}")
        if self.init not in ("fdk", "sart"):
            raise InputError("--init", f"expected 'fdk' or 'sart', got {self.init!r}")


class GaussianTrainer(ProjectionTrainer):
    """Fits :class:`RadiativeGaussians` to projections (see the module docstring).

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan (``projections.shape == geometry.projection_shape``).
        config: hyperparameters.
        init_volume: [Z, Y, X] volume to initialise from; computed from ``config.init`` when None.
        state: a :meth:`state_dict` to continue from (skips the initialisation).
        num_threads: CPU threads policy (see :func:`recon.ct.project.torch_threads`).
    """

    def __init__(
        self,
        projections: Tensor | np.ndarray,  # [V, v, u]
        geometry: CTGeometry,
        config: GaussianFitConfig | None = None,
        *,
        init_volume: Tensor | np.ndarray | None = None,  # [Z, Y, X]
        state: dict[str, Any] | None = None,
        num_threads: int | str | None = "auto",
    ) -> None:
        super().__init__(projections, geometry, config or GaussianFitConfig(), num_threads=num_threads)
        if self.config.render == "splat":
            xray_cameras(geometry, [0])  # refuses unsupported detectors before any work
        self.grid = VoxelGrid.from_geometry(geometry)
        self._cameras: dict[tuple[int, ...], XrayCameras] = {}
        if state is not None:
            self.load_state_dict(state)
            return
        with torch_threads(num_threads):
            self._init_model(init_volume)
        self.optimizers = self._make_optimizers()
        self.reset_gradient_stats()

    # ------------------------------------------------------------------ setup
    def _init_model(self, init_volume) -> None:
        cfg = self.config
        vol = self.starting_volume(init_volume)
        self.vol_max = float(vol.max()) or 1.0
        self.model = RadiativeGaussians.from_volume(
            vol, self.geometry, cfg.n_gaussians, threshold=cfg.init_threshold, scale_multiplier=cfg.init_scale,
            support_sigmas=cfg.support_sigmas, seed=cfg.seed, density_unit=self.vol_max,
        )  # fmt: skip
        self._sort_rows({})
        if cfg.init_fit_steps:
            self._fit_to_volume(vol, cfg.init_fit_steps)
        logger.info("initialised %d Gaussians from %s", self.model.num_gaussians, self.init_description)

    def _fit_to_volume(self, vol: Tensor, steps: int) -> None:
        """Adam on all parameters, mean squared error to ``vol`` (normalised) on the grid."""
        opts = self._make_optimizers()
        target = vol / self.vol_max
        for it in range(steps):
            for name, lr in self._base_lrs().items():
                set_learning_rate(opts[name], exponential_decay(lr, it, steps, 0.1))
            pred = voxelize(**self.model.activated(), grid=self.grid, support_sigmas=self.config.support_sigmas)
            loss = ((pred / self.vol_max - target) ** 2).mean()
            loss.backward()
            for opt in opts.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
        self.init_fit_mse = float(loss.detach())

    def _base_lrs(self) -> dict[str, float]:
        cfg = self.config
        vox = float(min(self.geometry.voxel_mm))
        return {"means": cfg.lr_means * vox, "scales": cfg.lr_scales, "quats": cfg.lr_quats, "densities": cfg.lr_densities}

    def _make_optimizers(self) -> dict[str, torch.optim.Adam]:
        return {
            name: FusedAdam([{"params": [self.model.params[name]], "lr": lr, "name": name}], eps=1e-15)
            for name, lr in self._base_lrs().items()
        }

    def _cams(self, views: tuple[int, ...]) -> XrayCameras:
        cams = self._cameras.get(views)
        if cams is None:
            cams = self._cameras[views] = xray_cameras(self.geometry, list(views))
        return cams

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (copies, safe to keep while training goes on)."""
        import copy

        return copy.deepcopy({
            "step": self.step,
            "model": self.model.state_dict_full(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "grad_accum": self._grad_accum,
            "grad_count": self._grad_count,
            **self.sampling_state(),
            "scale": self.scale,
            "vol_max": self.vol_max,
            "history": self.history,
            "config": asdict(self.config),
            "init_description": self.init_description,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(float(state["scale"]) - self.scale) > 1e-6 * self.scale:
            raise InputError("checkpoint", "was trained on other projections (their maximum differs)")
        self.model = RadiativeGaussians.from_state(state["model"])
        self.vol_max = float(state["vol_max"])
        self.optimizers = self._make_optimizers()
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self._grad_accum = state["grad_accum"]
        self._grad_count = state["grad_count"]
        self.load_sampling_state(state)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.init_description = str(state.get("init_description", "checkpoint"))

    # ------------------------------------------------------------------ training
    def _set_lrs(self) -> None:
        cfg = self.config
        for name, lr in self._base_lrs().items():
            for g in self.optimizers[name].param_groups:
                g["lr"] = exponential_decay(lr, self.step, cfg.iterations, cfg.lr_final_ratio)

    def projection_loss(self, pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:  # [C, H, W] each
        """L1 + ``lambda_dssim`` D-SSIM between rendered and measured projections; returns
        (loss, l1) (:func:`recon.ct.objective.projection_loss`; the nerfstudio plugin calls it)."""
        return projection_loss(pred, gt, self.config.lambda_dssim)

    def train_step(self) -> dict[str, float]:
        """One optimisation step (and density control when due). Returns the loss terms."""
        cfg = self.config
        views = self._batches.next()
        self._set_lrs()
        gt = self.b[list(views)]
        act = self.model.activated()
        unit = 1.0 / self.vol_max  # TV on volumes in units of the initial maximum
        tv = torch.zeros(())
        means2d = None
        if cfg.render == "voxel":
            vol = voxelize(**act, grid=self.grid, support_sigmas=cfg.support_sigmas)
            pred = self.projector.forward(vol, views)
            if cfg.lambda_tv > 0:
                tv = tv_3d(vol * unit)
        else:
            pred, meta = render_xray(**act, cameras=self._cams(views), eps2d=cfg.eps2d)
            means2d = meta["means2d"]
            means2d.retain_grad()
            if cfg.lambda_tv > 0:
                tv = tv_3d(self.tv_patch(act) * unit)
        loss, l1 = self.projection_loss(pred, gt)
        total = loss + cfg.lambda_tv * tv
        total.backward()
        self.accumulate_gradients(means2d, len(views))
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step += 1
        if cfg.densify_from <= self.step <= cfg.densify_until and self.step % cfg.densify_every == 0 and self.step < cfg.iterations:
            self.density_control()
        return {"loss": float(total.detach()), "l1": float(l1.detach()), "tv": float(tv.detach()), "n_gaussians": self.model.num_gaussians}

    def tv_patch(self, act: dict[str, Tensor]) -> Tensor:
        """The Gaussians voxelised on a random ``tv_patch``-sized sub-grid (for the TV term) [z, y, x]."""
        size = [min(self.config.tv_patch, n) for n in self.grid.shape]
        start = [int(self._rng.integers(0, n - s + 1)) for n, s in zip(self.grid.shape, size)]
        return voxelize(**act, grid=self.grid.crop(start, size), support_sigmas=self.config.support_sigmas)

    def accumulate_gradients(self, means2d: Tensor | None, n_views: int) -> None:  # means2d [C, N, 2]
        """Running mean of the projected-position gradient norm (pixels), per Gaussian."""
        cfg = self.config
        if not (cfg.densify_from - cfg.densify_every < self.step + 1 <= cfg.densify_until):
            return
        if means2d is not None and means2d.grad is not None:
            g = means2d.grad.norm(dim=-1)  # [C, N]
            seen = g > 0
            self._grad_accum += g.sum(0).detach()
            self._grad_count += seen.sum(0).float()
        else:  # voxel path: 3D centre gradient times the detector pixel size at the isocentre
            grad = self.model.params["means"].grad
            if grad is None:
                return
            self._grad_accum += grad.norm(dim=-1).detach() * self._iso_pixel_mm() / n_views
            self._grad_count += (grad.abs().sum(-1) > 0).float()

    def reset_gradient_stats(self) -> None:
        n, device = self.model.num_gaussians, self.model.params["means"].device
        self._grad_accum = torch.zeros(n, device=device)
        self._grad_count = torch.zeros(n, device=device)

    def _iso_pixel_mm(self) -> float:
        g = self.geometry
        mag = (g.dsd_mm / g.dso_mm) if (g.mode != "parallel" and g.dsd_mm and g.dso_mm) else 1.0
        return float(g.detector_pixel_mm[1]) / mag

    @torch.no_grad()
    def density_control(self) -> None:
        """Clone/split the Gaussians with the largest mean positional gradients, prune faint and huge ones."""
        cfg = self.config
        params, opts = self.model.params, self.optimizers
        n0 = self.model.num_gaussians
        grads = self._grad_accum / self._grad_count.clamp_min(1.0)
        vox = float(min(self.geometry.voxel_mm))
        scales = torch.exp(params["scales"]).max(dim=-1).values
        room = max(0, cfg.max_gaussians - n0)
        k = min(room, round(cfg.densify_fraction * n0))
        device = params["means"].device
        cand = torch.zeros(n0, dtype=torch.bool, device=device)
        seen = self._grad_count > 0
        if k > 0 and bool(seen.any()):
            k = min(k, int(seen.sum()))
            cand[torch.topk(torch.where(seen, grads, torch.full_like(grads, -1.0)), k).indices] = True
        state = {"grad_accum": self._grad_accum, "grad_count": self._grad_count}
        clone = cand & (scales <= cfg.densify_scale * vox)
        split = cand & (scales > cfg.densify_scale * vox)
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone:
            # both copies carry half the density: the field stays the same
            half = self.model.inverse_density(self.model.activate_density(params["densities"][clone]) * 0.5)
            params["densities"].data[clone] = half
            duplicate_rows(params, opts, state, clone)
            split = torch.cat([split, torch.zeros(n_clone, dtype=torch.bool, device=device)])
        if n_split:
            # two samples with scales / 1.6 and 0.6x the density keep the local attenuation about equal
            d = self.model.activate_density(params["densities"][split])
            params["densities"].data[split] = self.model.inverse_density(d * 0.6)
            split_rows(params, opts, state, split, revised_opacity=False)
        dens = self.model.activate_density(params["densities"])
        wide = torch.exp(params["scales"]).max(dim=-1).values > cfg.max_scale_voxels * vox
        prune = (dens < cfg.prune_density * self.vol_max * 1.0) | wide
        n_prune = int(prune.sum())
        if n_prune and n_prune < self.model.num_gaussians:
            remove_rows(params, opts, state, prune)
        self.reset_gradient_stats()
        self._sort_rows(opts)  # after reset_gradient_stats: the zeroed stats need no reorder
        logger.debug("density control at step %d: %d cloned, %d split, %d pruned -> %d", self.step, n_clone, n_split, n_prune, self.model.num_gaussians)

    @torch.no_grad()
    def _sort_rows(self, optimizers: dict[str, torch.optim.Adam]) -> None:
        """Keep the Gaussians (and their Adam moments) in the voxeliser's spatial order (voxel
        path; after the initialisation and each density control): its gathers and scatters then
        run sequentially. Checkpoints keep the order, so a resumed run matches an uninterrupted one."""
        if self.config.render == "voxel":
            reorder_rows(self.model.params, optimizers, {}, spatial_order(self.model.params["means"], self.grid))

    @torch.no_grad()
    def volume(self) -> Tensor:  # [Z, Y, X] attenuation (1/mm)
        """The reconstruction: the Gaussians voxelised on the geometry's grid, in 1/mm."""
        with torch_threads(self.num_threads):
            return self.model.voxelize(self.grid, support_sigmas=self.config.support_sigmas) * self.scale
