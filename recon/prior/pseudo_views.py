"""Pseudo views for a diffusion prior: cameras with no photo around the training cameras, each
with a weight that falls with its distance from the nearest real view.

A generative prior repairs renders of such views and the repaired images become extra targets
(:mod:`recon.prior.guidance`), the way GaussianObject and Difix3D+ use theirs. The farther a
pseudo view is from every real photo, the less the fit trusts what the prior made up there, so
each view carries a weight in (0, 1].

Two kinds of views, all looking at the scene centre (the point closest to every training
camera's optical axis, :func:`recon.splat.camera_paths.scene_frame`) with the cameras' mean up
direction:

- **between**: for each pair of neighbouring training cameras (each camera with its
  ``neighbours`` nearest by centre distance), ``between`` views at fractions ``k / (between + 1)``
  along the arc from one to the other around the scene centre (direction slerped, distance to
  the centre interpolated linearly);
- **near**: for each training camera, ``near`` views whose centres are the camera's centre
  rotated about the scene centre by ``near_deg`` degrees around a random axis perpendicular to
  its viewing direction, distance to the centre scaled by ``1 + near_radius * N(0, 1)``.

Weight of pseudo view ``p`` (:func:`view_weights`): the largest over training views ``v`` of
``exp(-(theta_pv / rot_scale_deg)^2 / 2 - (d_pv / (trans_scale * spacing))^2 / 2)``, with
``theta_pv`` the rotation angle between the two cameras in degrees, ``d_pv`` the distance of
their centres and ``spacing`` the median distance from a training camera to its nearest other
training camera (so the weight does not depend on the scene's units). A pseudo view equal to a
training view has weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.checks import check_shape
from recon.geometry.cameras import CameraSet, camera_centres
from recon.splat.camera_paths import look_at, scene_frame

__all__ = ["PseudoViewConfig", "PseudoViews", "make_pseudo_views", "rotation_angle_deg", "view_weights"]


@dataclass(frozen=True)
class PseudoViewConfig:
    """How many pseudo views, where, and how their weights fall off (module docstring)."""

    between: int = 2
    """Views along the arc between each pair of neighbouring training cameras."""
    near: int = 1
    """Views per training camera, rotated ``near_deg`` about the scene centre."""
    neighbours: int = 2
    """Pair each training camera with this many nearest others (for ``between``)."""
    near_deg: float = 8.0
    """Angle in degrees by which a ``near`` view is rotated about the scene centre."""
    near_radius: float = 0.05
    """Std of the relative change of a ``near`` view's distance to the centre."""
    rot_scale_deg: float = 30.0
    """Rotation (degrees) from the nearest training view at which the weight has fallen by
    ``exp(-1/2)`` (with no translation)."""
    trans_scale: float = 1.0
    """Distance from the nearest training view, in units of the training cameras' spacing, at
    which the weight has fallen by ``exp(-1/2)`` (with no rotation)."""
    seed: int = 0
    """Seed of the random axes and distances of the ``near`` views."""

    def validate(self) -> list[str]:
        """Problems as ``"name: what"`` lines (empty when fine)."""
        bad = []
        for name in ("between", "near"):
            if getattr(self, name) < 0:
                bad.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.between + self.near == 0:
            bad.append("between/near: at least one must be > 0 (no pseudo views otherwise)")
        if self.neighbours < 1:
            bad.append(f"neighbours: must be >= 1, got {self.neighbours}")
        for name in ("near_deg", "near_radius"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad.append(f"{name}: must be >= 0, got {value}")
        for name in ("rot_scale_deg", "trans_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                bad.append(f"{name}: must be > 0, got {value}")
        return bad


@dataclass
class PseudoViews:
    """``P`` pseudo cameras and their weights.

    Attributes:
        cameras: the cameras (OpenCV world-to-camera ``[P, 4, 4]``; each with the intrinsics of
            its nearest training view).
        weights: ``[P]`` in (0, 1].
        nearest: ``[P]`` long, index (into the training cameras) of the nearest training view.
        rot_deg: ``[P]`` rotation angle to that view, degrees.
        distance: ``[P]`` distance of the centres to that view, in the training cameras' spacing.
        kinds: ``P`` descriptions (``"between 0-3 t=0.33"``, ``"near 2"``).
    """

    cameras: CameraSet
    weights: Tensor
    nearest: Tensor
    rot_deg: Tensor
    distance: Tensor
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.cameras)

    def names(self) -> list[str]:
        """``pseudo_000``, ``pseudo_001``, ... (file stems in the run folder)."""
        return [f"pseudo_{i:03d}" for i in range(len(self))]


def rotation_angle_deg(r0: Tensor, r1: Tensor) -> Tensor:  # [..., 3, 3] x2 -> [...]
    """Angle in degrees of the rotation ``r0 r1^T`` (0 for equal rotations, at most 180)."""
    check_shape("r0", r0, (..., 3, 3))
    check_shape("r1", r1, (..., 3, 3))
    rel = r0.double() @ r1.double().transpose(-1, -2)
    two_cos = rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    return torch.rad2deg(torch.atan2(skew.norm(dim=-1), two_cos))  # stable near 0, unlike arccos


def camera_spacing(w2c: Tensor) -> float:  # [V, 4, 4]
    """Median distance from a camera centre to its nearest other camera centre (1 with one camera)."""
    centres = camera_centres(w2c.double())
    if len(centres) < 2:
        return 1.0
    dist = torch.cdist(centres, centres)
    dist.fill_diagonal_(float("inf"))
    spacing = float(dist.min(1).values.median())
    return spacing if spacing > 1e-12 else 1.0


def view_weights(
    w2c: Tensor,  # [P, 4, 4] pseudo cameras
    train_w2c: Tensor,  # [V, 4, 4] training cameras
    rot_scale_deg: float,
    trans_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weights of pseudo cameras by their distance to the nearest training camera (module docstring).

    Args:
        w2c: pseudo cameras, OpenCV world-to-camera, ``[P, 4, 4]``.
        train_w2c: training cameras, ``[V, 4, 4]`` (V >= 1).
        rot_scale_deg, trans_scale: fall-off scales (degrees; units of the training spacing).

    Returns:
        ``(weights [P], nearest [P] long, rot_deg [P], distance [P])`` (float32 but ``nearest``),
        where ``nearest`` maximises the weight.
    """
    check_shape("w2c", w2c, (None, 4, 4), floating=True)
    check_shape("train_w2c", train_w2c, (None, 4, 4), floating=True)
    if len(train_w2c) < 1:
        raise ValueError("train_w2c: expected at least one training camera, given 0")
    if not (rot_scale_deg > 0 and trans_scale > 0):
        raise ValueError(f"rot_scale_deg, trans_scale: expected > 0, given {rot_scale_deg}, {trans_scale}")
    p, t = w2c.double().cpu(), train_w2c.double().cpu()
    rot = rotation_angle_deg(p[:, None, :3, :3], t[None, :, :3, :3])  # [P, V]
    dist = torch.cdist(camera_centres(p), camera_centres(t)) / camera_spacing(t)  # [P, V]
    log_w = -0.5 * (rot / rot_scale_deg) ** 2 - 0.5 * (dist / trans_scale) ** 2
    best = log_w.argmax(1)
    pick = torch.arange(len(p))
    return log_w[pick, best].exp().float(), best, rot[pick, best].float(), dist[pick, best].float()


def _neighbour_pairs(centres: Tensor, k: int) -> list[tuple[int, int]]:
    dist = torch.cdist(centres, centres)
    dist.fill_diagonal_(float("inf"))
    k = min(k, len(centres) - 1)
    nn = dist.topk(k, largest=False).indices
    return sorted({(min(i, int(j)), max(i, int(j))) for i in range(len(centres)) for j in nn[i]})


def _arc(d0: Tensor, d1: Tensor, t: float) -> Tensor:  # [3] x2 -> [3]
    """Offset ``t`` of the way from ``d0`` to ``d1``: direction slerped, length interpolated."""
    n0, n1 = d0.norm(), d1.norm()
    u0, u1 = d0 / n0.clamp_min(1e-12), d1 / n1.clamp_min(1e-12)
    omega = torch.arccos((u0 @ u1).clamp(-1.0, 1.0))
    if float(omega) < 1e-6:
        u = u0
    else:
        u = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)
    return u * ((1 - t) * n0 + t * n1)


def _rotate(v: Tensor, axis: Tensor, angle_rad: float) -> Tensor:  # Rodrigues, [3] about unit [3]
    return v * math.cos(angle_rad) + torch.linalg.cross(axis, v) * math.sin(angle_rad) + axis * (axis @ v) * (1 - math.cos(angle_rad))


def make_pseudo_views(train: CameraSet, config: PseudoViewConfig | None = None) -> PseudoViews:
    """Pseudo views around the training cameras ``train`` (module docstring).

    Args:
        train: the training cameras (``V >= 1``; ``between`` views need ``V >= 2``).
        config: counts, angles and weight fall-off (default :class:`PseudoViewConfig`).

    Returns:
        :class:`PseudoViews` with ``P = between * (neighbour pairs) + near * V`` cameras.
    """
    cfg = config or PseudoViewConfig()
    problems = cfg.validate()
    if problems:
        raise ValueError(problems[0])
    if not isinstance(train, CameraSet) or len(train) < 1:
        raise ValueError(f"train: expected a CameraSet of at least one camera, given {train!r:.80}")
    w2c = train.w2c.double().cpu()
    centre, up = scene_frame(train)
    centres = camera_centres(w2c)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    eyes, kinds = [], []
    if cfg.between > 0 and len(train) >= 2:
        for i, j in _neighbour_pairs(centres, cfg.neighbours):
            for k in range(1, cfg.between + 1):
                t = k / (cfg.between + 1)
                eyes.append(centre + _arc(centres[i] - centre, centres[j] - centre, t))
                kinds.append(f"between {i}-{j} t={t:.2f}")
    for i in range(len(train) if cfg.near > 0 else 0):
        d = centres[i] - centre
        u = d / d.norm().clamp_min(1e-12)
        for _ in range(cfg.near):
            a = torch.randn(3, generator=gen, dtype=torch.float64)
            axis = a - (a @ u) * u
            axis = axis / axis.norm().clamp_min(1e-12)
            scale = 1.0 + cfg.near_radius * float(torch.randn((), generator=gen, dtype=torch.float64))
            eyes.append(centre + _rotate(d, axis, math.radians(cfg.near_deg)) * max(scale, 0.1))
            kinds.append(f"near {i}")
    if not eyes:
        raise ValueError(f"no pseudo views: 'between' views need >= 2 training cameras (given {len(train)}) and near = 0")
    pseudo_w2c = look_at(torch.stack(eyes), centre, up)
    weights, nearest, rot_deg, distance = view_weights(pseudo_w2c, w2c, cfg.rot_scale_deg, cfg.trans_scale)
    cameras = CameraSet(pseudo_w2c.float(), [train.intrinsics[int(v)] for v in nearest])
    return PseudoViews(cameras, weights, nearest, rot_deg, distance, kinds)
