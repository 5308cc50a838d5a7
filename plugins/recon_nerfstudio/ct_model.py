"""``recon-ct`` model: nerfstudio's Model API around recon's radiative Gaussians for CT.

Everything CT is recon's (:mod:`recon.ct.gaussians`); this module only connects it to nerfstudio:

* initialisation: a :class:`recon.ct.gaussians.GaussianTrainer` built on the training projections
  (FDK, optionally OS-SART, sampled Gaussians fitted to that volume -- ``recon ct fit``'s
  recipe and defaults); the model owns its :class:`~recon.ct.gaussians.RadiativeGaussians`;
* rendering: :func:`recon.ct.gaussians.render_xray` (additive splatting through
  :func:`recon.splat.rasterize.rasterization`) for a nerfstudio camera converted by
  :func:`.convert.xray_cameras_from_nerfstudio`;
* loss: the trainer's projection loss (L1 + ``lambda_dssim`` D-SSIM) plus ``lambda_tv`` 3D TV of a
  random voxelised patch, as ``recon ct fit --gaussian.render splat``;
* density control: the trainer's gradient statistics and clone / split / prune pass, called from
  a nerfstudio callback on nerfstudio's optimisers (recon keeps those statistics on
  whichever device the model is on);
* metrics: PSNR / SSIM of the projections and, with a reference volume, 3D PSNR of the
  voxelised Gaussians (:func:`recon.ct.metrics.psnr_3d`).

The loss, TV patch and density control are the trainer's own methods (``projection_loss``,
``tv_patch``, ``accumulate_gradients``, ``density_control``), called rather than restated.

One projection per step (nerfstudio's full-image datamanager) where ``recon ct fit`` uses
``batch_views``; the step counts here are recon's times ``batch_views`` (the same number of
projections seen). Projections are in units of the training maximum (``recon-ct-data``), so the
Gaussians' densities are too; :meth:`ReconCTModel.volume` returns 1/mm. Learning rates come from
the method's optimiser config; the means' rate is in voxels (scaled by the voxel size here).

Checkpoints hold ``gaussians.params.{means, quats, scales, densities}`` (recon's raw parameters,
world mm) and ``density_unit``; loading resizes to the checkpoint's number of Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from recon.ct.gaussians import PARAM_NAMES, RadiativeGaussians, render_xray
from recon.ct.gaussian_trainer import GaussianFitConfig, GaussianTrainer
from recon.ct.metrics import psnr_3d
from recon.ct.voxelize import tv_3d
from recon.metrics import psnr, ssim

from .convert import xray_cameras_from_nerfstudio
from .ct_dataparser import CTViews
from .optim_utils import adopt_parameters
from .recon_defaults import ct_fit_default
from .schedulers import bind_schedules
from .warmup import warm_up_cpu_kernels

__all__ = ["ReconCTModelConfig", "ReconCTModel", "STEPS_PER_RECON_STEP"]

STEPS_PER_RECON_STEP: int = ct_fit_default("batch_views")
"""nerfstudio steps (one projection each) per ``recon ct fit`` step (``batch_views`` projections)."""


@dataclass
class ReconCTModelConfig(ModelConfig):
    """Radiative Gaussians (R2-Gaussian) on X-ray projections, with recon's initialisation and density control."""

    _target: Type = field(default_factory=lambda: ReconCTModel)
    enable_collider: bool = False
    """Unused (no rays)."""
    init: Literal["fdk", "sart"] = field(default_factory=lambda: ct_fit_default("init"))
    """Volume the Gaussians are sampled from: FDK, or FDK followed by OS-SART iterations (recon's default)."""
    n_gaussians: int = field(default_factory=lambda: ct_fit_default("n_gaussians"))
    """Initial number of Gaussians (at most the number of voxels above recon's threshold)."""
    init_fit_steps: int = field(default_factory=lambda: ct_fit_default("init_fit_steps"))
    """Adam steps fitting the sampled Gaussians to the initial volume (0: plain sampling)."""
    lambda_dssim: float = field(default_factory=lambda: ct_fit_default("lambda_dssim"))
    """Loss: L1 + lambda_dssim * (1 - SSIM) on the projection."""
    lambda_tv: float = field(default_factory=lambda: ct_fit_default("lambda_tv"))
    """Weight of the 3D total variation of a random voxelised patch (0: none)."""
    densify: bool = True
    """Run recon's density control (clone / split / prune; CPU only)."""
    densify_from: int = field(default_factory=lambda: ct_fit_default("densify_from") * STEPS_PER_RECON_STEP)
    """First step of density control."""
    densify_until: int = field(default_factory=lambda: ct_fit_default("densify_until") * STEPS_PER_RECON_STEP)
    """Last step of density control."""
    densify_every: int = field(default_factory=lambda: ct_fit_default("densify_every") * STEPS_PER_RECON_STEP)
    """Steps between density-control passes."""
    max_gaussians: int = field(default_factory=lambda: ct_fit_default("max_gaussians"))
    """Never grow beyond this many Gaussians."""
    backend: Literal["auto", "cpu", "torch"] = "auto"
    """Rasteriser of the X-ray splats: 'auto' = recon's numba kernels on CPU, the PyTorch twin elsewhere."""
    seed: int = field(default_factory=lambda: ct_fit_default("seed"))
    """Seed of the initialisation, TV patches and splits."""

    def fit_config(self) -> GaussianFitConfig:
        """recon's hyperparameters with this config's values (the rest: ``recon ct fit``'s defaults)."""
        cfg = GaussianFitConfig(
            iterations=0, render="splat", init=self.init, n_gaussians=self.n_gaussians,
            init_fit_steps=self.init_fit_steps, lambda_dssim=self.lambda_dssim, lambda_tv=self.lambda_tv,
            densify_from=self.densify_from, densify_until=self.densify_until, densify_every=self.densify_every,
            max_gaussians=self.max_gaussians, seed=self.seed,
        )  # fmt: skip
        cfg.validate()
        return cfg


class ReconCTModel(Model):
    """See the module docstring."""

    config: ReconCTModelConfig

    # ------------------------------------------------------------------ setup
    def populate_modules(self) -> None:
        super().populate_modules()
        # on the main thread, before the viewer's render thread exists (see .warmup)
        warm_up_cpu_kernels("ct", "cuda" if torch.cuda.is_available() else "cpu")
        metadata = self.kwargs.get("metadata") or {}
        ct = metadata.get("ct")
        if not isinstance(ct, CTViews):
            raise ValueError("recon-ct: the training parse has no metadata['ct']; use the recon-ct-data dataparser")
        self.fit_config = self.config.fit_config()
        self.geometry = ct.geometry
        self.world_scale = float(ct.world_scale)
        self.projection_scale = float(ct.projection_scale)
        self.reference: Optional[np.ndarray] = ct.volume
        self.recon_trainer: Optional[GaussianTrainer] = None
        if metadata.get("ct_initialise", True):
            # recon's initialisation (FDK / SART, sampling, fit to the volume), on the CPU
            self.recon_trainer = GaussianTrainer(ct.projections, ct.geometry, self.fit_config)
            CONSOLE.log(
                f"recon-ct init: {self.recon_trainer.model.num_gaussians} Gaussians from {self.recon_trainer.init_description}"
            )
            self.gaussians = self.recon_trainer.model
        else:  # a checkpoint replaces these (load_state_dict resizes)
            n = 4
            quats = torch.zeros(n, 4)
            quats[:, 0] = 1.0
            self.gaussians = RadiativeGaussians(
                {"means": torch.zeros(n, 3), "quats": quats, "scales": torch.zeros(n, 3), "densities": torch.zeros(n)}
            )
        self.register_buffer("density_unit", torch.tensor(self.gaussians.density_unit, dtype=torch.float64))
        self.step = 0
        self.max_steps: Optional[int] = None
        self._means2d: Optional[Tensor] = None
        self._optimizers = None
        self._volume_cache: Optional[Tuple[int, int, Tensor]] = None

    @property
    def num_points(self) -> int:
        return self.gaussians.num_gaussians

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {name: [self.gaussians.params[name]] for name in PARAM_NAMES}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        """Resizes the Gaussians to the checkpoint's count, then loads; restores the density unit."""
        for name in PARAM_NAMES:
            saved = state_dict.get(f"gaussians.params.{name}")
            if saved is not None and saved.shape != self.gaussians.params[name].shape:
                self.gaussians.params[name] = nn.Parameter(torch.zeros(saved.shape, device=self.device))
        result = super().load_state_dict(state_dict, strict=strict, **kwargs)
        self.gaussians.density_unit = float(self.density_unit)
        if self.recon_trainer is not None:
            self.recon_trainer.vol_max = float(self.density_unit)
            self.recon_trainer.reset_gradient_stats()
        self._volume_cache = None
        return result

    def update_to_step(self, step: int) -> None:
        self.step = step

    # ------------------------------------------------------------------ training hooks
    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        optimizers = training_callback_attributes.optimizers
        assert optimizers is not None
        self._optimizers = optimizers
        adopt_parameters(optimizers, self.gaussians.params, PARAM_NAMES)
        trainer = training_callback_attributes.trainer
        self.max_steps = None if trainer is None else int(trainer.config.max_num_iterations)
        # decays follow --max-num-iterations; the means' rate is given in voxels
        bind_schedules(optimizers, self.max_steps, {"means": float(min(self.geometry.voxel_mm))})
        callbacks = [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._set_step)]
        if self.config.densify and self.recon_trainer is not None:
            self.recon_trainer.optimizers = {name: optimizers.optimizers[name] for name in PARAM_NAMES}
            callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._density_control))
        return callbacks

    def _set_step(self, step: int) -> None:
        self.step = step

    def _density_control(self, step: int) -> None:
        """recon's statistics and pass, at recon's schedule (its step counter is nerfstudio's + 1)."""
        fit, cfg = self.recon_trainer, self.fit_config
        assert fit is not None
        fit.step = step  # recon accumulates before it counts the step
        fit.accumulate_gradients(self._means2d, 1)
        self._means2d = None
        fit.step = step + 1
        due = cfg.densify_from <= fit.step <= cfg.densify_until and fit.step % cfg.densify_every == 0
        if due and (self.max_steps is None or fit.step < self.max_steps):
            before = self.num_points
            fit.density_control()
            adopt_parameters(self._optimizers, self.gaussians.params, PARAM_NAMES)
            CONSOLE.log(f"recon-ct density control at step {step}: {before} -> {self.num_points} Gaussians")

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:  # type: ignore[override]
        """X-ray image of one camera: ``projection`` [H, W, 1] (training units), ``rgb`` [H, W, 3]
        (the projection clamped to 0..1, for the viewer) and, in eval mode, ``depth`` [H, W, 1]
        (distance to the volume centre, so the viewer can composite the image)."""
        return self._render(camera, None)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """Render ``camera`` [1] without gradients; ``obb_box`` (viewer crop) keeps the Gaussians inside it."""
        return self._render(camera.to(self.device), obb_box)

    def _render(self, camera: Cameras, obb_box: Optional[OrientedBox]) -> Dict[str, Union[Tensor, List]]:
        if not isinstance(camera, Cameras):
            raise ValueError(f"camera: expected nerfstudio Cameras, given {type(camera).__name__}")
        if len(camera.shape) != 1 or camera.shape[0] != 1:
            raise ValueError(f"camera: expected a batch of one camera, given shape {tuple(camera.shape)}")
        cams = xray_cameras_from_nerfstudio(camera, self.world_scale)
        act = self.gaussians.activated()
        if obb_box is not None:
            keep = obb_box.within(act["means"] * self.world_scale).reshape(-1)  # [N] bool
            act = {k: v[keep] for k, v in act.items()}
        H, W = cams.height, cams.width
        if act["means"].shape[0] == 0:
            image = torch.zeros(H, W, 1, device=self.device)
        else:
            img, meta = render_xray(**act, cameras=cams, eps2d=self.fit_config.eps2d, backend=self.config.backend)
            if self.training and obb_box is None and meta["means2d"].requires_grad:
                meta["means2d"].retain_grad()  # recon's densification statistic
                self._means2d = meta["means2d"]
            image = img[0][..., None]  # [H, W, 1]
        outputs: Dict[str, Union[Tensor, List]] = {"projection": image, "rgb": image.clamp(0.0, 1.0).expand(H, W, 3)}
        if not self.training:
            centre = camera.camera_to_worlds[0, :3, 3].to(self.device)
            outputs["depth"] = centre.norm().expand(H, W, 1).clone()
        return outputs

    # ------------------------------------------------------------------ losses and metrics
    def _gt_and_pred(self, outputs: Dict, batch: Dict) -> Tuple[Tensor, Tensor]:  # [H, W, 1] each
        gt = batch["image"].to(self.device).float()
        if gt.dim() != 3 or gt.shape[-1] != 1:
            raise ValueError(f"batch['image']: expected a projection [H, W, 1], given {tuple(gt.shape)}")
        return gt, outputs["projection"]

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt, pred = self._gt_and_pred(outputs, batch)
        return {"psnr": psnr(pred.detach(), gt), "gaussian_count": torch.tensor(float(self.num_points))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        fit = self.recon_trainer
        if fit is None:
            raise RuntimeError("recon-ct: no training state (the model was built in inference mode)")
        gt, pred = self._gt_and_pred(outputs, batch)
        loss, _l1 = fit.projection_loss(pred[None, ..., 0], gt[None, ..., 0])  # recon's L1 + D-SSIM
        losses = {"projection_loss": loss}
        if self.config.lambda_tv > 0:  # recon's TV on a random patch, in units of the initial maximum
            patch = fit.tv_patch(self.gaussians.activated())
            losses["tv_loss"] = self.config.lambda_tv * tv_3d(patch / fit.vol_max)
        return losses

    @torch.no_grad()
    def volume(self) -> Tensor:  # [Z, Y, X]
        """The Gaussians voxelised on the training geometry's grid, attenuation in 1/mm (cached per step)."""
        key = (self.step, self.num_points)
        if self._volume_cache is None or self._volume_cache[:2] != key:
            vol = self.gaussians.voxelize(self.geometry, support_sigmas=self.fit_config.support_sigmas)
            self._volume_cache = (*key, vol.detach().cpu() * self.projection_scale)
        return self._volume_cache[2]

    @torch.no_grad()
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """PSNR / SSIM of the projection (training units, peak 1) and, with a reference volume,
        ``psnr_3d`` of :meth:`volume`; images: ``img`` (reference | render) and ``slices`` (central
        axial slice, reconstruction | reference, in the reference's range)."""
        gt, pred = self._gt_and_pred(outputs, batch)
        metrics = {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt))}
        images = {"img": torch.cat([gt, pred], dim=1).clamp(0.0, 1.0).expand(-1, -1, 3)}
        if self.reference is not None:
            vol, ref = self.volume(), torch.from_numpy(np.asarray(self.reference, dtype=np.float32))
            metrics["psnr_3d"] = float(psnr_3d(vol, ref))
            lo, hi = float(ref.min()), float(ref.max())
            z = ref.shape[0] // 2
            pair = (torch.cat([vol[z], ref[z]], dim=1) - lo) / max(hi - lo, 1e-12)
            images["slices"] = pair.clamp(0.0, 1.0)[..., None].expand(-1, -1, 3)
        return metrics, images

    def extra_repr(self) -> str:
        return f"gaussians={self.num_points}, volume={list(self.geometry.n_voxel)}, backend={self.config.backend}"
