"""nerfstudio / instant-ngp ``transforms.json`` and Blender ``transforms_{split}.json``: read and write.

* **nerfstudio / instant-ngp** ``transforms.json``: global or per-frame ``fl_x, fl_y, cx, cy,
  w, h, k1, k2, k3, p1, p2`` (or ``camera_angle_x``/``camera_angle_y``), OpenGL camera-to-world
  ``transform_matrix`` per frame, ``file_path`` relative to the json, optional ``mask_path``,
  ``aabb_scale`` (instant-ngp) -> :attr:`Capture.scene_aabb`, optional ``{split}_filenames``,
  optional ``ply_file_path`` (SfM points).
* **Blender** (NeRF synthetic) ``transforms_{train,val,test}.json``: ``camera_angle_x``,
  ``file_path`` without extension; image size read from the PNG. Their alpha channel becomes the
  mask when the images are loaded (:func:`recon.io.views.load_views`).

Poses are converted to OpenCV world-to-camera (:mod:`recon.geometry.cameras`) and validated.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics, check_pose, opengl_c2w_to_w2c, w2c_to_opengl_c2w
from recon.io.atomic import atomic_write_json
from recon.io.capture import IMAGE_EXTENSIONS, SUPPORTED_CAMERA_MODELS, Capture, check_files_exist, unique_names
from recon.io.images import image_size
from recon.io.json_file import read_json
from recon.io.paths import dataset_path

logger = logging.getLogger(__name__)

__all__ = ["load_transforms_json", "write_transforms_json"]

# instant-ngp maps NeRF positions into its unit cube as p_ngp = p[[1, 2, 0]] * scale + offset
# (defaults below) and marches a cube of side aabb_scale centred at 0.5 in that space.
_NGP_DEFAULT_SCALE = 0.33
_NGP_DEFAULT_OFFSET = (0.5, 0.5, 0.5)

_INTRINSIC_KEYS = (
    "camera_model",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "k1",
    "k2",
    "k3",
    "k4",
    "p1",
    "p2",
    "camera_angle_x",
    "camera_angle_y",
    "is_fisheye",
)


def _number(d: dict, key: str, where: str) -> float | None:
    if key not in d or d[key] is None:
        return None
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(where, f"'{key}' is {value!r} (expected a number)")
    try:
        out = float(value)
    except ValueError:
        raise InputError(where, f"'{key}' is {value!r} (expected a number)") from None
    if not math.isfinite(out):
        raise InputError(where, f"'{key}' is {value!r} (expected a finite number)")
    return out


def _resolve_image(root: Path, file_path: str, listed_in: Path, allow_outside: bool) -> Path:
    """``root / file_path``, completing a missing extension as Blender files need (refused
    outside ``root`` unless ``allow_outside``)."""
    p = dataset_path(root, file_path, listed_in, "file_path", allow_outside=allow_outside)
    if p.is_file() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return p
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return p


def _intrinsics_from_json(d: dict, where: str, image_path: Path) -> Intrinsics:
    model = d.get("camera_model", "OPENCV")
    if model not in SUPPORTED_CAMERA_MODELS or d.get("is_fisheye"):
        name = "fisheye" if d.get("is_fisheye") else model
        raise InputError(
            where,
            f"unsupported camera model {name!r} (expected one of {', '.join(SUPPORTED_CAMERA_MODELS)})",
        )
    if _number(d, "k4", where):
        raise InputError(
            where, "has k4 != 0 (a fisheye/rational model; expected k1, k2, k3, p1, p2 only)"
        )
    w, h = _number(d, "w", where), _number(d, "h", where)
    if w is None or h is None:
        if not image_path.is_file():
            raise InputError(
                where,
                f"has no 'w'/'h' and its image {image_path} is missing, so its size is unknown",
            )
        w, h = image_size(image_path)
    fl_x, fl_y = _number(d, "fl_x", where), _number(d, "fl_y", where)
    if fl_x is None:
        angle_x = _number(d, "camera_angle_x", where)
        if angle_x is None:
            raise InputError(where, "has no focal length (expected 'fl_x' or 'camera_angle_x')")
        fl_x = 0.5 * w / math.tan(0.5 * angle_x)
    if fl_y is None:
        angle_y = _number(d, "camera_angle_y", where)
        fl_y = 0.5 * h / math.tan(0.5 * angle_y) if angle_y is not None else fl_x
    cx, cy = _number(d, "cx", where), _number(d, "cy", where)
    coeffs = {k: _number(d, k, where) or 0.0 for k in ("k1", "k2", "k3", "p1", "p2")}
    try:
        return Intrinsics(
            fx=fl_x,
            fy=fl_y,
            cx=w / 2 if cx is None else cx,
            cy=h / 2 if cy is None else cy,
            width=w,
            height=h,
            **coeffs,
        )
    except ValueError as e:
        raise InputError(where, f"bad intrinsics: {e}") from None


def _pose_matrix(value: Any, where: str) -> np.ndarray:
    try:
        mat = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            where, "transform_matrix is not a matrix of numbers (expected 4x4)"
        ) from None
    if mat.shape == (3, 4):
        mat = np.concatenate([mat, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    if mat.shape != (4, 4):
        raise InputError(where, f"transform_matrix has shape {mat.shape} (expected 4x4 or 3x4)")
    check_pose(mat, where)
    return mat


def _aabb_from_meta(meta: dict, path: Path) -> Tensor | None:
    """``scene_aabb`` (written by :func:`write_transforms_json`) or instant-ngp's ``aabb_scale``.

    instant-ngp maps a world point ``p`` to ``p[[1, 2, 0]] * scale + offset`` and bounds the
    scene by a cube of side ``aabb_scale`` centred at 0.5; mapped back, that is the box returned.
    """
    where = str(path)
    if "scene_aabb" in meta:
        box = (
            np.asarray(meta["scene_aabb"], dtype=np.float64)
            if meta["scene_aabb"] is not None
            else None
        )
        if (
            box is None
            or box.shape != (2, 3)
            or not np.isfinite(box).all()
            or (box[1] <= box[0]).any()
        ):
            raise InputError(
                where,
                f"'scene_aabb' is {meta['scene_aabb']!r} (expected [[xmin, ymin, zmin], [xmax, ymax, zmax]])",
            )
        return torch.tensor(box, dtype=torch.float32)
    aabb_scale = _number(meta, "aabb_scale", where)
    if aabb_scale is None:
        return None
    scale = _number(meta, "scale", where) or _NGP_DEFAULT_SCALE
    offset = meta.get("offset", _NGP_DEFAULT_OFFSET)
    try:
        offset = np.asarray(offset, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise InputError(where, f"'offset' is {offset!r} (expected 3 numbers)") from None
    if aabb_scale <= 0 or scale <= 0:
        raise InputError(where, f"'aabb_scale' {aabb_scale} and 'scale' {scale} must be positive")
    off_world = offset[[2, 0, 1]]  # ngp axis (x', y', z') = world (y, z, x)
    lo = (0.5 - aabb_scale / 2 - off_world) / scale
    hi = (0.5 + aabb_scale / 2 - off_world) / scale
    return torch.tensor(np.stack([lo, hi]), dtype=torch.float32)


def load_transforms_json(
    path: str | Path,
    split: str | None = None,
    *,
    format: str | None = None,
    check_images: bool = True,
    allow_outside_paths: bool = False,
) -> Capture:
    """Read a nerfstudio / instant-ngp ``transforms.json`` or a Blender ``transforms_*.json``.

    Args:
        path: the json file.
        split: select the frames listed in the file's ``<split>_filenames`` (nerfstudio).
        format: label for :attr:`Capture.format`; default ``"blender"`` for
            ``transforms_<split>.json`` names, else ``"nerfstudio"``.
        check_images: raise if an image or mask file is missing.
        allow_outside_paths: accept image, mask and point-cloud paths that leave the json's
            folder (absolute or ``..``); refused by default (``--allow-outside-paths``).

    Returns:
        The :class:`Capture`, frames sorted by image path.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist (expected a transforms.json file)")
    if format is None:
        format = "blender" if re.fullmatch(r"transforms_\w+\.json", path.name) else "nerfstudio"
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise InputError(
            path, f"top level is a JSON {type(meta).__name__} (expected an object with 'frames')"
        )
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "has no frames (expected a non-empty 'frames' list)")
    root = path.parent
    global_intr = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}

    parsed = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise InputError(path, f"frame {i} has no 'file_path' string")
        if "transform_matrix" not in frame:
            raise InputError(f"{path} (frame {frame['file_path']})", "has no 'transform_matrix'")
        parsed.append((_resolve_image(root, frame["file_path"], path, allow_outside_paths), frame))
    if split is not None:
        key = f"{split}_filenames"
        if not isinstance(meta.get(key), list):
            raise InputError(path, f"has no '{key}' list (needed to select split '{split}')")
        wanted = {os.path.normpath(root / f) for f in meta[key]}
        parsed = [
            (p, f)
            for p, f in parsed
            if os.path.normpath(p) in wanted or os.path.normpath(root / f["file_path"]) in wanted
        ]
        if not parsed:
            raise InputError(path, f"'{key}' matches no frame")
    parsed.sort(key=lambda pf: str(pf[0]))

    image_paths, mask_paths, intrinsics, c2ws = [], [], [], []
    for image_path, frame in parsed:
        where = f"{path} (frame {frame['file_path']})"
        c2ws.append(_pose_matrix(frame["transform_matrix"], where))
        per_frame = {k: frame[k] for k in _INTRINSIC_KEYS if k in frame}
        intrinsics.append(_intrinsics_from_json({**global_intr, **per_frame}, where, image_path))
        image_paths.append(image_path)
        mask = frame.get("mask_path")
        mask_paths.append(dataset_path(root, mask, where, "mask_path", allow_outside=allow_outside_paths) if isinstance(mask, str) else None)
    if check_images:
        check_files_exist(image_paths, "image", path)
        check_files_exist([m for m in mask_paths if m is not None], "mask", path)
    w2c = opengl_c2w_to_w2c(torch.from_numpy(np.stack(c2ws)))
    cameras = CameraSet(w2c, intrinsics)
    logger.info("read %d views from %s (%s)", len(cameras), path, format)
    points = colors = None
    if meta.get("ply_file_path"):
        if not isinstance(meta["ply_file_path"], str):
            raise InputError(path, f"'ply_file_path' is {meta['ply_file_path']!r} (expected a file name)")
        ply = dataset_path(root, meta["ply_file_path"], path, "ply_file_path", allow_outside=allow_outside_paths)
        points, colors = _read_point_ply(ply, path)
    return Capture(
        root=root,
        image_paths=image_paths,
        cameras=cameras,
        mask_paths=mask_paths,
        names=unique_names(image_paths, root),
        format=format,
        points=points,
        point_colours=colors,
        scene_aabb=_aabb_from_meta(meta, path),
        source=path,
    )


def _read_point_ply(ply_path: Path, listed_in: Path) -> tuple[Tensor, Tensor | None]:
    """SfM points (``[P, 3]``) and colours (``[P, 3]`` in 0..1, or None) of nerfstudio's ``ply_file_path``."""
    from plyfile import PlyData

    if not ply_path.is_file():
        raise InputError(ply_path, f"point cloud listed as ply_file_path in {listed_in} not found")
    try:
        vertex = PlyData.read(str(ply_path))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    except Exception as err:  # plyfile raises several types for malformed files
        raise InputError(ply_path, f"not a readable point-cloud PLY ({err})") from None
    names = vertex.data.dtype.names
    colors = None
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.float32)
        colors = torch.from_numpy(rgb / 255.0)
    return torch.from_numpy(xyz), colors


def _intr_dict(intr: Intrinsics) -> dict:
    return {
        "camera_model": "OPENCV",
        "w": intr.width,
        "h": intr.height,
        "fl_x": intr.fx,
        "fl_y": intr.fy,
        "cx": intr.cx,
        "cy": intr.cy,
        "k1": intr.k1,
        "k2": intr.k2,
        "k3": intr.k3,
        "p1": intr.p1,
        "p2": intr.p2,
    }


def write_transforms_json(
    source: Capture | CameraSet,
    path: str | Path,
    *,
    file_paths: Sequence[str] | None = None,
) -> Path:
    """Write cameras as a nerfstudio-layout ``transforms.json`` (atomically).

    Intrinsics are written once at the top level when all views share them, else per frame;
    each frame gets the OpenGL camera-to-world ``transform_matrix``. A capture's image and mask
    paths are written relative to the json's folder, and its ``scene_aabb`` as ``scene_aabb``.

    Args:
        source: a :class:`Capture`, or a bare :class:`CameraSet`.
        path: the json file to write.
        file_paths: per-view ``file_path`` values; default: the capture's image paths, or
            ``images/00000.png``... for a bare camera set.

    Returns:
        ``path``.
    """
    path = Path(path)
    capture = source if isinstance(source, Capture) else None
    cameras = capture.cameras if capture is not None else source
    if not isinstance(cameras, CameraSet):
        raise ValueError(f"source must be a Capture or CameraSet, got {type(source).__name__}")
    n = len(cameras)
    if file_paths is None:
        if capture is not None:
            file_paths = [
                Path(os.path.relpath(p, path.parent)).as_posix() for p in capture.image_paths
            ]
        else:
            file_paths = [f"images/{i:05d}.png" for i in range(n)]
    if len(file_paths) != n:
        raise ValueError(f"file_paths has {len(file_paths)} entries for {n} cameras")
    c2w = w2c_to_opengl_c2w(cameras.w2c.detach().cpu().double())
    shared = n > 0 and all(i == cameras.intrinsics[0] for i in cameras.intrinsics)
    meta: dict[str, Any] = dict(_intr_dict(cameras.intrinsics[0])) if shared else {}
    if capture is not None and capture.scene_aabb is not None:
        meta["scene_aabb"] = capture.scene_aabb.double().tolist()
    frames = []
    for i in range(n):
        frame: dict[str, Any] = {"file_path": str(file_paths[i])}
        if not shared:
            frame.update(_intr_dict(cameras.intrinsics[i]))
        frame["transform_matrix"] = c2w[i].tolist()
        if capture is not None and capture.mask_paths[i] is not None:
            frame["mask_path"] = Path(
                os.path.relpath(capture.mask_paths[i], path.parent)
            ).as_posix()
        frames.append(frame)
    meta["frames"] = frames
    atomic_write_json(path, meta)
    logger.info("wrote %d cameras to %s", n, path)
    return path
