"""Per-view camera pose refinement during fitting (nerfstudio's ``CameraOptimizer``, for w2c).

Each view ``i`` gets a learnable twist ``xi_i = (v, w)`` in se(3) (``v`` translation part,
``w`` rotation part, 6 numbers), zero-initialised, so refinement starts at the given poses.
The refined pose is

    w2c_i' = exp(xi_i) @ w2c_i

i.e. the correction acts in the camera frame: ``w`` rotates the camera about its own centre and
``v`` shifts it along its own axes, which keeps rotation and translation decoupled and in
sensible units. ``mode="SO3xR3"`` uses ``[exp_so3(w) | v]`` instead of the full SE(3)
exponential (nerfstudio's other mode); ``mode="off"`` returns the poses unchanged.

Typical use in a trainer::

    refiner = PoseRefineConfig(lr=1e-3).setup(n_views)
    opt, sched = refiner.make_optimizer(max_steps)
    ...
    viewmats = refiner.apply(w2c[idx], idx)   # differentiable in refiner's parameters
    loss.backward(); opt.step(); sched.step(); opt.zero_grad()

:func:`perturb_poses` makes poses with a known error for tests and benchmarks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from recon.geometry.cameras import camera_centres

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "PoseRefineConfig",
    "PoseRefiner",
    "hat_so3",
    "exp_so3",
    "exp_se3",
    "twist_matrix",
    "perturb_poses",
]

MODES = ("SE3", "SO3xR3", "off")
"""Refinement modes: full se(3) exponential, rotation exponential + free translation, none."""

# Below this angle (radians) the closed forms' coefficients switch to their Taylor series (to
# t^4), whose truncation error there is below the dtype's rounding and which keep gradients
# finite at exactly zero; the closed forms lose digits to cancellation at small angles.
_SMALL_ANGLE = {torch.float64: 1e-2}
_SMALL_ANGLE_DEFAULT = 0.1  # float32 / half: t^6 / 5040 < 2e-10 at 0.1


# --------------------------------------------------------------------------------------------
# Lie group helpers (batched over leading dims, differentiable, dtype/device preserving)
# --------------------------------------------------------------------------------------------


def hat_so3(w: Tensor) -> Tensor:  # w: [..., 3] -> [..., 3, 3]
    """Skew-symmetric matrix ``[w]_x`` with ``[w]_x @ u == cross(w, u)``.

    Args:
        w: Tensor [..., 3].

    Returns:
        Tensor [..., 3, 3].
    """
    if not isinstance(w, Tensor) or w.ndim < 1 or w.shape[-1] != 3:
        raise ValueError(f"w must be a Tensor [..., 3], got {getattr(w, 'shape', w)}")
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)],
        -2,
    )


def _coefficients(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``A = sin t / t``, ``B = (1 - cos t) / t^2``, ``C = (t - sin t) / t^3`` for ``t = |w|``.

    Branch-free: for small ``t`` the Taylor series are used and the closed forms see a safe
    angle, so neither values nor gradients become NaN at ``t = 0``.
    """
    t2 = (w * w).sum(-1)
    small = t2 < _SMALL_ANGLE.get(w.dtype, _SMALL_ANGLE_DEFAULT) ** 2
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    sin, cos = torch.sin(t), torch.cos(t)
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, sin / t)
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, (1 - cos) / t2_safe)
    c = torch.where(small, 1.0 / 6 - t2 / 120 + t2 * t2 / 5040, (t - sin) / (t2_safe * t))
    return a, b, c


def exp_so3(w: Tensor) -> Tensor:  # w: [..., 3] -> [..., 3, 3]
    """Rotation ``exp([w]_x)`` (Rodrigues): axis ``w / |w|``, angle ``|w|`` radians.

    Args:
        w: Tensor [..., 3], axis-angle.

    Returns:
        Tensor [..., 3, 3].
    """
    k = hat_so3(w)
    a, b, _ = _coefficients(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def twist_matrix(xi: Tensor) -> Tensor:  # xi: [..., 6] -> [..., 4, 4]
    """The se(3) matrix ``[[ [w]_x, v ], [0, 0]]`` of a twist ``xi = (v, w)``.

    ``torch.linalg.matrix_exp(twist_matrix(xi))`` equals :func:`exp_se3` ``(xi)``.
    """
    if not isinstance(xi, Tensor) or xi.ndim < 1 or xi.shape[-1] != 6:
        raise ValueError(f"xi must be a Tensor [..., 6], got {getattr(xi, 'shape', xi)}")
    top = torch.cat([hat_so3(xi[..., 3:]), xi[..., :3, None]], -1)  # [..., 3, 4]
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], -2)


def exp_se3(xi: Tensor) -> Tensor:  # xi: [..., 6] -> [..., 4, 4]
    """Rigid transform ``exp(xi)`` of a twist ``xi = (v, w)``: ``[exp_so3(w) | V v]``.

    ``V = I + B [w]_x + C [w]_x^2`` (see :func:`_coefficients`), so this is the matrix
    exponential of :func:`twist_matrix` in closed form.

    Args:
        xi: Tensor [..., 6], translation part first.

    Returns:
        Tensor [..., 4, 4].
    """
    if not isinstance(xi, Tensor) or xi.ndim < 1 or xi.shape[-1] != 6:
        raise ValueError(f"xi must be a Tensor [..., 6], got {getattr(xi, 'shape', xi)}")
    v, w = xi[..., :3], xi[..., 3:]
    k = hat_so3(w)
    kk = k @ k
    a, b, c = _coefficients(w)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    rot = eye + a[..., None, None] * k + b[..., None, None] * kk
    vmat = eye + b[..., None, None] * k + c[..., None, None] * kk
    trans = (vmat @ v[..., None])[..., 0]
    return _rt_to_mat(rot, trans)


def _rt_to_mat(rot: Tensor, trans: Tensor) -> Tensor:  # [..., 3, 3], [..., 3] -> [..., 4, 4]
    top = torch.cat([rot, trans[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


# --------------------------------------------------------------------------------------------
# The refiner
# --------------------------------------------------------------------------------------------


@dataclass
class PoseRefineConfig:
    """Hyperparameters of per-view pose refinement (defaults for photo captures in scene units
    of a few metres; translation and rotation share one learning rate, as in nerfstudio)."""

    mode: str = "SE3"
    """``"SE3"``, ``"SO3xR3"`` or ``"off"``."""
    lr: float = 1e-3
    """Initial Adam learning rate of the 6-vectors."""
    lr_final: float = 1e-5
    """Learning rate reached after ``max_steps`` (exponential decay)."""
    weight_decay: float = 1e-6
    """Adam L2 weight decay on the 6-vectors (pulls corrections toward identity)."""
    eps: float = 1e-15
    """Adam epsilon (nerfstudio's value: the gradients are tiny)."""

    def setup(self, n_views: int) -> PoseRefiner:
        """A :class:`PoseRefiner` for ``n_views`` views with these hyperparameters."""
        return PoseRefiner(n_views, mode=self.mode, config=self)


class PoseRefiner(nn.Module):
    """Learnable per-view SE(3) corrections of world-to-camera poses (zero = identity)."""

    def __init__(
        self, n_views: int, mode: str = "SE3", config: PoseRefineConfig | None = None
    ) -> None:
        super().__init__()
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views must be a positive integer, got {n_views!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.n_views = n_views
        self.mode = mode
        self.config = config if config is not None else PoseRefineConfig(mode=mode)
        if self.config.mode != mode:
            raise ValueError(f"mode {mode!r} disagrees with config.mode {self.config.mode!r}")
        self.pose_adjustment = nn.Parameter(torch.zeros(n_views, 6))
        """Twists ``(v, w)`` per view, [n_views, 6]; trainable unless ``mode == "off"``."""
        if mode == "off":
            self.pose_adjustment.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"n_views={self.n_views}, mode={self.mode!r}"

    def _index(self, indices: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.pose_adjustment.device)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_views):
            raise IndexError(
                f"indices must lie in 0..{self.n_views - 1}, got {idx.min()}..{idx.max()}"
            )
        return idx

    def forward(self, indices: Tensor | Sequence[int]) -> Tensor:  # -> [B, 4, 4]
        """Correction transforms of the views ``indices`` (Tensor or list [B]), [B, 4, 4]."""
        idx = self._index(indices)
        xi = self.pose_adjustment[idx]  # [B, 6]
        if self.mode == "SE3":
            return exp_se3(xi)
        if self.mode == "SO3xR3":
            return _rt_to_mat(exp_so3(xi[:, 3:]), xi[:, :3])
        return _rt_to_mat(
            torch.eye(3, dtype=xi.dtype, device=xi.device).expand(len(idx), 3, 3),
            torch.zeros_like(xi[:, :3]),
        )

    def apply(
        self,
        w2c: Tensor,  # [V, 4, 4]
        indices: Tensor | Sequence[int],  # [V]
    ) -> Tensor:  # [V, 4, 4]
        """Refined poses ``exp(xi[indices[j]]) @ w2c[j]``, differentiable in the corrections.

        Args:
            w2c: Tensor [V, 4, 4], OpenCV world-to-camera poses of the views being rendered.
            indices: which view (0..n_views-1) each row of ``w2c`` is, Tensor or list [V].

        Returns:
            Tensor [V, 4, 4], dtype and device of ``w2c``.
        """
        if not isinstance(w2c, Tensor) or w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
            raise ValueError(f"w2c must be a Tensor [V, 4, 4], got {getattr(w2c, 'shape', w2c)}")
        idx = self._index(indices)
        if idx.shape[0] != w2c.shape[0]:
            raise ValueError(f"w2c has {w2c.shape[0]} poses but indices has {idx.shape[0]}")
        if self.mode == "off":
            return w2c
        delta = self(idx).to(device=w2c.device, dtype=w2c.dtype)
        return delta @ w2c

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter group(s): the twists with the config's lr and weight decay
        (empty when ``mode == "off"``)."""
        if self.mode == "off":
            return []
        return [
            {
                "name": "pose_adjustment",
                "params": [self.pose_adjustment],
                "lr": self.config.lr,
                "weight_decay": self.config.weight_decay,
            }
        ]

    def make_optimizer(
        self, max_steps: int
    ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LRScheduler] | tuple[None, None]:
        """Adam over :meth:`param_groups` with exponential decay from ``lr`` to ``lr_final``
        over ``max_steps`` steps (call ``scheduler.step()`` once per step); ``(None, None)``
        when ``mode == "off"``."""
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        groups = self.param_groups()
        if not groups:
            return None, None
        opt = torch.optim.Adam(groups, eps=self.config.eps)
        gamma = (self.config.lr_final / self.config.lr) ** (1.0 / max_steps)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)

    @torch.no_grad()
    def corrections(self) -> dict[str, Tensor]:
        """Size of each view's current correction: ``rot_deg`` [n_views] and ``trans``
        [n_views] (camera-centre shift, scene units), for logging."""
        delta = self(torch.arange(self.n_views, device=self.pose_adjustment.device))
        cos = ((delta[:, :3, :3].diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
        return {
            "rot_deg": torch.rad2deg(torch.arccos(cos)),
            "trans": delta[:, :3, 3].norm(dim=-1),
        }


# --------------------------------------------------------------------------------------------
# Test / benchmark helper
# --------------------------------------------------------------------------------------------


def perturb_poses(
    w2c: Tensor,  # [V, 4, 4]
    rot_deg: float,
    trans_frac: float,
    seed: int = 0,
) -> Tensor:  # [V, 4, 4]
    """Poses with a known error: each camera rotated by exactly ``rot_deg`` about a random axis
    through its centre, and its centre moved by exactly ``trans_frac`` x scene scale in a random
    direction.

    Scene scale is the mean distance of the camera centres from their centroid (1 for a single
    camera or coincident centres). Deterministic for a given ``seed`` (CPU generator).

    Args:
        w2c: Tensor [V, 4, 4], world-to-camera poses.
        rot_deg: rotation error per camera, degrees (>= 0).
        trans_frac: centre displacement per camera, fraction of scene scale (>= 0).
        seed: random seed.

    Returns:
        Tensor [V, 4, 4], same dtype and device.
    """
    if not isinstance(w2c, Tensor) or w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
        raise ValueError(f"w2c must be a Tensor [V, 4, 4], got {getattr(w2c, 'shape', w2c)}")
    ok = math.isfinite(rot_deg) and rot_deg >= 0 and math.isfinite(trans_frac) and trans_frac >= 0
    if not ok:
        raise ValueError(
            f"rot_deg and trans_frac must be finite and >= 0, got {rot_deg!r}, {trans_frac!r}"
        )
    g = torch.Generator().manual_seed(int(seed))
    n = w2c.shape[0]
    pose = w2c.detach().cpu().double()
    centres = camera_centres(pose)
    scale = float((centres - centres.mean(0)).norm(dim=-1).mean()) if n > 1 else 0.0
    if not scale > 0:
        scale = 1.0
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    direction = torch.randn(n, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    rot = exp_so3(axis * math.radians(rot_deg))  # [V, 3, 3], applied in the camera frame
    new_rot = rot @ pose[:, :3, :3]
    new_centres = centres + direction * trans_frac * scale
    new_t = -(new_rot @ new_centres[..., None])[..., 0]
    return _rt_to_mat(new_rot, new_t).to(dtype=w2c.dtype, device=w2c.device)
