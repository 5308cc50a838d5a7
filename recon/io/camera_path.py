"""nerfstudio camera-path JSON (what the nerfstudio viewer exports and ``ns-render camera-path``
reads): read and written.

Layout (fields recon uses; others, such as ``keyframes``, are ignored on reading)::

    {"camera_type": "perspective", "render_width": W, "render_height": H, "fps": 30, "seconds": 4,
     "camera_path": [{"camera_to_world": [16 numbers, row-major 4x4, OpenGL axes],
                      "fov": vertical field of view in degrees, "aspect": W / H}, ...]}

As in nerfstudio (``get_path_from_json``): ``fx = fy = H / (2 tan(fov / 2))`` and the principal
point is the image centre. Poses are in the run's world frame (the frame of ``cameras.json``
and ``splat.ply``); a path drawn in nerfstudio's viewer on a nerfstudio run is in that run's
dataparser frame instead. Only perspective paths are read.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from recon.errors import InputError
from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    check_pose,
    opengl_c2w_to_w2c,
    w2c_to_opengl_c2w,
)
from recon.io.atomic import atomic_write_json
from recon.io.json_file import read_json

__all__ = ["read_camera_path", "write_camera_path"]

_EXPECTED = "expected a nerfstudio camera path: render_width, render_height and camera_path [{camera_to_world, fov}]"


def read_camera_path(path: str | Path) -> tuple[CameraSet, float]:
    """Read a camera-path JSON -> (cameras in the internal convention, frames per second)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, f"not a JSON object ({_EXPECTED})")
    kind = data.get("camera_type", "perspective")
    if kind != "perspective":
        raise InputError(path, f"camera_type {kind!r} is not supported (expected 'perspective')")
    try:
        width, height = int(data["render_width"]), int(data["render_height"])
        frames = data["camera_path"]
        fps = float(data.get("fps", 30))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"{type(err).__name__}: {err} ({_EXPECTED})") from None
    if width < 1 or height < 1:
        raise InputError(path, f"render size {width}x{height} (expected positive integers)")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, f"camera_path is empty or not a list ({_EXPECTED})")
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(path, f"fps {fps} (expected a positive number)")
    c2w, intr = [], []
    for i, frame in enumerate(frames):
        where = f"{path} camera_path[{i}]"
        try:
            mat = torch.tensor(frame["camera_to_world"], dtype=torch.float64).reshape(4, 4)
            fov = float(frame["fov"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(where, f"{type(err).__name__}: {err} (expected camera_to_world: 16 numbers and fov in degrees)") from None
        if not 0.0 < fov < 180.0:
            raise InputError(where, f"fov {fov} (expected degrees in (0, 180))")
        check_pose(mat, where)
        focal = height / (2.0 * math.tan(math.radians(fov) / 2.0))
        c2w.append(mat)
        intr.append(Intrinsics(focal, focal, width / 2.0, height / 2.0, width, height))
    return CameraSet(opengl_c2w_to_w2c(torch.stack(c2w)).float(), intr), fps


def write_camera_path(path: str | Path, cameras: CameraSet, fps: float = 30.0) -> Path:
    """Write ``cameras`` as a camera-path JSON (atomically). The format keeps one vertical field
    of view per camera and a centred principal point: ``fx`` and ``cx``, ``cy`` are not kept."""
    if len(cameras) == 0:
        raise ValueError("cameras: expected at least one camera")
    if fps <= 0:
        raise ValueError(f"fps: expected > 0, given {fps}")
    first = cameras.intrinsics[0]
    c2w = w2c_to_opengl_c2w(cameras.w2c.double())
    frames = []
    for i, k in enumerate(cameras.intrinsics):
        if (k.width, k.height) != (first.width, first.height):
            raise ValueError(f"cameras: every camera needs the size {first.width}x{first.height}, camera {i} is {k.width}x{k.height}")
        frames.append({
            "camera_to_world": [round(float(v), 10) for v in c2w[i].reshape(-1).tolist()],
            "fov": math.degrees(2.0 * math.atan(k.height / (2.0 * k.fy))),
            "aspect": k.width / k.height,
        })  # fmt: skip
    return atomic_write_json(Path(path), {
        "camera_type": "perspective", "render_width": first.width, "render_height": first.height,
        "fps": fps, "seconds": len(frames) / fps, "camera_path": frames,
    })  # fmt: skip
