"""Few-view capture reconstruction: posed photos -> Gaussian splats -> renders, scores, PLY.

``CaptureFitConfig.setup()`` validates every input before anything is written, then
``CaptureTrainer.fit()`` trains with L1 + D-SSIM, densifies, checkpoints, and writes the run
folder (see :mod:`recon.io.run`).

Presets (:data:`PRESETS`): the default ``fewview`` starts from multi-view stereo on the training
views (``--init mvs``) with the mean training colour as background, which measured best on the
fox ablation; ``plain`` trains 3DGS as published. Further few-view switches, off in both:
visual-hull initialisation from masks (``--init hull --masks ...``), k-NN floater pruning
(``--prune-outliers``), the regularisers of :class:`recon.splat.regularizers.RegularizerConfig`
(``--reg.*``: opacity/scale penalties, depth smoothness, Gaussian dropout, pseudo views,
co-regularisation of two fields) and per-view pose refinement (``--refine-poses``).

``--model anchored`` trains voxel-anchored Gaussians instead (:mod:`recon.splat.anchored`:
anchor features refined by a sparse U-Net, decoded into k Gaussians per anchor by an MLP; options
``--anchored.*``) with the same views, loss, checkpoints and outputs; the PLY holds the decoded
Gaussians. It has no densification, regularisers or pose refinement and refuses those options.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from torch import Tensor

from recon.geometry.cameras import CameraSet
from recon.errors import InputError
from recon.io.capture import Capture
from recon.io.formats import load_capture
from recon.io.images import load_views, save_image, side_by_side
from recon.io.ply import write_splat_ply
from recon.io.run import RunDir, atomic_write_json
from recon.geometry.view_selection import split_views
from recon.metrics import score_images, ssim
from recon.poses.refine import PoseRefineConfig, PoseRefiner
from recon.splat.anchored import AnchoredConfig, AnchoredGaussians, set_learning_rates
from recon.splat.hull import compute_masks, hull_points
from recon.splat.points import photo_consistent_points, scene_bounds, statistical_outliers
from recon.splat.model import GaussianModel
from recon.splat.mvs import stereo_points
from recon.splat.rasterize import rasterization
from recon.splat.regularizers import (
    PseudoViewSampler,
    RegularizerConfig,
    coreg_loss,
    edge_aware_depth_tv,
    gaussian_dropout,
    opacity_loss,
    scale_loss,
    scale_ratio_loss,
)
from recon.splat.strategy import DensifyStrategy
from recon.splat.triangulate import triangulate_views

# the strategy's own row removal, so Adam moments and densification stats stay in step
from recon.splat.strategy import remove_rows as _remove_gaussians

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


PRESETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "fewview": {
        "init": "mvs",
        "background_mean": True,
    },
}
"""Named sets of option values (``--preset``), dotted names for ``reg.*``. ``plain`` is 3DGS as
published (SfM points when the capture has them, else photo-consistent points; black
background). ``fewview`` is what measured best on the fox ablation (``scripts/ablate_fewview.py``,
docs/benchmarks.md): geometry from the training views themselves (``--init mvs``) and the mean
training colour behind the Gaussians. The regularisers (``--reg.*``), co-regularisation, pose
refinement, hull initialisation and outlier pruning did not beat plain there and stay switches;
their combination is the ablation's ``regularisers`` row. A capture with SfM points from all its
images can keep them with ``--init sfm``."""


@dataclass
class CaptureFitConfig:
    """Fit Gaussian splats to a few posed photos."""

    data: tyro.conf.Positional[Path]
    """Capture: a folder or file nerfstudio/instant-ngp ``transforms.json``, Blender, COLMAP or LLFF."""
    out: Path = Path("runs/capture")
    """Run folder to write (see ``recon.io.run``)."""
    preset: Literal["plain", "fewview"] = "fewview"
    """Named option set (``PRESETS``): 'fewview' (multi-view-stereo initial points from the
    training views and the mean training colour as background; best on the fox ablation) or
    'plain' 3DGS. Options given explicitly win over the preset, except an option set to its
    plain default value."""
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
    init: Literal["auto", "sfm", "photo", "random", "hull", "mvs"] = "auto"
    """Initial centres: SfM points if the capture has them ('auto'), photo-consistent samples,
    uniform random, the visual hull of the training masks ('hull', needs --masks), or
    multi-view stereo on the training views ('mvs': SIFT matches triangulated with the known
    poses, then plane-sweep depth maps fused by cross-view consistency)."""
    init_points: int = 20_000
    """Number of initial Gaussians for 'photo', 'random' and 'hull'."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 0.5
    """Multiplier of the nearest-neighbour initial scale (0.5 halves the initial footprints: on fox
    at 270x480 a training step is ~2.7x faster than at 1.0). With --model anchored: the decoded
    Gaussians' initial size as a fraction of the voxel size, in (0, 1)."""
    masks: Literal["none", "files", "grabcut", "threshold"] = "none"
    """Foreground masks of the training views for --init hull: the capture's mask files or alpha
    ('files'), or computed with OpenCV: GrabCut from a centred rectangle, or an Otsu threshold of
    the colour difference from the image border."""
    mvs_resolution: int = 240
    """Long side in pixels of the images that --init mvs plane-sweeps (fox: 240 matched the
    calibrated-SfM depths better than 480)."""
    mvs_max_points: int = 100_000
    """At most this many --init mvs points are kept (random subset)."""
    hull_resolution: int = 64
    """Voxels per side of the carved grid (inside the scene bounds)."""
    hull_fraction: float = 0.5
    """Fraction of --init-points placed on the hull; the rest are photo-consistent points
    anywhere, for the background that the masks cut away (1: hull only)."""
    prune_outliers: bool = False
    """Remove floaters: k-NN statistical outliers among the initial points and, every
    --outlier-every steps, among the Gaussians' centres (on evenly spread photo/random initial
    points it also removes sparse background points)."""
    outlier_k: int = 16
    """Neighbours for the outlier test."""
    outlier_std_ratio: float = 3.0
    """A point is an outlier when its mean neighbour distance exceeds mean + this x std."""
    outlier_every: int = 500
    """Prune outlying Gaussians every this many steps (0: only the initial points)."""
    refine_poses: bool = False
    """Optimise an SE(3) correction per training view jointly with the Gaussians (the first
    training view is held fixed to pin the frame; evaluation views are never refined)."""
    pose_lr: float = 1e-4
    """Initial learning rate of the pose corrections (decays 100x over the run)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour (RGB in [0, 1]) behind the Gaussians."""
    background_mean: bool = False
    """Use the mean colour of the training images as the background (replaces --background; the
    value used is saved in config.json). Where no Gaussian covers a pixel, as in parts of the
    scene no training view saw, a render then shows the scene's average colour instead of black:
    the constant with the least expected squared error."""
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
    model: Literal["gaussians", "anchored"] = "gaussians"
    """'gaussians': free Gaussians with densification (3DGS); 'anchored': voxel-anchored
    Gaussians decoded from sparse U-Net features (Scaffold-GS-like, ``--anchored.*``; no
    densification, regularisers or pose refinement)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses CUDA (gsplat) when available, else the CPU rasteriser."""
    densify: DensifyStrategy = field(default_factory=_default_densify)
    """Densification and pruning (gsplat DefaultStrategy semantics)."""
    reg: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Few-view regularisers (all off in the plain preset)."""
    anchored: AnchoredConfig = field(default_factory=AnchoredConfig)
    """Voxel-anchored Gaussians (used with --model anchored)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InputError("--preset", f"unknown preset {self.preset!r} (expected one of {sorted(PRESETS)})")
        apply_overrides(self, PRESETS[self.preset], only_defaults=True)

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
        if self.init == "hull" and self.masks == "none":
            raise InputError("--init", "hull needs masks (expected --masks files, grabcut or threshold)")
        if self.masks != "none" and self.init != "hull":
            raise InputError("--masks", f"masks are used only by --init hull, got --init {self.init}")
        if not 0.0 < self.hull_fraction <= 1.0:
            raise InputError("--hull-fraction", f"must be in (0, 1], got {self.hull_fraction}")
        if self.mvs_resolution < 16 or self.mvs_max_points < 1:
            raise InputError("--mvs-resolution/--mvs-max-points", f"must be >= 16 and >= 1, got {self.mvs_resolution}, {self.mvs_max_points}")
        if self.hull_resolution < 4:
            raise InputError("--hull-resolution", f"must be >= 4, got {self.hull_resolution}")
        if self.outlier_k < 1 or self.outlier_std_ratio < 0 or self.outlier_every < 0:
            raise InputError(
                "--outlier-k/--outlier-std-ratio/--outlier-every",
                f"must be >= 1, >= 0, >= 0, got {self.outlier_k}, {self.outlier_std_ratio}, {self.outlier_every}",
            )
        if not self.pose_lr > 0:
            raise InputError("--pose-lr", f"must be > 0, got {self.pose_lr}")
        problems = self.reg.validate()
        if problems:
            where, _, what = problems[0].partition(": ")
            raise InputError(where, what)
        if self.model == "anchored":
            self._validate_anchored()

    def _validate_anchored(self) -> None:
        """Refuse options that --model anchored does not use (rather than ignore them)."""
        problems = self.anchored.validate()
        if problems:
            where, _, what = problems[0].partition(": ")
            raise InputError(where, what)
        default_reg = RegularizerConfig()
        active = [f"--reg.{f.name.replace('_', '-')}" for f in dataclasses.fields(RegularizerConfig)
                  if f.name in ("opacity_reg", "scale_reg", "scale_ratio_reg", "depth_smooth", "dropout",
                                "pseudo_every", "coreg")
                  and getattr(self.reg, f.name) != getattr(default_reg, f.name)]
        if active:
            from_preset = [a for a in active if a[2:].replace("-", "_") in PRESETS[self.preset]]
            via = f" (set by --preset {self.preset})" if from_preset else ""
            raise InputError("--model anchored", f"regularisers are not supported, got {', '.join(active)}{via}")
        if self.refine_poses:
            raise InputError("--model anchored", "pose refinement is not supported (drop --refine-poses)")
        if self.prune_outliers and self.outlier_every:
            raise InputError("--model anchored", "only the initial points can be outlier-pruned (add --outlier-every 0)")
        if self.densify != _default_densify():
            raise InputError("--model anchored", "has no densification (drop the --densify.* options)")
        if self.means_lr != 1.6e-4:
            raise InputError("--model anchored", "anchors do not move; --means-lr does not apply")
        if not 0.0 < self.init_scale < 1.0:
            raise InputError("--init-scale", f"with --model anchored, a fraction of the voxel size in (0, 1), got {self.init_scale}")

    def setup(self) -> CaptureTrainer:
        return CaptureTrainer(self)


def apply_overrides(cfg: CaptureFitConfig, overrides: Mapping[str, Any], only_defaults: bool = False) -> CaptureFitConfig:
    """Set options of ``cfg`` in place from ``{"name": value, "reg.name": value}``; returns ``cfg``.

    With ``only_defaults``, an option is changed only while it still has its plain default
    value (how presets leave explicitly given options alone). Unknown names raise ValueError.
    """
    top = {f.name: f for f in dataclasses.fields(CaptureFitConfig)}
    sub = {f.name: f for f in dataclasses.fields(RegularizerConfig)}
    reg_default = RegularizerConfig()
    reg_changes = {}
    for key, value in overrides.items():
        group, _, name = key.rpartition(".")
        if group == "reg" and name in sub:
            if not only_defaults or getattr(cfg.reg, name) == getattr(reg_default, name):
                reg_changes[name] = value
        elif group == "" and name in top and name not in ("reg", "densify", "anchored", "data", "preset"):
            f = top[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if not only_defaults or getattr(cfg, name) == default:
                setattr(cfg, name, value)
        else:
            raise ValueError(f"override {key!r}: not an option of CaptureFitConfig (or reg.*)")
    if reg_changes:
        cfg.reg = dataclasses.replace(cfg.reg, **reg_changes)
    return cfg


for _name, _values in PRESETS.items():  # a typo in a preset fails at import, not in a run
    _unknown = [k for k in _values if k.rpartition(".")[2] not in
                {f.name for f in dataclasses.fields(RegularizerConfig if k.startswith("reg.") else CaptureFitConfig)}]
    assert not _unknown, f"PRESETS[{_name!r}]: unknown options {_unknown}"
del _name, _values, _unknown


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
    masks: Tensor | None = None  # [V, H, W, 1]
    """Masks from the capture's mask files or alpha channels (1 = keep), if it has any."""

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


def load_split(capture: Capture, indices: list[int], downscale: float) -> ViewSet:
    """Load and undistort the images of ``indices`` at ``downscale``."""
    images, masks, cams = load_views(capture, indices, downscale=downscale)
    return ViewSet(list(indices), [capture.names[i] for i in indices], images, cams, masks)


def _rasterize(
    inputs: Mapping[str, Tensor],
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    render_mode: str = "RGB",
) -> tuple[Tensor, Tensor, dict]:
    dev = inputs["means"].device
    return rasterization(
        **inputs,
        viewmats=viewmats.to(dev),
        Ks=Ks.to(dev),
        width=width,
        height=height,
        sh_degree=sh_degree,
        backgrounds=background.to(dev).expand(len(viewmats), 3),
        render_mode=render_mode,
    )


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
    return _rasterize(model.activated(sh_degree), cameras.w2c[idx], cameras.Ks()[idx], width, height, sh_degree, background)


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


@dataclass
class _Field:
    """One Gaussian field with its optimisers and densification state."""

    model: GaussianModel | AnchoredGaussians
    optimizers: dict[str, torch.optim.Optimizer]
    state: dict[str, Any]


class CaptureTrainer:
    """Owns the data, model(s), optimisers and densification state of one capture fit.

    ``fields[0]`` is the model that is saved and scored; ``fields[1]`` exists only for
    co-regularisation (``reg.coreg > 0``).
    """

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
        if config.background_mean:
            config.background = tuple(round(float(c), 4) for c in self.train.images.mean(dim=(0, 1, 2)))
            logger.info("background: mean training colour %s", config.background)
        self.background = torch.tensor(config.background, dtype=torch.float32)
        self.scene_scale = float(
            (self.train.cameras.centres() - self.train.cameras.centres().mean(0)).norm(dim=-1).max() * 1.1
        )
        reg = config.reg
        if reg.pseudo_every > 0 and len(train_idx) < 2:
            raise InputError("--reg.pseudo-every", f"pseudo views need >= 2 training views, got {len(train_idx)}")
        self.train_masks = self._masks() if config.init == "hull" else None
        self.strategy = config.densify.within(config.iterations) if config.model == "gaussians" else config.densify
        if self.strategy.refine_stop_iter != config.densify.refine_stop_iter:
            logger.info("densification stops at step %d (80%% of --iterations)", self.strategy.refine_stop_iter)
        self.fields: list[_Field] = []
        self.anchored = config.model == "anchored"
        if self.anchored:
            pts, cols = self._init_points(seed=config.seed)
            anchored = AnchoredGaussians.from_points(
                pts, cols, config.anchored, config.sh_degree, config.init_opacity, config.init_scale, seed=config.seed
            ).to(self.device)
            self.init_description += f" -> {anchored.num_anchors} anchors (voxel {float(anchored.voxel_size):.4g})"
            self.fields.append(_Field(anchored, anchored.make_optimizers(), anchored.initialize_state()))  # type: ignore[arg-type]
        for i in range(0 if self.anchored else 2 if reg.coreg > 0 else 1):
            model = self._init_model(seed=config.seed + i).to(self.device)
            optimizers = model.make_optimizers(scene_scale=self.scene_scale, means_lr=config.means_lr)
            self.strategy.check_sanity(model.params, optimizers)
            self.fields.append(_Field(model, optimizers, self.strategy.initialize_state(scene_scale=self.scene_scale)))
        self.pseudo_sampler = PseudoViewSampler(noise=reg.pseudo_noise)
        self.pseudo_state = self.pseudo_sampler.initialize_state(self.train.cameras.w2c) if reg.pseudo_every > 0 else None
        self.pose_refiner: PoseRefiner | None = None
        if config.refine_poses:
            self.pose_refiner = PoseRefineConfig(lr=config.pose_lr, lr_final=config.pose_lr / 100).setup(len(train_idx))
            self.pose_refiner.to(self.device)
            self.pose_optimizer, self.pose_scheduler = self.pose_refiner.make_optimizer(config.iterations)
        self.step = 0
        self.elapsed_s = 0.0
        # view order: a fresh permutation of the training views per epoch; its generator and
        # the views left in the current epoch are saved in checkpoints (exact resume)
        self.order_rng = np.random.default_rng(config.seed)
        self.order: list[int] = []

    # the saved model is field 0 --------------------------------------------
    @property
    def model(self) -> GaussianModel | AnchoredGaussians:
        return self.fields[0].model

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.fields[0].optimizers

    @property
    def strategy_state(self) -> dict[str, Any]:
        return self.fields[0].state

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

    def _masks(self) -> Tensor:
        """Foreground masks ``[V, H, W]`` bool of the training views, per ``--masks``."""
        cfg = self.config
        if cfg.masks == "files":
            if self.train.masks is None:
                raise InputError(cfg.data, "--masks files but the capture has no mask files or alpha channels")
            return self.train.masks[..., 0] > 0.5
        # GrabCut needs a few hundred pixels across: segment at ~480 px on the long side, or at
        # the training resolution when that is larger, then resize to the training resolution.
        full = self.capture.cameras.intrinsics[self.train.indices[0]]
        ds = min(cfg.downscale, max(1.0, max(full.width, full.height) / 480))
        images = self.train.images if ds == cfg.downscale else load_split(self.capture, self.train.indices, ds).images
        masks = compute_masks(images, cfg.masks)  # type: ignore[arg-type]
        if masks.shape[1:] != self.train.images.shape[1:3]:
            size = tuple(self.train.images.shape[1:3])
            masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0] > 0.5
        cover = masks.float().mean((1, 2))
        useless = (cover < 0.01) | (cover > 0.99)
        for i in torch.nonzero(useless).flatten().tolist():
            logger.warning("%s mask of %s covers %.0f%% of it: not used for carving", cfg.masks, self.train.names[i], 100 * float(cover[i]))
            masks[i] = True
        logger.info("%s masks cover %.0f%% of the training pixels", cfg.masks, 100 * float(cover.mean()))
        return masks

    def _init_model(self, seed: int | None = None) -> GaussianModel:
        cfg = self.config
        pts, cols = self._init_points(seed)
        return GaussianModel.from_points(
            pts, cols, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity, init_scale=cfg.init_scale
        )

    def _init_points(self, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """Initial centres [P, 3] and colours [P, 3] per ``--init``; sets ``init_description``."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        mode = cfg.init
        cams, images = self.train.cameras, self.train.images
        if mode in ("auto", "sfm") and self.capture.points is not None and len(self.capture.points) > 0:
            pts, cols = self.capture.points.float(), self.capture.point_colors
            if cols is None:
                cols = torch.full_like(pts, 0.5)
            how = f"{len(pts)} SfM points"
        elif mode == "sfm":
            raise InputError(cfg.data, "--init sfm but the capture has no SfM points")
        elif mode == "random":
            bounds = scene_bounds(cams)
            pts = bounds[0] + torch.rand(cfg.init_points, 3, generator=gen) * (bounds[1] - bounds[0])
            cols = torch.rand(cfg.init_points, 3, generator=gen)
            how = f"{cfg.init_points} uniform random points"
        elif mode == "hull":
            assert self.train_masks is not None
            n_hull = max(2, round(cfg.hull_fraction * cfg.init_points))
            try:
                pts, cols = hull_points(cams, images, self.train_masks, n_hull, resolution=cfg.hull_resolution, generator=gen)
            except ValueError as err:
                raise InputError(f"--masks {cfg.masks}", str(err)) from None
            how = f"{n_hull} visual-hull points ({cfg.masks} masks)"
            if n_hull < cfg.init_points:
                bp, bc = photo_consistent_points(cams, images, cfg.init_points - n_hull, generator=gen)
                pts, cols = torch.cat([pts, bp]), torch.cat([cols, bc])
                how += f" + {cfg.init_points - n_hull} photo-consistent points"
        elif mode == "mvs":
            pts, cols, how = self._stereo_points(gen)
        else:
            pts, cols = photo_consistent_points(cams, images, cfg.init_points, generator=gen)
            how = f"{cfg.init_points} photo-consistent points"
        if cfg.prune_outliers:
            out = statistical_outliers(pts, cfg.outlier_k, cfg.outlier_std_ratio)
            if int(out.sum()) and int((~out).sum()) >= 2:
                pts, cols = pts[~out], cols[~out]
                how += f", {int(out.sum())} outliers removed"
        logger.info("initialising from %s", how)
        self.init_description = how
        return pts, cols

    def _stereo_points(self, gen: torch.Generator) -> tuple[Tensor, Tensor, str]:
        """--init mvs: triangulated SIFT matches (images at up to 1/2 resolution) set the depth
        range; plane-sweep depth maps at --mvs-resolution give the dense points; photo-consistent
        points top up to --init-points when stereo finds fewer."""
        cfg, idx = self.config, self.train.indices
        intr = self.capture.cameras.intrinsics[idx[0]]
        width, height = intr.width, intr.height
        feat_images, _, feat_cams = load_views(self.capture, idx, downscale=min(cfg.downscale, 2.0))
        tri = triangulate_views(feat_cams, feat_images)
        mvs_ds = max(width, height) / cfg.mvs_resolution
        if mvs_ds == cfg.downscale:
            images, cams = self.train.images, self.train.cameras
        else:
            images, _, cams = load_views(self.capture, idx, downscale=mvs_ds)
        try:
            pts, cols, how = stereo_points(cams, images, tri.points, tri.colours)
        except ValueError as err:
            raise InputError("--init mvs", str(err)) from None
        if len(pts) > cfg.mvs_max_points:
            keep = torch.randperm(len(pts), generator=gen)[: cfg.mvs_max_points]
            pts, cols = pts[keep], cols[keep]
            how += f", {cfg.mvs_max_points} kept"
        if len(pts) < cfg.init_points:
            bp, bc = photo_consistent_points(self.train.cameras, self.train.images, cfg.init_points - len(pts), generator=gen)
            how += f" + {len(bp)} photo-consistent points"
            pts, cols = torch.cat([pts, bp]), torch.cat([cols, bc])
        return pts, cols, how

    # checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict:
        f0 = self.fields[0]
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "model": f0.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in f0.optimizers.items()},
            "strategy_state": f0.state,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "order": list(self.order),
            "order_rng": self.order_rng.bit_generator.state,
            "train_indices": self.train.indices,
        }
        if self.anchored:
            state["model_kind"] = "anchored"
        if len(self.fields) > 1:
            f1 = self.fields[1]
            state["partner"] = {
                "model": f1.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in f1.optimizers.items()},
                "strategy_state": f1.state,
            }
        if self.pose_refiner is not None:
            state["pose_refiner"] = {
                "params": self.pose_refiner.state_dict(),
                "optimizer": self.pose_optimizer.state_dict(),
                "scheduler": self.pose_scheduler.state_dict(),
            }
        return state

    def _load_field(self, f: _Field, saved: dict) -> None:
        f.model.load_state_dict(saved["model"])
        if isinstance(f.model, AnchoredGaussians):
            f.optimizers = f.model.make_optimizers()
        else:
            f.optimizers = f.model.make_optimizers(scene_scale=self.scene_scale, means_lr=self.config.means_lr)
        for k, opt in f.optimizers.items():
            opt.load_state_dict(saved["optimizers"][k])
        f.state = saved["strategy_state"]

    def load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["train_indices"] != self.train.indices:
            raise InputError(path, f"checkpoint was trained on views {ckpt['train_indices']}, not {self.train.indices}")
        if ("partner" in ckpt) != (len(self.fields) > 1) or ("pose_refiner" in ckpt) != (self.pose_refiner is not None):
            raise InputError(path, "checkpoint was written with other --reg.coreg / --refine-poses settings")
        if ckpt.get("model_kind", "gaussians") != self.config.model:
            raise InputError(path, f"checkpoint holds a --model {ckpt.get('model_kind', 'gaussians')} fit, not {self.config.model}")
        self._load_field(self.fields[0], ckpt)
        if len(self.fields) > 1:
            self._load_field(self.fields[1], ckpt["partner"])
        if self.pose_refiner is not None:
            self.pose_refiner.load_state_dict(ckpt["pose_refiner"]["params"])
            self.pose_optimizer.load_state_dict(ckpt["pose_refiner"]["optimizer"])
            self.pose_scheduler.load_state_dict(ckpt["pose_refiner"]["scheduler"])
        self.step = int(ckpt["step"])
        self.elapsed_s = float(ckpt.get("elapsed_s", 0.0))
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        if "order_rng" in ckpt:
            self.order = [int(v) for v in ckpt["order"]]
            self.order_rng.bit_generator.state = ckpt["order_rng"]
        else:  # written before the view order was saved: a new order from here on
            self.order_rng = np.random.default_rng(self.config.seed + self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    # training --------------------------------------------------------------
    def _means_lr_factor(self, step: int) -> float:
        """Exponential decay of the centres' learning rate to 1% at the last step."""
        return 0.01 ** (step / max(1, self.config.iterations))

    def _is_pseudo_step(self, step: int) -> bool:
        reg = self.config.reg
        return reg.pseudo_every > 0 and step >= int(reg.pseudo_start * self.config.iterations) and step % reg.pseudo_every == 0

    def train_step(self, step: int, view: int) -> dict:
        if self.anchored:
            return self._train_step_anchored(step, view)
        cfg, reg = self.config, self.config.reg
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        w, h = self.train.width, self.train.height
        viewmats = self.train.cameras.w2c[[view]].to(self.device)
        if self.pose_refiner is not None:
            viewmats = self.pose_refiner.apply(viewmats, [view])
        Ks = self.train.cameras.Ks()[[view]]
        gt = self.train.images[view : view + 1].to(self.device)
        mode = "RGB+ED" if reg.depth_smooth > 0 else "RGB"
        pseudo = self.pseudo_sampler.sample(self.pseudo_state, 1) if self._is_pseudo_step(step) else None
        total: Tensor | float = 0.0
        infos, pseudo_rgb = [], []
        stats: dict[str, Any] = {}
        for fi, f in enumerate(self.fields):
            act = f.model.activated(sh_deg)
            inputs = dict(act)
            if reg.dropout > 0:
                inputs["opacities"] = gaussian_dropout(act["opacities"], reg.dropout)
            out, alphas, info = _rasterize(inputs, viewmats, Ks, w, h, sh_deg, self.background, mode)
            self.strategy.step_pre_backward(f.model.params, f.optimizers, f.state, step, info)
            infos.append(info)
            pred = out[..., :3]
            l1 = (pred - gt).abs().mean()
            d_ssim = 1.0 - ssim(pred, gt)
            loss = (1.0 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * d_ssim.mean()
            terms: dict[str, Tensor] = {}
            if reg.opacity_reg > 0:
                terms["opacity_reg"] = reg.opacity_reg * opacity_loss(act["opacities"])
            if reg.scale_reg > 0:
                terms["scale_reg"] = reg.scale_reg * scale_loss(act["scales"], self.scene_scale)
            if reg.scale_ratio_reg > 0:
                terms["scale_ratio_reg"] = reg.scale_ratio_reg * scale_ratio_loss(act["scales"], reg.max_scale_ratio)
            if reg.depth_smooth > 0:
                terms["depth_smooth"] = reg.depth_smooth * edge_aware_depth_tv(
                    out[..., 3:4], gt, reg.depth_edge_gamma, weight=alphas
                )
            if pseudo is not None:
                p_out, p_alphas, _ = _rasterize(act, pseudo, Ks, w, h, sh_deg, self.background, mode)
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
        for f, info in zip(self.fields, infos):
            for group in f.optimizers["means"].param_groups:
                group["lr"] = cfg.means_lr * self.scene_scale * self._means_lr_factor(step)
            for opt in f.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.strategy.step_post_backward(f.model.params, f.optimizers, f.state, step, info)
        if self.pose_refiner is not None:
            grad = self.pose_refiner.pose_adjustment.grad
            if grad is not None:
                grad[0] = 0.0  # the first training view pins the frame
            self.pose_optimizer.step()
            self.pose_scheduler.step()
            self.pose_optimizer.zero_grad(set_to_none=True)
        if cfg.prune_outliers and cfg.outlier_every and (step + 1) % cfg.outlier_every == 0:
            stats["outliers_pruned"] = self.prune_outliers()
        return {"loss": float(total.detach()), **stats, "n_gaussians": self.model.num_gaussians, "sh_degree": sh_deg}

    def _train_step_anchored(self, step: int, view: int) -> dict:
        """One step of --model anchored: decode, cull, render, L1 + D-SSIM, Adam, prune anchors."""
        cfg = self.config
        f = self.fields[0]
        model: AnchoredGaussians = f.model  # type: ignore[assignment]
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        viewmats = self.train.cameras.w2c[[view]].to(self.device)
        Ks = self.train.cameras.Ks()[[view]]
        gt = self.train.images[view : view + 1].to(self.device)
        inputs, kept = model.decode(sh_deg)
        out, _, _ = _rasterize(inputs, viewmats, Ks, self.train.width, self.train.height, sh_deg, self.background)
        pred = out[..., :3]
        l1 = (pred - gt).abs().mean()
        loss = (1.0 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1.0 - ssim(pred, gt)).mean()
        loss.backward()
        set_learning_rates(f.optimizers, step, cfg.iterations)
        for opt in f.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        pruned = model.step_post_backward(f.optimizers, f.state, step, kept)
        stats = {"loss": float(loss.detach()), "l1": float(l1.detach())}
        if pruned:
            stats["anchors_pruned"] = pruned
        n_kept = int(inputs["means"].shape[0])
        return {**stats, "n_gaussians": n_kept, "n_anchors": model.num_anchors, "sh_degree": sh_deg}

    @torch.no_grad()
    def prune_outliers(self) -> int:
        """Remove Gaussians whose centres are k-NN statistical outliers (in every field); returns how many (field 0)."""
        cfg = self.config
        removed = []
        for f in self.fields:
            mask = statistical_outliers(f.model.params["means"].detach(), cfg.outlier_k, cfg.outlier_std_ratio)
            n = int(mask.sum())
            if n and f.model.num_gaussians - n >= 2:
                _remove_gaussians(f.model.params, f.optimizers, f.state, mask.to(f.model.params["means"].device))
            removed.append(n)
        return removed[0]

    def refined_train_cameras(self) -> CameraSet:
        """Training cameras with the pose corrections applied (the given ones without refinement)."""
        cams = self.train.cameras
        if self.pose_refiner is None:
            return cams
        with torch.no_grad():
            w2c = self.pose_refiner.apply(cams.w2c.to(self.device), list(range(len(cams)))).cpu()
        return CameraSet(w2c, list(cams.intrinsics))

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
        t_start = time.perf_counter() - self.elapsed_s
        while self.step < cfg.iterations:
            if not self.order:
                self.order = [int(v) for v in self.order_rng.permutation(n_train)]
            stats = self.train_step(self.step, self.order.pop())
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
        # anchored: score and export the decoded Gaussians, so the PLY renders what was scored
        model = self.model.to_gaussian_model() if isinstance(self.model, AnchoredGaussians) else self.model
        write_splat_ply(self.run.path("splat.ply"), model)
        results: dict = {"train_time_s": round(train_time_s, 2), "iterations": self.step}
        t0 = time.perf_counter()
        train_views = dataclasses.replace(self.train, cameras=self.refined_train_cameras())
        for split, views in (("train", train_views), ("eval", self.eval)):
            if views is None:
                continue
            preds = render_all(model, views, sh, self.background)
            write_renders(self.run, split, views.names, preds, views.images)
            results[split] = score_images(preds, views.images, views.names)
        results["render_time_s_per_view"] = round(
            (time.perf_counter() - t0) / max(1, len(self.train.names) + (len(self.eval.names) if self.eval else 0)), 3
        )
        results["n_gaussians"] = model.num_gaussians
        if isinstance(self.model, AnchoredGaussians):
            results["n_anchors"] = self.model.num_anchors
        if self.pose_refiner is not None:
            corr = self.pose_refiner.corrections()
            results["pose_corrections"] = {
                name: {"rot_deg": round(float(r), 4), "trans": round(float(t), 5)}
                for name, r, t in zip(self.train.names, corr["rot_deg"].tolist(), corr["trans"].tolist())
            }
        results["resolution"] = [self.train.width, self.train.height]
        results["device"] = str(self.device)
        plot_loss_curve(self.run)
        atomic_write_json(self.run.path("metrics.json"), results)
        self.run.mark("complete", n_gaussians=model.num_gaussians, train_time_s=round(train_time_s, 2))
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
