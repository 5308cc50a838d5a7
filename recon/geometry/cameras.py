"""Cameras in one internal convention, with converters for the conventions found in the wild.

Inside ``recon`` every camera is

* **OpenCV axes**: x right, y down, z forward (the camera looks down +z);
* a **world-to-camera** 4x4 rigid transform (``w2c``, a.k.a. ``viewmat``, what gsplat's
  ``viewmats`` take): ``x_cam = w2c @ x_world``;
* a pinhole :class:`Intrinsics` in pixels, with optional OpenCV radial-tangential distortion.

Everything else is converted at the I/O boundary:

=================  ==================================================  ===========================
convention         axes (camera frame)                                 matrix stored
=================  ==================================================  ===========================
OpenGL/NeRF/       x right, y up, z back (looks down -z)               camera-to-world (c2w)
Blender/nerfstudio
COLMAP             x right, y down, z forward (same as OpenCV)         world-to-camera, qvec wxyz
LLFF               x down, y right, z back (``poses_bounds.npy``)      camera-to-world 3x5 + hwf
=================  ==================================================  ===========================

Principal points are used as stored (nerfstudio's convention); no half-pixel shift is applied.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from recon.checks import check_shape
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "Intrinsics",
    "CameraSet",
    "rigid_inverse",
    "opengl_c2w_to_w2c",
    "w2c_to_opengl_c2w",
    "colmap_to_w2c",
    "w2c_to_colmap",
    "quaternion_to_rotation",
    "rotation_to_quaternion",
    "llff_poses_to_opengl_c2w",
    "camera_centres",
    "check_pose",
]

# Right-multiplying a c2w by diag(1, -1, -1, 1) flips the camera's y and z axes:
# OpenGL (x right, y up, z back) <-> OpenCV (x right, y down, z forward). It is its own inverse.
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Intrinsics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one image, in pixels, with OpenCV radial-tangential distortion.

    Distortion follows OpenCV's model (``cv2.undistort``): radial ``k1, k2, k3`` and tangential
    ``p1, p2`` applied to normalised camera coordinates, so it does not change when the image is
    resized.
    """

    fx: float
    """Focal length along x, pixels."""
    fy: float
    """Focal length along y, pixels."""
    cx: float
    """Principal point x, pixels (used as stored; no half-pixel shift)."""
    cy: float
    """Principal point y, pixels."""
    width: int
    """Image width, pixels."""
    height: int
    """Image height, pixels."""
    k1: float = 0.0
    """First radial distortion coefficient."""
    k2: float = 0.0
    """Second radial distortion coefficient."""
    k3: float = 0.0
    """Third radial distortion coefficient."""
    p1: float = 0.0
    """First tangential distortion coefficient."""
    p2: float = 0.0
    """Second tangential distortion coefficient."""

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not float(value).is_integer() or value < 1:
                raise ValueError(f"Intrinsics.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"Intrinsics.{name} must be finite, got {value!r}")
            object.__setattr__(self, name, value)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    def K(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The 3x3 calibration matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

        Returns:
            Tensor [3, 3] of ``dtype``.
        """
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=dtype
        )

    def scaled(self, downscale: float) -> Intrinsics:
        """Intrinsics of the same camera for the image downsampled by ``downscale``.

        New size is ``int(round(width / downscale))`` x ``int(round(height / downscale))``;
        ``fx, cx`` are scaled by ``new_width / width`` and ``fy, cy`` by ``new_height / height``
        (nerfstudio's convention). Distortion coefficients are unchanged.
        """
        try:
            ok = not isinstance(downscale, bool) and math.isfinite(downscale) and downscale > 0
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"downscale must be a positive finite number, got {downscale!r}")
        downscale = float(downscale)
        if downscale == 1:
            return self
        new_w = int(round(self.width / downscale))
        new_h = int(round(self.height / downscale))
        if new_w < 1 or new_h < 1:
            raise ValueError(
                f"downscale {downscale} leaves no pixels of a {self.width}x{self.height} image"
            )
        sx, sy = new_w / self.width, new_h / self.height
        return Intrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=new_w,
            height=new_h,
            k1=self.k1,
            k2=self.k2,
            k3=self.k3,
            p1=self.p1,
            p2=self.p2,
        )

    @property
    def has_distortion(self) -> bool:
        """Whether any distortion coefficient is non-zero."""
        return any(c != 0.0 for c in (self.k1, self.k2, self.k3, self.p1, self.p2))

    def distortion_coeffs(self) -> np.ndarray:
        """Distortion in OpenCV's order ``(k1, k2, p1, p2, k3)``, float64 [5]."""
        return np.array([self.k1, self.k2, self.p1, self.p2, self.k3], dtype=np.float64)

    def without_distortion(self) -> Intrinsics:
        """The same pinhole camera with all distortion coefficients set to zero."""
        return Intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)


# --------------------------------------------------------------------------------------------
# Converters (batched over leading dims, dtype-preserving, differentiable)
# --------------------------------------------------------------------------------------------


def _check_mat44(name: str, mat: Tensor) -> None:
    check_shape(name, mat, (..., 4, 4), floating=True)


def _bottom_row_like(mat: Tensor) -> Tensor:
    row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=mat.dtype, device=mat.device)
    return row.expand(*mat.shape[:-2], 1, 4)


def _from_rt(rot: Tensor, trans: Tensor) -> Tensor:
    """[..., 3, 3] rotation and [..., 3] translation -> [..., 4, 4]."""
    top = torch.cat([rot, trans[..., None]], dim=-1)
    return torch.cat([top, _bottom_row_like(top)], dim=-2)


def rigid_inverse(mat: Tensor) -> Tensor:  # mat: [..., 4, 4]
    """Inverse of rigid transforms ``[R | t]``: ``[R^T | -R^T t]``.

    Args:
        mat: Tensor [..., 4, 4] with orthonormal rotation blocks (not checked).

    Returns:
        Tensor [..., 4, 4], same dtype and device.
    """
    _check_mat44("mat", mat)
    rot_t = mat[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ mat[..., :3, 3:4])[..., 0]
    return _from_rt(rot_t, trans)


def opengl_c2w_to_w2c(c2w: Tensor) -> Tensor:  # c2w: [..., 4, 4]
    """NeRF/OpenGL/Blender camera-to-world -> OpenCV world-to-camera.

    Flips the camera's y and z axes (y up -> down, z back -> forward), then inverts.

    Args:
        c2w: Tensor [..., 4, 4], OpenGL camera-to-world (camera looks down its -z).

    Returns:
        Tensor [..., 4, 4], OpenCV world-to-camera (camera looks down its +z).
    """
    _check_mat44("c2w", c2w)
    flip = torch.tensor(_FLIP_YZ, dtype=c2w.dtype, device=c2w.device)
    return rigid_inverse(c2w * flip)


def w2c_to_opengl_c2w(w2c: Tensor) -> Tensor:  # w2c: [..., 4, 4]
    """OpenCV world-to-camera -> NeRF/OpenGL camera-to-world (inverse of
    :func:`opengl_c2w_to_w2c`).

    Args:
        w2c: Tensor [..., 4, 4], OpenCV world-to-camera.

    Returns:
        Tensor [..., 4, 4], OpenGL camera-to-world.
    """
    _check_mat44("w2c", w2c)
    flip = torch.tensor(_FLIP_YZ, dtype=w2c.dtype, device=w2c.device)
    return rigid_inverse(w2c) * flip


def quaternion_to_rotation(qvec: Tensor) -> Tensor:  # qvec: [..., 4] (w, x, y, z)
    """Unit quaternion (Hamilton, scalar first, as COLMAP stores it) -> rotation matrix.

    The quaternion is normalised first.

    Args:
        qvec: Tensor [..., 4] ``(w, x, y, z)``.

    Returns:
        Tensor [..., 3, 3].
    """
    if not isinstance(qvec, Tensor) or qvec.ndim < 1 or qvec.shape[-1] != 4:
        raise ValueError(f"qvec must be a Tensor [..., 4], got {getattr(qvec, 'shape', qvec)}")
    q = qvec / qvec.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def rotation_to_quaternion(rot: Tensor) -> Tensor:  # rot: [..., 3, 3]
    """Rotation matrix -> unit quaternion ``(w, x, y, z)`` with ``w >= 0``.

    Numerically stable for every rotation (picks the best-conditioned of the four candidate
    formulas, branch-free; after pytorch3d's ``matrix_to_quaternion``).

    Args:
        rot: Tensor [..., 3, 3].

    Returns:
        Tensor [..., 4].
    """
    if not isinstance(rot, Tensor) or rot.ndim < 2 or rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must be a Tensor [..., 3, 3], got {getattr(rot, 'shape', rot)}")
    m = rot.reshape(*rot.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [
                    1.0 + m00 + m11 + m22,
                    1.0 + m00 - m11 - m22,
                    1.0 - m00 + m11 - m22,
                    1.0 - m00 - m11 + m22,
                ],
                dim=-1,
            ),
            min=0.0,
        )
    )
    cand = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    cand = cand / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(dim=-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cand, -2, idx)[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def colmap_to_w2c(qvec: Tensor, tvec: Tensor) -> Tensor:
    """COLMAP pose (``images.txt``: ``QW QX QY QZ TX TY TZ``, world-to-camera) -> w2c 4x4.

    COLMAP's camera axes are OpenCV's, so this only assembles the matrix.

    Args:
        qvec: Tensor [..., 4], quaternion ``(w, x, y, z)`` of the world-to-camera rotation.
        tvec: Tensor [..., 3], world-to-camera translation.

    Returns:
        Tensor [..., 4, 4], dtype of ``qvec``.
    """
    if not isinstance(tvec, Tensor) or tvec.ndim < 1 or tvec.shape[-1] != 3:
        raise ValueError(f"tvec must be a Tensor [..., 3], got {getattr(tvec, 'shape', tvec)}")
    rot = quaternion_to_rotation(qvec)
    if qvec.shape[:-1] != tvec.shape[:-1]:
        raise ValueError(
            f"qvec {tuple(qvec.shape)} and tvec {tuple(tvec.shape)} have different batch dims"
        )
    return _from_rt(rot, tvec.to(rot.dtype))


def w2c_to_colmap(w2c: Tensor) -> tuple[Tensor, Tensor]:  # w2c: [..., 4, 4]
    """OpenCV world-to-camera 4x4 -> COLMAP ``(qvec, tvec)``.

    Args:
        w2c: Tensor [..., 4, 4].

    Returns:
        ``qvec`` Tensor [..., 4] ``(w, x, y, z)`` with ``w >= 0``, and ``tvec`` Tensor [..., 3].
    """
    _check_mat44("w2c", w2c)
    return rotation_to_quaternion(w2c[..., :3, :3]), w2c[..., :3, 3]


def llff_poses_to_opengl_c2w(poses: Tensor) -> tuple[Tensor, Tensor]:  # poses: [..., 3, 5]
    """LLFF ``poses_bounds.npy`` poses -> OpenGL camera-to-world and ``(h, w, f)``.

    LLFF stores a 3x5 matrix per image: columns ``[down, right, back]`` (camera axes in world
    coordinates), the camera centre, and ``(height, width, focal)``. OpenGL's columns are
    ``[right, up, back] = [right, -down, back]``.

    Args:
        poses: Tensor [..., 3, 5] (``poses_bounds[:, :15].reshape(-1, 3, 5)``).

    Returns:
        ``c2w`` Tensor [..., 4, 4] (OpenGL) and ``hwf`` Tensor [..., 3].
    """
    if not isinstance(poses, Tensor) or poses.ndim < 2 or poses.shape[-2:] != (3, 5):
        raise ValueError(
            f"poses must be a Tensor [..., 3, 5], got {getattr(poses, 'shape', poses)}"
        )
    if not poses.is_floating_point():
        raise ValueError(f"poses must be a floating-point tensor, got {poses.dtype}")
    down, right, back, centre, hwf = poses.unbind(-1)
    rot = torch.stack([right, -down, back], dim=-1)
    return _from_rt(rot, centre), hwf


def camera_centres(w2c: Tensor) -> Tensor:  # w2c: [..., 4, 4]
    """Camera centres in world coordinates, ``-R^T t``.

    Args:
        w2c: Tensor [..., 4, 4].

    Returns:
        Tensor [..., 3].
    """
    _check_mat44("w2c", w2c)
    rot = w2c[..., :3, :3]
    return -(rot.transpose(-1, -2) @ w2c[..., :3, 3:4])[..., 0]


def check_pose(pose: Tensor | np.ndarray, where: str, tol: float = 1e-3) -> None:  # pose: [4, 4]
    """Raise :class:`~recon.errors.InputError` unless ``pose`` is a proper rigid 4x4 transform.

    Works for world-to-camera and camera-to-world alike. Checks: shape 4x4, finite values,
    last row ``[0, 0, 0, 1]``, ``max |R^T R - I| < tol`` and ``det R > 0``.

    Args:
        pose: Tensor or array [4, 4].
        where: the file (and frame) the pose came from, for the message.
        tol: tolerance on orthonormality and on the last row.
    """
    arr = pose.detach().cpu().double().numpy() if isinstance(pose, Tensor) else np.asarray(pose)
    if arr.shape != (4, 4):
        raise InputError(where, f"pose has shape {tuple(arr.shape)} (expected 4x4)")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(where, "pose is not numeric (expected a 4x4 matrix of numbers)") from None
    if not np.isfinite(arr).all():
        raise InputError(where, "pose contains NaN or infinite values")
    last = arr[3]
    if np.abs(last - np.array([0.0, 0.0, 0.0, 1.0])).max() > tol:
        raise InputError(where, f"pose last row is {last.tolist()} (expected [0, 0, 0, 1])")
    rot = arr[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > tol:
        raise InputError(
            where,
            f"pose rotation is not orthonormal (max |R^T R - I| = {err:.3g}, expected < {tol:g})",
        )
    det = float(np.linalg.det(rot))
    if det <= 0:
        raise InputError(
            where, f"pose rotation has determinant {det:.3f} (a reflection; expected +1)"
        )


# --------------------------------------------------------------------------------------------
# CameraSet
# --------------------------------------------------------------------------------------------


@dataclass
class CameraSet:
    """N cameras in the internal convention (OpenCV world-to-camera) with their intrinsics."""

    w2c: Tensor  # [N, 4, 4]
    """World-to-camera transforms, OpenCV axes, float32 [N, 4, 4] (cast on construction)."""
    intrinsics: list[Intrinsics] = field(default_factory=list)
    """Per-camera intrinsics, ``len == N``."""

    def __post_init__(self) -> None:
        if not isinstance(self.w2c, Tensor):
            raise ValueError(
                f"CameraSet.w2c must be a torch.Tensor [N, 4, 4], got {type(self.w2c).__name__}"
            )
        if self.w2c.ndim != 3 or self.w2c.shape[-2:] != (4, 4):
            raise ValueError(
                f"CameraSet.w2c must have shape [N, 4, 4], got {tuple(self.w2c.shape)}"
            )
        if not self.w2c.is_floating_point():
            raise ValueError(f"CameraSet.w2c must be floating point, got {self.w2c.dtype}")
        self.w2c = self.w2c.to(torch.float32)
        self.intrinsics = list(self.intrinsics)
        if len(self.intrinsics) != self.w2c.shape[0]:
            raise ValueError(
                f"CameraSet has {self.w2c.shape[0]} poses but {len(self.intrinsics)} intrinsics"
            )
        for i, intr in enumerate(self.intrinsics):
            if not isinstance(intr, Intrinsics):
                raise ValueError(
                    f"CameraSet.intrinsics[{i}] is {type(intr).__name__}, expected Intrinsics"
                )

    def __len__(self) -> int:
        return self.w2c.shape[0]

    @property
    def device(self) -> torch.device:
        """Device of :attr:`w2c`."""
        return self.w2c.device

    def to(self, device: torch.device | str) -> CameraSet:
        """The same cameras with :attr:`w2c` on ``device``."""
        return CameraSet(self.w2c.to(device), list(self.intrinsics))

    def subset(self, indices: Sequence[int]) -> CameraSet:
        """The cameras at ``indices`` (in that order; repeats allowed)."""
        idx = as_index_list(indices, len(self))
        return CameraSet(self.w2c[idx], [self.intrinsics[i] for i in idx])

    def Ks(self, downscale: float = 1.0) -> Tensor:
        """Calibration matrices at the given downscale, float32 [N, 3, 3] on :attr:`device`."""
        if len(self) == 0:
            return torch.zeros(0, 3, 3, device=self.device)
        return torch.stack([i.scaled(downscale).K() for i in self.intrinsics]).to(self.device)

    def scaled(self, downscale: float) -> CameraSet:
        """The same cameras with intrinsics for images downsampled by ``downscale``."""
        return CameraSet(self.w2c, [i.scaled(downscale) for i in self.intrinsics])

    def without_distortion(self) -> CameraSet:
        """The same cameras with distortion removed (images must be undistorted to match)."""
        return CameraSet(self.w2c, [i.without_distortion() for i in self.intrinsics])

    def centres(self) -> Tensor:
        """Camera centres in world coordinates, [N, 3]."""
        return camera_centres(self.w2c)

    def to_opengl_c2w(self) -> Tensor:
        """OpenGL/NeRF camera-to-world matrices, [N, 4, 4]."""
        return w2c_to_opengl_c2w(self.w2c)


def as_index_list(indices: Sequence[int] | Tensor, n: int) -> list[int]:
    if isinstance(indices, Tensor):
        indices = indices.tolist()
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"indices must be integers, got {i!r}")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} cameras")
        out.append(int(i) % n)
    return out
