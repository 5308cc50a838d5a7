"""A learned prior on axial CT slices: a small 2D diffusion model (``diffusers.UNet2DModel``
trained with a ``DDPMScheduler``).

Units. The network sees slices in HU-normalised attenuation ``x = mu / value_scale_per_mm - 1``
(with the default scale, mu_water = 0.0206 / mm: air -1, water 0, dense bone ~ +1.5; that is
``HU / 1000``), the units every ``recon ct`` reconstruction is converted from
(``mu = mu_water (1 + HU / 1000)``, :mod:`recon.io.units`). :func:`to_model_units` and
:func:`from_model_units` convert.

Resolution. The shipped weights were trained on slices of volumes resampled to 128^3 over their
own extent (the grid of ``scripts/bench_ct_sparse.py``), as random crops; the network is fully
convolutional (no attention), so it runs on whole slices of any size divisible by 8.

Parametrisation. ``prediction_type`` is the scheduler's (``"v_prediction"`` by default):
:meth:`SliceDiffusion.denoise` turns the network output at ``x_t`` into the Tweedie estimate of
the clean slice ``x0`` and the noise ``eps``, which the sampler (:mod:`recon.prior.dds`) uses.

Weights ship in ``recon/prior/weights/ct_diffusion/`` (diffusers layout: ``config.json`` and
``diffusion_pytorch_model.safetensors``) with a model card; :func:`load_slice_diffusion` reads
them and ``scripts/train_ct_prior.py`` trains them. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from recon.io.units import MU_WATER_PER_MM
from recon.prior.local_weights import load_local

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS",
    "TRAIN_SCRIPT",
    "SliceDiffusion",
    "SliceDiffusionOutput",
    "from_model_units",
    "load_slice_diffusion",
    "to_model_units",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "ct_diffusion"
"""The shipped weights folder (config.json + diffusion_pytorch_model.safetensors)."""
TRAIN_SCRIPT = "scripts/train_ct_prior.py"
"""The script that trains (and writes) the shipped weights."""
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def to_model_units(mu: Tensor, value_scale_per_mm: float = MU_WATER_PER_MM) -> Tensor:  # [...] -> [...]
    """Attenuation (1/mm) -> HU-normalised units ``mu / scale - 1`` (air -1, water 0)."""
    return mu / value_scale_per_mm - 1.0


def from_model_units(x: Tensor, value_scale_per_mm: float = MU_WATER_PER_MM) -> Tensor:  # [...] -> [...]
    """HU-normalised units -> attenuation (1/mm): ``(x + 1) * scale``."""
    return (x + 1.0) * value_scale_per_mm


@dataclass
class SliceDiffusionOutput(BaseOutput):
    """Output of :meth:`SliceDiffusion.denoise`."""

    x0: Tensor  # [B, H, W]
    """Tweedie estimate of the clean slices, in model units."""
    eps: Tensor  # [B, H, W]
    """Estimate of the noise in ``x_t``."""


class SliceDiffusion(ModelMixin, ConfigMixin):
    """A ``diffusers.UNet2DModel`` on one-channel axial slices plus the noise schedule it was
    trained with (see the module docstring).

    Args:
        block_out_channels: UNet channels per level, finest first (each level but the last halves
            the resolution).
        layers_per_block: ResNet blocks per level (the up path has one more).
        norm_num_groups: GroupNorm groups (must divide every channel count).
        attention: add self-attention in the middle block (at the coarsest level).
        value_scale_per_mm: attenuation that maps to 0 in model units (``mu / scale - 1``).
        num_train_timesteps: diffusion steps of the training schedule.
        beta_schedule: the scheduler's beta schedule (``"linear"``, ``"scaled_linear"``,
            ``"squaredcos_cap_v2"``).
        prediction_type: what the network predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        train_crop: edge of the training crops (informative; inference takes any size).
    """

    @register_to_config
    def __init__(
        self,
        block_out_channels: Sequence[int] = (16, 32, 32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        attention: bool = False,
        value_scale_per_mm: float = MU_WATER_PER_MM,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
        train_crop: int = 64,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, given {prediction_type!r}")
        if not value_scale_per_mm > 0:
            raise ValueError(f"value_scale_per_mm: expected > 0, given {value_scale_per_mm}")
        chans = tuple(int(c) for c in block_out_channels)
        if any(c % norm_num_groups for c in chans):
            raise ValueError(f"norm_num_groups: {norm_num_groups} must divide every channel count {list(chans)}")
        n = len(chans)
        self.unet = UNet2DModel(
            sample_size=train_crop,
            in_channels=1,
            out_channels=1,
            block_out_channels=chans,
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=norm_num_groups,
            add_attention=attention,
        )
        sched = self.train_scheduler()
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.float().clone(), persistent=False)  # [T]

    # ------------------------------------------------------------------ schedules
    def train_scheduler(self) -> DDPMScheduler:
        """The DDPM schedule the network was trained with (``add_noise``, ``get_velocity``)."""
        c = self.config
        return DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule, prediction_type=c.prediction_type, clip_sample=False)

    def ddim_scheduler(self) -> DDIMScheduler:
        """A DDIM scheduler on the same schedule (for plain sampling)."""
        c = self.config
        return DDIMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule, prediction_type=c.prediction_type, clip_sample=False)

    @property
    def size_multiple(self) -> int:
        """Slice sides must be multiples of this (the UNet's total downsampling)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ network
    def forward(self, sample: Tensor, timesteps: Tensor) -> Tensor:  # [B, 1, H, W], [B] -> [B, 1, H, W]
        """The raw network output (what ``prediction_type`` names) at noisy slices ``sample``."""
        return self.unet(sample, timesteps).sample

    def denoise(self, x_t: Tensor, t: int, *, batch: int = 16) -> SliceDiffusionOutput:  # [B, H, W] -> x0, eps [B, H, W]
        """Tweedie estimates of the clean slices and of the noise at timestep ``t`` (model units),
        running the network on ``batch`` slices at a time (no gradients)."""
        if x_t.dim() != 3:
            raise ValueError(f"x_t: expected [B, H, W] slices, given shape {tuple(x_t.shape)}")
        m = self.size_multiple
        if x_t.shape[-1] % m or x_t.shape[-2] % m:
            raise ValueError(f"x_t: slice sides must be multiples of {m}, given {tuple(x_t.shape[-2:])}")
        if not 0 <= int(t) < self.config.num_train_timesteps:
            raise ValueError(f"t: expected 0 <= t < {self.config.num_train_timesteps}, given {t}")
        ab = self.alphas_cumprod[int(t)].to(x_t)
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        outs = []
        with torch.no_grad():
            for i in range(0, x_t.shape[0], batch):
                xb = x_t[i : i + batch, None]
                tb = torch.full((xb.shape[0],), int(t), device=xb.device, dtype=torch.long)
                outs.append(self(xb, tb)[:, 0])
        out = torch.cat(outs).to(x_t)
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps = out
            x0 = (x_t - s * eps) / a
        elif kind == "v_prediction":
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        else:
            x0 = out
            eps = (x_t - a * x0) / s.clamp_min(1e-8)
        return SliceDiffusionOutput(x0=x0, eps=eps)

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:  # [B, 1, H, W] each, [B]
        """What the network should output for clean ``x0``, ``noise`` and ``timesteps``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        ab = self.alphas_cumprod.to(x0)[timesteps].view(-1, 1, 1, 1)
        return ab.sqrt() * noise - (1.0 - ab).sqrt() * x0

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:  # [B, 1, H, W] each, [B]
        """``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``."""
        ab = self.alphas_cumprod.to(x0)[timesteps].view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


# ====================================================================== weights
def load_slice_diffusion(path: str | Path | None = None, *, device: torch.device | str = "cpu") -> SliceDiffusion:
    """Load a :class:`SliceDiffusion` from a local folder written by ``save_pretrained``
    (default: the shipped weights, :data:`DEFAULT_WEIGHTS`). Never downloads.

    Raises:
        InputError: the folder or one of its files is missing (naming the path and
            ``scripts/train_ct_prior.py``, which writes them), or the files do not load.
    """
    folder = Path(path) if path is not None else DEFAULT_WEIGHTS
    return load_local(SliceDiffusion, folder, "CT slice diffusion", TRAIN_SCRIPT).to(device).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))

