"""``recon fit``: posed photos -> Gaussian splats -> renders, scores, PLY, in one run folder.

Assembly only: :class:`CaptureFitConfig` (the training hyperparameters of
:class:`recon.splat.config.SplatTrainConfig` plus the data, the view split and the run folder)
``setup()``s into a :class:`CaptureFit` job, which :func:`recon.pipelines.job.run_job` runs:

1. ``setup()`` reads the capture, splits and loads the views, computes the initial points (or
   reads the checkpoint with ``--resume``) and builds the :class:`recon.splat.trainer.SplatTrainer`
   — everything that can fail on bad input, before the run folder is touched;
2. ``execute()`` writes ``cameras.json`` and the photos, trains with :func:`recon.train.train`
   (checkpoints, log, a preview ``splat.ply`` at each checkpoint), then writes the PLY, renders,
   comparisons, the loss curve and the scores (layout: :mod:`recon.io.run`).

With ``--prior repair`` or ``--prior pretrained`` (off by default) ``setup()`` also makes the
pseudo views and builds the repairer, and the loop trains a :class:`recon.prior.guidance.GuidedTrainer`: repaired
renders of the pseudo views become weighted targets (:mod:`recon.prior.guidance`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from recon.errors import InputError
from recon.geometry.view_selection import split_views
from recon.io.capture import Capture
from recon.io.figures import plot_curve
from recon.io.formats import load_capture
from recon.io.images import save_image, side_by_side
from recon.io.ply import write_splat_ply
from recon.io.run import RunDir
from recon.io.views import ViewSet, load_split
from recon.metrics import score_images
from recon.pipelines.job import JobBase, ProgressFn
from recon.pipelines.memory import MemoryEstimate, capture_fit_estimate, check_memory
from recon.pipelines.posefree import (
    is_photo_folder,
    record_pose_rounds,
    register_photo_folder,
    write_registration,
)
from recon.prior.guidance import GuidedTrainer, PriorConfig, PriorGuidance, build_repairer
from recon.prior.pseudo_views import make_pseudo_views
from recon.splat.anchored import AnchoredGaussians
from recon.splat.config import SplatTrainConfig
from recon.splat.fit_schedule import auto_iterations
from recon.splat.init import initial_points
from recon.splat.render import render_all
from recon.splat.trainer import SplatTrainer
from recon.train import read_checkpoint, seed_everything, train

logger = logging.getLogger(__name__)

__all__ = ["CaptureFit", "CaptureFitConfig", "check_eval_indices", "train_view_spec", "write_view_images"]


@dataclass
class CaptureFitConfig(SplatTrainConfig):
    """Fit Gaussian splats to a few posed photos; writes renders, scores and splat.ply to --out."""

    data: tyro.conf.Positional[Path] = field(kw_only=True)
    """Capture: a folder or file nerfstudio/instant-ngp ``transforms.json``, Blender, COLMAP or LLFF;
    or a folder of photos without poses: they are registered first (recon.poses.sparse_registration),
    all are trained on, and the estimated transforms.json and registration.json go into the run."""
    out: Path = Path("runs/capture")
    """Run folder to write (layout: docs/run-folder.md)."""
    train_views: tuple[int, ...] = (8,)
    """One number K (K views spread over the capture) or an explicit list of view indices."""
    eval_views: int = 8
    """Views never trained on, chosen spread over the rest of the capture, that are scored."""
    eval_indices: tuple[int, ...] = ()
    """Explicit evaluation view indices (override --eval-views); must not overlap the training views."""
    downscale: float = 4.0
    """Image downscale factor (fox 1080x1920 -> 270x480 at 4)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint (and a preview splat.ply) every this many steps (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``."""
    overwrite: bool = False
    """Replace an existing run folder."""
    allow_outside_paths: bool = False
    """Read images, masks and point clouds that transforms.json lists outside its folder (absolute or '..' paths)."""
    skip_memory_check: bool = False
    """Run even when the estimated peak memory exceeds what is available (see recon.pipelines.memory)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses CUDA (gsplat) when available, else the CPU rasteriser."""
    prior: Literal["none", "repair", "pretrained"] = "none"
    """Diffusion prior on pseudo views around the training cameras (docs/priors.md): their renders
    are repaired and trained on as weighted targets. 'repair': by a one-step diffusers UNet trained
    on the scene itself (leave-one-out fits; minutes on a CPU); 'pretrained': by a local diffusers
    image-to-image pipeline (--prior.pretrained DIR)."""
    prior_options: Annotated[PriorConfig, tyro.conf.arg(name="prior")] = field(default_factory=PriorConfig)
    """Options of --prior (recon.prior.guidance.PriorConfig)."""

    def validate(self) -> None:
        super().validate()
        self.prior_options.validate(self.prior)
        if self.prior != "none" and self.model == "anchored":
            raise InputError("--prior", "is not supported with --model anchored")
        if self.downscale <= 0:
            raise InputError("--downscale", f"must be > 0, got {self.downscale}")
        if self.checkpoint_every < 0:
            raise InputError("--checkpoint-every", f"must be >= 0, got {self.checkpoint_every}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device", "cuda requested but torch sees no CUDA device")
        return torch.device(self.device)

    def setup(self) -> CaptureFit:
        """Read and check every input (nothing is written) -> the job."""
        return CaptureFit(self)

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """``setup().run(progress)``: the whole command; returns the metrics."""
        return self.setup().run(progress)


def train_view_spec(train_views: tuple[int, ...]) -> int | list[int]:
    """A single number means K views; several mean explicit indices."""
    return int(train_views[0]) if len(train_views) == 1 else [int(v) for v in train_views]


def check_eval_indices(eval_indices: tuple[int, ...], train: list[int], n_views: int) -> list[int]:
    """Validate explicit evaluation indices: in range, unique, disjoint from ``train``."""
    idx = [int(i) for i in eval_indices]
    bad = [i for i in idx if not 0 <= i < n_views]
    if bad:
        raise InputError("--eval-indices", f"{bad} out of range (expected 0..{n_views - 1})")
    if len(set(idx)) != len(idx):
        raise InputError("--eval-indices", f"repeated indices in {idx}")
    shared = sorted(set(idx) & set(train))
    if shared:
        raise InputError("--eval-indices", f"{shared} are also training views")
    return sorted(idx)


def write_view_images(run: RunDir, split: str, names: list[str], preds: torch.Tensor, photos: torch.Tensor | None) -> None:
    """``renders/<split>/``, and with the photos ``photos/<split>/`` and ``compare/<split>/``
    (render · photo · error); ``preds`` and ``photos`` are ``[V, H, W, 3]`` in [0, 1]."""
    for i, name in enumerate(names):
        save_image(run.view_image("renders", split, name), preds[i])
        if photos is not None:
            save_image(run.view_image("photos", split, name), photos[i])
            save_image(run.view_image("compare", split, name), side_by_side(preds[i], photos[i]))


class CaptureFit(JobBase):
    """A validated ``recon fit`` job (see the module docstring)."""

    kind = "capture"

    def __init__(self, config: CaptureFitConfig) -> None:
        config.validate()
        self.config = cfg = config
        self.run_dir = RunDir(cfg.out)
        self.resume, self.overwrite = cfg.resume, cfg.overwrite
        self.run_dir.check_resumable(cfg.resume, cfg.overwrite)
        self.device = cfg.resolved_device()
        seed_everything(cfg.seed)
        self.registration = None
        if is_photo_folder(cfg.data):
            self.capture, self.registration, self._registration_tmp = register_photo_folder(cfg.data, seed=cfg.seed)
            train_idx, eval_idx = list(range(len(self.capture))), []  # every photo trains; none is held out
            logger.info("pose-free: %s; training on all %d photos", self.registration.summary(), len(train_idx))
        else:
            self.capture = load_capture(cfg.data, allow_outside_paths=cfg.allow_outside_paths)
            train_idx, eval_idx = split_views(self.capture, train_view_spec(cfg.train_views), cfg.eval_views)
        if cfg.eval_indices and self.registration is None:
            eval_idx = check_eval_indices(cfg.eval_indices, train_idx, len(self.capture))
        self.memory = capture_memory_estimate(cfg, self.capture, [*train_idx, *eval_idx])
        check_memory(self.memory, str(cfg.data), skip=cfg.skip_memory_check)  # before any image is decoded
        self.train = load_split(self.capture, train_idx, cfg.downscale)
        self.eval: ViewSet | None = load_split(self.capture, eval_idx, cfg.downscale) if eval_idx else None
        if cfg.background_mean:
            cfg.background = tuple(round(float(c), 4) for c in self.train.images.mean(dim=(0, 1, 2)))  # type: ignore[assignment]
            logger.info("background: mean training colour %s", cfg.background)
        self.background = torch.tensor(cfg.background, dtype=torch.float32)
        self.checkpoint = read_checkpoint(self.run_dir) if cfg.resume else None
        if self.checkpoint is not None:
            if cfg.auto_iterations:  # what the first session chose from its initial points
                cfg.iterations = int(self.checkpoint["trainer"].get("iterations", cfg.iterations))
            self.trainer = SplatTrainer(cfg, self.train, self.background, device=self.device, state=self.checkpoint["trainer"])
        else:
            n_fields = 2 if (cfg.reg.coreg > 0 and cfg.model == "gaussians") else 1
            initial = [initial_points(cfg, self.capture, self.train, cfg.downscale, cfg.seed + i) for i in range(n_fields)]
            if cfg.auto_iterations:
                cfg.iterations = auto_iterations(len(train_idx), len(initial[0].points))
                logger.info("--auto-iterations: %d steps (%d views, %d initial Gaussians)", cfg.iterations, len(train_idx), len(initial[0].points))
            self.trainer = SplatTrainer(cfg, self.train, self.background, initial, device=self.device)
        self.guidance: PriorGuidance | None = None
        if cfg.prior != "none":
            views = make_pseudo_views(self.train.cameras, cfg.prior_options.pseudo_view_config(cfg.seed))
            repairer = build_repairer(cfg.prior, cfg.prior_options, self.device, train=self.train, make_trainer=self.subset_trainer,
                                      background=self.background, run=self.run_dir, seed=cfg.seed)  # fmt: skip
            self.guidance = PriorGuidance(cfg.prior_options, views, repairer, self.train.width, self.train.height,
                                          self.background, seed=cfg.seed, run=self.run_dir)  # fmt: skip
            if self.checkpoint is not None:
                self.guidance.restore(self.trainer)
            logger.info("prior: %d pseudo views (weights %.2f-%.2f); %s", len(views), float(views.weights.min()),
                        float(views.weights.max()), getattr(repairer, "description", type(repairer).__name__))  # fmt: skip

    def subset_trainer(self, views: ViewSet, iterations: int) -> SplatTrainer:
        """A fresh trainer with this fit's options (no prior, no pose refinement) for ``views`` and
        ``iterations`` steps: the leave-one-out fits of ``--prior repair``."""
        cfg = dataclasses.replace(self.config, iterations=iterations, prior="none", prior_options=PriorConfig(), refine_poses=False)
        n_fields = 2 if (cfg.reg.coreg > 0 and cfg.model == "gaussians") else 1
        initial = [initial_points(cfg, self.capture, views, cfg.downscale, cfg.seed + i) for i in range(n_fields)]
        return SplatTrainer(cfg, views, self.background, initial, device=self.device)

    # ------------------------------------------------------------------ the job contract
    def run_info(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "train_views": self.train.names,
            "eval_views": self.eval.names if self.eval else [],
            "resolution": [self.train.width, self.train.height],
            "init": self.trainer.init_description,
            "total_steps": self.config.iterations,
            "step": self.trainer.step,
        }

    def execute(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Train and write every output; returns the metrics."""
        cfg, run, trainer = self.config, self.run_dir, self.trainer
        splits = {"train": (self.train.names, self.train.cameras)}
        if self.eval is not None:
            splits["eval"] = (self.eval.names, self.eval.cameras)
        run.write_cameras(splits)
        if self.registration is not None and self._registration_tmp.exists():
            write_registration(run.path(), self.registration, self._registration_tmp)
        if self.checkpoint is not None:
            run.truncate_log(trainer.step)

        def on_step(step: int, total: int, record: dict) -> None:
            if step % 50 == 0:
                run.progress(step, total)
            if progress is not None:
                progress(step, total, record)

        runner: Any = trainer
        if self.guidance is not None:
            self.guidance.write_views()
            runner = GuidedTrainer(trainer, self.guidance)
        seconds = train(
            runner, cfg.iterations, run=run, resumed=self.checkpoint, checkpoint_every=cfg.checkpoint_every,
            progress=on_step, on_checkpoint=lambda t: write_splat_ply(run.path("splat.ply"), t.export_model()),
        )  # fmt: skip
        run.progress(trainer.step, cfg.iterations)
        return self.finish(seconds)

    @torch.no_grad()
    def finish(self, train_time_s: float) -> dict[str, Any]:
        """PLY, renders, photos, comparisons, loss curve; returns the metrics."""
        cfg, run, trainer = self.config, self.run_dir, self.trainer
        model = trainer.export_model()
        write_splat_ply(run.path("splat.ply"), model)
        results: dict[str, Any] = {"train_time_s": round(train_time_s, 2), "iterations": trainer.step}
        if trainer.stop_state is not None:
            results["early_stop"] = {"stopped_at": trainer.stop_state["stopped_at"], "planned": cfg.iterations}
        t0 = time.perf_counter()
        scored = [("train", self.train, trainer.train_cameras())]
        if self.eval is not None:
            scored.append(("eval", self.eval, self.eval.cameras))
        for split, views, cams in scored:
            preds = render_all(model, cams, views.width, views.height, cfg.sh_degree, self.background)
            write_view_images(run, split, views.names, preds, views.images)
            results[split] = score_images(preds, views.images, views.names)
        n_views = len(self.train.names) + (len(self.eval.names) if self.eval else 0)
        results["render_time_s_per_view"] = round((time.perf_counter() - t0) / n_views, 3)
        results["n_gaussians"] = model.num_gaussians
        if isinstance(trainer.model, AnchoredGaussians):
            results["n_anchors"] = trainer.model.num_anchors
        if trainer.pose_rounds:
            results["pose_rounds"] = list(trainer.pose_rounds)
            splits = {"train": (self.train.names, trainer.train.cameras)}
            if self.eval is not None:
                splits["eval"] = (self.eval.names, self.eval.cameras)
            run.write_cameras(splits)  # the registered training cameras, as recon eval must see them
            if self.registration is not None:
                record_pose_rounds(run.path(), trainer.pose_rounds, self.train.names, trainer.train.cameras)
        if trainer.pose_refiner is not None:
            splits = {"train": (self.train.names, trainer.train_cameras())}
            if self.eval is not None:
                splits["eval"] = (self.eval.names, self.eval.cameras)
            run.write_cameras(splits)  # the refined training poses: recon eval / render / export must see them
            corr = trainer.pose_refiner.corrections()
            results["pose_corrections"] = {
                name: {"rot_deg": round(float(r), 4), "trans": round(float(t), 5)}
                for name, r, t in zip(self.train.names, corr["rot_deg"].tolist(), corr["trans"].tolist())
            }
        results["resolution"] = [self.train.width, self.train.height]
        results["background"] = list(cfg.background)
        results["init"] = trainer.init_description
        results["device"] = str(self.device)
        if self.guidance is not None:
            results["prior"] = {"kind": cfg.prior, **self.guidance.summary()}
        log = run.read_log()
        if log:
            plot_curve(run.path("loss.png"), [r["step"] for r in log], [r["loss"] for r in log], "loss",
                       ("Gaussians", [r.get("n_gaussians", 0) for r in log]))  # fmt: skip
        run.mark("running", n_gaussians=model.num_gaussians, train_time_s=round(train_time_s, 2))
        return results


def capture_memory_estimate(cfg: CaptureFitConfig, capture: Capture, views: list[int]) -> MemoryEstimate:
    """Peak memory of fitting ``views`` of ``capture`` with ``cfg``, from image sizes in the
    headers and the most Gaussians the options allow (:mod:`recon.pipelines.memory`)."""
    pixels = sum(round(capture.cameras.intrinsics[i].width / cfg.downscale) * round(capture.cameras.intrinsics[i].height / cfg.downscale)
                 for i in views)  # fmt: skip
    if cfg.init in ("auto", "sfm") and capture.points is not None and len(capture.points) > 0:
        n0 = len(capture.points)
    else:
        n0 = cfg.mvs_max_points if cfg.init == "mvs" else cfg.init_points
    n = n0 * (2 if cfg.reg.coreg > 0 and cfg.model == "gaussians" else 1)
    densify = cfg.densify
    if cfg.iterations > densify.start_iter and densify.stop_iter > densify.start_iter:
        n = max(n, densify.max_gaussians if densify.max_gaussians is not None else 4 * n)
    return capture_fit_estimate(pixels, n)
