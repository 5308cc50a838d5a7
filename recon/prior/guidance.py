"""Prior guidance of a capture fit: render pseudo views, repair them, train on them as weighted targets.

``recon fit --prior pretrained --prior.pretrained DIR`` (:mod:`recon.pipelines.capture`) builds:

1. :func:`recon.prior.pseudo_views.make_pseudo_views` around the training cameras (``P`` views,
   weights in (0, 1] falling with the distance to the nearest real view);
2. a :class:`recon.prior.repair.Repairer` (``--prior pretrained``: a local diffusers
   image-to-image pipeline, :class:`recon.prior.repair.PretrainedImg2Img`);
3. :class:`PriorGuidance`, which at step ``start`` and every ``every`` steps after it renders
   the pseudo views with the current Gaussians, repairs the renders and hands them to the
   trainer as targets (:meth:`recon.splat.trainer.SplatTrainer.set_extra_targets`): every
   ``view_every`` steps one of them (in turn) adds ``weight * w_p * ((1 - l) L1 + l D-SSIM)``
   to the loss, ``w_p`` the view's weight and ``l`` the fit's ``ssim_lambda``. As the Gaussians
   improve, the next refresh repairs better renders;
4. :class:`GuidedTrainer`, the :class:`recon.train.Trainer` that the loop runs: the capture
   trainer with the refreshes before the steps that call for them (their time counts as
   training time).

Run folder (``prior/``, :meth:`recon.io.run.RunDir.prior_refresh_dir`): ``pseudo_views.json``
(cameras, weights, nearest training view) and per refresh ``step_<step>/renders/*.png`` (what
was repaired), ``step_<step>/repaired/*.png`` (the targets) and ``step_<step>/refresh.json``
(written last: a refresh without it is incomplete). Targets are kept in memory exactly as the
8-bit PNGs hold them, so ``--resume`` reloads the newest refresh at or before the checkpoint's
step instead of repairing again, and continues bit-identically on the CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import rigid_inverse
from recon.io.atomic import atomic_write_json
from recon.io.images import load_image, save_image
from recon.io.json_file import read_json
from recon.io.run import PRIOR_REFRESH_FILE, RunDir
from recon.prior.pseudo_views import PseudoViewConfig, PseudoViews
from recon.prior.repair import Repairer, check_images
from recon.splat.render import render_all
from recon.splat.trainer import ExtraTargets, SplatTrainer

logger = logging.getLogger(__name__)

__all__ = ["PRIORS", "GuidedTrainer", "PriorConfig", "PriorGuidance", "build_repairer", "quantise"]

PRIORS = ("none", "repair", "pretrained")
"""What ``--prior`` accepts: no prior, a repair model trained on the scene itself
(:mod:`recon.prior.scene_repair`), or a local pretrained image-to-image pipeline."""

PRETRAINED_OPTIONS = ("pretrained", "prompt", "negative_prompt", "strength", "steps", "guidance_scale", "resolution",
                      "batch_size", "lora", "lora_steps", "lora_rank", "lora_lr")  # fmt: skip
"""PriorConfig fields only ``--prior pretrained`` uses."""
REPAIR_OPTIONS = ("loo_steps", "model_steps", "perturbed", "crop")
"""PriorConfig fields only ``--prior repair`` uses."""


@dataclass
class PriorConfig:
    """Options of ``--prior`` (``--prior.*``): when and how pseudo views are repaired and weighted."""

    pretrained: Path | None = None
    """Folder of a diffusers image-to-image pipeline saved with save_pretrained (--prior pretrained);
    a ``controlnet/`` subfolder adds a ControlNet, a ``lora/`` one LoRA weights. Nothing is downloaded."""
    start: int = 1000
    """First step at which pseudo views are repaired and trained on (the fit must show the scene first)."""
    every: int = 500
    """Repair the pseudo views again every this many steps, from the improved Gaussians."""
    weight: float = 0.5
    """Weight of a repaired pseudo view's L1 + D-SSIM term, times the view's own weight."""
    view_every: int = 2
    """Add one repaired pseudo view (in turn) to the loss every this many steps (1: every step,
    which renders twice per step)."""
    between: int = 2
    """Pseudo views along the arc between each pair of neighbouring training cameras."""
    near: int = 1
    """Pseudo views per training camera, rotated --prior.near-deg about the scene centre."""
    near_deg: float = 8.0
    """Angle (degrees) of the 'near' pseudo views from their training camera."""
    rot_scale_deg: float = 30.0
    """A pseudo view's weight is exp(-1/2) at this rotation (degrees) from the nearest training view."""
    trans_scale: float = 1.0
    """... and at this distance from it, in units of the training cameras' spacing."""
    prompt: str = ""
    """Text prompt of the pipeline ("" for none)."""
    negative_prompt: str = ""
    """Negative prompt (used with --prior.guidance-scale > 1)."""
    strength: float = 0.3
    """Noise added before repairing, in (0, 1]: 0 keeps the render, 1 ignores it."""
    steps: int = 20
    """Scheduler steps at strength 1 (int(steps x strength) are run)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance (<= 1: off, one UNet pass per step)."""
    resolution: int = 0
    """Long side in pixels at which the pipeline works (0: the training resolution)."""
    batch_size: int = 4
    """Pseudo views per pipeline call."""
    lora: Path | None = None
    """LoRA weights (folder or .safetensors) for the pipeline (default: PRETRAINED/lora if present)."""
    lora_steps: int = 0
    """--prior pretrained: fine-tune LoRA adapters of the UNet on the scene's (render, photo) pairs for
    this many steps at the first refresh (0: off; recon.prior.scene_lora), saved in prior/lora/."""
    lora_rank: int = 4
    """--prior pretrained: rank of those adapters."""
    lora_lr: float = 1e-4
    """--prior pretrained: AdamW learning rate of those adapters."""
    loo_steps: int = 300
    """--prior repair: steps of each leave-one-out fit that makes training pairs."""
    model_steps: int = 800
    """--prior repair: training steps of the per-scene repair model."""
    perturbed: int = 2
    """--prior repair: noise-perturbed copies of the fit rendered at every training view as pairs."""
    crop: int = 48
    """--prior repair: crop side (pixels) the repair model trains on."""

    def validate(self, prior: str) -> None:
        """Raise :class:`InputError` on values that are wrong, or given without a prior that uses them."""
        if prior not in PRIORS:
            raise InputError("--prior", f"unknown prior {prior!r} (expected one of {', '.join(PRIORS)})")
        default = PriorConfig()
        for f in fields(self):
            if getattr(self, f.name) == getattr(default, f.name):
                continue
            owner = "pretrained" if f.name in PRETRAINED_OPTIONS else "repair" if f.name in REPAIR_OPTIONS else "repair or pretrained"
            if prior == "none" or (owner != "repair or pretrained" and owner != prior):
                raise InputError(f"--prior.{f.name.replace('_', '-')}", f"is an option of --prior {owner}, but --prior is {prior}")
        if prior == "none":
            return
        if prior == "pretrained" and self.pretrained is None:
            raise InputError("--prior pretrained", "needs --prior.pretrained DIR (a diffusers pipeline saved with save_pretrained)")
        for name in ("start", "every", "view_every", "loo_steps", "model_steps", "perturbed", "crop", "lora_steps", "lora_rank"):
            low = 0 if name in ("start", "perturbed", "lora_steps") else 8 if name == "crop" else 1
            if getattr(self, name) < low:
                raise InputError(f"--prior.{name.replace('_', '-')}", f"must be >= {low}, got {getattr(self, name)}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise InputError("--prior.weight", f"must be > 0, got {self.weight}")
        if not (math.isfinite(self.lora_lr) and self.lora_lr > 0):
            raise InputError("--prior.lora-lr", f"must be > 0, got {self.lora_lr}")
        problems = self.pseudo_view_config().validate()
        if problems:
            name, _, what = problems[0].partition(": ")
            raise InputError(f"--prior.{name.split('/')[0].replace('_', '-')}", what)

    def pseudo_view_config(self, seed: int = 0) -> PseudoViewConfig:
        return PseudoViewConfig(between=self.between, near=self.near, near_deg=self.near_deg,
                                rot_scale_deg=self.rot_scale_deg, trans_scale=self.trans_scale, seed=seed)  # fmt: skip


def build_repairer(prior: str, config: PriorConfig, device: torch.device, *, train: Any = None, make_trainer: Any = None,
                   background: Tensor | None = None, run: RunDir | None = None, seed: int = 0) -> Repairer:  # fmt: skip
    """The repairer ``--prior`` names. 'pretrained' loads the pipeline (slow; every folder problem
    is an InputError); 'repair' needs the training views ``train``, ``make_trainer(views, steps)``
    (a fresh fit of a subset, :class:`recon.prior.scene_repair.SceneRepairer`), the background and
    the run folder (a model saved there is loaded)."""
    if prior == "repair":
        from recon.prior.scene_repair import SceneRepairConfig, SceneRepairer

        if train is None or make_trainer is None or background is None:
            raise ValueError("build_repairer: --prior repair needs train, make_trainer and background")
        if len(train.indices) < 3:
            raise InputError("--prior repair", f"leave-one-out fits need >= 3 training views, got {len(train.indices)}")
        rc = SceneRepairConfig(loo_steps=config.loo_steps, train_steps=config.model_steps, perturbed=config.perturbed, crop=config.crop)
        return SceneRepairer(rc, train, make_trainer, background, run=run, seed=seed)
    if prior == "pretrained":
        from recon.prior.repair import PretrainedImg2Img

        assert config.pretrained is not None
        base = PretrainedImg2Img(
            config.pretrained, prompt=config.prompt, negative_prompt=config.negative_prompt, strength=config.strength,
            steps=config.steps, guidance_scale=config.guidance_scale, resolution=config.resolution,
            batch_size=config.batch_size, lora=config.lora, device=device,
        )  # fmt: skip
        if config.lora_steps == 0:
            return base
        from recon.prior.scene_lora import SceneLoRA

        if train is None or background is None:
            raise ValueError("build_repairer: --prior.lora-steps needs train and background")
        return SceneLoRA(base, train, background, None if run is None else run.prior_path("lora"), steps=config.lora_steps,
                         rank=config.lora_rank, lr=config.lora_lr, seed=seed)  # fmt: skip
    raise InputError("--prior", f"{prior!r} has no repairer (expected one of {', '.join(p for p in PRIORS if p != 'none')})")


def quantise(images: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
    """``images`` rounded to 8 bits exactly as a PNG written by :func:`recon.io.images.save_image`
    and read by :func:`recon.io.images.load_image` holds them (float32 CPU)."""
    q = (images.detach().to(torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    return q.to(torch.float32) * np.float32(1.0 / 255.0)


class PriorGuidance:
    """Refreshes the repaired pseudo-view targets of a :class:`SplatTrainer` (module docstring).

    Args:
        config: ``--prior.*``.
        views: the pseudo views (``P`` cameras at the training resolution ``width x height``).
        repairer: see :class:`recon.prior.repair.Repairer`.
        width, height: render size (the training views').
        background: ``[3]`` the fit's background.
        seed: the fit's seed; refresh ``s`` repairs with seed ``seed + s``.
        run: the run folder (None: nothing is saved, nothing can be resumed).
    """

    def __init__(self, config: PriorConfig, views: PseudoViews, repairer: Repairer, width: int, height: int,
                 background: Tensor, seed: int = 0, run: RunDir | None = None) -> None:  # fmt: skip
        self.config, self.views, self.repairer = config, views, repairer
        self.width, self.height = int(width), int(height)
        self.background = background
        self.seed, self.run = int(seed), run
        self.last_refresh: int | None = None
        self.refreshes: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ schedule
    def due(self, step: int) -> bool:
        """Whether the targets are repaired again before training step ``step``."""
        c = self.config
        return step >= c.start and (step - c.start) % c.every == 0 and self.last_refresh != step

    # ------------------------------------------------------------------ refresh
    def refresh(self, trainer: SplatTrainer) -> None:
        """Render the pseudo views with ``trainer``'s Gaussians, repair, save, set as targets."""
        t0 = time.perf_counter()
        step = trainer.step
        prepare = getattr(self.repairer, "prepare", None)
        if prepare is not None:  # a repairer that learns from the scene first (--prior repair)
            prepare(trainer)
        sh_deg = min(step // trainer.config.sh_degree_interval, trainer.config.sh_degree)
        renders = render_all(trainer.export_model(), self.views.cameras, self.width, self.height, sh_deg, self.background)
        with torch.no_grad():
            repaired = self.repairer(renders, self.seed + step)
        check_images(repaired, "repaired")
        if repaired.shape != renders.shape:
            raise ValueError(f"repairer: returned {list(repaired.shape)} for renders {list(renders.shape)}")
        targets = quantise(repaired)
        seconds = time.perf_counter() - t0
        record = {"step": step, "seconds": round(seconds, 3),
                  "render_change_l1": round(float((targets - renders).abs().mean()), 5)}  # fmt: skip
        if self.run is not None:
            self._save(step, renders, targets, record)
        self._set(trainer, targets, step, record)
        logger.info("prior: repaired %d pseudo views at step %d in %.1f s (mean |repaired - render| %.4f)",
                    len(self.views), step, seconds, record["render_change_l1"])  # fmt: skip

    def _set(self, trainer: SplatTrainer, targets: Tensor, step: int, record: dict[str, Any]) -> None:
        trainer.set_extra_targets(ExtraTargets(
            w2c=self.views.cameras.w2c, Ks=self.views.cameras.Ks(), images=targets,
            weights=self.views.weights * self.config.weight, every=self.config.view_every,
        ))  # fmt: skip
        self.last_refresh = step
        self.refreshes.append(record)

    # ------------------------------------------------------------------ run folder
    def write_views(self) -> Path | None:
        """``prior/pseudo_views.json``: every pseudo camera (OpenCV c2w, intrinsics), weight,
        nearest training view (index into the training views), rotation and distance to it."""
        if self.run is None:
            return None
        v = self.views
        c2w = rigid_inverse(v.cameras.w2c.double())
        items = []
        for i, name in enumerate(v.names()):
            k = v.cameras.intrinsics[i]
            items.append({
                "name": name, "kind": v.kinds[i], "weight": round(float(v.weights[i]), 6),
                "nearest_train_view": int(v.nearest[i]), "rot_deg": round(float(v.rot_deg[i]), 4),
                "distance": round(float(v.distance[i]), 5), "width": k.width, "height": k.height,
                "fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
                "c2w": [[round(float(x), 9) for x in row] for row in c2w[i].tolist()],
            })  # fmt: skip
        return atomic_write_json(self.run.prior_path("pseudo_views.json"), {"convention": "opencv", "views": items})

    def _save(self, step: int, renders: Tensor, targets: Tensor, record: dict[str, Any]) -> None:
        assert self.run is not None
        folder = self.run.prior_refresh_dir(step)
        for i, name in enumerate(self.views.names()):
            save_image(folder / "renders" / f"{name}.png", renders[i])
            save_image(folder / "repaired" / f"{name}.png", targets[i])
        atomic_write_json(folder / PRIOR_REFRESH_FILE, {**record, "views": self.views.names()})

    def restore(self, trainer: SplatTrainer) -> int | None:
        """After ``--resume``: set the targets of the newest complete refresh at or before the
        trainer's step (None when there is none yet); returns its step."""
        if self.run is None:
            return None
        saved = [s for s in self.run.prior_refreshes() if s <= trainer.step]
        if not saved:
            return None
        step = saved[-1]
        folder = self.run.prior_refresh_dir(step)
        record = read_json(folder / PRIOR_REFRESH_FILE)
        names = self.views.names()
        if not isinstance(record, dict) or record.get("views") != names:
            raise InputError(folder / PRIOR_REFRESH_FILE, f"lists other pseudo views than this run's {len(names)} (other --prior.* options?)")
        images = torch.stack([torch.from_numpy(load_image(folder / "repaired" / f"{n}.png")[..., :3]) for n in names])
        if images.shape[1:3] != (self.height, self.width):
            raise InputError(folder, f"repaired views are {images.shape[2]}x{images.shape[1]}, expected {self.width}x{self.height}")
        self._set(trainer, images, step, {k: record[k] for k in ("step", "seconds", "render_change_l1") if k in record})
        logger.info("prior: resumed with the pseudo views repaired at step %d", step)
        return step

    def summary(self) -> dict[str, Any]:
        """For metrics.json: counts, weights and the time the refreshes took."""
        w = self.views.weights
        return {
            "n_pseudo_views": len(self.views),
            "weights": {"min": round(float(w.min()), 4), "mean": round(float(w.mean()), 4), "max": round(float(w.max()), 4)},
            "refreshes": list(self.refreshes),
            "repair_time_s": round(sum(float(r.get("seconds", 0.0)) for r in self.refreshes), 2),
            **({"repair_model": self.repairer.report} if getattr(self.repairer, "report", None) else {}),
        }


class GuidedTrainer:
    """The :class:`recon.train.Trainer` of a fit with a prior: ``trainer`` (a :class:`SplatTrainer`)
    with ``guidance.refresh`` run before each step it is due at. State and history are the trainer's."""

    def __init__(self, trainer: SplatTrainer, guidance: PriorGuidance) -> None:
        self.trainer, self.guidance = trainer, guidance

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.trainer.history

    def train_step(self) -> dict[str, Any]:
        refreshed = self.guidance.due(self.trainer.step)
        if refreshed:
            self.guidance.refresh(self.trainer)
        stats = self.trainer.train_step()
        return {**stats, "prior_refresh": True} if refreshed else stats

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)

    def export_model(self):
        return self.trainer.export_model()
