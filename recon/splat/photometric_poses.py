"""Photometric registration of cameras against a frozen Gaussian model: poses and one shared focal length.

:func:`register_to_model` gives every camera a learnable SE(3) correction (the twists of
:class:`recon.poses.refine.PoseRefiner`, ``w2c' = exp(xi) @ w2c``) and all cameras one shared
log-focal factor ``a`` (``fx' = e^a fx``, ``fy' = e^a fy``: one camera, ``fx / fy`` kept), and
fits them by Adam to the L1 between each render and its photo, the Gaussians frozen. The model
fixes the world frame, so no camera needs to be pinned.

The focal factor enters the render as ``diag(e^a, e^a, 1, 1) @ w2c'`` instead of through ``K``:
scaling a point's camera-frame ``x, y`` by ``s`` moves its projection ``f x / z + c`` exactly as
scaling ``f`` does, and the EWA Jacobian ``J(f) @ diag(s, s, 1)`` equals ``J(s f)`` (depths and
camera centres are unchanged), so the render is identical, while the gradient flows through
``viewmats`` on every backend (gsplat's projection has none for ``Ks``).

Coarse to fine (``levels > 1``): the steps are split evenly over image pyramid levels, coarsest
first; a level compares ``2^l x 2^l`` box-filtered render and photo, which widens the basin for a
misalignment of a few pixels.

:class:`PoseRound` is what one round did (per-camera rotation / centre change, focal factor,
loss before and after), JSON-ready for ``registration.json``. A round that does not lower the
full-resolution L1 keeps the cameras (``accepted: false``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.geometry.cameras import camera_centres
from recon.poses.refine import PoseRefineConfig
from recon.splat.model import GaussianModel
from recon.splat.render import rasterize_views

logger = logging.getLogger(__name__)

__all__ = ["PoseRound", "focal_scaled_viewmats", "register_to_model"]


@dataclass
class PoseRound:
    """One photometric registration of a set of cameras against a frozen model."""

    step: int
    """Training step after which it ran (0 outside a fit)."""
    rot_deg: list[float]
    """Per camera: angle of the rotation change, degrees."""
    centre_shift: list[float]
    """Per camera: distance the camera centre moved, in units of the cameras' spread (mean
    distance of the centres from their centroid)."""
    focal_scale: float
    """Factor the shared focal length was multiplied by (1.0 when not refined)."""
    l1_before: float
    """Mean L1 of the renders at the starting cameras (full resolution)."""
    l1_after: float
    """Mean L1 at the registered cameras (full resolution)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "step": self.step,
            "rot_deg": [round(v, 5) for v in self.rot_deg],
            "centre_shift": [round(v, 6) for v in self.centre_shift],
            "focal_scale": round(self.focal_scale, 7),
            "l1_before": round(self.l1_before, 6),
            "l1_after": round(self.l1_after, 6),
        }
        out.update(self.extra)
        return out


def focal_scaled_viewmats(
    w2c: Tensor,  # [C, 4, 4]
    log_focal: Tensor,  # [] (scalar)
) -> Tensor:  # [C, 4, 4]
    """``diag(e^a, e^a, 1, 1) @ w2c``: rendered with the unchanged ``K``, the image of a camera whose
    ``fx`` and ``fy`` are multiplied by ``e^a`` (module docstring). Differentiable in both.

    Args:
        w2c: Tensor [C, 4, 4], OpenCV world-to-camera.
        log_focal: scalar Tensor, ``a``.

    Returns:
        Tensor [C, 4, 4].
    """
    if w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
        raise ValueError(f"w2c must be a Tensor [C, 4, 4], got {tuple(w2c.shape)}")
    if log_focal.numel() != 1:
        raise ValueError(f"log_focal must be a scalar Tensor, got shape {tuple(log_focal.shape)}")
    s = torch.exp(log_focal.reshape(())).to(w2c.dtype)
    one = torch.ones((), dtype=w2c.dtype, device=w2c.device)
    scale = torch.stack([s, s, one, one])  # [4]
    return scale[None, :, None] * w2c


def _pool(img: Tensor, level: int) -> Tensor:  # [C, H, W, 3] -> [C, H / 2^l, W / 2^l, 3]
    if level == 0:
        return img
    k = 2**level
    return F.avg_pool2d(img.permute(0, 3, 1, 2), k, k, ceil_mode=True).permute(0, 2, 3, 1)


def _rotation_angle_deg(rot: Tensor) -> Tensor:  # [C, 3, 3] -> [C]
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def register_to_model(
    model: GaussianModel,
    w2c: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    images: Tensor,  # [C, H, W, 3]
    background: Tensor,  # [3]
    *,
    steps: int = 40,
    lr: float = 3e-3,
    focal: bool = True,
    focal_lr: float = 2e-3,
    levels: int = 1,
    sh_degree: int | None = None,
    step: int = 0,
) -> tuple[Tensor, float, PoseRound]:  # [C, 4, 4], focal factor, record
    """Register cameras (and their shared focal length) to a frozen model by photometric L1.

    Every step renders all ``C`` cameras; Adam moves each camera's twist (lr ``lr``, decaying 10x
    over the steps) and the shared log-focal (``focal_lr``, same decay).

    Args:
        model: the Gaussians (not modified; no gradient reaches them).
        w2c: Tensor [C, 4, 4], starting OpenCV world-to-camera poses.
        Ks: Tensor [C, 3, 3], intrinsics at the images' resolution.
        images: Tensor [C, H, W, 3] in [0, 1], the photos.
        background: Tensor [3].
        steps: Adam steps (>= 1), split over the pyramid levels.
        lr: initial learning rate of the pose twists.
        focal: also fit the shared focal factor.
        focal_lr: initial learning rate of the log-focal.
        levels: pyramid levels, coarsest (``2^(levels-1)`` x downsampled) first; 1 = full
            resolution only.
        sh_degree: SH degree to render with (default: the model's).
        step: the training step, stored in the record.

    Returns:
        ``(w2c [C, 4, 4] registered, focal factor, PoseRound)``; the new intrinsics are ``Ks``
        with ``fx, fy`` times the factor.

    Raises:
        ValueError: shapes that do not match, ``steps < 1``, ``levels < 1``, non-positive rates.
    """
    c = w2c.shape[0] if w2c.ndim == 3 else -1
    if w2c.ndim != 3 or w2c.shape[-2:] != (4, 4) or c < 1:
        raise ValueError(f"w2c must be a Tensor [C, 4, 4] with C >= 1, got {tuple(w2c.shape)}")
    if Ks.shape != (c, 3, 3):
        raise ValueError(f"Ks must be [C={c}, 3, 3], got {tuple(Ks.shape)}")
    if images.ndim != 4 or images.shape[0] != c or images.shape[-1] != 3:
        raise ValueError(f"images must be [C={c}, H, W, 3], got {tuple(images.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    if not (lr > 0 and focal_lr > 0):
        raise ValueError(f"lr and focal_lr must be > 0, got {lr!r}, {focal_lr!r}")
    h, w = int(images.shape[1]), int(images.shape[2])
    device = model.params["means"].device
    deg = model.sh_degree if sh_degree is None else int(sh_degree)
    with torch.no_grad():
        act = {k: v.detach() for k, v in model.activated(deg).items()}
    start = w2c.detach().to(device=device, dtype=torch.float32)
    Ks = Ks.detach().to(device=device, dtype=torch.float32)
    gt = images.detach().to(device=device, dtype=torch.float32)
    refiner = PoseRefineConfig(lr=lr, lr_final=lr / 10, weight_decay=0.0).setup(c).to(device)
    log_focal = torch.zeros((), device=device, requires_grad=True)
    groups = refiner.param_groups()
    if focal:
        groups.append({"name": "log_focal", "params": [log_focal], "lr": focal_lr, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, eps=1e-15)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / steps))
    idx = list(range(c))

    def render(viewmats: Tensor) -> Tensor:
        out, _, _ = rasterize_views(act, viewmats, Ks, w, h, deg, background)
        return out[..., :3]

    with torch.no_grad():
        l1_before = float((render(start) - gt).abs().mean())
    per_level = [steps // levels + (1 if i < steps % levels else 0) for i in range(levels)]
    for level, n in zip(range(levels - 1, -1, -1), per_level):
        target = _pool(gt, level)
        for _ in range(n):
            pred = render(focal_scaled_viewmats(refiner.apply(start, idx), log_focal))
            loss = (_pool(pred, level) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        new = refiner.apply(start, idx).detach()
        scale = float(torch.exp(log_focal.detach()))
        new_Ks = Ks.clone()
        new_Ks[:, 0, 0] *= scale
        new_Ks[:, 1, 1] *= scale
        out, _, _ = rasterize_views(act, new, new_Ks, w, h, deg, background)
        l1_after = float((out[..., :3] - gt).abs().mean())
        rot = _rotation_angle_deg(new[:, :3, :3] @ start[:, :3, :3].transpose(1, 2))
        c0, c1 = camera_centres(start.double()), camera_centres(new.double())
        spread = float((c0 - c0.mean(0)).norm(dim=-1).mean()) if c > 1 else 0.0
        shift = (c1 - c0).norm(dim=-1) / (spread if spread > 0 else 1.0)
    if not l1_after < l1_before:  # no better at full resolution: keep the cameras as they were
        logger.info("pose round at step %d: L1 %.5f -> %.5f, cameras kept", step, l1_before, l1_after)
        rejected = {"accepted": False, "l1_rejected": l1_after, "rot_deg_rejected": [round(v, 5) for v in rot.tolist()],
                    "focal_scale_rejected": round(scale, 7)}  # fmt: skip
        record = PoseRound(step, [0.0] * c, [0.0] * c, 1.0, l1_before, l1_before, rejected)
        return w2c.detach().clone(), 1.0, record
    record = PoseRound(step, rot.tolist(), shift.tolist(), scale, l1_before, l1_after, {"accepted": True})
    logger.info("pose round at step %d: rotation change median %.3f deg, focal x%.4f, L1 %.4f -> %.4f",
                step, float(rot.median()), scale, l1_before, l1_after)  # fmt: skip
    return new.to(dtype=w2c.dtype, device=w2c.device), scale, record
