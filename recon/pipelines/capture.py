"""Few-view capture reconstruction: posed photos -> Gaussian splats -> renders, scores, PLY.

``CaptureFitConfig.setup()`` validates every input before anything is written, then
``CaptureTrainer.fit()`` trains with L1 + D-SSIM, densifies, checkpoints, and writes the run
folder (see :mod:`recon.io.run`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import tyro
from torch import Tensor

from recon.cameras import CameraSet
from recon.errors import InputError
from recon.io.capture import Capture, load_capture
from recon.io.images import load_views, save_image, side_by_side
from recon.io.ply import write_splat_ply
from recon.io.run import RunDir, atomic_write_json
from recon.io.views import split_views
from recon.metrics import score_images, ssim
from recon.splat.init import photo_consistent_points, scene_bounds
from recon.splat.model import GaussianModel
from recon.splat.rasterize import rasterization
from recon.splat.strategy import DensifyStrategy

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict], None]


def _default_densify() -> DensifyStrategy:
    return DensifyStrategy(
        refine_start_iter=300,
        refine_stop_iter=2500,
        refine_every=100,
        reset_every=3000,
        max_gaussians=150_000,
    )


@dataclass
class CaptureFitConfig:
    """Fit Gaussian splats to a few posed photos."""

    data: tyro.conf.Positional[Path]
    """Capture: a folder or file nerfstudio/instant-ngp ``transforms.json``, Blender, COLMAP or LLFF."""
    out: Path = Path("runs/capture")
    """Run folder to write (see ``recon.io.run``)."""
    train_views: tuple[int, ...] = (8,)
    """One number K (K views spread over the capture) or an explicit list of view indices."""
    eval_views: int = 8
    """Views never trained on, chosen spread over the rest of the capture, that are scored."""
    eval_indices: tuple[int, ...] = ()
    """Explicit evaluation view indices (override --eval-views); must not overlap the training views."""
    downscale: float = 4.0
    """Image downscale factor (fox 1080x1920 -> 270x480 at 4)."""
    iterations: int = 3000
    """Optimisation steps (one training view per step)."""
    sh_degree: int = 3
    """Maximum spherical-harmonics degree of the colours."""
    sh_degree_interval: int = 500
    """Raise the SH degree used by one every this many steps."""
    init: Literal["auto", "sfm", "photo", "random"] = "auto"
    """Initial centres: SfM points if the capture has them ('auto'), photo-consistent samples, or uniform random."""
    init_points: int = 20_000
    """Number of initial Gaussians for 'photo' and 'random'."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 0.5
    """Multiplier of the nearest-neighbour initial scale (0.5 halves the initial footprints: on fox
    at 270x480 a training step is ~2.7x faster than at 1.0)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour (RGB in [0, 1]) behind the Gaussians."""
    ssim_lambda: float = 0.2
    """Weight of D-SSIM in the loss: (1 - l) * L1 + l * (1 - SSIM)."""
    means_lr: float = 1.6e-4
    """Learning rate of the centres, times the scene scale; decays to 1% over the run."""
    seed: int = 0
    """Seed of every random choice (initialisation, view order)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``."""
    overwrite: bool = False
    """Replace an existing run folder."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses CUDA (gsplat) when available, else the CPU rasteriser."""
    densify: DensifyStrategy = field(default_factory=_default_densify)
    """Densification and pruning (gsplat DefaultStrategy semantics)."""

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device", "cuda requested but torch sees no CUDA device")
        return torch.device(self.device)

    def validate(self) -> None:
        if self.iterations < 1:
            raise InputError("--iterations", f"must be >= 1, got {self.iterations}")
        if self.downscale <= 0:
            raise InputError("--downscale", f"must be > 0, got {self.downscale}")
        if not 0 <= self.sh_degree <= 3:
            raise InputError("--sh-degree", f"must be 0..3, got {self.sh_degree}")
        if any(not 0.0 <= c <= 1.0 for c in self.background):
            raise InputError("--background", f"RGB values must be in [0, 1], got {self.background}")
        if not 0.0 <= self.ssim_lambda <= 1.0:
            raise InputError("--ssim-lambda", f"must be in [0, 1], got {self.ssim_lambda}")

    def setup(self) -> "CaptureTrainer":
        return CaptureTrainer(self)


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


@dataclass
class ViewSet:
    """Images and cameras of one split at training resolution."""

    indices: list[int]
    names: list[str]
    images: Tensor  # [V, H, W, 3]
    cameras: CameraSet

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


def load_split(capture: Capture, indices: list[int], downscale: float) -> ViewSet:
    """Load and undistort the images of ``indices`` at ``downscale``."""
    images, _masks, cams = load_views(capture, indices, downscale=downscale)
    return ViewSet(list(indices), [capture.names[i] for i in indices], images, cams)


def render(
    model: GaussianModel,
    cameras: CameraSet,
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    indices: list[int] | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render cameras (all or ``indices``) of ``cameras``: ``[C,H,W,3]`` colours, ``[C,H,W,1]`` alphas, meta."""
    idx = list(range(len(cameras))) if indices is None else indices
    dev = model.params["means"].device
    viewmats = cameras.w2c[idx].to(dev)
    Ks = cameras.Ks()[idx].to(dev)
    inputs = model.activated(sh_degree)
    colors, alphas, meta = rasterization(
        **inputs,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        sh_degree=sh_degree,
        backgrounds=background.to(dev).expand(len(idx), 3),
    )
    return colors, alphas, meta


@torch.no_grad()
def render_all(model: GaussianModel, views: ViewSet, sh_degree: int, background: Tensor) -> Tensor:
    """Renders ``[V, H, W, 3]`` of every view in ``views``, one camera at a time."""
    out = []
    for i in range(len(views.indices)):
        colors, _, _ = render(model, views.cameras, views.width, views.height, sh_degree, background, [i])
        out.append(colors[0, ..., :3].clamp(0, 1).cpu())
    return torch.stack(out)


def write_renders(run: RunDir, split: str, names: list[str], preds: Tensor, gts: Tensor | None) -> None:
    """PNG renders (``renders/<split>/<name>.png``) and comparisons (``compare/<split>/``)."""
    for i, name in enumerate(names):
        stem = Path(name).stem
        save_image(run.path("renders", split, f"{stem}.png"), preds[i])
        if gts is not None:
            save_image(run.path("compare", split, f"{stem}.png"), side_by_side(preds[i], gts[i]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class CaptureTrainer:
    """Owns the data, model, optimisers and densification state of one capture fit."""

    def __init__(self, config: CaptureFitConfig):
        config.validate()
        self.config = config
        self.device = config.resolved_device()
        self.run = RunDir(config.out)
        self._check_out_dir()
        _seed_everything(config.seed)
        # Everything that can fail on bad input happens here, before the run folder is touched.
        self.capture = load_capture(config.data)
        train_idx, eval_idx = split_views(self.capture, train_view_spec(config.train_views), config.eval_views)
        if config.eval_indices:
            eval_idx = check_eval_indices(config.eval_indices, train_idx, len(self.capture))
        self.train = load_split(self.capture, train_idx, config.downscale)
        self.eval = load_split(self.capture, eval_idx, config.downscale) if eval_idx else None
        self.background = torch.tensor(config.background, dtype=torch.float32)
        self.scene_scale = float(
            (self.train.cameras.centres() - self.train.cameras.centres().mean(0)).norm(dim=-1).max() * 1.1
        )
        self.model = self._init_model().to(self.device)
        self.optimizers = self.model.make_optimizers(scene_scale=self.scene_scale, means_lr=config.means_lr)
        self.strategy = config.densify
        stop = int(0.8 * config.iterations)
        if self.strategy.refine_stop_iter > stop:
            logger.info("densification stops at step %d (80%% of --iterations)", stop)
            self.strategy = dataclasses.replace(self.strategy, refine_stop_iter=stop)
        self.strategy.check_sanity(self.model.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.step = 0
        self.elapsed_s = 0.0

    # setup -----------------------------------------------------------------
    def _check_out_dir(self) -> None:
        out = self.run.root
        if not out.exists() or not any(out.iterdir()):
            return
        if self.config.resume:
            if self.run.latest_checkpoint() is None:
                raise InputError(out, "--resume given but the folder holds no checkpoint")
            return
        if not self.config.overwrite:
            raise InputError(out, "run folder exists and is not empty (use --resume to continue or --overwrite)")

    def _init_model(self) -> GaussianModel:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        mode = cfg.init
        if mode in ("auto", "sfm") and self.capture.points is not None and len(self.capture.points) > 0:
            pts, cols = self.capture.points.float(), self.capture.point_colors
            if cols is None:
                cols = torch.full_like(pts, 0.5)
            how = f"{len(pts)} SfM points"
        elif mode == "sfm":
            raise InputError(cfg.data, "--init sfm but the capture has no SfM points")
        elif mode == "random":
            bounds = scene_bounds(self.train.cameras)
            pts = bounds[0] + torch.rand(cfg.init_points, 3, generator=gen) * (bounds[1] - bounds[0])
            cols = torch.rand(cfg.init_points, 3, generator=gen)
            how = f"{cfg.init_points} uniform random points"
        else:
            pts, cols = photo_consistent_points(self.train.cameras, self.train.images, cfg.init_points, generator=gen)
            how = f"{cfg.init_points} photo-consistent points"
        logger.info("initialising from %s", how)
        self.init_description = how
        return GaussianModel.from_points(
            pts, cols, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity, init_scale=cfg.init_scale
        )

    # checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": self.strategy_state,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "train_indices": self.train.indices,
        }

    def load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["train_indices"] != self.train.indices:
            raise InputError(path, f"checkpoint was trained on views {ckpt['train_indices']}, not {self.train.indices}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizers = self.model.make_optimizers(scene_scale=self.scene_scale, means_lr=self.config.means_lr)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        self.strategy_state = ckpt["strategy_state"]
        self.step = int(ckpt["step"])
        self.elapsed_s = float(ckpt.get("elapsed_s", 0.0))
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        logger.info("resumed from %s at step %d", path, self.step)

    # training --------------------------------------------------------------
    def _means_lr_factor(self, step: int) -> float:
        """Exponential decay of the centres' learning rate to 1% at the last step."""
        return 0.01 ** (step / max(1, self.config.iterations))

    def train_step(self, step: int, view: int) -> dict:
        cfg = self.config
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        colors, _alphas, info = render(
            self.model, self.train.cameras, self.train.width, self.train.height, sh_deg, self.background, [view]
        )
        gt = self.train.images[view : view + 1].to(self.device)
        self.strategy.step_pre_backward(self.model.params, self.optimizers, self.strategy_state, step, info)
        pred = colors[..., :3]
        l1 = (pred - gt).abs().mean()
        d_ssim = 1.0 - ssim(pred, gt)
        loss = (1.0 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * d_ssim.mean()
        loss.backward()
        for group in self.optimizers["means"].param_groups:
            group["lr"] = cfg.means_lr * self.scene_scale * self._means_lr_factor(step)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(self.model.params, self.optimizers, self.strategy_state, step, info)
        return {"loss": float(loss.detach()), "l1": float(l1.detach()), "n_gaussians": self.model.num_gaussians, "sh_degree": sh_deg}

    def fit(self, progress: ProgressFn | None = None) -> dict:
        """Train, then write renders, scores and the PLY. Returns the metrics dict."""
        cfg = self.config
        if cfg.resume and (ckpt := self.run.latest_checkpoint()) is not None:
            self.load_checkpoint(ckpt)
        else:
            if self.run.root.exists() and cfg.overwrite:
                import shutil

                shutil.rmtree(self.run.root)
            self.run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run.path("config.json"), dataclasses.asdict(cfg))
        self.run.mark(
            "running",
            kind="capture",
            device=str(self.device),
            train_views=self.train.names,
            eval_views=self.eval.names if self.eval else [],
            resolution=[self.train.width, self.train.height],
            init=self.init_description,
        )
        try:
            metrics = self._fit_loop(progress)
        except BaseException as err:
            self.run.mark("failed" if not isinstance(err, KeyboardInterrupt) else "interrupted", error=repr(err))
            raise
        return metrics

    def _fit_loop(self, progress: ProgressFn | None) -> dict:
        cfg = self.config
        n_train = len(self.train.indices)
        order_rng = np.random.default_rng(cfg.seed + self.step)
        order: list[int] = []
        t_start = time.perf_counter() - self.elapsed_s
        while self.step < cfg.iterations:
            if not order:
                order = list(order_rng.permutation(n_train))
            stats = self.train_step(self.step, int(order.pop()))
            self.step += 1
            self.elapsed_s = time.perf_counter() - t_start
            if self.step % 50 == 0 or self.step == cfg.iterations:
                self.run.append_log({"step": self.step, "time_s": round(self.elapsed_s, 2), **stats})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.iterations:
                self.run.save_checkpoint(self.step, self.state_dict())
            if progress is not None:
                progress(self.step, cfg.iterations, stats)
        train_time = self.elapsed_s
        self.run.save_checkpoint(self.step, self.state_dict())
        return self.finish(train_time)

    @torch.no_grad()
    def finish(self, train_time_s: float) -> dict:
        """Renders, comparisons, PLY, loss curve and ``metrics.json``; marks the run complete."""
        sh = self.config.sh_degree
        write_splat_ply(self.run.path("splat.ply"), self.model)
        results: dict = {"train_time_s": round(train_time_s, 2), "iterations": self.step}
        t0 = time.perf_counter()
        for split, views in (("train", self.train), ("eval", self.eval)):
            if views is None:
                continue
            preds = render_all(self.model, views, sh, self.background)
            write_renders(self.run, split, views.names, preds, views.images)
            results[split] = score_images(preds, views.images, views.names)
        results["render_time_s_per_view"] = round(
            (time.perf_counter() - t0) / max(1, len(self.train.names) + (len(self.eval.names) if self.eval else 0)), 3
        )
        results["n_gaussians"] = self.model.num_gaussians
        results["resolution"] = [self.train.width, self.train.height]
        results["device"] = str(self.device)
        plot_loss_curve(self.run)
        atomic_write_json(self.run.path("metrics.json"), results)
        self.run.mark("complete", n_gaussians=self.model.num_gaussians, train_time_s=round(train_time_s, 2))
        return results


def plot_loss_curve(run: RunDir) -> Path | None:
    """``loss.png`` from ``log.jsonl`` (None when there is nothing logged)."""
    log = run.read_log()
    if not log:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax1.plot(steps, [r["loss"] for r in log], color="tab:blue", label="loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss", color="tab:blue")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(steps, [r["n_gaussians"] for r in log], color="tab:orange", label="Gaussians")
    ax2.set_ylabel("Gaussians", color="tab:orange")
    fig.tight_layout()
    path = run.path("loss.png")
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def eval_cameras(run_dir: Path, cameras_file: Path, out: Path | None = None) -> dict:
    """Render and score any cameras given in the run's world frame, at the run's resolution.

    Writes one render per camera named after its image file (``<out>/renders``), comparisons,
    and ``<out>/metrics.json``. ``out`` defaults to ``RUN/eval_<cameras file stem>``.
    """
    from recon.io.ply import read_splat_ply
    from recon.io.run import read_json

    run = RunDir(run_dir)
    if not run.is_complete():
        raise InputError(run_dir, "not a complete run folder (run.json does not say 'complete')")
    cfg = read_json(run.path("config.json"))
    model = GaussianModel.from_params(read_splat_ply(run.path("splat.ply")))
    capture = load_capture(Path(cameras_file))
    views = load_split(capture, list(range(len(capture))), float(cfg["downscale"]))
    background = torch.tensor(cfg["background"], dtype=torch.float32)
    preds = render_all(model, views, model.sh_degree, background)
    target = RunDir(out if out is not None else run.path(f"eval_{Path(cameras_file).stem}"))
    write_renders(target, ".", views.names, preds, views.images)
    scores = score_images(preds, views.images, views.names)
    scores["cameras"] = str(cameras_file)
    atomic_write_json(target.path("metrics.json"), scores)
    return scores
