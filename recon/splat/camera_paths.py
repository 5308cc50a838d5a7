"""Camera paths around a capture, for videos (``recon render``) and for the ring of extra views
that mesh fusion renders (:mod:`recon.splat.mesh`).

Every path is built from the capture's cameras and returns a :class:`CameraSet` (OpenCV
world-to-camera, the first camera's intrinsics):

- :func:`orbit_path`: a circle at the cameras' mean height above the scene centre, at their
  mean horizontal distance, looking at the centre;
- :func:`spiral_path`: the same circle, several turns, its height swinging over the cameras'
  height range;
- :func:`interpolated_path`: through the cameras themselves, ordered by azimuth around the
  scene's up axis; rotations slerped, centres on a Catmull-Rom spline (a closed loop).

The scene frame (:func:`scene_frame`) is the point closest to all optical axes
(:func:`recon.splat.points.look_at_centre`) and the cameras' mean up direction (OpenCV y points
down, so up is minus the mean of the cameras' y axes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet, Intrinsics, rigid_inverse
from recon.splat.points import look_at_centre
from recon.splat.regularizers import slerp_rotation

__all__ = ["PATHS", "interpolated_path", "look_at", "orbit_path", "path_by_name", "scene_frame", "spiral_path"]

PATHS = ("orbit", "spiral", "interp")
"""Names :func:`path_by_name` knows."""


def _check_cameras(cameras: CameraSet, n_frames: int, least: int = 1) -> None:
    if not isinstance(cameras, CameraSet):
        raise ValueError(f"cameras: expected a CameraSet, given {type(cameras).__name__}")  # noqa: TRY004
    if len(cameras) < least:
        raise ValueError(f"cameras: expected at least {least}, given {len(cameras)}")
    if n_frames < 1:
        raise ValueError(f"n_frames: expected >= 1, given {n_frames}")


def scene_frame(cameras: CameraSet) -> tuple[Tensor, Tensor]:
    """``(centre [3], up [3])`` of the scene the cameras look at, float64 (see the module docstring)."""
    c2w = rigid_inverse(cameras.w2c.double())
    centre = look_at_centre(cameras.w2c).double()
    up = -c2w[:, :3, 1].mean(0)
    norm = up.norm()
    up = up / norm if norm > 1e-6 else torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return centre, up


def look_at(
    eyes: Tensor,  # [N, 3]
    target: Tensor,  # [3] or [N, 3]
    up: Tensor,  # [3]
) -> Tensor:  # [N, 4, 4]
    """OpenCV world-to-camera matrices ``[N, 4, 4]`` of cameras at ``eyes`` looking at ``target``
    with ``up`` pointing up in the image (image y runs along ``-up``)."""
    if not isinstance(eyes, Tensor) or eyes.ndim != 2 or eyes.shape[1] != 3:
        raise ValueError(f"eyes: expected shape [N, 3], given {getattr(eyes, 'shape', eyes)}")
    eyes = eyes.double()
    z = target.double().expand_as(eyes) - eyes
    z = z / z.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    down = -up.double().expand_as(eyes)
    x = torch.linalg.cross(down, z)
    bad = x.norm(dim=-1) < 1e-9  # looking straight along up: any right vector will do
    if bad.any():
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand_as(eyes)
        x = torch.where(bad[:, None], torch.linalg.cross(alt, z), x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c2w = torch.zeros(len(eyes), 4, 4, dtype=torch.float64)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eyes
    c2w[:, 3, 3] = 1.0
    return rigid_inverse(c2w)


def _ring_basis(cameras: CameraSet) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """centre, up, in-plane axes e1 (towards the first camera) and e2, per-camera heights and radii."""
    centre, up = scene_frame(cameras)
    d = cameras.centres().double() - centre
    heights = d @ up
    flat = d - heights[:, None] * up
    radii = flat.norm(dim=-1)
    e1 = flat[int(radii.argmax())] if float(radii[0]) < 1e-9 else flat[0]
    if float(e1.norm()) < 1e-9:  # every camera on the axis: pick any horizontal direction
        e1 = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        if float(e1.norm()) < 1e-9:
            e1 = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    return centre, up, e1, e2, heights, radii


def _cameras(w2c: Tensor, intrinsics: Intrinsics) -> CameraSet:
    return CameraSet(w2c.float(), [intrinsics] * len(w2c))


def orbit_path(
    cameras: CameraSet,
    n_frames: int = 120,
    *,
    radius_scale: float = 1.0,
    height: float | None = None,
    intrinsics: Intrinsics | None = None,
) -> CameraSet:
    """``n_frames`` cameras on a circle around the scene centre at the cameras' mean height
    (or ``height`` along the up axis) and ``radius_scale`` times their mean horizontal distance,
    starting at the first camera's azimuth and turning counter-clockwise seen from above."""
    _check_cameras(cameras, n_frames)
    centre, up, e1, e2, heights, radii = _ring_basis(cameras)
    h = float(heights.mean()) if height is None else float(height)
    r = float(radii.mean()) * radius_scale
    theta = torch.arange(n_frames, dtype=torch.float64) * (2.0 * math.pi / n_frames)
    eyes = centre + h * up + r * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)
    return _cameras(look_at(eyes, centre, up), intrinsics or cameras.intrinsics[0])


def spiral_path(
    cameras: CameraSet,
    n_frames: int = 120,
    *,
    turns: float = 2.0,
    intrinsics: Intrinsics | None = None,
) -> CameraSet:
    """``turns`` turns around the scene centre at the cameras' mean horizontal distance, the
    height swinging once (a sine) over the cameras' height range (at least +-15 % of the radius)."""
    _check_cameras(cameras, n_frames)
    centre, up, e1, e2, heights, radii = _ring_basis(cameras)
    r = float(radii.mean())
    h0 = float(heights.mean())
    amp = max(float(heights.max()) - h0, h0 - float(heights.min()), 0.15 * r)
    t = torch.arange(n_frames, dtype=torch.float64) / n_frames
    theta = 2.0 * math.pi * turns * t
    h = h0 + amp * torch.sin(2.0 * math.pi * t)
    eyes = centre + h[:, None] * up + r * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)
    return _cameras(look_at(eyes, centre, up), intrinsics or cameras.intrinsics[0])


def _catmull_rom(p0: Tensor, p1: Tensor, p2: Tensor, p3: Tensor, t: Tensor) -> Tensor:
    """Uniform Catmull-Rom between ``p1`` (t = 0) and ``p2`` (t = 1); points [..., 3], t [...]."""
    t = t[..., None]
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)


def interpolated_path(
    cameras: CameraSet,
    n_frames: int = 120,
    *,
    intrinsics: Intrinsics | None = None,
) -> CameraSet:
    """``n_frames`` cameras on a closed loop through every camera of ``cameras``, visited in
    order of azimuth around the scene's up axis: rotations slerped between neighbours, centres
    on a uniform Catmull-Rom spline. Frame ``k * n_frames / V`` is the k-th camera (when that is
    a whole number)."""
    _check_cameras(cameras, n_frames, least=2)
    centre, _up, e1, e2, _h, _r = _ring_basis(cameras)
    d = cameras.centres().double() - centre
    azimuth = torch.atan2(d @ e2, d @ e1)
    order = torch.argsort(azimuth)
    w2c = cameras.w2c.double()[order]
    c2w = rigid_inverse(w2c)
    pos = c2w[:, :3, 3]
    v = len(order)
    s = torch.arange(n_frames, dtype=torch.float64) * (v / n_frames)
    i = torch.floor(s).long() % v
    t = s - torch.floor(s)
    p = _catmull_rom(pos[(i - 1) % v], pos[i], pos[(i + 1) % v], pos[(i + 2) % v], t)
    rot = slerp_rotation(c2w[i, :3, :3], c2w[(i + 1) % v, :3, :3], t)
    out = torch.zeros(n_frames, 4, 4, dtype=torch.float64)
    out[:, :3, :3], out[:, :3, 3], out[:, 3, 3] = rot, p, 1.0
    return _cameras(rigid_inverse(out), intrinsics or cameras.intrinsics[int(order[0])])


def path_by_name(name: str, cameras: CameraSet, n_frames: int, intrinsics: Intrinsics | None = None) -> CameraSet:
    """The path called ``name`` (one of :data:`PATHS`)."""
    makers = {"orbit": orbit_path, "spiral": spiral_path, "interp": interpolated_path}
    if name not in makers:
        raise ValueError(f"name: expected one of {', '.join(PATHS)}, given {name!r}")
    return makers[name](cameras, n_frames, intrinsics=intrinsics)
