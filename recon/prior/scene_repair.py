"""A per-scene repair model (``recon fit --prior repair``), after GaussianObject and Difix3D+.

No pretrained weights are used: the model learns from the scene itself what its few-view renders
get wrong. At the first refresh of :class:`recon.prior.guidance.PriorGuidance`
(:meth:`SceneRepairer.prepare`):

1. **Training pairs** (degraded render, real photo), all at the training resolution:

   - *leave-one-out*: for each training view ``i`` a fit on the other views (same options,
     ``loo_steps`` steps), rendering view ``i`` at half and at all of its steps — the errors of a
     view that no training photo covered, the kind a pseudo view has;
   - *under-fitted*: the half-way leave-one-out fits render their own training views;
   - *perturbed*: the main fit's Gaussians with noise on centres (``perturb`` x each Gaussian's
     mean scale), opacities (logit + 2 x ``perturb`` N(0, 1)) and base colours (+ ``perturb``
     N(0, 1)), rendered at the training views, ``perturbed`` times. (The issue's version scales
     this noise by how much each attribute moved in the leave-one-out fits; here the scales are
     fixed.)

2. **Model** (:class:`RepairUNet`): a ``diffusers`` ``UNet2DModel`` whose input is the degraded
   render concatenated with its noised copy at one fixed timestep ``t`` (DDPM schedule), and
   whose output is added to the render: one step from degraded to clean, as in Difix3D+. Trained
   with L1 + D-SSIM on random ``crop`` x ``crop`` crops (random flips), Adam with a cosine
   schedule, ``train_steps`` steps — sized for minutes on 2 CPU cores.

3. **Repair**: the model on whole renders (padded to a multiple of its down-sampling), noise from
   the given seed.

The pairs (``prior/pairs/``) and the model (``prior/repair_model/``, diffusers layout:
``config.json`` + safetensors) are saved in the run folder; ``--resume`` loads the model instead
of training it again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from recon.io.atomic import atomic_write_json
from recon.io.images import save_image
from recon.io.run import RunDir
from recon.io.views import ViewSet
from recon.prior.repair import check_images
from recon.splat.loss import photometric_loss
from recon.splat.model import GaussianModel
from recon.splat.render import render_all
from recon.splat.trainer import SplatTrainer
from recon.train import train

logger = logging.getLogger(__name__)

__all__ = ["RepairUNet", "SceneRepairConfig", "SceneRepairer", "train_repair_model"]

MODEL_DIR = "repair_model"
PAIRS_DIR = "pairs"


@dataclass(frozen=True)
class SceneRepairConfig:
    """Pairs, model size and training of the per-scene repair model (module docstring)."""

    loo_steps: int = 300
    """Steps of each leave-one-out fit."""
    perturbed: int = 2
    """Noise-perturbed copies of the main fit rendered at every training view."""
    perturb: float = 1.0
    """Noise of those copies, in units of how far each attribute lies in the leave-one-out fits
    from the main fit (:func:`attribute_movement`)."""
    checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Fractions of ``loo_steps`` at which each leave-one-out fit also renders its left-out view
    and (under-fitted pairs) its own views; it always renders the left-out view at the end."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Channels per resolution level of the UNet (len - 1 halvings)."""
    timestep: int = 100
    """The fixed DDPM timestep (of 1000) of the one-step model."""
    train_steps: int = 800
    """Adam steps of the model (batch 8 of 48 x 48 crops: ~0.2 s a step on one CPU core)."""
    crop: int = 48
    """Crop side in pixels."""
    batch: int = 8
    """Crops per step."""
    lr: float = 1e-3
    """Initial learning rate (cosine to 1% of it)."""
    zero_init: bool = True
    """Zero the UNet's output convolution before training, so the model starts as the identity
    (its residual starts at zero instead of at random values it must first unlearn)."""


class RepairUNet(ModelMixin, ConfigMixin):
    """One-step conditional repair: ``[B, 3, H, W]`` render in [0, 1] -> repaired ``[B, 3, H, W]``.

    ``x = 2 render - 1``; ``x_t = sqrt(a) x + sqrt(1 - a) noise`` with ``a`` the DDPM
    ``alphas_cumprod[timestep]``; ``out = x + UNet(cat(x_t, x), timestep)``; returns
    ``(out + 1) / 2`` (not clamped). ``H`` and ``W`` must be multiples of ``2 ** (len(channels) - 1)``.
    """

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), layers_per_block: int = 1, timestep: int = 100,
                 num_train_timesteps: int = 1000) -> None:  # fmt: skip
        super().__init__()
        n = len(channels)
        self.unet = UNet2DModel(
            in_channels=6, out_channels=3, block_out_channels=tuple(channels), layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, norm_num_groups=min(8, channels[0]),
        )  # fmt: skip
        alpha = float(DDPMScheduler(num_train_timesteps=num_train_timesteps).alphas_cumprod[timestep])
        self.signal, self.noise_level = math.sqrt(alpha), math.sqrt(1.0 - alpha)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, render: Tensor, noise: Tensor | None = None) -> Tensor:  # [B, 3, H, W] -> [B, 3, H, W]
        x = render * 2.0 - 1.0
        noise = torch.randn_like(x) if noise is None else noise
        x_t = self.signal * x + self.noise_level * noise
        t = torch.full((x.shape[0],), self.config.timestep, device=x.device, dtype=torch.long)
        out = x + self.unet(torch.cat([x_t, x], 1), t).sample
        return (out + 1.0) / 2.0


def train_repair_model(
    degraded: Tensor,  # [N, H, W, 3]
    target: Tensor,  # [N, H, W, 3]
    config: SceneRepairConfig,
    seed: int = 0,
    ssim_lambda: float = 0.2,
) -> tuple[RepairUNet, list[float]]:
    """Train a :class:`RepairUNet` on crops of pairs ``degraded -> target`` (both ``[N, H, W, 3]``
    in [0, 1], ``H, W >= crop``); returns the model (eval mode) and the loss per step."""
    check_images(degraded, "degraded")
    if target.shape != degraded.shape:
        raise ValueError(f"target: expected shape {list(degraded.shape)}, given {list(target.shape)}")
    n, h, w, _ = degraded.shape
    crop = min(config.crop, h, w)
    crop -= crop % 2 ** (len(config.channels) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RepairUNet(channels=tuple(config.channels), timestep=config.timestep)
        if config.zero_init:  # start as the identity: the residual is learnt from zero
            torch.nn.init.zeros_(model.unet.conv_out.weight)
            torch.nn.init.zeros_(model.unet.conv_out.bias)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.train_steps, eta_min=config.lr / 100)
        d, t = degraded.permute(0, 3, 1, 2).float(), target.permute(0, 3, 1, 2).float()
        losses = []
        model.train()
        for _ in range(config.train_steps):
            idx = torch.randint(n, (config.batch,), generator=gen)
            ys = torch.randint(h - crop + 1, (config.batch,), generator=gen)
            xs = torch.randint(w - crop + 1, (config.batch,), generator=gen)
            flip = torch.rand(config.batch, generator=gen) < 0.5
            db = torch.stack([d[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs)])
            tb = torch.stack([t[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs)])
            db = torch.where(flip[:, None, None, None], db.flip(-1), db)
            tb = torch.where(flip[:, None, None, None], tb.flip(-1), tb)
            noise = torch.randn(db.shape, generator=gen)
            pred = model(db, noise)
            loss, _ = photometric_loss(pred.permute(0, 2, 3, 1), tb.permute(0, 2, 3, 1), ssim_lambda)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    model.eval()
    return model, losses


ATTRIBUTES = ("means", "scales", "quats", "opacities", "sh0")
"""The Gaussian attributes the perturbed pairs add noise to (``shN`` is left as it is)."""


def _attribute_values(params: dict[str, Tensor], name: str) -> Tensor:  # [N, C]
    """An attribute as the noise acts on it: log-scales, unit quaternions with ``w >= 0``,
    opacity logits, DC colour coefficients, flattened to ``[N, C]``."""
    v = params[name].detach().float()
    if name == "quats":
        v = F.normalize(v, dim=-1)
        v = torch.where(v[:, :1] < 0, -v, v)
    return v.reshape(v.shape[0], -1)


@torch.no_grad()
def attribute_movement(reference: GaussianModel, others: list[GaussianModel], keep: float = 0.9) -> dict[str, float]:
    """How far each attribute of ``others`` (the leave-one-out fits) lies from ``reference`` (the
    main fit): per attribute, the RMS per-component difference between each Gaussian of an other
    model and the reference Gaussian nearest to its centre.

    The fits do not share Gaussians (each starts from its own views' points and densifies), so
    nearest centres stand in for correspondence; the ``1 - keep`` fraction of each model's
    Gaussians farthest from any reference centre (structure the reference lacks) is left out.
    ``means``: the RMS centre distance per axis (``sqrt(mean d^2 / 3)``, world units); ``scales``:
    log-scales; ``quats``: unit quaternions (sign-aligned); ``opacities``: logits; ``sh0``: DC
    coefficients. Returns ``{attribute: std}`` (the noise std of :func:`perturb_gaussians`).
    """
    from scipy.spatial import cKDTree

    if not others:
        raise ValueError("attribute_movement: no leave-one-out fits given")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"attribute_movement: keep must be in (0, 1], got {keep}")
    ref = {k: v.detach().float().cpu() for k, v in reference.params.items()}
    tree = cKDTree(ref["means"].numpy())
    sums = dict.fromkeys(ATTRIBUTES, 0.0)
    counts = dict.fromkeys(ATTRIBUTES, 0)
    for model in others:
        p = {k: v.detach().float().cpu() for k, v in model.params.items()}
        dist, idx = tree.query(p["means"].numpy(), k=1)
        dist, idx = torch.as_tensor(dist, dtype=torch.float32), torch.as_tensor(idx, dtype=torch.long)
        n_keep = max(1, math.ceil(keep * len(dist)))
        rows = torch.argsort(dist)[:n_keep]
        sums["means"] += float((dist[rows] ** 2).sum())
        counts["means"] += 3 * n_keep
        for name in ATTRIBUTES[1:]:
            d = _attribute_values(p, name)[rows] - _attribute_values(ref, name)[idx[rows]]
            sums[name] += float((d**2).sum())
            counts[name] += d.numel()
    return {name: math.sqrt(sums[name] / max(1, counts[name])) for name in ATTRIBUTES}


@torch.no_grad()
def perturb_gaussians(model: GaussianModel, std: dict[str, float], gen: torch.Generator, factor: float = 1.0) -> GaussianModel:
    """A copy of ``model`` with Gaussian noise of std ``factor * std[attribute]`` on every
    attribute of :data:`ATTRIBUTES`, in the spaces :func:`attribute_movement` measures them in
    (quaternions are renormalised by the renderer). Noise is drawn on the CPU from ``gen``."""
    params = {k: v.detach().clone() for k, v in model.params.items()}
    for name in ATTRIBUTES:
        sigma = factor * float(std.get(name, 0.0))
        if sigma <= 0.0:
            continue
        v = params[name]
        noise = torch.randn(v.shape, generator=gen).to(v)
        if name == "quats":
            v = F.normalize(v, dim=-1)
        params[name] = v + sigma * noise
    return type(model).from_params(params)


@torch.no_grad()
def _perturbed_renders(trainer: SplatTrainer, views: ViewSet, background: Tensor, std: dict[str, float], factor: float,
                       gen: torch.Generator) -> Tensor:  # fmt: skip
    noisy = perturb_gaussians(trainer.export_model(), std, gen, factor)
    sh = min(trainer.step // trainer.config.sh_degree_interval, trainer.config.sh_degree)
    return render_all(noisy, views.cameras, views.width, views.height, sh, background)


def _subset(views: ViewSet, keep: list[int]) -> ViewSet:
    return ViewSet([views.indices[i] for i in keep], [views.names[i] for i in keep], views.images[keep],
                   views.cameras.subset(keep), None if views.masks is None else views.masks[keep])  # fmt: skip


class SceneRepairer:
    """The :class:`recon.prior.repair.Repairer` of ``--prior repair`` (module docstring).

    Args:
        config: pairs, model and training.
        train: the main fit's training views.
        make_trainer: ``make_trainer(views, steps)``: a fresh :class:`SplatTrainer` with the main
            fit's options for ``views`` (a subset of ``train``) and ``steps`` iterations.
        background: ``[3]``.
        run: the run folder (pairs and model are saved in ``prior/``; a saved model is loaded).
        seed: seeds the perturbations, the crops and the model's initialisation.
    """

    def __init__(self, config: SceneRepairConfig, train: ViewSet, make_trainer: Callable[[ViewSet, int], SplatTrainer],
                 background: Tensor, run: RunDir | None = None, seed: int = 0) -> None:  # fmt: skip
        if len(train.indices) < 3:
            raise ValueError(f"--prior repair: leave-one-out fits need >= 3 training views, given {len(train.indices)}")
        self.config, self.train, self.make_trainer = config, train, make_trainer
        self.background, self.run, self.seed = background, run, int(seed)
        self.model: RepairUNet | None = None
        self.movement: dict[str, float] = {}
        self.report: dict[str, Any] = {}
        folder = self._folder(MODEL_DIR)
        if folder is not None and (folder / "config.json").is_file():
            self.model = RepairUNet.from_pretrained(folder).eval()
            self.report = {"loaded": str(folder)}

    @property
    def description(self) -> str:
        return f"per-scene repair model ({len(self.train.indices)} leave-one-out fits of {self.config.loo_steps} steps)"

    def _folder(self, name: str) -> Path | None:
        return None if self.run is None else self.run.prior_path(name)

    def pairs(self, trainer: SplatTrainer) -> tuple[Tensor, Tensor, list[str]]:
        """``(degraded [N, H, W, 3], target [N, H, W, 3], kinds)`` (module docstring); sets
        ``self.movement`` (the perturbation stds, :func:`attribute_movement`)."""
        cfg, views = self.config, self.train
        degraded, target, kinds = [], [], []
        stops = sorted({max(1, round(f * cfg.loo_steps)) for f in cfg.checkpoints} | {cfg.loo_steps})
        loo_models = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for i in range(len(views.indices)):
                keep = [j for j in range(len(views.indices)) if j != i]
                sub = _subset(views, keep)
                loo = self.make_trainer(sub, cfg.loo_steps)
                for steps in stops:
                    train(loo, steps)
                    model = loo.export_model()
                    sh = min(loo.step // loo.config.sh_degree_interval, loo.config.sh_degree)
                    out = render_all(model, views.cameras.subset([i]), views.width, views.height, sh, self.background)
                    degraded.append(out[0])
                    target.append(views.images[i])
                    kinds.append(f"leave-out {views.names[i]} step {steps}")
                    if steps < cfg.loo_steps:
                        own = render_all(model, sub.cameras, views.width, views.height, sh, self.background)
                        degraded.extend(own)
                        target.extend(sub.images)
                        kinds.extend(f"under-fitted {n} step {steps}" for n in sub.names)
                loo_models.append(loo.export_model())
        self.movement = attribute_movement(trainer.export_model(), loo_models)
        gen = torch.Generator().manual_seed(self.seed + 1)
        for r in range(cfg.perturbed):
            out = _perturbed_renders(trainer, views, self.background, self.movement, cfg.perturb, gen)
            degraded.extend(out)
            target.extend(views.images)
            kinds.extend(f"perturbed {n} #{r}" for n in views.names)
        return torch.stack(degraded).clamp(0, 1), torch.stack(target).float(), kinds

    def prepare(self, trainer: SplatTrainer) -> None:
        """Make the pairs and train the model (once; a model loaded from the run folder is kept)."""
        if self.model is not None:
            return
        t0 = time.perf_counter()
        with torch.enable_grad():
            degraded, target, kinds = self.pairs(trainer)
            t1 = time.perf_counter()
            self.model, losses = train_repair_model(degraded, target, self.config, seed=self.seed)
        t2 = time.perf_counter()
        before = float((degraded - target).abs().mean())
        with torch.no_grad():
            after = float((self._apply(degraded, self.seed) - target).abs().mean())
        self.report = {"n_pairs": len(kinds), "pairs_time_s": round(t1 - t0, 2), "train_time_s": round(t2 - t1, 2),
                       "loss_first_100": round(sum(losses[:100]) / max(1, len(losses[:100])), 5),
                       "loss_last_100": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 5),
                       "pairs_l1_before": round(before, 5), "pairs_l1_after": round(after, 5),
                       "perturb_std": {k: round(v, 6) for k, v in self.movement.items()}}  # fmt: skip
        logger.info("prior repair: %d pairs in %.0f s, model trained in %.0f s (pairs L1 %.4f -> %.4f)",
                    len(kinds), t1 - t0, t2 - t1, before, after)  # fmt: skip
        if self.run is not None:
            pairs = self._folder(PAIRS_DIR)
            assert pairs is not None
            for k in range(len(kinds)):
                save_image(pairs / f"degraded_{k:03d}.png", degraded[k])
                save_image(pairs / f"target_{k:03d}.png", target[k])
            atomic_write_json(pairs / "pairs.json", {"kinds": kinds, **self.report})
            folder = self._folder(MODEL_DIR)
            tmp = folder.with_name(folder.name + ".tmp")  # type: ignore[union-attr]
            self.model.save_pretrained(tmp)
            tmp.replace(folder)  # type: ignore[arg-type]
            # repair with the model as saved: a loaded copy computes up to ~1e-6 differently
            # (memory layout), and --resume must repair exactly as the uninterrupted run
            self.model = RepairUNet.from_pretrained(folder).eval()

    @torch.no_grad()
    def _apply(self, images: Tensor, seed: int) -> Tensor:
        assert self.model is not None
        x = images.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        m = self.model.multiple
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        gen = torch.Generator().manual_seed(int(seed))
        out = []
        for k in range(len(xp)):
            noise = torch.randn(xp[k : k + 1].shape, generator=gen)
            out.append(self.model(xp[k : k + 1], noise))
        return torch.cat(out)[..., :h, :w].clamp(0, 1).permute(0, 2, 3, 1).contiguous()

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        """``[B, H, W, 3]`` renders -> repaired (after :meth:`prepare`)."""
        check_images(images)
        if self.model is None:
            raise RuntimeError("SceneRepairer: call prepare(trainer) first (PriorGuidance does)")
        return self._apply(images, seed)
