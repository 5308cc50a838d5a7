"""The capture trainer: Gaussians (free with densification, or voxel-anchored) fitted to the
training views of a capture with L1 + D-SSIM, optional few-view regularisers, pose refinement
and photometric registration rounds of the training cameras (``pose_rounds``: after the steps
:meth:`SplatTrainer.pose_round_steps` names, :meth:`SplatTrainer.register_poses` replaces the
training cameras by their registration against the frozen model; checkpoints hold the cameras).

It implements :class:`recon.train.Trainer` (``step``, ``train_step``, ``state_dict``,
``load_state_dict``, ``history``); :func:`recon.train.train` runs it, and
:mod:`recon.pipelines.capture` assembles data, initial points, trainer and outputs.

Every random choice comes from generators that checkpoints hold: the view order from the
trainer's own numpy generator (saved in :meth:`state_dict`), densification noise, dropout and
pseudo views from torch's global generator (saved by the training loop). A resumed run is
bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet
from recon.io.views import ViewSet
from recon.poses.refine import PoseRefineConfig, PoseRefiner
from recon.splat.anchored import AnchoredGaussians, set_learning_rates
from recon.splat.config import SplatTrainConfig
from recon.splat.fit_schedule import EarlyStop, ResolutionSchedule, downsample_view
from recon.splat.init import InitialPoints, statistical_outliers
from recon.splat.loss import photometric_loss
from recon.splat.model import GaussianModel
from recon.splat.photometric_poses import register_to_model
from recon.splat.regularizers import (
    PseudoViewSampler,
    coreg_loss,
    edge_aware_depth_tv,
    gaussian_dropout,
    opacity_loss,
    scale_loss,
    scale_ratio_loss,
)
from recon.splat.render import rasterize_params_views, rasterize_views
from recon.splat.sh import num_sh_bases
from recon.splat.strategy import remove_rows
from recon.train.schedule import exponential_decay, set_learning_rate

logger = logging.getLogger(__name__)

__all__ = ["ExtraTargets", "SplatTrainer", "scene_scale_of"]


def scene_scale_of(cameras: CameraSet) -> float:
    """1.1 x the largest distance of a camera centre from their mean (3DGS's scene extent)."""
    centres = cameras.centres()
    return float((centres - centres.mean(0)).norm(dim=-1).max() * 1.1)


@dataclass
class ExtraTargets:
    """Images for cameras that have no photo (e.g. repaired renders of pseudo views,
    :mod:`recon.prior.guidance`), each with its loss weight.

    While set (:meth:`SplatTrainer.set_extra_targets`), every ``every``-th step also renders the
    next of them in turn and adds ``weights[p] * ((1 - l) * L1 + l * D-SSIM)`` against
    ``images[p]`` to the loss (``l``: the fit's ``ssim_lambda``).
    """

    w2c: Tensor  # [P, 4, 4] OpenCV world-to-camera
    Ks: Tensor  # [P, 3, 3] at the training resolution
    images: Tensor  # [P, H, W, 3] in [0, 1], H x W the training views'
    weights: Tensor  # [P] >= 0
    every: int = 1

    def check(self, width: int, height: int) -> None:
        p = self.w2c.shape[0] if self.w2c.ndim == 3 else -1
        if (self.w2c.shape != (p, 4, 4) or self.Ks.shape != (p, 3, 3) or self.images.shape != (p, height, width, 3)
                or self.weights.shape != (p,) or p < 1):  # fmt: skip
            raise ValueError(f"extra targets: expected w2c [P, 4, 4], Ks [P, 3, 3], images [P, {height}, {width}, 3], weights [P] "
                             f"with P >= 1, given {list(self.w2c.shape)}, {list(self.Ks.shape)}, {list(self.images.shape)}, "
                             f"{list(self.weights.shape)}")  # fmt: skip
        if self.every < 1 or not bool((self.weights >= 0).all()):
            raise ValueError(f"extra targets: expected every >= 1 and weights >= 0, given {self.every}, min {float(self.weights.min())}")


@dataclass
class _Field:
    """One Gaussian field with its optimisers and densification state."""

    model: GaussianModel | AnchoredGaussians
    optimizers: dict[str, torch.optim.Optimizer]
    state: dict[str, Any]


class SplatTrainer:
    """Owns the model(s), optimisers, densification state and view order of one capture fit.

    ``fields[0]`` is the model that is saved and scored; ``fields[1]`` exists only for
    co-regularisation (``reg.coreg > 0``).

    Args:
        config: hyperparameters (validated here).
        train: the training views (images ``[V, H, W, 3]`` and cameras) at training resolution.
        background: ``[3]`` RGB behind the Gaussians.
        initial: initial points per field (one; two with co-regularisation); ignored with ``state``.
        device: where the models live (CPU: the numba rasteriser; CUDA: gsplat). On the CPU,
            ``config.cpu_kernels == "fused"`` (the default) trains free Gaussians with the fused
            kernels (raw-parameter rendering, fused L1 + D-SSIM, :class:`FusedAdam`); "reference"
            with the plain-PyTorch ops. Anchored Gaussians always use the latter.
        state: a :meth:`state_dict` to continue from (no initialisation then).
    """

    def __init__(
        self,
        config: SplatTrainConfig,
        train: ViewSet,
        background: Tensor,  # [3]
        initial: list[InitialPoints] | None = None,
        *,
        device: torch.device | str = "cpu",
        state: dict[str, Any] | None = None,
    ) -> None:
        config.validate()
        self.config = cfg = config
        self.train = train
        self.device = torch.device(device)
        self.background = background.to(torch.float32)
        self.scene_scale = scene_scale_of(train.cameras)
        self.anchored = cfg.model == "anchored"
        self.fused = self.device.type == "cpu" and cfg.cpu_kernels == "fused" and not self.anchored
        self.strategy = cfg.densify.within(cfg.iterations) if not self.anchored else cfg.densify
        reg = cfg.reg
        if reg.pseudo_every > 0 and len(train.indices) < 2:
            raise InputError("--reg.pseudo-every", f"pseudo views need >= 2 training views, got {len(train.indices)}")
        n_fields = 2 if (reg.coreg > 0 and not self.anchored) else 1
        self.fields: list[_Field] = []
        if state is None:
            if initial is None or len(initial) != n_fields:
                raise ValueError(f"initial: expected {n_fields} sets of initial points, got {0 if initial is None else len(initial)}")
            self.init_description = initial[0].description
            for init in initial:
                self.fields.append(self._new_field(self._model_from_points(init)))
            if self.anchored:
                a = self.fields[0].model
                self.init_description += f" -> {a.num_anchors} anchors (voxel {float(a.voxel_size):.4g})"  # type: ignore[union-attr]
        self.pseudo_sampler = PseudoViewSampler(noise=reg.pseudo_noise)
        self.pseudo_state = self.pseudo_sampler.initialize_state(train.cameras.w2c) if reg.pseudo_every > 0 else None
        self.pose_refiner: PoseRefiner | None = None
        if cfg.refine_poses:
            self.pose_refiner = PoseRefineConfig(lr=cfg.pose_lr, lr_final=cfg.pose_lr / 100).setup(len(train.indices))
            self.pose_refiner.to(self.device)
            self.pose_optimizer, _ = self.pose_refiner.make_optimizer(cfg.iterations)
        self.pose_rounds: list[dict[str, Any]] = []
        """What each photometric registration round did (:meth:`register_poses`)."""
        self.resolution = ResolutionSchedule((0.5, 1.0), (cfg.coarse_to_fine, 1.0)) if cfg.coarse_to_fine > 0 and not self.anchored else None
        self._small: tuple[float, Tensor, Tensor, int, int] | None = None  # the training views at the current scale
        self.stopper = EarlyStop() if cfg.early_stop else None
        self.stop_state = self.stopper.initialize_state(len(train.indices), cfg.iterations) if self.stopper else None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        # view order: a fresh permutation of the training views per epoch, from a generator the
        # checkpoints hold together with the views left in the current epoch
        self.order_rng = np.random.default_rng(cfg.seed)
        self.order: list[int] = []
        self.extra: ExtraTargets | None = None
        self.extra_cursor = 0  # extra targets used so far (the next is extra_cursor % P)
        if state is not None:
            self.load_state_dict(state)

    # ------------------------------------------------------------------ construction
    def _model_from_points(self, init: InitialPoints) -> GaussianModel | AnchoredGaussians:
        cfg = self.config
        if self.anchored:
            return AnchoredGaussians.from_points(
                init.points, init.colours, cfg.anchored, cfg.sh_degree, cfg.init_opacity, cfg.init_scale, seed=init.seed
            ).to(self.device)
        return GaussianModel.from_points(
            init.points, init.colours, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity, init_scale=cfg.init_scale
        ).to(self.device)

    def _new_field(self, model: GaussianModel | AnchoredGaussians) -> _Field:
        if isinstance(model, AnchoredGaussians):
            return _Field(model, model.make_optimizers(), model.initialize_state())
        optimizers = model.make_optimizers(scene_scale=self.scene_scale, means_lr=self.config.means_lr)
        if self.fused:
            from recon.splat.adam import (
                fuse_optimizers,  # numba: imported only when used
            )

            optimizers = fuse_optimizers(optimizers)  # same groups and state layout: checkpoints load either way
        self.strategy.check_sanity(model.params, optimizers)
        return _Field(model, optimizers, self.strategy.initialize_state(scene_scale=self.scene_scale))

    # ------------------------------------------------------------------ the saved model is field 0
    @property
    def model(self) -> GaussianModel | AnchoredGaussians:
        return self.fields[0].model

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.fields[0].optimizers

    def export_model(self) -> GaussianModel:
        """The Gaussians to save and score: the model itself, or the decoded anchored Gaussians."""
        return self.model.to_gaussian_model() if isinstance(self.model, AnchoredGaussians) else self.model

    def train_cameras(self) -> CameraSet:
        """Training cameras with the pose corrections applied (the given ones without refinement)."""
        cams = self.train.cameras
        if self.pose_refiner is None:
            return cams
        with torch.no_grad():
            w2c = self.pose_refiner.apply(cams.w2c.to(self.device), list(range(len(cams)))).cpu()
        return CameraSet(w2c, list(cams.intrinsics))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Models, optimisers, densification state, pose corrections and the view order."""

        def field_state(f: _Field) -> dict[str, Any]:
            return {"model": f.model.state_dict(), "optimizers": {k: o.state_dict() for k, o in f.optimizers.items()}, "strategy_state": f.state}

        state: dict[str, Any] = {
            "step": self.step,
            "iterations": self.config.iterations,
            "model_kind": self.config.model,
            "fields": [field_state(f) for f in self.fields],
            "order": list(self.order),
            "order_rng": self.order_rng.bit_generator.state,
            "train_indices": list(self.train.indices),
            "init_description": self.init_description,
            "history": list(self.history),
            "extra_cursor": self.extra_cursor,
        }
        if self.pose_refiner is not None:
            state["pose_refiner"] = {"params": self.pose_refiner.state_dict(), "optimizer": self.pose_optimizer.state_dict()}
        if self.pose_rounds:
            cams = self.train.cameras
            state["pose_rounds"] = {"records": list(self.pose_rounds), "w2c": cams.w2c.detach().cpu().clone(),
                                    "focal": [[k.fx, k.fy] for k in cams.intrinsics]}  # fmt: skip
        if self.stop_state is not None:
            state["early_stop"] = dict(self.stop_state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (models of any size: densification changes N)."""
        if [int(i) for i in state["train_indices"]] != list(self.train.indices):
            raise InputError("checkpoint", f"was trained on views {state['train_indices']}, not {self.train.indices}")
        if state["model_kind"] != self.config.model:
            raise InputError("checkpoint", f"holds a --model {state['model_kind']} fit, not {self.config.model}")
        n_fields = 2 if (self.config.reg.coreg > 0 and not self.anchored) else 1
        if len(state["fields"]) != n_fields or ("pose_refiner" in state) != (self.pose_refiner is not None):
            raise InputError("checkpoint", "was written with other --reg.coreg / --refine-poses settings")
        self.fields = []
        for saved in state["fields"]:
            if self.anchored:
                model: GaussianModel | AnchoredGaussians = AnchoredGaussians.from_state_dict(
                    saved["model"], self.config.anchored, self.config.sh_degree, self.config.init_opacity, self.config.init_scale
                )
            else:
                model = GaussianModel.from_params({k.removeprefix("params."): v for k, v in saved["model"].items()})
            f = self._new_field(model.to(self.device))
            for k, opt in f.optimizers.items():
                opt.load_state_dict(saved["optimizers"][k])
            f.state = saved["strategy_state"]
            self.fields.append(f)
        if self.pose_refiner is not None:
            self.pose_refiner.load_state_dict(state["pose_refiner"]["params"])
            self.pose_optimizer.load_state_dict(state["pose_refiner"]["optimizer"])
        if "pose_rounds" in state:
            saved = state["pose_rounds"]
            intr = [dataclasses.replace(k, fx=float(f[0]), fy=float(f[1])) for k, f in zip(self.train.cameras.intrinsics, saved["focal"])]
            self.train.cameras = CameraSet(saved["w2c"].to(self.train.cameras.w2c.dtype), intr)
            self.pose_rounds = list(saved["records"])
        self.step = int(state["step"])
        self.order = [int(v) for v in state["order"]]
        self.order_rng.bit_generator.state = state["order_rng"]
        self.init_description = str(state.get("init_description", "checkpoint"))
        if self.stop_state is not None and "early_stop" in state:
            self.stop_state = dict(state["early_stop"])
        self.history = list(state.get("history", []))
        self.extra_cursor = int(state.get("extra_cursor", 0))

    def set_extra_targets(self, targets: ExtraTargets | None) -> None:
        """Train on ``targets`` from now on (None: no more); see :class:`ExtraTargets`.
        Not with ``--model anchored``."""
        if targets is not None:
            if self.anchored:
                raise ValueError("extra targets: not supported with --model anchored")
            targets.check(self.train.width, self.train.height)
            targets = ExtraTargets(targets.w2c.detach().float().cpu(), targets.Ks.detach().float().cpu(),
                                   targets.images.detach().float().cpu(), targets.weights.detach().float().cpu(), int(targets.every))  # fmt: skip
        self.extra = targets

    # ------------------------------------------------------------------ training
    def _is_pseudo_step(self, step: int) -> bool:
        reg = self.config.reg
        return reg.pseudo_every > 0 and step >= int(reg.pseudo_start * self.config.iterations) and step % reg.pseudo_every == 0

    def next_view(self) -> int:
        """The next training view (index into ``train``): epochs of random permutations."""
        if not self.order:
            self.order = [int(v) for v in self.order_rng.permutation(len(self.train.indices))]
        return self.order.pop()

    @property
    def converged(self) -> bool:
        """True once --early-stop has stopped the run (the training loop then ends it)."""
        return self.stop_state is not None and self.stop_state["stopped_at"] is not None

    def train_step(self) -> dict[str, Any]:
        """One optimisation step on the next training view; returns the loss terms and counts
        (after a step that :meth:`pose_round_steps` names, also registers the cameras)."""
        view = self.next_view()
        stats = self._step_anchored(view) if self.anchored else self._step_gaussians(view)
        if self.stopper is not None and self.stop_state is not None and "scale" not in stats:
            # full-resolution steps only: a coarse step's loss is not comparable
            self.stopper.update(self.stop_state, self.step, stats["l1"])
        self.step += 1
        if self.step in self.pose_round_steps():
            stats["pose_round"] = len(self.pose_rounds) + 1
            self.register_poses()
        return stats

    def pose_round_steps(self) -> list[int]:
        """Steps after which the training cameras are registered: ``iterations * r / (N + 1)``
        for ``r = 1..N``, ``N = pose_rounds``."""
        n, total = self.config.pose_rounds, self.config.iterations
        return sorted({max(1, round(total * r / (n + 1))) for r in range(1, n + 1)})

    def register_poses(self) -> dict[str, Any]:
        """Register every training camera (and their shared focal length with
        ``pose_round_focal``) against the current model, frozen, and train on with the result;
        returns the round's record (also appended to :attr:`pose_rounds`)."""
        cfg = self.config
        cams = self.train.cameras
        sh_deg = min(self.step // cfg.sh_degree_interval, cfg.sh_degree)
        w2c, scale, record = register_to_model(
            self.export_model(), cams.w2c, cams.Ks(), self.train.images, self.background,
            steps=cfg.pose_round_steps, lr=cfg.pose_round_lr, focal=cfg.pose_round_focal,
            levels=cfg.pose_round_levels, sh_degree=sh_deg, step=self.step,
        )  # fmt: skip
        intr = [dataclasses.replace(k, fx=k.fx * scale, fy=k.fy * scale) for k in cams.intrinsics]
        self.train.cameras = CameraSet(w2c.detach().cpu().to(cams.w2c.dtype), intr)
        self._small = None  # --coarse-to-fine's downsampled views hold the old intrinsics
        self.pose_rounds.append(record.to_dict())
        return self.pose_rounds[-1]
    def _view_at_scale(self, view: int) -> tuple[Tensor, Tensor, int, int]:
        """Photo ``[1, h, w, 3]``, intrinsics ``[1, 3, 3]``, w, h of ``view`` at this step's
        resolution (--coarse-to-fine; the full-resolution view otherwise)."""
        Ks = self.train.cameras.Ks()
        scale = self.resolution.scale_at(self.step, self.config.iterations) if self.resolution is not None else 1.0
        if scale == 1.0:
            return self.train.images[view : view + 1], Ks[[view]], self.train.width, self.train.height
        if self._small is None or self._small[0] != scale:  # all views at once, when the scale changes
            images, small_Ks, w, h = downsample_view(self.train.images, Ks, scale)
            self._small = (scale, images, small_Ks, w, h)
        _, images, small_Ks, w, h = self._small
        return images[view : view + 1], small_Ks[[view]], w, h

    def _step_gaussians(self, view: int) -> dict[str, Any]:
        cfg, reg, step = self.config, self.config.reg, self.step
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        viewmats = self.train.cameras.w2c[[view]].to(self.device)
        if self.pose_refiner is not None:
            viewmats = self.pose_refiner.apply(viewmats, [view])
        gt, Ks, w, h = self._view_at_scale(view)
        gt = gt.to(self.device)
        mode = "RGB+ED" if reg.depth_smooth > 0 else "RGB"
        pseudo = self.pseudo_sampler.sample(self.pseudo_state, 1) if self._is_pseudo_step(step) else None
        extra = None
        if self.extra is not None and step % self.extra.every == 0:
            p = self.extra_cursor % len(self.extra.weights)
            self.extra_cursor += 1
            extra = (self.extra.w2c[[p]].to(self.device), self.extra.Ks[[p]], self.extra.images[p : p + 1].to(self.device),
                     float(self.extra.weights[p]))  # fmt: skip
        total: Tensor | float = 0.0
        infos, pseudo_rgb = [], []
        stats: dict[str, Any] = {}
        # fused: render the raw parameters (activations inside the numba projection); the
        # torch activations are built only for the terms that need them
        raw = self.fused and reg.dropout == 0
        needs_act = not raw or reg.opacity_reg > 0 or reg.scale_reg > 0 or reg.scale_ratio_reg > 0 or pseudo is not None
        for fi, f in enumerate(self.fields):
            act = f.model.activated(sh_deg) if needs_act else {}
            if raw:
                out, alphas, info = rasterize_params_views(f.model.params, viewmats, Ks, w, h, sh_deg, self.background, mode)
            else:
                inputs = dict(act)
                if reg.dropout > 0:
                    inputs["opacities"] = gaussian_dropout(act["opacities"], reg.dropout)
                out, alphas, info = rasterize_views(inputs, viewmats, Ks, w, h, sh_deg, self.background, mode)
            if extra is not None:  # a second render; densification sees only the real view's
                e_w2c, e_K, e_img, e_weight = extra
                ew, eh = self.train.width, self.train.height  # the targets' own (full) resolution, also under --coarse-to-fine
                if raw:
                    e_out, _, _ = rasterize_params_views(f.model.params, e_w2c, e_K, ew, eh, sh_deg, self.background)
                else:
                    e_out, _, _ = rasterize_views(inputs, e_w2c, e_K, ew, eh, sh_deg, self.background)
                e_loss = e_weight * photometric_loss(e_out[..., :3], e_img, cfg.ssim_lambda, fused=self.fused)[0]
            self.strategy.step_pre_backward(f.model.params, f.optimizers, f.state, step, info)
            infos.append(info)
            loss, l1 = photometric_loss(out[..., :3], gt, cfg.ssim_lambda, fused=self.fused)
            terms: dict[str, Tensor] = {}
            if extra is not None:
                terms["prior"] = e_loss
            if reg.opacity_reg > 0:
                terms["opacity_reg"] = reg.opacity_reg * opacity_loss(act["opacities"])
            if reg.scale_reg > 0:
                terms["scale_reg"] = reg.scale_reg * scale_loss(act["scales"], self.scene_scale)
            if reg.scale_ratio_reg > 0:
                terms["scale_ratio_reg"] = reg.scale_ratio_reg * scale_ratio_loss(act["scales"], reg.max_scale_ratio)
            if reg.depth_smooth > 0:
                terms["depth_smooth"] = reg.depth_smooth * edge_aware_depth_tv(out[..., 3:4], gt, reg.depth_edge_gamma, weight=alphas)
            if pseudo is not None:
                p_out, p_alphas, _ = rasterize_views(act, pseudo, Ks, w, h, sh_deg, self.background, mode)
                pseudo_rgb.append(p_out[..., :3])
                if reg.depth_smooth > 0:
                    terms["pseudo_depth_smooth"] = reg.depth_smooth * edge_aware_depth_tv(
                        p_out[..., 3:4], p_out[..., :3], reg.depth_edge_gamma, weight=p_alphas
                    )
            if fi == 0:
                stats["l1"] = float(l1.detach())
                stats.update({k: float(v.detach()) for k, v in terms.items()})
            total = total + loss + sum(terms.values())
        if pseudo is not None and reg.coreg > 0:
            co = reg.coreg * coreg_loss(pseudo_rgb[0], pseudo_rgb[1], cfg.ssim_lambda)
            stats["coreg"] = float(co.detach())
            total = total + co
        assert isinstance(total, Tensor)
        total.backward()
        means_lr = exponential_decay(cfg.means_lr * self.scene_scale, step, cfg.iterations, 0.01)
        for f, info in zip(self.fields, infos):
            set_learning_rate(f.optimizers["means"], means_lr)
            self._optimiser_step(f, info, sh_deg)
            self.strategy.step_post_backward(f.model.params, f.optimizers, f.state, step, info)
        if self.pose_refiner is not None:
            grad = self.pose_refiner.pose_adjustment.grad
            if grad is not None:
                grad[0] = 0.0  # the first training view pins the frame
            set_learning_rate(self.pose_optimizer, exponential_decay(cfg.pose_lr, step, cfg.iterations, 0.01))
            self.pose_optimizer.step()
            self.pose_optimizer.zero_grad(set_to_none=True)
        if cfg.prune_outliers and cfg.outlier_every and (step + 1) % cfg.outlier_every == 0:
            stats["outliers_pruned"] = self.prune_outliers()
        if w != self.train.width:
            stats["scale"] = w / self.train.width
        return {"loss": float(total.detach()), **stats, "n_gaussians": self.model.num_gaussians, "sh_degree": sh_deg}

    def _optimiser_step(self, f: _Field, info: dict, sh_deg: int) -> None:
        """Adam on every parameter of a free-Gaussian field. Fused: only the SH bands in use
        (the others have had zero gradients and zero moments, so their update is exactly
        zero) and, with ``selective_adam``, only the Gaussians the view saw."""
        visibility = None
        if self.fused:
            f.optimizers["shN"].param_groups[0]["active_columns"] = num_sh_bases(sh_deg) - 1
            if self.config.selective_adam:
                radii = info["radii"]
                visibility = (radii > 0).reshape(radii.shape[0], radii.shape[1], -1).all(-1).any(0)  # [N]
        for opt in f.optimizers.values():
            if visibility is not None:
                opt.step(visibility=visibility)  # type: ignore[call-arg]
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)

    def _step_anchored(self, view: int) -> dict[str, Any]:
        """One step of --model anchored: decode, cull, render, L1 + D-SSIM, Adam, prune anchors."""
        cfg, step = self.config, self.step
        f = self.fields[0]
        model: AnchoredGaussians = f.model  # type: ignore[assignment]
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        viewmats = self.train.cameras.w2c[[view]].to(self.device)
        Ks = self.train.cameras.Ks()[[view]]
        gt = self.train.images[view : view + 1].to(self.device)
        inputs, kept = model.decode(sh_deg)
        out, _, _ = rasterize_views(inputs, viewmats, Ks, self.train.width, self.train.height, sh_deg, self.background)
        loss, l1 = photometric_loss(out[..., :3], gt, cfg.ssim_lambda)
        loss.backward()
        set_learning_rates(f.optimizers, step, cfg.iterations)
        for opt in f.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        pruned = model.step_post_backward(f.optimizers, f.state, step, kept)
        stats: dict[str, Any] = {"loss": float(loss.detach()), "l1": float(l1.detach())}
        if pruned:
            stats["anchors_pruned"] = pruned
        return {**stats, "n_gaussians": int(inputs["means"].shape[0]), "n_anchors": model.num_anchors, "sh_degree": sh_deg}

    @torch.no_grad()
    def prune_outliers(self) -> int:
        """Remove Gaussians whose centres are k-NN statistical outliers (in every field); returns how many (field 0)."""
        cfg = self.config
        removed = []
        for f in self.fields:
            mask = statistical_outliers(f.model.params["means"].detach(), cfg.outlier_k, cfg.outlier_std_ratio)
            n = int(mask.sum())
            if n and f.model.num_gaussians - n >= 2:
                remove_rows(f.model.params, f.optimizers, f.state, mask.to(f.model.params["means"].device))
            removed.append(n)
        return removed[0]
