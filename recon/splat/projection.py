"""Projection of 3D Gaussians to 2D screen-space Gaussians (pinhole, EWA), in plain PyTorch.

Follows gsplat 1.4.0's ``fully_fused_projection`` (non-packed) rules:

* covariance ``Sigma = R S S^T R^T`` from a (not necessarily normalised) wxyz quaternion and
  activated scales;
* world -> camera with an OpenCV world-to-camera ``viewmat``;
* EWA Jacobian of the pinhole projection, evaluated at the mean with ``x/z`` and ``y/z``
  clamped to 1.3x the field of view (``lim = (W - cx) / fx + 0.3 * tan_fovx`` etc.);
* ``eps2d`` added to the diagonal of the 2D covariance; the antialiasing compensation
  ``sqrt(max(0, det(Sigma2d) / det(Sigma2d + eps2d I)))``;
* conic = upper triangle ``(a, b, c)`` of the inverse 2D covariance; the Gaussian's
  exponent is ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``;
* radius = ``ceil(3 sqrt(lambda_max))`` pixels (int; ``radius_sigmas`` replaces the 3, see
  additive compositing), 0 when culled: depth outside
  ``(near_plane, far_plane)``, ``det <= 0``, ``radius <= radius_clip``, or the 3-sigma square
  entirely outside the image.

Everything is differentiable by autograd (the radius is not, as in gsplat). Culled entries
have means2d, depths, conics, compensations set to 0 and receive no gradient; inputs of culled
entries are replaced by safe values before divisions so no NaN leaks into the backward pass.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "quat_to_rotmat",
    "quat_scale_to_covar",
    "world_to_cam",
    "persp_proj",
    "fully_fused_projection",
]


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    """Rotation matrices from wxyz quaternions (normalised here)."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
) -> Tensor:  # [N, 3, 3]
    """World-space covariances ``R diag(s)^2 R^T``."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R @ diag(s)
    return M @ M.transpose(-1, -2)


def world_to_cam(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    viewmats: Tensor,  # [C, 4, 4]
) -> Tuple[Tensor, Tensor]:
    """Means [C, N, 3] and covariances [C, N, 3, 3] in each camera's frame."""
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)
    return means_c, covars_c


def persp_proj(
    means_c: Tensor,  # [C, N, 3], z > 0 (callers make culled z safe)
    covars_c: Tensor,  # [C, N, 3, 3]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
) -> Tuple[Tensor, Tensor]:
    """Pinhole projection: means2d [C, N, 2] (pixels) and EWA 2D covariances [C, N, 2, 2]."""
    x, y, z = means_c.unbind(-1)  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    # Clamp x/z and y/z to 1.3x the field of view for the Jacobian only (as gsplat).
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    rz2 = rz * rz
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx * rz, zero, -fx * tx * rz2, zero, fy * rz, -fy * ty * rz2], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C, N, 2]
    return means2d, cov2d


def fully_fused_projection(
    means: Tensor,  # [N, 3]
    quats: Optional[Tensor],  # [N, 4] (ignored when covars is given)
    scales: Optional[Tensor],  # [N, 3] (ignored when covars is given)
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    covars: Optional[Tensor] = None,  # [N, 3, 3]
    radius_sigmas: float = 3.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Project Gaussians into C pinhole cameras (non-packed layout).

    Args:
        means: world-space centres. [N, 3]
        quats: wxyz quaternions, not necessarily normalised. [N, 4]
        scales: activated scales. [N, 3]
        viewmats: OpenCV world-to-camera matrices. [C, 4, 4]
        Ks: pinhole intrinsics. [C, 3, 3]
        width, height: image size in pixels.
        eps2d: added to the 2D covariance diagonal (low-pass filter).
        near_plane, far_plane: camera-space depth range kept (exclusive of the ends).
        radius_clip: Gaussians whose pixel radius is ``<= radius_clip`` are culled.
        calc_compensations: also return the antialiasing opacity factor.
        covars: optional world-space covariances used instead of quats/scales. [N, 3, 3]
        radius_sigmas: radius in standard deviations of the major axis (gsplat: 3).

    Returns:
        radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3],
        compensations [C, N] or None.

    Raises:
        ValueError: on shapes other than the above.
    """
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means: expected shape [N, 3], given {list(means.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats: expected shape [C, 4, 4], given {list(viewmats.shape)}")
    N, C = means.shape[0], viewmats.shape[0]
    expected = {"Ks": (Ks, (C, 3, 3))}
    if covars is None:
        expected.update(quats=(quats, (N, 4)), scales=(scales, (N, 3)))
    else:
        expected.update(covars=(covars, (N, 3, 3)))
    for name, (x, shape) in expected.items():
        if x is None or tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)}, given {None if x is None else list(x.shape)}")
    if covars is None:
        covars = quat_scale_to_covar(quats, scales)
    means_c, covars_c = world_to_cam(means, covars, viewmats)  # [C, N, 3], [C, N, 3, 3]
    depths = means_c[..., 2]  # [C, N]
    in_range = (depths > near_plane) & (depths < far_plane)  # gsplat culls z<near, z>far

    # Safe depth for culled entries so that 1/z and its gradient stay finite.
    z_safe = torch.where(in_range, depths, torch.ones_like(depths))
    means_c_safe = torch.cat([means_c[..., :2], z_safe[..., None]], dim=-1)
    means2d, cov2d = persp_proj(means_c_safe, covars_c, Ks, width, height)

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a = a + eps2d
    c = c + eps2d
    det = a * c - b * b
    valid = in_range & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    compensations = None
    if calc_compensations:
        ratio = det_orig / det_safe
        pos = valid & (ratio > 0)
        compensations = torch.where(
            pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio)
        )

    with torch.no_grad():
        half_tr = 0.5 * (a + c)
        v1 = half_tr + torch.sqrt(torch.clamp(half_tr * half_tr - det, min=0.01))
        radius = torch.ceil(radius_sigmas * torch.sqrt(torch.clamp(v1, min=0.0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        keep = (
            valid
            & (radius > radius_clip)
            & (mx + radius > 0)
            & (mx - radius < width)
            & (my + radius > 0)
            & (my - radius < height)
        )
        radii = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)

    zeros2 = torch.zeros_like(means2d)
    means2d = torch.where(keep[..., None], means2d, zeros2)
    conics = torch.where(keep[..., None], conics, torch.zeros_like(conics))
    depths = torch.where(keep, depths, torch.zeros_like(depths))
    if compensations is not None:
        compensations = torch.where(keep, compensations, torch.zeros_like(compensations))
    return radii, means2d, depths, conics, compensations
