"""Hyperparameters of a capture fit (:class:`SplatTrainConfig`) and the named presets.

The fields are flat (``recon fit --iterations ... --init mvs --reg.dropout 0.1``): the pipeline's
:class:`recon.pipelines.capture.CaptureFitConfig` adds the data, the run folder and the view
split to them, and the nerfstudio plugin reads its defaults from here.

Presets (:data:`PRESETS`): the default ``fewview`` starts from multi-view stereo on the training
views (``--init mvs``) with the mean training colour as background, which measured best on the
fox ablation; ``plain`` trains 3DGS as published. Further few-view switches, off in both:
visual-hull initialisation from masks (``--init hull --masks ...``), k-NN floater pruning
(``--prune-outliers``), the regularisers of :class:`recon.splat.regularizers.RegularizerConfig`
(``--reg.*``), per-view pose refinement (``--refine-poses``) and photometric registration
rounds of the training cameras and their focal length (``--pose-rounds``). ``--model anchored`` trains
voxel-anchored Gaussians (:mod:`recon.splat.anchored`, ``--anchored.*``) instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from recon.errors import InputError
from recon.splat.anchored import AnchoredConfig
from recon.splat.regularizers import RegularizerConfig
from recon.splat.strategy import DensifyStrategy

__all__ = ["PRESETS", "UNSET_DEFAULTS", "SplatTrainConfig", "apply_overrides", "default_densify"]

_C = TypeVar("_C", bound="SplatTrainConfig")


def default_densify() -> DensifyStrategy:
    return DensifyStrategy(
        start_iter=300,
        stop_iter=2500,
        every=100,
        reset_every=3000,
        max_gaussians=150_000,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "fewview": {
        "init": "mvs",
        "background_mean": True,
        "iterations": 1000,
        "coarse_to_fine": 0.5,
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


UNSET_DEFAULTS: dict[str, Any] = {"iterations": 3000, "coarse_to_fine": 0.0}
"""Values of the options whose default is None ("unset") when no preset sets them: a preset
value replaces only an unset option, so an explicit ``--iterations 3000`` stays 3000."""


@dataclass
class SplatTrainConfig:
    """How to fit Gaussian splats to posed photos: initialisation, loss, learning rates,
    densification, regularisers, model kind."""

    preset: Literal["plain", "fewview"] = "fewview"
    """Named option set (``PRESETS``): 'fewview' (multi-view-stereo initial points from the
    training views and the mean training colour as background; best on the fox ablation) or
    'plain' 3DGS. Options given explicitly win over the preset, except an option set to its
    plain default value."""
    iterations: int | None = None
    """Optimisation steps (one training view per step); unset: 1000 with the fewview preset
    (with --coarse-to-fine 0.5), 3000 with plain."""
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
    pose_rounds: int = 0
    """Photometric registration rounds (0 = off): the fit is cut into N + 1 equal segments and
    after each of the first N every training camera's pose, and with --pose-round-focal their
    shared focal length, is registered alone against the frozen model
    (:func:`recon.splat.photometric_poses.register_to_model`). Meant for estimated poses
    (``recon fit PHOTOS_DIR``); the changes go to metrics.json and registration.json."""
    pose_round_steps: int = 40
    """Adam steps of each registration round (all training views rendered per step)."""
    pose_round_lr: float = 3e-3
    """Initial learning rate of the pose twists in a round (decays 10x over its steps)."""
    pose_round_focal: bool = True
    """Also refine the shared focal length in the rounds (one log-focal factor for all views)."""
    pose_round_levels: int = 1
    """Coarse-to-fine pyramid levels of a round (1: full resolution only)."""
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
    cpu_kernels: Literal["fused", "reference"] = "fused"
    """How a training step runs on the CPU (CUDA always uses gsplat): 'fused' renders the raw
    parameters with activations, projection and SH colours in one numba pass each way
    (``rasterize_params``), computes L1 + D-SSIM in one pass (``ssim_cpu``) and steps one-pass
    Adam (``adam.FusedAdam``, only the SH bands in use); 'reference' runs the plain-PyTorch ops
    those kernels are tested against (same maths up to float rounding; slower)."""
    selective_adam: bool = False
    """With --cpu-kernels fused: update only the Gaussians seen in the step's view (gsplat's
    SelectiveAdam). Not the same optimiser as Adam: the others' moments do not decay."""
    coarse_to_fine: float | None = None
    """Fraction of the steps trained at half resolution before full resolution (0: off;
    ``fit_schedule.ResolutionSchedule``): a half-resolution step composites ~4x fewer pixels.
    Free Gaussians only (--model anchored trains at full resolution). Unset: 0.5 with the
    fewview preset, 0 with plain or --model anchored."""
    early_stop: bool = False
    """Stop when the epoch-mean training loss has not improved by 0.5 % for 20 epochs, never
    before 85 % of --iterations (``fit_schedule.EarlyStop``). Free Gaussians only."""
    auto_iterations: bool = False
    """Replace --iterations by 250 steps per training view + 500 per 100k initial Gaussians,
    within 1000..30000 (``fit_schedule.auto_iterations``)."""
    model: Literal["gaussians", "anchored"] = "gaussians"
    """'gaussians': free Gaussians with densification (3DGS); 'anchored': voxel-anchored
    Gaussians decoded from sparse U-Net features (Scaffold-GS-like, ``--anchored.*``; no
    densification, regularisers or pose refinement)."""
    densify: DensifyStrategy = field(default_factory=default_densify)
    """Densification and pruning (gsplat DefaultStrategy semantics)."""
    reg: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Few-view regularisers (all off in the plain preset)."""
    anchored: AnchoredConfig = field(default_factory=AnchoredConfig)
    """Voxel-anchored Gaussians (used with --model anchored)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InputError("--preset", f"unknown preset {self.preset!r} (expected one of {sorted(PRESETS)})")
        unset = {name for name in UNSET_DEFAULTS if getattr(self, name) is None}
        apply_overrides(self, PRESETS[self.preset], only_defaults=True)
        for name, value in UNSET_DEFAULTS.items():
            # anchored Gaussians keep the plain schedule: the preset's was measured on free Gaussians
            if getattr(self, name) is None or (name in unset and self.model == "anchored"):
                setattr(self, name, value)

    def validate(self) -> None:
        if self.iterations < 1:
            raise InputError("--iterations", f"must be >= 1, got {self.iterations}")
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
        if self.cpu_kernels not in ("fused", "reference"):
            raise InputError("--cpu-kernels", f"expected 'fused' or 'reference', got {self.cpu_kernels!r}")
        if self.selective_adam and self.cpu_kernels != "fused":
            raise InputError("--selective-adam", "needs --cpu-kernels fused")
        if not 0.0 <= self.coarse_to_fine < 1.0:
            raise InputError("--coarse-to-fine", f"must be in [0, 1), got {self.coarse_to_fine}")
        if not self.pose_lr > 0:
            raise InputError("--pose-lr", f"must be > 0, got {self.pose_lr}")
        self._validate_pose_rounds()
        problems = self.reg.validate()
        if problems:
            where, _, what = problems[0].partition(": ")
            raise InputError(where, what)
        if self.model == "anchored":
            self._validate_anchored()

    def _validate_pose_rounds(self) -> None:
        if isinstance(self.pose_rounds, bool) or not 0 <= self.pose_rounds < self.iterations:
            raise InputError("--pose-rounds", f"must be an integer in 0..{self.iterations - 1} (below --iterations), got {self.pose_rounds}")
        if self.pose_rounds == 0:
            return
        if self.pose_round_steps < 1 or not self.pose_round_lr > 0 or not 1 <= self.pose_round_levels <= 5:
            raise InputError("--pose-round-steps/--pose-round-lr/--pose-round-levels",
                             f"must be >= 1, > 0 and 1..5, got {self.pose_round_steps}, {self.pose_round_lr}, {self.pose_round_levels}")  # fmt: skip
        if self.refine_poses:
            raise InputError("--pose-rounds", "and --refine-poses are two ways of correcting the training poses; choose one")
        if self.model == "anchored":
            raise InputError("--pose-rounds", "is not supported with --model anchored (expected --model gaussians)")

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
        if self.selective_adam:
            raise InputError("--model anchored", "selective Adam is for free Gaussians (drop --selective-adam)")
        if self.early_stop:
            raise InputError("--model anchored", "--early-stop is for free Gaussians")
        if self.prune_outliers and self.outlier_every:
            raise InputError("--model anchored", "only the initial points can be outlier-pruned (add --outlier-every 0)")
        if self.densify != default_densify():
            raise InputError("--model anchored", "has no densification (drop the --densify.* options)")
        if self.means_lr != 1.6e-4:
            raise InputError("--model anchored", "anchors do not move; --means-lr does not apply")
        if not 0.0 < self.init_scale < 1.0:
            raise InputError("--init-scale", f"with --model anchored, a fraction of the voxel size in (0, 1), got {self.init_scale}")


def apply_overrides(cfg: _C, overrides: Mapping[str, Any], only_defaults: bool = False) -> _C:
    """Set options of ``cfg`` in place from ``{"name": value, "reg.name": value}``; returns ``cfg``.

    With ``only_defaults``, an option is changed only while it still has its plain default
    value (how presets leave explicitly given options alone). Unknown names raise ValueError.
    """
    top = {f.name: f for f in dataclasses.fields(SplatTrainConfig)}
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
            raise ValueError(f"override {key!r}: not an option of SplatTrainConfig (or reg.*)")
    if reg_changes:
        cfg.reg = dataclasses.replace(cfg.reg, **reg_changes)
    return cfg


for _name, _values in PRESETS.items():  # a typo in a preset fails at import, not in a run
    _unknown = [k for k in _values if k.rpartition(".")[2] not in
                {f.name for f in dataclasses.fields(RegularizerConfig if k.startswith("reg.") else SplatTrainConfig)}]
    assert not _unknown, f"PRESETS[{_name!r}]: unknown options {_unknown}"
del _name, _values, _unknown


