"""Method specifications registered with ``ns-train`` (entry points in ``pyproject.toml``).

``recon-splat``: :class:`.splat_model.ReconSplatModel` in nerfstudio's ``VanillaPipeline`` with
:class:`.datamanager.ReconDatamanager` (full images; ``recon-fewview`` parser by default). Schedules
follow ``recon fit``: 3000 steps, SH degree up every 500, means learning rate decaying to 1%,
densification from recon's defaults.

``recon-ct``: :class:`.ct_model.ReconCTModel` (recon's radiative Gaussians) with
:class:`.ct_datamanager.ReconCTDatamanager` (``recon-ct-data`` parser by default). Settings follow
``recon ct fit --method gaussian --gaussian.render splat``, one projection per step: recon's
steps x ``batch_views`` (1000 steps), all rates decaying to ``lr_final_ratio`` of their start.

Learning-rate decays last ``--max-num-iterations`` steps (:func:`.schedulers.bind_schedules`). The
device is CUDA when torch sees one, else CPU (``--machine.device-type`` overrides); the rasteriser
follows the device.
"""

from __future__ import annotations

from typing import Optional

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from recon.splat.model import LearningRates

from .ct_datamanager import ReconCTDatamanagerConfig
from .ct_model import STEPS_PER_RECON_STEP, ReconCTModelConfig
from .datamanager import ReconDatamanagerConfig
from .recon_defaults import capture_fit_default, ct_fit_default
from .schedulers import ExponentialDecayConfig
from .splat_model import ReconSplatModelConfig

__all__ = ["recon_splat", "recon_ct", "default_device_type", "splat_optimizers", "ct_optimizers"]


def default_device_type() -> str:
    """'cuda' when torch sees a CUDA device, else 'cpu' (nerfstudio's own default is always 'cuda')."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def splat_optimizers(max_steps: Optional[int] = None) -> dict:
    """One Adam per splatfacto parameter group with recon's learning rates (gsplat's).

    The means' rate decays exponentially to 1% over ``max_steps`` (None: the trainer's
    ``--max-num-iterations``), as in ``recon fit``; nerfstudio
    normalises the world to about +/-1, so it is not multiplied by a scene scale. The decay is
    :class:`.schedulers.ExponentialDecay` (float state: checkpoints load with ``weights_only``).
    """
    lr = LearningRates()
    means_lr = capture_fit_default("means_lr")

    def adam(rate: float) -> AdamOptimizerConfig:
        return AdamOptimizerConfig(lr=rate, eps=lr.eps)

    return {
        "means": {
            "optimizer": adam(means_lr),
            "scheduler": ExponentialDecayConfig(lr_final=means_lr * 0.01, max_steps=max_steps),
        },
        "scales": {"optimizer": adam(lr.scales), "scheduler": None},
        "quats": {"optimizer": adam(lr.quats), "scheduler": None},
        "opacities": {"optimizer": adam(lr.opacities), "scheduler": None},
        "features_dc": {"optimizer": adam(lr.sh0), "scheduler": None},
        "features_rest": {"optimizer": adam(lr.shN), "scheduler": None},
    }


def _recon_splat_config() -> TrainerConfig:
    steps = capture_fit_default("iterations")
    return TrainerConfig(
        method_name="recon-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=capture_fit_default("checkpoint_every"),
        steps_per_eval_all_images=1000,
        max_num_iterations=steps,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=VanillaPipelineConfig(
            datamanager=ReconDatamanagerConfig(),
            model=ReconSplatModelConfig(),
        ),
        optimizers=splat_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


recon_splat = MethodSpecification(
    config=_recon_splat_config(),
    description="Few-view Gaussian splatting on recon's rasteriser: CPU (numba) or CUDA (gsplat), by device.",
)


def ct_optimizers() -> dict:
    """One Adam per recon parameter (``means, quats, scales, densities``) with ``recon ct fit``'s rates.

    Every rate decays exponentially to ``lr_final_ratio`` of its start over the trainer's
    ``--max-num-iterations``. The means' rate is in voxels: the model multiplies it by the
    smallest voxel size (mm) when training starts, as recon does.
    """
    ratio = ct_fit_default("lr_final_ratio")

    def group(rate: float) -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=rate, eps=1e-15),
            "scheduler": ExponentialDecayConfig(lr_final=rate * ratio),
        }

    return {name: group(ct_fit_default(f"lr_{name}")) for name in ("means", "quats", "scales", "densities")}


def _recon_ct_config() -> TrainerConfig:
    steps = ct_fit_default("iterations") * STEPS_PER_RECON_STEP
    return TrainerConfig(
        method_name="recon-ct",
        steps_per_eval_image=200,  # each voxelises the Gaussians for psnr_3d when there is a reference
        steps_per_eval_batch=0,
        steps_per_save=500,
        steps_per_eval_all_images=500,
        max_num_iterations=steps,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=VanillaPipelineConfig(
            datamanager=ReconCTDatamanagerConfig(),
            model=ReconCTModelConfig(),
        ),
        optimizers=ct_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, default_composite_depth=False),
        vis="viewer",
    )


recon_ct = MethodSpecification(
    config=_recon_ct_config(),
    description="Sparse-view CT with radiative Gaussians (R2-Gaussian) on recon's X-ray splatting: CPU or CUDA, by device.",
)
