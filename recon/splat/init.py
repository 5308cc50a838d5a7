"""Initial points of a capture fit, behind one function: :func:`initial_points`.

Strategies (``--init``):

- ``auto`` / ``sfm``: the capture's SfM points (``auto`` falls back to ``photo`` without them);
- ``photo``: photo-consistent samples (:func:`recon.splat.points.photo_consistent_points`);
- ``random``: uniform in the scene bounds;
- ``hull``: the visual hull of the training views' foreground masks (:mod:`recon.splat.hull`)
  plus photo-consistent points for the background;
- ``mvs``: SIFT matches triangulated with the known poses (:mod:`recon.splat.triangulate`) set
  the depth range of plane-sweep stereo on the training views (:mod:`recon.splat.mvs`), topped
  up with photo-consistent points.

``--prune-outliers`` removes k-NN statistical outliers from whichever set comes out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.errors import InputError
from recon.io.capture import Capture
from recon.io.views import ViewSet, load_views
from recon.splat.config import SplatTrainConfig
from recon.splat.hull import compute_masks, hull_points
from recon.splat.mvs import stereo_points
from recon.splat.points import photo_consistent_points, scene_bounds, statistical_outliers
from recon.splat.triangulate import triangulate_views

logger = logging.getLogger(__name__)

__all__ = ["InitialPoints", "initial_points", "training_masks"]


@dataclass(frozen=True)
class InitialPoints:
    """Centres ``points`` [P, 3] and RGB ``colours`` [P, 3] in [0, 1] to start Gaussians from."""

    points: Tensor  # [P, 3]
    colours: Tensor  # [P, 3]
    description: str
    """What they are, for logs and ``run.json`` (e.g. "19758 plane-sweep points ...")."""
    seed: int


def initial_points(
    config: SplatTrainConfig,
    capture: Capture,
    train: ViewSet,
    downscale: float,
    seed: int,
) -> InitialPoints:
    """Initial points per ``config.init`` (see the module docstring) for the training views
    ``train`` (loaded at ``downscale`` from ``capture``); random choices from ``seed``."""
    cfg = config
    gen = torch.Generator().manual_seed(seed)
    mode = cfg.init
    cams, images = train.cameras, train.images
    if mode in ("auto", "sfm") and capture.points is not None and len(capture.points) > 0:
        pts, cols = capture.points.float(), capture.point_colours
        if cols is None:
            cols = torch.full_like(pts, 0.5)
        how = f"{len(pts)} SfM points"
    elif mode == "sfm":
        raise InputError(capture.root, "--init sfm but the capture has no SfM points")
    elif mode == "random":
        bounds = scene_bounds(cams)
        pts = bounds[0] + torch.rand(cfg.init_points, 3, generator=gen) * (bounds[1] - bounds[0])
        cols = torch.rand(cfg.init_points, 3, generator=gen)
        how = f"{cfg.init_points} uniform random points"
    elif mode == "hull":
        masks = training_masks(cfg, capture, train, downscale)
        n_hull = max(2, round(cfg.hull_fraction * cfg.init_points))
        try:
            pts, cols = hull_points(cams, images, masks, n_hull, resolution=cfg.hull_resolution, generator=gen)
        except ValueError as err:
            raise InputError(f"--masks {cfg.masks}", str(err)) from None
        how = f"{n_hull} visual-hull points ({cfg.masks} masks)"
        if n_hull < cfg.init_points:
            bp, bc = photo_consistent_points(cams, images, cfg.init_points - n_hull, generator=gen)
            pts, cols = torch.cat([pts, bp]), torch.cat([cols, bc])
            how += f" + {cfg.init_points - n_hull} photo-consistent points"
    elif mode == "mvs":
        pts, cols, how = _stereo_points(cfg, capture, train, downscale, gen)
    else:
        pts, cols = photo_consistent_points(cams, images, cfg.init_points, generator=gen)
        how = f"{cfg.init_points} photo-consistent points"
    if cfg.prune_outliers:
        out = statistical_outliers(pts, cfg.outlier_k, cfg.outlier_std_ratio)
        if int(out.sum()) and int((~out).sum()) >= 2:
            pts, cols = pts[~out], cols[~out]
            how += f", {int(out.sum())} outliers removed"
    logger.info("initialising from %s", how)
    return InitialPoints(pts, cols, how, seed)


def _stereo_points(cfg: SplatTrainConfig, capture: Capture, train: ViewSet, downscale: float, gen: torch.Generator) -> tuple[Tensor, Tensor, str]:
    """--init mvs: triangulated SIFT matches (images at up to 1/2 resolution) set the depth
    range; plane-sweep depth maps at --mvs-resolution give the dense points; photo-consistent
    points top up to --init-points when stereo finds fewer."""
    idx = train.indices
    intr = capture.cameras.intrinsics[idx[0]]
    width, height = intr.width, intr.height
    feat_images, _, feat_cams = load_views(capture, idx, downscale=min(downscale, 2.0))
    tri = triangulate_views(feat_cams, feat_images)
    mvs_ds = max(width, height) / cfg.mvs_resolution
    if mvs_ds == downscale:
        images, cams = train.images, train.cameras
    else:
        images, _, cams = load_views(capture, idx, downscale=mvs_ds)
    try:
        pts, cols, how = stereo_points(cams, images, tri.points, tri.colours)
    except ValueError as err:
        raise InputError("--init mvs", str(err)) from None
    if len(pts) > cfg.mvs_max_points:
        keep = torch.randperm(len(pts), generator=gen)[: cfg.mvs_max_points]
        pts, cols = pts[keep], cols[keep]
        how += f", {cfg.mvs_max_points} kept"
    if len(pts) < cfg.init_points:
        bp, bc = photo_consistent_points(train.cameras, train.images, cfg.init_points - len(pts), generator=gen)
        how += f" + {len(bp)} photo-consistent points"
        pts, cols = torch.cat([pts, bp]), torch.cat([cols, bc])
    return pts, cols, how


def training_masks(cfg: SplatTrainConfig, capture: Capture, train: ViewSet, downscale: float) -> Tensor:
    """Foreground masks ``[V, H, W]`` bool of the training views, per ``--masks``."""
    if cfg.masks == "files":
        if train.masks is None:
            raise InputError(capture.root, "--masks files but the capture has no mask files or alpha channels")
        return train.masks[..., 0] > 0.5
    # GrabCut needs a few hundred pixels across: segment at ~480 px on the long side, or at
    # the training resolution when that is larger, then resize to the training resolution.
    full = capture.cameras.intrinsics[train.indices[0]]
    ds = min(downscale, max(1.0, max(full.width, full.height) / 480))
    images = train.images if ds == downscale else load_views(capture, train.indices, downscale=ds)[0]
    masks = compute_masks(images, cfg.masks)  # type: ignore[arg-type]
    if masks.shape[1:] != train.images.shape[1:3]:
        size = tuple(train.images.shape[1:3])
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0] > 0.5
    cover = masks.float().mean((1, 2))
    useless = (cover < 0.01) | (cover > 0.99)
    for i in torch.nonzero(useless).flatten().tolist():
        logger.warning("%s mask of %s covers %.0f%% of it: not used for carving", cfg.masks, train.names[i], 100 * float(cover[i]))
        masks[i] = True
    logger.info("%s masks cover %.0f%% of the training pixels", cfg.masks, 100 * float(cover.mean()))
    return masks
