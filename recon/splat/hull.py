"""Visual hull from silhouettes: object masks, space carving, and initial points inside the hull.

A few posed views with foreground masks bound the object tightly: a point of the object
projects inside the mask of every view that sees it (Laurentini, "The visual hull concept for
silhouette-based image understanding", TPAMI 1994). :func:`visual_hull` carves a voxel grid
with that rule, :func:`hull_points` samples initial Gaussian centres on (or in) the hull with
colours from the images, and :func:`compute_masks` makes masks with OpenCV when the capture has
none (GrabCut seeded by a centred rectangle, or Otsu thresholding of the difference from the
border colour): both assume the object is roughly centred and differs from its surroundings.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet
from recon.splat.points import sample_colours, scene_bounds

__all__ = ["compute_masks", "hull_points", "hull_surface", "visual_hull", "voxel_centres"]

logger = logging.getLogger(__name__)

MaskMethod = Literal["grabcut", "threshold"]


# ----------------------------------------------------------------------------------- masks
def _to_u8(image: Tensor) -> np.ndarray:
    return (image.detach().cpu().float().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _grabcut(rgb: np.ndarray, margin: float, iterations: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = round(w * margin), round(h * margin)
    rect = (x0, y0, max(1, w - 2 * x0), max(1, h - 2 * y0))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` with its holes filled."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = labels == biggest
    # holes: background pixels not connected to the image border
    _, bg_labels = cv2.connectedComponents((~comp).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    holes = (~comp) & ~np.isin(bg_labels, border)
    return comp | holes


def _threshold(rgb: np.ndarray, border_frac: float) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    b = max(1, round(min(h, w) * border_frac))
    ring = np.concatenate(
        [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]
    ).astype(np.float32)
    colour = np.median(ring, axis=0)
    diff = np.linalg.norm(rgb.astype(np.float32) - colour, axis=-1)
    diff8 = np.clip(diff / max(float(diff.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(diff8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = max(1, round(min(h, w) * 0.01)) * 2 + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    return _largest_component_filled(fg > 0)


def compute_masks(
    images: Tensor,  # [V, H, W, 3]
    method: MaskMethod = "grabcut",
    margin: float = 0.1,
    iterations: int = 5,
    border_frac: float = 0.02,
) -> Tensor:  # [V, H, W] bool
    """Foreground masks of images whose object is roughly centred, with OpenCV.

    * ``"grabcut"``: GrabCut (Rother et al., SIGGRAPH 2004) initialised with the centred
      rectangle that leaves ``margin`` of the width/height on each side as background;
      ``iterations`` rounds. Deterministic (OpenCV's RNG is seeded).
    * ``"threshold"``: distance of each pixel's colour from the median colour of the image
      border (a band of ``border_frac`` of the shorter side), thresholded with Otsu's method,
      opened and closed, then the largest connected component with its holes filled.

    Args:
        images: RGB in [0, 1], [V, H, W, 3].

    Returns:
        bool tensor [V, H, W], True on the object.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape [V, H, W, 3], given {getattr(images, 'shape', images)}")
    if method not in ("grabcut", "threshold"):
        raise ValueError(f"method: expected 'grabcut' or 'threshold', given {method!r}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin: expected a fraction in [0, 0.5), given {margin}")
    out = []
    for img in images:
        rgb = _to_u8(img)
        m = _grabcut(rgb, margin, iterations) if method == "grabcut" else _threshold(rgb, border_frac)
        if not m.any():
            logger.warning("%s found no foreground in an image", method)
        out.append(torch.from_numpy(m))
    return torch.stack(out)


# ----------------------------------------------------------------------------------- carving
def voxel_centres(bounds: Tensor, resolution: int) -> Tensor:  # [2, 3] -> [R, R, R, 3]
    """Centres of an ``R^3`` grid of voxels filling the box ``bounds`` (x, y, z index order)."""
    if not isinstance(bounds, Tensor) or bounds.shape != (2, 3):
        raise ValueError(f"bounds: expected shape [2, 3] (min corner, max corner), given {getattr(bounds, 'shape', bounds)}")
    if resolution < 1:
        raise ValueError(f"resolution: expected >= 1, given {resolution}")
    lo, hi = bounds[0].float(), bounds[1].float()
    steps = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution  # [R]
    axes = [lo[a] + steps * (hi[a] - lo[a]) for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@torch.no_grad()
def visual_hull(
    cameras: CameraSet,
    masks: Tensor,  # [V, H, W]
    bounds: Tensor | None = None,  # [2, 3]
    resolution: int = 64,
    min_views: int = 2,
    threshold: float = 0.5,
) -> Tensor:  # [R, R, R] bool
    """Carve a voxel grid: keep voxels that project into the mask of every view that sees them.

    A view "sees" a voxel centre when it lies in front of the camera and projects inside the
    image; views that do not see a voxel do not carve it (few-view captures rarely frame the
    whole box). A voxel must also be seen by at least ``min_views`` views (capped at V).

    Args:
        cameras: V cameras at the masks' resolution (pinhole; undistorted images).
        masks: foreground masks, bool or float (``> threshold`` is foreground), [V, H, W].
        bounds: box to carve, [2, 3]; default :func:`recon.splat.init.scene_bounds`.
        resolution: voxels per side.

    Returns:
        occupancy [R, R, R] bool, indexed like :func:`voxel_centres` ``(bounds, resolution)``.
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        raise ValueError(f"masks: expected shape [V, H, W], given {getattr(masks, 'shape', masks)}")
    if masks.shape[0] != len(cameras):
        raise ValueError(f"masks: {masks.shape[0]} masks for {len(cameras)} cameras")
    bounds = scene_bounds(cameras) if bounds is None else bounds
    centres = voxel_centres(bounds, resolution).reshape(-1, 3)
    fg = (masks.float() > threshold) if masks.dtype != torch.bool else masks
    fg = fg.cpu()
    v, h, w = fg.shape
    w2c = cameras.w2c.float().cpu()
    Ks = cameras.Ks().float().cpu()
    keep = []
    for part in centres.split(1 << 18):
        cam = part[None] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [V, P, 3]
        z = cam[..., 2]
        uv = (cam @ Ks.transpose(1, 2))[..., :2] / z.clamp_min(1e-6)[..., None]
        px = torch.floor(uv[..., 0]).long()
        py = torch.floor(uv[..., 1]).long()
        seen = (z > 1e-6) & (px >= 0) & (px < w) & (py >= 0) & (py < h)  # [V, P]
        flat = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1))  # [V, P]
        inside = torch.gather(fg.reshape(v, -1), 1, flat)  # [V, P]
        ok = (inside | ~seen).all(0) & (seen.sum(0) >= min(min_views, v))
        keep.append(ok)
    return torch.cat(keep).reshape(resolution, resolution, resolution)


def hull_surface(occupancy: Tensor) -> Tensor:  # [R, R, R] bool -> [R, R, R] bool
    """Occupied voxels with at least one empty (or out-of-grid) 6-neighbour."""
    if not isinstance(occupancy, Tensor) or occupancy.ndim != 3 or occupancy.dtype != torch.bool:
        raise ValueError(f"occupancy: expected a bool tensor [R, R, R], given {getattr(occupancy, 'shape', occupancy)}")
    empty = torch.nn.functional.pad((~occupancy).float()[None, None], (1, 1, 1, 1, 1, 1), value=1.0)[0, 0]
    near_empty = torch.zeros_like(occupancy)
    r0, r1, r2 = occupancy.shape
    for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        near_empty |= empty[1 + dx : 1 + dx + r0, 1 + dy : 1 + dy + r1, 1 + dz : 1 + dz + r2] > 0
    return occupancy & near_empty


@torch.no_grad()
def hull_points(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    masks: Tensor,  # [V, H, W]
    n_points: int,
    bounds: Tensor | None = None,  # [2, 3]
    resolution: int = 64,
    surface: bool = True,
    min_views: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``n_points`` initial centres in the visual hull, coloured from the images.

    Voxels of :func:`visual_hull` (only its surface shell when ``surface``: the interior is
    hidden and would only cost Gaussians) are drawn uniformly with replacement and each point
    is jittered uniformly inside its voxel. A point's colour is the mean over the views that
    see it, bilinear.

    Args:
        cameras: V cameras at the images' resolution.
        images: RGB in [0, 1], [V, H, W, 3].
        masks: foreground masks, [V, H, W].

    Returns:
        ``points [n_points, 3]`` and ``colours [n_points, 3]`` in [0, 1].

    Raises:
        ValueError: the hull is empty (masks and poses disagree, or ``bounds`` misses the object).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] != len(cameras):
        raise ValueError(f"images: expected shape [{len(cameras)}, H, W, 3], given {getattr(images, 'shape', images)}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks: expected shape {list(images.shape[:3])}, given {list(masks.shape)}")
    if n_points < 1:
        raise ValueError(f"n_points: expected >= 1, given {n_points}")
    bounds = scene_bounds(cameras) if bounds is None else bounds.float()
    occ = visual_hull(cameras, masks, bounds, resolution, min_views=min_views)
    n_occ = int(occ.sum())
    if n_occ == 0:
        raise ValueError("the visual hull is empty: the masks do not agree with the poses inside the scene bounds")
    shell = hull_surface(occ) if surface else occ
    idx = torch.nonzero(shell)  # [M, 3]
    logger.info("visual hull: %d of %d voxels occupied, %d sampled from", n_occ, occ.numel(), len(idx))
    pick = idx[torch.randint(len(idx), (n_points,), generator=generator)]
    size = (bounds[1] - bounds[0]) / resolution
    pts = bounds[0] + (pick.float() + torch.rand(n_points, 3, generator=generator)) * size
    colours, visible = sample_colours(pts, images.float().cpu(), cameras.w2c.float().cpu(), cameras.Ks().float().cpu())
    weight = visible.float()[..., None]
    mean = (colours * weight).sum(0) / weight.sum(0).clamp_min(1.0)
    return pts, mean.clamp(0, 1)
