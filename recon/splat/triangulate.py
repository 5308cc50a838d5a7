"""Sparse 3D points from a few posed images: SIFT matches between every pair of views,
filtered by the epipolar geometry the known poses imply, triangulated and checked.

This is what few-view methods start from when they say "SfM points from the training views"
(FSGS, CoR-GS and DNGaussian run COLMAP's ``point_triangulator`` with the given poses): with
the poses known, matching needs no RANSAC and no bundle adjustment, so a handful of views with
wide baselines still gives surface points where random or photo-consistent sampling gives a
cloud spread through the whole box. Each pair is triangulated on its own (linear DLT, then a
reprojection, depth and triangulation-angle check); points seen by more pairs are kept as
separate samples, which only makes the initial cloud denser where the surface is well matched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np
import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriangulationConfig:
    """Matching and acceptance thresholds (pixels at the images' resolution)."""

    max_features: int = 8000
    """SIFT keypoints per image (strongest first)."""
    ratio: float = 0.8
    """Lowe's ratio test: best match distance / second best must be below this."""
    max_epipolar_px: float = 2.0
    """Largest distance of a match to its epipolar line (both directions)."""
    max_reprojection_px: float = 2.0
    """Largest reprojection error of a triangulated point in either view."""
    min_angle_deg: float = 2.0
    """Smallest angle between the two viewing rays (narrower rays give unreliable depth)."""


@dataclass
class Triangulation:
    """Triangulated points and how they were found."""

    points: Tensor  # [P, 3] float32
    colours: Tensor  # [P, 3] float32 in [0, 1]
    pair_counts: dict[tuple[int, int], int]
    """Accepted points per view pair (indices into the cameras given)."""


def _to_gray_u8(image: Tensor) -> np.ndarray:  # image: [H, W, 3] in [0, 1]
    rgb = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def fundamental_from_poses(w2c_a: np.ndarray, K_a: np.ndarray, w2c_b: np.ndarray, K_b: np.ndarray) -> np.ndarray:
    """Fundamental matrix ``F [3, 3]`` with ``x_b^T F x_a = 0`` for pixels of the same point.

    Args:
        w2c_a, w2c_b: ``[4, 4]`` OpenCV world-to-camera matrices.
        K_a, K_b: ``[3, 3]`` calibration matrices.
    """
    rel = w2c_b @ np.linalg.inv(w2c_a)  # camera a -> camera b
    essential = _skew(rel[:3, 3]) @ rel[:3, :3]
    return np.linalg.inv(K_b).T @ essential @ np.linalg.inv(K_a)


def _epipolar_distance(F: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Larger of the two point-to-epipolar-line distances, ``[M]`` pixels for ``xa, xb [M, 2]``."""
    ha = np.concatenate([xa, np.ones((len(xa), 1))], axis=1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], axis=1)
    lb = ha @ F.T  # lines in image b
    la = hb @ F  # lines in image a
    num = np.abs(np.sum(hb * lb, axis=1))
    db = num / np.maximum(np.hypot(lb[:, 0], lb[:, 1]), 1e-12)
    da = num / np.maximum(np.hypot(la[:, 0], la[:, 1]), 1e-12)
    return np.maximum(da, db)


def _project(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[M, 2]`` and depths ``[M]`` of world points ``X [M, 3]`` under ``P = K [R|t]``."""
    h = X @ P[:, :3].T + P[:, 3]
    return h[:, :2] / h[:, 2:3], h[:, 2]


def _match(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest-neighbour matches passing the ratio test, ``[M, 2]`` index pairs."""
    if len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    fwd = matcher.knnMatch(desc_a, desc_b, k=2)
    bwd = matcher.knnMatch(desc_b, desc_a, k=1)
    back = {m[0].queryIdx: m[0].trainIdx for m in bwd if m}
    pairs = [
        (m.queryIdx, m.trainIdx)
        for m, n in (p for p in fwd if len(p) == 2)
        if m.distance < ratio * n.distance and back.get(m.trainIdx) == m.queryIdx
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def triangulate_views(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    config: TriangulationConfig | None = None,
) -> Triangulation:
    """Triangulate SIFT matches between every pair of posed, undistorted views.

    Args:
        cameras: ``V`` cameras at the images' resolution (pinhole; distortion already removed).
        images: ``[V, H, W, 3]`` float images in [0, 1].
        config: thresholds; defaults to :class:`TriangulationConfig`.

    Returns:
        :class:`Triangulation` with ``points [P, 3]``, ``colours [P, 3]`` (mean of the two views'
        pixels) and the count per pair. ``P`` may be 0 (textureless or non-overlapping views).
    """
    cfg = config or TriangulationConfig()
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [V, H, W, 3], got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images for {len(cameras)} cameras")
    sift = cv2.SIFT_create(nfeatures=cfg.max_features)
    feats = []
    for img in images:
        kp, desc = sift.detectAndCompute(_to_gray_u8(img), None)
        xy = np.array([k.pt for k in kp], dtype=np.float64).reshape(-1, 2)
        feats.append((xy, desc if desc is not None else np.zeros((0, 128), np.float32)))
    w2c = cameras.w2c.double().cpu().numpy()
    Ks = cameras.Ks().double().cpu().numpy()
    projs = [K @ m[:3] for K, m in zip(Ks, w2c, strict=True)]
    centres = cameras.centres().double().cpu().numpy()
    rgb = images.float().cpu().numpy()
    h, w = images.shape[1:3]
    cos_min = np.cos(np.deg2rad(cfg.min_angle_deg))
    all_pts, all_cols, counts = [], [], {}
    for a, b in combinations(range(len(cameras)), 2):
        idx = _match(feats[a][1], feats[b][1], cfg.ratio)
        xa, xb = feats[a][0][idx[:, 0]], feats[b][0][idx[:, 1]]
        keep = _epipolar_distance(fundamental_from_poses(w2c[a], Ks[a], w2c[b], Ks[b]), xa, xb) < cfg.max_epipolar_px
        xa, xb = xa[keep], xb[keep]
        if len(xa) == 0:
            counts[(a, b)] = 0
            continue
        hom = cv2.triangulatePoints(projs[a], projs[b], xa.T, xb.T)  # [4, M]
        X = (hom[:3] / np.where(np.abs(hom[3]) < 1e-12, 1e-12, hom[3])).T
        ua, za = _project(projs[a], X)
        ub, zb = _project(projs[b], X)
        err = np.maximum(np.linalg.norm(ua - xa, axis=1), np.linalg.norm(ub - xb, axis=1))
        ra, rb = X - centres[a], X - centres[b]
        cos = np.sum(ra * rb, axis=1) / np.maximum(np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1), 1e-12)
        ok = (za > 0) & (zb > 0) & (err < cfg.max_reprojection_px) & (cos < cos_min) & np.isfinite(X).all(axis=1)
        counts[(a, b)] = int(ok.sum())
        if not ok.any():
            continue
        pa = np.clip(np.rint(xa[ok]).astype(np.int64), 0, [w - 1, h - 1])
        pb = np.clip(np.rint(xb[ok]).astype(np.int64), 0, [w - 1, h - 1])
        all_pts.append(X[ok])
        all_cols.append(0.5 * (rgb[a, pa[:, 1], pa[:, 0]] + rgb[b, pb[:, 1], pb[:, 0]]))
    pts = np.concatenate(all_pts) if all_pts else np.zeros((0, 3))
    cols = np.concatenate(all_cols) if all_cols else np.zeros((0, 3))
    logger.info("triangulated %d points from %d view pairs", len(pts), len(counts))
    return Triangulation(
        torch.from_numpy(pts).float(), torch.from_numpy(cols).float().clamp(0, 1), counts
    )
