"""``recon-splat`` model: nerfstudio's Model API around recon's Gaussian splatting.

Rendering is :func:`recon.splat.rasterize.rasterization` (numba kernels for CPU tensors, gsplat
for CUDA tensors, picked by the model's device), densification is
:class:`recon.splat.strategy.DensifyStrategy`, initialisation is
:meth:`recon.splat.model.GaussianModel.from_points`, metrics are :mod:`recon.metrics`.

Why it subclasses ``SplatfactoModel``: nerfstudio recognises Gaussian models by
``isinstance(model, SplatfactoModel)`` -- ``ns-export gaussian-splat`` refuses anything else and
the viewer only then applies its background colour and splat depth handling. Every splatfacto
method that calls ``.cuda()``, builds torchmetrics' LPIPS (which downloads AlexNet) or reads
splatfacto-only config is overridden here; what is inherited is plain bookkeeping: the parameter
properties ``means`` ... ``opacities`` (the names the exporter reads), ``load_state_dict`` (resizes
to the checkpoint's number of Gaussians), ``step_cb`` / ``step_post_backward`` (drive the strategy),
``get_outputs_for_camera``, ``set_crop``, ``set_background``, ``composite_with_background``.

Parameters use splatfacto's names and shapes so checkpoints and exports are interchangeable:
``means`` [N, 3], ``scales`` [N, 3] (log), ``quats`` [N, 4] (wxyz, unnormalised),
``features_dc`` [N, 3] (SH DC, always SH -- also at ``sh_degree`` 0), ``features_rest``
[N, K-1, 3], ``opacities`` [N, 1] (logit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from recon.metrics import Lpips, lpips_status, psnr, ssim
from recon.splat.loss import photometric_loss
from recon.splat.model import GaussianModel, sh_to_rgb
from recon.splat.rasterize import rasterization
from recon.splat.sh import num_sh_bases
from recon.splat.strategy import DensifyStrategy

from .convert import viewmats_from_c2w
from .optim_utils import adopt_parameters
from .recon_defaults import capture_fit_default
from .warmup import warm_up_cpu_kernels
from .schedulers import bind_schedules

__all__ = ["ReconSplatModelConfig", "ReconSplatModel", "GAUSS_PARAM_NAMES"]

GAUSS_PARAM_NAMES = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
"""splatfacto's parameter (and optimiser group) names, in its order."""

VISER_BACKGROUND = (0.1490, 0.1647, 0.2157)
"""The viewer's default background, used for eval renders when training on random backgrounds."""


@dataclass
class ReconSplatModelConfig(ModelConfig):
    """Gaussian splatting on recon's rasteriser (CPU or CUDA) with recon's densification."""

    _target: Type = field(default_factory=lambda: ReconSplatModel)
    sh_degree: int = field(default_factory=lambda: capture_fit_default("sh_degree"))
    """Highest spherical-harmonics degree of the colours (0..3)."""
    sh_degree_interval: int = field(default_factory=lambda: capture_fit_default("sh_degree_interval"))
    """Raise the SH degree used by one every this many steps."""
    ssim_lambda: float = field(default_factory=lambda: capture_fit_default("ssim_lambda"))
    """Loss: (1 - l) * L1 + l * (1 - SSIM)."""
    background_color: Literal["random", "black", "white"] = "black"
    """Background behind the Gaussians while training; evaluation and the viewer use the viewer's colour (black/white: that colour)."""
    init_opacity: float = field(default_factory=lambda: capture_fit_default("init_opacity"))
    """Opacity of every initial Gaussian."""
    init_scale: float = field(default_factory=lambda: capture_fit_default("init_scale"))
    """Multiplier of the nearest-neighbour initial scale."""
    random_points: int = field(default_factory=lambda: capture_fit_default("init_points"))
    """Gaussians drawn uniformly in the scene box when no seed points arrive (also the placeholder a checkpoint then replaces)."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """'antialiased' multiplies opacities by the eps2d compensation (PLY then needs an antialiased viewer)."""
    backend: Literal["auto", "cpu", "torch", "gsplat"] = "auto"
    """Rasteriser: 'auto' = gsplat on CUDA, recon's numba kernels on CPU (see recon.splat.rasterize)."""
    densify: DensifyStrategy = field(default_factory=lambda: capture_fit_default("densify"))
    """Densification and pruning (gsplat DefaultStrategy semantics; scene scale from the training cameras)."""


class ReconSplatModel(SplatfactoModel):
    """See the module docstring."""

    config: ReconSplatModelConfig  # type: ignore[assignment]
    strategy: DensifyStrategy  # type: ignore[assignment]

    # ------------------------------------------------------------------ setup
    def populate_modules(self) -> None:
        cfg = self.config
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"sh_degree: expected 0..3, given {cfg.sh_degree}")
        seeds = self.seed_points
        if seeds is not None and len(seeds[0]) >= 2:
            points, rgb = seeds  # [P, 3] and [P, 3] uint8 (nerfstudio's convention)
            rgb = rgb.float() / 255.0  # 0..255 whatever the dtype, as splatfacto reads them
            gaussians = GaussianModel.from_points(
                points.float(), rgb, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity, init_scale=cfg.init_scale
            )
        else:
            gaussians = GaussianModel.random_in_box(
                cfg.random_points, self.scene_box.aabb.float(), sh_degree=cfg.sh_degree,
                init_opacity=cfg.init_opacity, init_scale=cfg.init_scale,
            )  # fmt: skip
        p = gaussians.params
        self.gauss_params = nn.ParameterDict(
            {
                "means": p["means"],
                "scales": p["scales"],
                "quats": p["quats"],
                "features_dc": nn.Parameter(p["sh0"].detach()[:, 0, :].clone()),  # [N, 3]
                "features_rest": p["shN"],  # [N, K-1, 3]
                "opacities": nn.Parameter(p["opacities"].detach()[:, None].clone()),  # [N, 1]
            }
        )
        self.step = 0
        self.crop_box = None
        # on the main thread, before the viewer's render thread exists (see .warmup)
        warm_up_cpu_kernels("splat", "cuda" if torch.cuda.is_available() else "cpu")
        if cfg.background_color == "random":
            self.background_color = torch.tensor(VISER_BACKGROUND)
        else:
            self.background_color = get_color(cfg.background_color)
        self.strategy = cfg.densify
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)  # rescaled in get_training_callbacks
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.info: Dict = {}
        self._lpips: Optional[Lpips] = None
        self._lpips_warned = False

    # splatfacto stores sigmoid colours at sh_degree 0; here features_dc is always the SH DC term.
    @property
    def colors(self) -> Tensor:  # [N, 3] in 0..1 (degree-0 colour)
        return sh_to_rgb(self.features_dc)

    @property
    def shs_0(self) -> Tensor:  # [N, 3]
        return self.features_dc

    # ------------------------------------------------------------------ optimisation
    def get_gaussian_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {name: [self.gauss_params[name]] for name in GAUSS_PARAM_NAMES}

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return self.get_gaussian_param_groups()

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        optimizers = training_callback_attributes.optimizers
        assert optimizers is not None
        adopt_parameters(optimizers, self.gauss_params, GAUSS_PARAM_NAMES)
        trainer = training_callback_attributes.trainer
        if trainer is not None:  # the means' decay and the densification window follow --max-num-iterations
            bind_schedules(optimizers, trainer.config.max_num_iterations)
            self.strategy = self.strategy.within(trainer.config.max_num_iterations)  # as recon fit does
        self.strategy_state = self.strategy.initialize_state(scene_scale=self._scene_scale(training_callback_attributes))
        self.strategy.check_sanity(self.gauss_params, {k: optimizers.optimizers[k] for k in GAUSS_PARAM_NAMES})
        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.step_cb, args=[optimizers]),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.step_post_backward),
        ]

    @staticmethod
    def _scene_scale(attrs: TrainingCallbackAttributes) -> float:
        """1.1 x the largest distance of a training camera from their centroid, as ``recon fit``.

        Falls back to 1 (nerfstudio's normalised world) with a single training view.
        """
        pipeline = attrs.pipeline
        dataset = getattr(getattr(pipeline, "datamanager", None), "train_dataset", None)
        if dataset is None:
            return 1.0
        centres = dataset.cameras.camera_to_worlds[:, :3, 3].float()  # [V, 3]
        scale = float((centres - centres.mean(0)).norm(dim=-1).max()) * 1.1
        return scale if scale > 0 else 1.0

    # ------------------------------------------------------------------ rendering
    def _get_background_color(self) -> Tensor:  # [3]
        if self.training:
            if self.config.background_color == "random":
                return torch.rand(3, device=self.device)
            return get_color(self.config.background_color).to(self.device)
        return self.background_color.to(self.device)  # the viewer sets it with set_background

    def sh_degree_to_use(self) -> int:
        return min(self.step // max(1, self.config.sh_degree_interval), self.config.sh_degree)

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:  # type: ignore[override]
        """Render ``camera`` (one camera while training).

        Returns ``rgb`` [H, W, 3], ``accumulation`` [H, W, 1], ``depth`` [H, W, 1] (expected
        depth; None while training) and ``background`` ([3] training, [H, W, 3] otherwise).
        """
        if not isinstance(camera, Cameras):
            raise ValueError(f"camera: expected nerfstudio Cameras, given {type(camera).__name__}")
        if camera.shape[0] != 1:
            raise ValueError(f"camera: expected a batch of one camera, given shape {tuple(camera.shape)}")
        W, H = int(camera.width[0, 0]), int(camera.height[0, 0])
        self.last_size = (H, W)
        background = self._get_background_color()

        params = dict(self.gauss_params.items())
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(params["means"]).reshape(-1)  # [N] bool
            if int(keep.sum()) == 0:
                return self.get_empty_outputs(W, H, self.background_color.to(self.device))
            params = {k: v[keep] for k, v in params.items()}

        degree = self.sh_degree_to_use()
        colors = torch.cat([params["features_dc"][:, None, :], params["features_rest"][:, : num_sh_bases(degree) - 1]], dim=1)
        render_mode = "RGB" if self.training else "RGB+ED"
        render, alpha, info = rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=viewmats_from_c2w(camera.camera_to_worlds.to(self.device)),
            Ks=camera.get_intrinsics_matrices().to(self.device),
            width=W,
            height=H,
            sh_degree=degree,
            render_mode=render_mode,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.backend,
        )
        if self.training:
            self.info = info
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, info)

        rgb = torch.clamp(render[..., :3] + (1.0 - alpha) * background, 0.0, 1.0)  # [1, H, W, 3]
        depth = None
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)  # [H, W, 1]
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    # ------------------------------------------------------------------ losses and metrics
    def get_gt_img(self, image: Tensor) -> Tensor:  # [H, W, C] -> float [H, W, C] on the model's device
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return image.to(self.device)

    def _gt_and_pred(self, outputs: Dict, batch: Dict) -> Tuple[Tensor, Tensor]:
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        return gt, outputs["rgb"]

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt, pred = self._gt_and_pred(outputs, batch)
        return {"psnr": psnr(pred.detach(), gt), "gaussian_count": torch.tensor(float(self.num_points))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        gt, pred = self._gt_and_pred(outputs, batch)
        if "mask" in batch:  # [H, W, 1]; as splatfacto: both images are blacked out outside it
            mask = batch["mask"].to(self.device)
            gt, pred = gt * mask, pred * mask
        loss, _l1 = photometric_loss(pred[None], gt[None], self.config.ssim_lambda)  # recon fit's loss
        return {"main_loss": loss}

    @torch.no_grad()
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """PSNR and SSIM (recon.metrics); LPIPS only when its AlexNet weights are on disk.

        Without the weights there is no ``lpips`` key (nerfstudio averages every key as a
        number) and the reason is printed once.
        """
        gt, pred = self._gt_and_pred(outputs, batch)
        metrics = {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt))}
        status = lpips_status()
        if status.available:
            if self._lpips is None:
                self._lpips = Lpips()
            metrics["lpips"] = float(self._lpips(pred, gt))
        elif not self._lpips_warned:
            CONSOLE.print(f"[bold yellow]LPIPS unavailable, not reported: {status.reason}")
            self._lpips_warned = True
        return metrics, {"img": torch.cat([gt, pred], dim=1)}

    @property
    def num_points(self) -> int:
        return self.gauss_params["means"].shape[0]

    def extra_repr(self) -> str:
        return f"gaussians={self.num_points}, sh_degree={self.config.sh_degree}, backend={self.config.backend}"

