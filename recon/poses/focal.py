"""Shared focal length of a few photos from the consistency of their pairwise rotations.

With a wrong focal length every pair still fits an essential matrix (two views cannot tell the
focal length: Kruppa), but the relative rotations of three views stop composing: around a
triplet ``a -> b -> c -> a`` the product ``R_bc R_ab R_ac^T`` drifts away from the identity.
:func:`search_focal` estimates every pair's relative pose (LO-RANSAC, pycolmap) at each
candidate focal length and keeps the one whose triplets close best.

Measured on the fox capture (views 0019, 0072, 0108; 1000 px affine SIFT; calibrated focal
1375.5 px): cycle error 82.3 deg at 1200 px, 1.09 deg at 1375 px, 4.9 deg at 1500 px, 10.7 deg
at 1800 px, while the bundle-adjusted reprojection error with the focal length held fixed is
flat (0.459 / 0.453 / 0.450 / 0.443 px): with two-view tracks it cannot choose the focal length.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PairGeometry", "FocalSearch", "relative_poses", "cycle_errors_deg", "consistent_pairs",
    "search_focal",
]


@dataclass
class PairGeometry:
    """One image pair's calibrated relative pose at a given focal length."""

    a: int
    """Index of the first view (into the caller's list of views)."""
    b: int
    """Index of the second view (``a < b``)."""
    rot_b_from_a: np.ndarray  # [3, 3]
    """Rotation taking camera ``a``'s axes to camera ``b``'s (OpenCV, world-to-camera sense)."""
    trans_b_from_a: np.ndarray  # [3]
    """Translation of ``cam_b_from_cam_a`` (unit length: scale is unknown from one pair)."""
    inliers: np.ndarray  # [M, 2] int
    """Keypoint indices ``(in a, in b)`` consistent with the pose."""


@dataclass
class FocalSearch:
    """Result of :func:`search_focal`."""

    focal_px: float | None
    """Best focal length in full-resolution pixels, or ``None`` when no triplet could decide."""
    cycle_deg: float
    """Median triplet cycle error at ``focal_px``, degrees (``inf`` when undecided)."""
    n_triplets: int
    """Triplets of pairwise-matched views used to score."""
    scores: list[tuple[float, float]] = field(default_factory=list)
    """``(focal_px, median cycle error in degrees)`` for every candidate tried."""


def _rot_angle_deg(rot: np.ndarray) -> float:  # rot: [3, 3]
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(rot)) - 1.0) / 2.0))))


def relative_poses(
    keypoints: list[np.ndarray],  # each [Ni, 2], full-resolution pixels
    matches: dict[tuple[int, int], np.ndarray],  # (a, b) -> [M, 2] int
    width: int,
    height: int,
    focal_px: float,
    *,
    max_error_px: float = 2.0,
    min_inliers: int = 30,
    seed: int = 0,
    start: dict[tuple[int, int], PairGeometry] | None = None,
) -> dict[tuple[int, int], PairGeometry]:
    """Calibrated relative pose of every matched pair at one focal length (pinhole, centred).

    With ``start``, no RANSAC: each pair of ``start`` is refined (tangent Sampson error) from
    its pose on its inliers, so the result varies smoothly with ``focal_px``.

    Args:
        keypoints: per view, keypoint positions [Ni, 2] in full-resolution pixels.
        matches: candidate matches per pair ``(a, b)`` with ``a < b``: [M, 2] keypoint indices.
        width, height: image size in pixels (shared camera).
        focal_px: focal length to assume, pixels.
        max_error_px: RANSAC threshold (tangent Sampson error), pixels.
        min_inliers: pairs with fewer inliers are left out.
        seed: RANSAC seed.
        start: poses and inlier sets to refine instead of estimating afresh.

    Returns:
        ``{(a, b): PairGeometry}`` for the pairs that kept ``min_inliers`` inliers.
    """
    import pycolmap

    cam = pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=width, height=height,
        params=[focal_px, width / 2.0, height / 2.0],
    )  # fmt: skip
    out = {}
    if start is not None:
        for (a, b), g in start.items():
            x1, x2 = keypoints[a][g.inliers[:, 0]], keypoints[b][g.inliers[:, 1]]
            init = pycolmap.Rigid3d(pycolmap.Rotation3d(g.rot_b_from_a), g.trans_b_from_a)
            res = pycolmap.refine_relative_pose(
                init, cam, x1, cam, x2, np.ones(len(x1), dtype=bool)
            )
            if res is None:
                continue
            pose = res["cam2_from_cam1"] if isinstance(res, dict) else res
            out[(a, b)] = PairGeometry(
                a, b, np.asarray(pose.rotation.matrix()), np.asarray(pose.translation), g.inliers
            )
        return out
    for (a, b), m in matches.items():
        if len(m) < min_inliers:
            continue
        opts = pycolmap.RANSACOptions()
        opts.max_error = max_error_px
        opts.random_seed = seed
        opts.min_num_trials = 200  # plenty at the >= 30 % inlier ratios of verified candidates
        res = pycolmap.estimate_relative_pose(
            cam, keypoints[a][m[:, 0]].astype(np.float64), cam,
            keypoints[b][m[:, 1]].astype(np.float64), opts,
        )  # fmt: skip
        if res is None:
            continue
        mask = np.asarray(res["inlier_mask"], dtype=bool)
        if mask.sum() < min_inliers:
            continue
        pose = res["cam2_from_cam1"]
        out[(a, b)] = PairGeometry(
            a, b, np.asarray(pose.rotation.matrix()), np.asarray(pose.translation), m[mask]
        )
    return out


def cycle_errors_deg(pairs: dict[tuple[int, int], PairGeometry]) -> list[float]:
    """Rotation error (degrees) around every triplet whose three pairs all have a pose."""
    views = sorted({v for ab in pairs for v in ab})
    errs = []
    for a, b, c in itertools.combinations(views, 3):
        if (a, b) in pairs and (b, c) in pairs and (a, c) in pairs:
            loop = (
                pairs[(b, c)].rot_b_from_a
                @ pairs[(a, b)].rot_b_from_a
                @ pairs[(a, c)].rot_b_from_a.T
            )
            errs.append(_rot_angle_deg(loop))
    return errs


def consistent_pairs(
    pairs: dict[tuple[int, int], PairGeometry], max_cycle_deg: float = 5.0
) -> dict[tuple[int, int], PairGeometry]:
    """The pairs that belong to at least one triplet closing within ``max_cycle_deg``.

    A lone pair's two-view pose can be the wrong one of a planar scene's two solutions (fox
    0019-0054: 233 of 264 matches agree with a rotation 38.7 deg off); a pair confirmed by a
    closing triplet cannot.
    """
    views = sorted({v for ab in pairs for v in ab})
    keep: set[tuple[int, int]] = set()
    for a, b, c in itertools.combinations(views, 3):
        trio = [(a, b), (b, c), (a, c)]
        if all(p in pairs for p in trio) and cycle_errors_deg({p: pairs[p] for p in trio})[0] <= max_cycle_deg:
            keep.update(trio)
    return {p: g for p, g in pairs.items() if p in keep}


def search_focal(
    keypoints: list[np.ndarray],  # each [Ni, 2]
    matches: dict[tuple[int, int], np.ndarray],  # (a, b) -> [M, 2]
    width: int,
    height: int,
    *,
    centre_px: float | None = None,
    span: tuple[float, float] = (0.4, 2.5),
    coarse_ratio: float = 1.1,
    fine_ratio: float = 1.015,
    min_inliers: int = 30,
    seed: int = 0,
) -> FocalSearch:
    """Focal length whose pairwise rotations compose best around view triplets.

    Candidates: a geometric grid over ``span`` x the larger image side (or ``span`` around
    ``centre_px`` narrowed to x0.75..x1.33 when a prior such as EXIF is given), then a finer grid
    around the best coarse value. The score is the median cycle error over triplets.

    Args:
        keypoints: per view [Ni, 2], full-resolution pixels.
        matches: ``(a, b) -> [M, 2]`` candidate matches, ``a < b``.
        width, height: shared image size, pixels.
        centre_px: a prior focal length (EXIF) to search around, or ``None``.
        span: search range as multiples of ``max(width, height)`` without a prior.
        coarse_ratio, fine_ratio: ratios between neighbouring candidates.
        min_inliers: a pair needs this many inliers to count.
        seed: RANSAC seed.

    Returns:
        :class:`FocalSearch`; ``focal_px`` is ``None`` when no triplet of matched views exists.
    """
    side = float(max(width, height))
    lo, hi = (centre_px * 0.75, centre_px * 1.33) if centre_px else (span[0] * side, span[1] * side)

    def grid(a: float, b: float, ratio: float) -> list[float]:
        n = max(2, int(math.ceil(math.log(b / a) / math.log(ratio))) + 1)
        return [a * (b / a) ** (i / (n - 1)) for i in range(n)]

    scores: list[tuple[float, float]] = []
    n_tri = 0

    def score(f: float, start: dict | None = None) -> float:
        nonlocal n_tri
        errs = cycle_errors_deg(
            relative_poses(keypoints, matches, width, height, f, min_inliers=min_inliers,
                           seed=seed, start=start)  # fmt: skip
        )
        n_tri = max(n_tri, len(errs))
        s = float(np.median(errs)) if errs else math.inf
        scores.append((f, s))
        return s

    coarse = [(score(f), f) for f in grid(lo, hi, coarse_ratio)]
    best_s, best_f = min(coarse)
    if not math.isfinite(best_s):
        return FocalSearch(None, math.inf, 0, scores)
    # Fine stage: the best coarse candidate's inlier sets, refined at each focal length (no
    # RANSAC, whose changing inlier sets make the score jump by a degree between neighbours).
    start = relative_poses(keypoints, matches, width, height, best_f, min_inliers=min_inliers, seed=seed)
    fine = [(score(f, start), f) for f in grid(best_f / coarse_ratio, best_f * coarse_ratio, fine_ratio)]
    best_s, best_f = min(coarse + fine)
    logger.info("focal search: %.1f px (median triplet cycle error %.2f deg, %d triplets)",
                best_f, best_s, n_tri)  # fmt: skip
    return FocalSearch(best_f, best_s, n_tri, sorted(scores))
