"""Per-scene LoRA fine-tuning of a local pretrained pipeline (``--prior pretrained --prior.lora-steps N``).

Difix3D+ fine-tunes its one-step fixer on (render, photo) pairs; here a Stable Diffusion
image-to-image pipeline the user has on disk gets LoRA adapters (``peft``) on its UNet's attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), trained for a few steps on pairs from
the scene itself: the training views rendered by the fit at the first refresh (under-fitted:
blurred, with floaters) and their photos.

Objective (:func:`finetune_lora`): the render's latent ``z_r`` is noised to ``x_t`` at a timestep
``t`` drawn below ``strength x T`` (where the image-to-image pipeline starts denoising); the UNet
is trained to predict the noise that would make ``x_t`` the noised *photo* latent ``z_p``:
``eps* = (x_t - sqrt(a_t) z_p) / sqrt(1 - a_t)`` (or the matching ``v``), MSE. Its one-step
estimate from a noised render is then the photo.

Only pipelines with ``unet``, ``vae``, ``text_encoder`` and ``tokenizer`` (the Stable Diffusion
1.x/2.x family) and without a ControlNet are fine-tuned; anything else is an
:class:`recon.errors.InputError`. The adapters are saved with the pipeline class's
``save_lora_weights`` (``prior/lora/pytorch_lora_weights.safetensors`` in the run folder) and
loaded back with ``load_lora_weights`` exactly as ``--prior.lora`` loads a file, so ``--resume``
loads them instead of training again.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import InputError
from recon.prior.repair import EXTRA_HINT, PretrainedImg2Img, check_images
from recon.splat.render import render_all

logger = logging.getLogger(__name__)

__all__ = ["LORA_FILE", "LORA_TARGETS", "SceneLoRA", "finetune_lora"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet modules that get LoRA adapters."""
LORA_FILE = "pytorch_lora_weights.safetensors"
"""What ``save_lora_weights`` writes (the file ``load_lora_weights`` looks for)."""


def _check_pipeline(pipe: Any, where: str) -> None:
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, c, None) is None]
    if missing:
        raise InputError(where, f"per-scene LoRA needs a Stable Diffusion pipeline with {', '.join(missing)}; {type(pipe).__name__} has none")
    if getattr(pipe, "controlnet", None) is not None or getattr(pipe, "text_encoder_2", None) is not None:
        raise InputError(where, f"per-scene LoRA fine-tuning supports Stable Diffusion 1.x/2.x without ControlNet, not {type(pipe).__name__}")
    if getattr(pipe.unet, "peft_config", None):
        raise InputError(where, "the pipeline already has LoRA weights (--prior.lora or DIR/lora): fine-tune without them")
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise InputError(where, f"per-scene LoRA: the scheduler's prediction_type {kind!r} is not supported (epsilon, v_prediction)")


def _latents(pipe: Any, images: Tensor, size: tuple[int, int]) -> Tensor:  # [N, H, W, 3] -> [N, 4, h, w]
    x = images.permute(0, 3, 1, 2).to(pipe.device, pipe.unet.dtype)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        dist = pipe.vae.encode(x * 2.0 - 1.0).latent_dist
    return dist.mean * float(pipe.vae.config.scaling_factor)


def finetune_lora(
    pipe: Any,
    degraded: Tensor,  # [N, H, W, 3]
    target: Tensor,  # [N, H, W, 3]
    *,
    size: tuple[int, int],
    steps: int = 100,
    rank: int = 4,
    lr: float = 1e-4,
    strength: float = 0.3,
    prompt: str = "",
    batch: int = 2,
    seed: int = 0,
) -> list[float]:
    """Add LoRA adapters (rank ``rank``) to ``pipe.unet`` and train them for ``steps`` Adam steps
    on pairs ``degraded -> target`` (``[N, H, W, 3]`` in [0, 1], resized to ``size`` = (h, w),
    multiples of the VAE factor); see the module docstring. Returns the loss per step; the adapter
    stays active in ``pipe.unet``."""
    from peft import LoraConfig

    check_images(degraded, "degraded")
    if target.shape != degraded.shape:
        raise ValueError(f"target: expected shape {list(degraded.shape)}, given {list(target.shape)}")
    if steps < 1 or rank < 1 or not lr > 0 or batch < 1:
        raise ValueError(f"finetune_lora: steps, rank, batch must be >= 1 and lr > 0, got {steps}, {rank}, {batch}, {lr}")
    _check_pipeline(pipe, "--prior.lora-steps")
    from diffusers import DDPMScheduler

    unet = pipe.unet
    z_r, z_p = _latents(pipe, degraded, size), _latents(pipe, target, size)
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.device)  # fmt: skip
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = sched.alphas_cumprod.to(pipe.device, torch.float32)
    t_max = max(2, int(strength * sched.config.num_train_timesteps))
    v_pred = sched.config.prediction_type == "v_prediction"
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the adapters' initialisation
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    unet.train()
    for _ in range(steps):
        idx = torch.randint(len(z_r), (batch,), generator=gen)
        t = torch.randint(1, t_max, (batch,), generator=gen)
        noise = torch.randn((batch, *z_r.shape[1:]), generator=gen).to(z_r)
        a = alphas[t.to(pipe.device)].view(-1, 1, 1, 1).to(z_r)
        x_t = a.sqrt() * z_r[idx] + (1 - a).sqrt() * noise
        eps = (x_t - a.sqrt() * z_p[idx]) / (1 - a).sqrt()
        goal = a.sqrt() * eps - (1 - a).sqrt() * z_p[idx] if v_pred else eps
        pred = unet(x_t, t.to(pipe.device), encoder_hidden_states=text.expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred.float(), goal.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval()
    unet.requires_grad_(False)
    return losses


def save_lora(pipe: Any, folder: Path) -> Path:
    """Write ``pipe.unet``'s adapter to ``folder/pytorch_lora_weights.safetensors`` (atomically: a
    ``.tmp`` folder renamed)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    tmp = folder.with_name(folder.name + ".tmp")
    type(pipe).save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder / LORA_FILE


class SceneLoRA:
    """A :class:`recon.prior.repair.Repairer`: ``base`` (a :class:`PretrainedImg2Img`) whose UNet
    is fine-tuned with LoRA on the scene at the first refresh (:meth:`prepare`).

    Args:
        base: the loaded pipeline repairer (no LoRA of its own).
        train: the fit's training views (photos and cameras).
        background: ``[3]``.
        folder: where the adapter is saved (``prior/lora`` of the run; a saved one is loaded
            instead of training again); None keeps it in memory only.
        steps, rank, lr, batch: of :func:`finetune_lora`.
        seed: seeds the adapters and the training draws.
    """

    def __init__(self, base: PretrainedImg2Img, train: Any, background: Tensor, folder: Path | None = None, *, steps: int = 100,
                 rank: int = 4, lr: float = 1e-4, batch: int = 2, seed: int = 0) -> None:  # fmt: skip
        try:
            import peft  # noqa: F401
        except ImportError:
            raise InputError("--prior.lora-steps", f"per-scene LoRA needs the peft package ({EXTRA_HINT})") from None
        _check_pipeline(base.pipe, str(base.folder))
        self.base, self.train, self.background, self.folder = base, train, background, folder
        self.steps, self.rank, self.lr, self.batch, self.seed = int(steps), int(rank), float(lr), int(batch), int(seed)
        self.report: dict[str, Any] = {}
        self.ready = False
        if folder is not None and (folder / LORA_FILE).is_file():
            self._load(folder)
            self.report = {"loaded": str(folder)}

    @property
    def description(self) -> str:
        return f"{self.base.description}, LoRA rank {self.rank} fine-tuned on the scene for {self.steps} steps"

    def _load(self, folder: Path) -> None:
        from recon.prior.repair import _load_lora

        _load_lora(self.base.pipe, folder / LORA_FILE)
        self.ready = True

    def prepare(self, trainer: Any) -> None:
        """Render the training views with the fit's current Gaussians and fine-tune on (render,
        photo); once (a loaded adapter is kept)."""
        if self.ready:
            return
        t0 = time.perf_counter()
        views = self.train
        sh = min(trainer.step // trainer.config.sh_degree_interval, trainer.config.sh_degree)
        with torch.no_grad():
            renders = render_all(trainer.export_model(), views.cameras, views.width, views.height, sh, self.background).clamp(0, 1)
        size = self.base._size(views.height, views.width)
        with torch.enable_grad():
            losses = finetune_lora(self.base.pipe, renders, views.images.float(), size=size, steps=self.steps, rank=self.rank,
                                   lr=self.lr, strength=self.base.strength, prompt=self.base.prompt, batch=self.batch,
                                   seed=self.seed)  # fmt: skip
        seconds = time.perf_counter() - t0
        n = max(1, min(10, len(losses) // 4))
        self.report = {"n_pairs": len(views.names), "steps": self.steps, "rank": self.rank, "train_time_s": round(seconds, 2),
                       "s_per_step": round(seconds / self.steps, 4), "loss_first": round(sum(losses[:n]) / n, 6),
                       "loss_last": round(sum(losses[-n:]) / n, 6)}  # fmt: skip
        logger.info("prior: LoRA (rank %d) fine-tuned on %d (render, photo) pairs, %d steps in %.1f s (loss %.4f -> %.4f)",
                    self.rank, len(views.names), self.steps, seconds, self.report["loss_first"], self.report["loss_last"])  # fmt: skip
        if self.folder is not None:
            # repair with the adapter as saved and loaded, exactly as --resume will
            save_lora(self.base.pipe, self.folder)
            self.base.pipe.unet.delete_adapters(self.base.pipe.unet.active_adapters())
            self._load(self.folder)
        self.ready = True
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError("per-scene LoRA: the loss is not finite (lower --prior.lora-lr)")

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        """``[B, H, W, 3]`` renders -> repaired (after :meth:`prepare`)."""
        if not self.ready:
            raise RuntimeError("SceneLoRA: call prepare(trainer) first (PriorGuidance does)")
        return self.base(images, seed)
