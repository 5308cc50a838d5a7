"""Self-checks of a few-view reconstruction: per-view support, focal plausibility, camera placement.

A reconstruction of 3-10 photos can come back complete and wrong (every view "registered",
rotations tens of degrees off). These checks turn the warning signs into per-view numbers and a
list of problems; :mod:`recon.poses.sparse_registration` refuses to return a reconstruction
that has any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.poses.focal import PairGeometry

__all__ = ["CheckLimits", "ViewStats", "view_stats", "reconstruction_problems"]


@dataclass(frozen=True)
class CheckLimits:
    """Thresholds of :func:`reconstruction_problems`."""

    min_view_points: int = 30
    """A registered view must observe at least this many triangulated points."""
    max_reproj_px: float = 4.0
    """Largest acceptable mean reprojection error of one view, full-resolution pixels."""
    focal_range: tuple[float, float] = (0.3, 3.0)
    """Plausible focal lengths as multiples of the larger image side."""
    max_pair_disagreement_deg: float = 10.0
    """A view whose rotation disagrees with every independent two-view estimate by more than
    this is suspect (the two-view estimates themselves can be ambiguous on planes, hence "every")."""
    min_front_fraction: float = 0.9
    """Fraction of a view's observed points that must lie in front of it."""


@dataclass
class ViewStats:
    """Numbers that say how well one registered view is supported."""

    name: str
    n_points: int
    """Triangulated points this view observes (its inliers)."""
    reproj_px: float
    """Mean reprojection error of those observations, pixels."""
    front_fraction: float
    """Fraction of those points with positive depth."""
    pair_disagreement_deg: float
    """Smallest angle between this view's relative rotation to another view in the model and
    the two-view estimate of that pair (``nan`` when no trusted pair estimate exists)."""
    inside_points: bool
    """Whether the camera centre lies inside the central 80 % box of the model's points."""

    @property
    def confidence(self) -> float:
        """0..1: support (points, saturating at 200) x agreement with the trusted pair estimates
        (halved when no trusted pair can confirm the view) x reprojection (1 up to 2 px) x the
        fraction of its points in front of it; 0 for a camera inside the points."""
        if self.inside_points:
            return 0.0
        support = min(1.0, self.n_points / 200.0)
        dis = self.pair_disagreement_deg
        agree = 0.5 if math.isnan(dis) else math.exp(-((dis / 5.0) ** 2))
        reproj = 1.0 if self.reproj_px <= 2.0 else 2.0 / self.reproj_px
        return support * agree * reproj * self.front_fraction


def _w2c(image: Any) -> np.ndarray:  # -> [4, 4]
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    return np.concatenate([np.asarray(pose.matrix(), dtype=np.float64), [[0.0, 0.0, 0.0, 1.0]]])


def view_stats(
    rec: Any,
    names: list[str],
    pairs: dict[tuple[int, int], PairGeometry],
) -> dict[str, ViewStats]:
    """Per-view support of a pycolmap ``Reconstruction``.

    Args:
        rec: the reconstruction.
        names: all view names, in the order ``pairs`` indexes them.
        pairs: trusted two-view estimates ``(a, b) -> PairGeometry`` (indices into ``names``;
            :func:`recon.poses.focal.consistent_pairs`).

    Returns:
        ``{name: ViewStats}`` for the registered views.
    """
    xyz_all = np.stack([p.xyz for p in rec.points3D.values()]) if rec.num_points3D() else None
    if xyz_all is not None:
        box_lo, box_hi = np.quantile(xyz_all, 0.1, axis=0), np.quantile(xyz_all, 0.9, axis=0)
    index = {n: i for i, n in enumerate(names)}
    w2cs = {im.name: _w2c(im) for im in rec.images.values() if im.has_pose}
    out = {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        w2c, cam = w2cs[im.name], rec.cameras[im.camera_id]
        obs = [p2 for p2 in im.points2D if p2.has_point3D()]
        if obs:
            xyz = np.stack([rec.points3D[p2.point3D_id].xyz for p2 in obs])
            uv = np.stack([p2.xy for p2 in obs])
            xc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
            front = float((xc[:, 2] > 0).mean())
            proj = np.asarray(cam.img_from_cam(xc, check_cheirality=False))
            reproj = float(np.linalg.norm(proj - uv, axis=1).mean())
        else:
            front, reproj = 0.0, math.inf
        dis = []
        i = index.get(im.name)
        for (a, b), g in pairs.items():
            if i not in (a, b) or names[a] not in w2cs or names[b] not in w2cs:
                continue
            rel = w2cs[names[b]][:3, :3] @ w2cs[names[a]][:3, :3].T
            dis.append(math.degrees(math.acos(max(-1.0, min(1.0,
                (float(np.trace(rel @ g.rot_b_from_a.T)) - 1.0) / 2.0)))))  # fmt: skip
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        inside = bool(xyz_all is not None and np.all(centre > box_lo) and np.all(centre < box_hi))
        out[im.name] = ViewStats(
            im.name, len(obs), reproj, front, min(dis) if dis else math.nan, inside
        )
    return out


def reconstruction_problems(
    stats: dict[str, ViewStats],
    focal_px: float,
    width: int,
    height: int,
    limits: CheckLimits = CheckLimits(),
) -> dict[str, str]:
    """What is wrong with a reconstruction, per view (key ``"*"`` for the whole model).

    Returns:
        ``{view name or "*": one-line reason}``; empty when every check passes.
    """
    problems: dict[str, str] = {}
    ratio = focal_px / max(width, height)
    if not limits.focal_range[0] <= ratio <= limits.focal_range[1]:
        problems["*"] = (
            f"implausible focal length {focal_px:.0f} px ({ratio:.2f} x the larger side; "
            f"expected {limits.focal_range[0]}-{limits.focal_range[1]})"
        )
    for name, s in stats.items():
        if s.n_points < limits.min_view_points:
            problems[name] = f"sees only {s.n_points} triangulated points (expected >= {limits.min_view_points})"
        elif s.reproj_px > limits.max_reproj_px:
            problems[name] = f"reprojection error {s.reproj_px:.1f} px (expected <= {limits.max_reproj_px})"
        elif s.front_fraction < limits.min_front_fraction:
            problems[name] = f"only {100 * s.front_fraction:.0f} % of its points are in front of it"
        elif s.inside_points:
            problems[name] = "camera lies inside the reconstructed points"
        elif s.pair_disagreement_deg > limits.max_pair_disagreement_deg:
            problems[name] = (
                f"its rotation disagrees with every two-view estimate by >= "
                f"{s.pair_disagreement_deg:.0f} deg"
            )
    return problems
