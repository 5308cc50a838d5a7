"""Dense points from a few posed views: plane-sweep stereo with NCC, filtered by cross-view depth
consistency.

For each training view (the reference) a stack of fronto-parallel planes, evenly spaced in
inverse depth, is swept through the scene; every other view is warped onto the reference through
each plane's homography ``K_s (R + t nᵀ / d) K_r⁻¹`` and compared with zero-mean normalised
cross-correlation over a small window (Collins 1996; Gallup et al., CVPR 2007). Per pixel the
matching cost is the mean of the best half of the source views (occlusion-robust, as in
COLMAP's PatchMatch view selection), and the depth with the lowest cost wins. A depth is kept when
its correlation is high, and when it agrees with at least ``min_consistent`` other views' depth
maps (reprojected point within ``consistency`` relative depth) — the geometric filter of MVSNet
and COLMAP's fusion. Surviving pixels are back-projected to world points with the reference
colours.

Few-view captures need this because SfM from the training views alone gives a few hundred
points at 4 views (wide baselines), while the Gaussians need surface samples across the scene.
No learned network, no download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet
from recon.splat.points import look_at_centre

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaneSweepConfig:
    """Plane-sweep stereo settings."""

    n_depths: int = 96
    """Fronto-parallel planes per reference view, evenly spaced in inverse depth."""
    window: int = 7
    """NCC window side in pixels (odd)."""
    min_ncc: float = 0.5
    """Smallest correlation a kept depth must reach (cost ``1 - ncc``)."""
    consistency: float = 0.02
    """Largest relative depth difference for two views' depth maps to agree."""
    min_consistent: int = 1
    """Other views whose depth maps must agree with a kept depth (capped at V - 1)."""
    min_texture: float = 0.01
    """Smallest intensity standard deviation in the window (flat regions match anything)."""


@dataclass
class DepthMaps:
    """Per-view plane-sweep results at the images' resolution."""

    depth: Tensor  # [V, H, W] float32, 0 where no plane matched
    ncc: Tensor  # [V, H, W] float32, correlation of the chosen depth
    keep: Tensor  # [V, H, W] bool, passed the correlation and consistency tests


def _gray(image: Tensor) -> np.ndarray:  # image: [H, W, 3] in [0, 1] -> [H, W] float32
    return cv2.cvtColor(image.clamp(0, 1).cpu().numpy().astype(np.float32), cv2.COLOR_RGB2GRAY)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    return cv2.blur(x, (k, k), borderType=cv2.BORDER_REFLECT)


def _window_stats(img: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Window mean and standard deviation, ``[H, W]`` each."""
    mean = _box(img, k)
    var = np.maximum(_box(img * img, k) - mean * mean, 0.0)
    return mean, np.sqrt(var)


def plane_homography(K_r: np.ndarray, K_s: np.ndarray, rel: np.ndarray, depth: float) -> np.ndarray:
    """Homography ``[3, 3]`` taking reference pixels to source pixels through the plane ``z = depth``
    of the reference camera.

    Args:
        K_r, K_s: ``[3, 3]`` calibrations.
        rel: ``[4, 4]`` reference-camera to source-camera transform (``w2c_s @ inv(w2c_r)``).
        depth: plane depth along the reference optical axis (world units, > 0).
    """
    n = np.array([0.0, 0.0, 1.0])
    return K_s @ (rel[:3, :3] + np.outer(rel[:3, 3], n) / depth) @ np.linalg.inv(K_r)


def _sweep(ref: int, grays: list[np.ndarray], Ks: np.ndarray, w2c: np.ndarray, depths: np.ndarray, cfg: PlaneSweepConfig) -> tuple[np.ndarray, np.ndarray]:
    """Best depth and its NCC for every pixel of view ``ref``, ``[H, W]`` each."""
    k = cfg.window
    h, w = grays[ref].shape
    g_r = grays[ref]
    mu_r, sd_r = _window_stats(g_r, k)
    sources = [s for s in range(len(grays)) if s != ref]
    n_best = max(1, len(sources) // 2)
    best_cost = np.full((h, w), np.inf, np.float32)
    best_ncc = np.zeros((h, w), np.float32)
    best_depth = np.zeros((h, w), np.float32)
    rels = [w2c[s] @ np.linalg.inv(w2c[ref]) for s in sources]
    ones = np.ones((h, w), np.float32)
    for d in depths:
        costs = np.empty((len(sources), h, w), np.float32)
        nccs = np.empty_like(costs)
        for j, s in enumerate(sources):
            Hm = plane_homography(Ks[ref], Ks[s], rels[j], float(d))
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            warped = cv2.warpPerspective(grays[s], Hm, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            valid = cv2.warpPerspective(ones, Hm, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mu_s, sd_s = _window_stats(warped, k)
            cov = _box(g_r * warped, k) - mu_r * mu_s
            ncc = cov / np.maximum(sd_r * sd_s, 1e-6)
            ncc[(valid < 0.999) | (sd_s < cfg.min_texture)] = -1.0
            nccs[j] = ncc
            costs[j] = 1.0 - ncc
        order = np.sort(costs, axis=0)[:n_best]
        cost = order.mean(axis=0)
        better = cost < best_cost
        best_cost[better] = cost[better]
        best_depth[better] = d
        best_ncc[better] = 1.0 - cost[better]
    best_ncc[sd_r < cfg.min_texture] = -1.0
    return best_depth, best_ncc


def _consistent_counts(depth: np.ndarray, good: np.ndarray, Ks: np.ndarray, w2c: np.ndarray, rel_tol: float) -> np.ndarray:
    """For each view's good pixels, how many other views' depth maps agree, ``[V, H, W]`` int."""
    v, h, w = depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    counts = np.zeros((v, h, w), np.int32)
    c2w = np.linalg.inv(w2c)
    for a in range(v):
        za = depth[a].astype(np.float64)
        rays = np.stack([(xs - Ks[a][0, 2]) / Ks[a][0, 0], (ys - Ks[a][1, 2]) / Ks[a][1, 1], np.ones_like(xs)], -1)
        world = (rays * za[..., None]) @ c2w[a][:3, :3].T + c2w[a][:3, 3]
        for b in range(v):
            if b == a:
                continue
            cam = world @ w2c[b][:3, :3].T + w2c[b][:3, 3]
            zb = cam[..., 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = Ks[b][0, 0] * cam[..., 0] / zb + Ks[b][0, 2]
                vv = Ks[b][1, 1] * cam[..., 1] / zb + Ks[b][1, 2]
            ui, vi = np.rint(u), np.rint(vv)
            inside = good[a] & (zb > 0) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
            ui = np.where(inside, ui, 0).astype(np.int64)
            vi = np.where(inside, vi, 0).astype(np.int64)
            other = depth[b][vi, ui]
            agree = inside & good[b][vi, ui] & (np.abs(other - zb) < rel_tol * np.maximum(zb, 1e-9))
            counts[a] += agree
    return counts


def plane_sweep(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    depth_range: tuple[float, float],
    config: PlaneSweepConfig | None = None,
) -> DepthMaps:
    """Depth maps of every view by plane sweeping against the others.

    Args:
        cameras: ``V >= 2`` pinhole cameras (distortion removed) at the images' resolution.
        images: ``[V, H, W, 3]`` float images in [0, 1].
        depth_range: ``(near, far)`` in world units along each optical axis, ``0 < near < far``.
        config: settings; defaults to :class:`PlaneSweepConfig`.

    Returns:
        :class:`DepthMaps` with ``depth``, ``ncc`` and ``keep``, each ``[V, H, W]``.
    """
    cfg = config or PlaneSweepConfig()
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [V, H, W, 3], got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images for {len(cameras)} cameras")
    if len(cameras) < 2:
        raise ValueError(f"plane sweeping needs at least 2 views, got {len(cameras)}")
    near, far = float(depth_range[0]), float(depth_range[1])
    if not 0.0 < near < far:
        raise ValueError(f"depth_range must satisfy 0 < near < far, got ({near}, {far})")
    if cfg.window < 3 or cfg.window % 2 == 0:
        raise ValueError(f"window must be odd and >= 3, got {cfg.window}")
    grays = [_gray(im) for im in images]
    Ks = cameras.Ks().double().cpu().numpy()
    w2c = cameras.w2c.double().cpu().numpy()
    depths = 1.0 / np.linspace(1.0 / near, 1.0 / far, cfg.n_depths)
    results = [_sweep(r, grays, Ks, w2c, depths, cfg) for r in range(len(cameras))]
    depth = np.stack([r[0] for r in results])
    ncc = np.stack([r[1] for r in results])
    good = ncc >= cfg.min_ncc
    counts = _consistent_counts(depth, good, Ks, w2c, cfg.consistency)
    keep = good & (counts >= min(cfg.min_consistent, len(cameras) - 1))
    logger.info("plane sweep: %d of %d pixels kept", int(keep.sum()), keep.size)
    return DepthMaps(torch.from_numpy(depth), torch.from_numpy(ncc), torch.from_numpy(keep))


def depth_points(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    maps: DepthMaps,
) -> tuple[Tensor, Tensor]:
    """World points ``[P, 3]`` and colours ``[P, 3]`` of the kept pixels of every depth map."""
    pts, cols = [], []
    Ks = cameras.Ks().double().cpu()
    c2w = torch.linalg.inv(cameras.w2c.double().cpu())
    for v in range(len(cameras)):
        ys, xs = torch.nonzero(maps.keep[v], as_tuple=True)
        z = maps.depth[v][ys, xs].double()
        rays = torch.stack([(xs - Ks[v][0, 2]) / Ks[v][0, 0], (ys - Ks[v][1, 2]) / Ks[v][1, 1], torch.ones_like(z)], -1)
        pts.append((rays * z[:, None]) @ c2w[v][:3, :3].T + c2w[v][:3, 3])
        cols.append(images[v][ys, xs].float())
    return torch.cat(pts).float(), torch.cat(cols).clamp(0, 1)


def depth_range_from_points(
    cameras: CameraSet,
    points: Tensor,  # [P, 3]
    margin: tuple[float, float] = (0.6, 1.6),
    min_points: int = 8,
) -> tuple[float, float] | None:
    """``(near, far)`` covering the 2nd-98th percentile depth of ``points`` in every camera, widened
    by ``margin``; ``None`` when fewer than ``min_points`` (point, camera) depths are positive."""
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be [P, 3], got {tuple(points.shape)}")
    w2c = cameras.w2c.float().cpu()
    cam = points.float().cpu()[None] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    z = cam[..., 2].flatten()
    z = z[z > 0]
    if len(z) < min_points:
        return None
    return float(z.quantile(0.02)) * margin[0], float(z.quantile(0.98)) * margin[1]


def stereo_points(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    sparse_points: Tensor,  # [S, 3]
    sparse_colours: Tensor,  # [S, 3]
    config: PlaneSweepConfig | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Dense initial points: plane-sweep depth maps of ``images``, swept over the depth range of
    the triangulated ``sparse_points`` (or 0.2-3x the cameras' distance to their look-at centre
    when there are too few), fused, plus the sparse points themselves.

    Returns:
        ``points [P, 3]``, ``colours [P, 3]`` and a one-line description.
    """
    rng = depth_range_from_points(cameras, sparse_points)
    if rng is None:
        dist = float((cameras.centres() - look_at_centre(cameras.w2c)).norm(dim=-1).median())
        rng = (0.2 * dist, 3.0 * dist)
    maps = plane_sweep(cameras, images, rng, config)
    pts, cols = depth_points(cameras, images, maps)
    how = f"{len(pts)} plane-sweep points (depth {rng[0]:.3g}-{rng[1]:.3g}) + {len(sparse_points)} triangulated"
    return torch.cat([pts, sparse_points.float()]), torch.cat([cols, sparse_colours.float()]).clamp(0, 1), how
