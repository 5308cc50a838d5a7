"""Read photo captures (posed images) from the layouts in the wild into one type, :class:`Capture`.

Supported layouts, detected by :func:`load_capture`:

* **nerfstudio / instant-ngp** ``transforms.json``: global or per-frame ``fl_x, fl_y, cx, cy,
  w, h, k1, k2, k3, p1, p2`` (or ``camera_angle_x``/``camera_angle_y``), OpenGL camera-to-world
  ``transform_matrix`` per frame, ``file_path`` relative to the json, optional ``mask_path``,
  ``aabb_scale`` (instant-ngp) -> :attr:`Capture.scene_aabb`, optional ``{split}_filenames``.
* **Blender** (NeRF synthetic) ``transforms_{train,val,test}.json``: ``camera_angle_x``,
  ``file_path`` without extension; image size read from the PNG. Their alpha channel becomes the
  mask when the images are loaded (:func:`recon.io.images.load_views`).
* **COLMAP** sparse model in ``sparse/0/`` or ``sparse/`` (``.bin`` or ``.txt``, read with
  pycolmap), images in ``images/``, optional masks ``masks/<image name>.png``; SfM points are
  returned in :attr:`Capture.points`. Camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL,
  RADIAL, OPENCV.
* **LLFF** ``poses_bounds.npy`` with ``images/``.

Frames are sorted by their image path (plain string order, which is also the order LLFF's
``poses_bounds.npy`` rows follow). Poses are converted to the internal convention
(:mod:`recon.geometry.cameras`: OpenCV world-to-camera) and validated; bad input raises
:class:`~recon.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    _as_index_list,
    check_pose,
    llff_poses_to_opengl_c2w,
    opengl_c2w_to_w2c,
    w2c_to_opengl_c2w,
)
from recon.errors import InputError
from recon.io.atomic import atomic_write_json
from recon.io.images import image_size

logger = logging.getLogger(__name__)

__all__ = [
    "Capture",
    "load_capture",
    "load_transforms_json",
    "load_colmap",
    "load_llff",
    "write_transforms_json",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""Image file extensions recognised when listing folders or completing extension-less paths."""

SUPPORTED_CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")

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


@dataclass
class Capture:
    """Posed images of one scene, cameras in the internal convention (:mod:`recon.geometry.cameras`)."""

    root: Path
    """Folder the capture was read from (relative paths in its files are relative to it)."""
    image_paths: list[Path]
    """One image file per view, sorted by path."""
    cameras: CameraSet
    """Cameras of the views, at the images' full resolution, with distortion if the file has it."""
    mask_paths: list[Path | None]
    """Per-view mask image (white = keep), or ``None``."""
    names: list[str]
    """Unique per-view names (the image file name; the path relative to :attr:`root` if file
    names repeat), used to name renders."""
    format: str
    """``"nerfstudio"``, ``"blender"``, ``"colmap"`` or ``"llff"``."""
    points: Tensor | None = None  # [P, 3]
    """SfM points in world coordinates, float32 [P, 3], when the format has them."""
    point_colors: Tensor | None = None  # [P, 3]
    """Colours of :attr:`points`, float32 in 0..1 [P, 3]."""
    scene_aabb: Tensor | None = None  # [2, 3]
    """Box around the scene, ``[min_xyz, max_xyz]`` float32 [2, 3], when the format gives one."""
    source: Path | None = None
    """The file the cameras were read from (for error messages)."""

    def __post_init__(self) -> None:
        n = len(self.cameras)
        for name in ("image_paths", "mask_paths", "names"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Capture.{name} has {len(getattr(self, name))} entries for {n} cameras"
                )
        if self.points is not None:
            if self.points.ndim != 2 or self.points.shape[1] != 3:
                raise ValueError(f"Capture.points must be [P, 3], got {tuple(self.points.shape)}")
            if self.point_colors is not None and self.point_colors.shape != self.points.shape:
                raise ValueError(
                    f"Capture.point_colors {tuple(self.point_colors.shape)} does not match "
                    f"points {tuple(self.points.shape)}"
                )
        if self.scene_aabb is not None and tuple(self.scene_aabb.shape) != (2, 3):
            raise ValueError(
                f"Capture.scene_aabb must be [2, 3], got {tuple(self.scene_aabb.shape)}"
            )

    def __len__(self) -> int:
        return len(self.cameras)

    def subset(self, indices: Sequence[int]) -> Capture:
        """The views at ``indices`` (in that order); points and box are kept whole."""
        idx = _as_index_list(indices, len(self))
        return Capture(
            root=self.root,
            image_paths=[self.image_paths[i] for i in idx],
            cameras=self.cameras.subset(idx),
            mask_paths=[self.mask_paths[i] for i in idx],
            names=[self.names[i] for i in idx],
            format=self.format,
            points=self.points,
            point_colors=self.point_colors,
            scene_aabb=self.scene_aabb,
            source=self.source,
        )


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def load_capture(
    path: str | Path, split: str | None = None, *, check_images: bool = True
) -> Capture:
    """Read a capture, detecting its layout.

    Args:
        path: a capture folder, or its ``transforms.json`` / ``transforms_<split>.json`` /
            ``poses_bounds.npy`` file.
        split: Blender split (``train``, ``val``, ``test``; default ``train``), or for a
            nerfstudio ``transforms.json`` the name of a ``<split>_filenames`` list to select.
            Not accepted for COLMAP and LLFF.
        check_images: raise if an image or mask file is missing (turn off to read cameras
            only, e.g. for rendering novel views; image sizes must then be in the file).

    Returns:
        The :class:`Capture`.

    Raises:
        InputError: nothing recognisable at ``path``, or any file in it is bad.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist (expected a capture folder or its transforms.json)")
    if path.is_file():
        if path.name == "poses_bounds.npy":
            _no_split(split, "LLFF", path)
            return load_llff(path.parent)
        m = re.fullmatch(r"transforms_(\w+)\.json", path.name)
        if m:
            if split is not None and split != m.group(1):
                raise InputError(
                    path, f"is the '{m.group(1)}' split but split='{split}' was asked for"
                )
            return load_transforms_json(path, format="blender", check_images=check_images)
        if path.suffix == ".json":
            return load_transforms_json(path, split=split, check_images=check_images)
        raise InputError(
            path,
            "is not a capture file (expected transforms.json, transforms_<split>.json or "
            "poses_bounds.npy, or a capture folder)",
        )
    if split is not None and (path / f"transforms_{split}.json").is_file():
        return load_transforms_json(
            path / f"transforms_{split}.json", format="blender", check_images=check_images
        )
    if (path / "transforms.json").is_file():
        return load_transforms_json(
            path / "transforms.json", split=split, check_images=check_images
        )
    blender = sorted(path.glob("transforms_*.json"))
    if blender:
        want = path / f"transforms_{split or 'train'}.json"
        if not want.is_file():
            found = ", ".join(p.name for p in blender)
            raise InputError(want, f"does not exist (found {found})")
        return load_transforms_json(want, format="blender", check_images=check_images)
    if (path / "sparse").is_dir():
        _no_split(split, "COLMAP", path)
        return load_colmap(path, check_images=check_images)
    if (path / "poses_bounds.npy").is_file():
        _no_split(split, "LLFF", path)
        return load_llff(path)
    raise InputError(
        path,
        "no recognisable capture (expected transforms.json, transforms_train.json, "
        "sparse/0/ with a COLMAP model, or poses_bounds.npy)",
    )


def _no_split(split: str | None, fmt: str, path: Path) -> None:
    if split is not None:
        raise InputError(path, f"is a {fmt} capture, which has no splits (got split='{split}')")


# --------------------------------------------------------------------------------------------
# transforms.json (nerfstudio / instant-ngp / Blender)
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(path, "is not UTF-8 text (expected JSON)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            path, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None


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


def _resolve_image(root: Path, file_path: str) -> Path:
    """``root / file_path``, completing a missing extension as Blender files need."""
    p = Path(os.path.normpath(root / file_path))
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
) -> Capture:
    """Read a nerfstudio / instant-ngp ``transforms.json`` or a Blender ``transforms_*.json``.

    Args:
        path: the json file.
        split: select the frames listed in the file's ``<split>_filenames`` (nerfstudio).
        format: label for :attr:`Capture.format`; default ``"blender"`` for
            ``transforms_<split>.json`` names, else ``"nerfstudio"``.
        check_images: raise if an image or mask file is missing.

    Returns:
        The :class:`Capture`, frames sorted by image path.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist (expected a transforms.json file)")
    if format is None:
        format = "blender" if re.fullmatch(r"transforms_\w+\.json", path.name) else "nerfstudio"
    meta = _read_json(path)
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
        parsed.append((_resolve_image(root, frame["file_path"]), frame))
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
        mask_paths.append(Path(os.path.normpath(root / mask)) if isinstance(mask, str) else None)
    if check_images:
        _check_files_exist(image_paths, "image", path)
        _check_files_exist([m for m in mask_paths if m is not None], "mask", path)
    w2c = opengl_c2w_to_w2c(torch.from_numpy(np.stack(c2ws)))
    cameras = CameraSet(w2c, intrinsics)
    logger.info("read %d views from %s (%s)", len(cameras), path, format)
    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = _read_point_ply(root / meta["ply_file_path"], path)
    return Capture(
        root=root,
        image_paths=image_paths,
        cameras=cameras,
        mask_paths=mask_paths,
        names=_unique_names(image_paths, root),
        format=format,
        points=points,
        point_colors=colors,
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


def _check_files_exist(paths: list[Path], kind: str, listed_in: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            missing[0],
            f"{kind} file not found ({len(missing)} of {len(paths)} {kind}s listed in {listed_in.name} are missing)",
        )


def _unique_names(paths: list[Path], root: Path) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    rel = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    if len(set(rel)) != len(rel):
        dup = next(r for r in rel if rel.count(r) > 1)
        raise InputError(root, f"image {dup} is listed more than once")
    return rel


# --------------------------------------------------------------------------------------------
# COLMAP
# --------------------------------------------------------------------------------------------


def _find_colmap_model(root: Path) -> Path:
    for cand in (root / "sparse" / "0", root / "sparse"):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    raise InputError(
        root / "sparse",
        "contains no COLMAP model (expected cameras/images/points3D .bin or .txt in sparse/0/ or sparse/)",
    )


def _model_file(model: Path, stem: str) -> Path:
    return model / f"{stem}.bin" if (model / f"{stem}.bin").is_file() else model / f"{stem}.txt"


def _intrinsics_from_colmap(cam: Any, where: Path) -> Intrinsics:
    name = cam.model.name
    p = [float(v) for v in cam.params]
    if name == "SIMPLE_PINHOLE":
        kw = dict(fx=p[0], fy=p[0], cx=p[1], cy=p[2])
    elif name == "PINHOLE":
        kw = dict(fx=p[0], fy=p[1], cx=p[2], cy=p[3])
    elif name == "SIMPLE_RADIAL":
        kw = dict(fx=p[0], fy=p[0], cx=p[1], cy=p[2], k1=p[3])
    elif name == "RADIAL":
        kw = dict(fx=p[0], fy=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4])
    elif name == "OPENCV":
        kw = dict(fx=p[0], fy=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    else:
        raise InputError(
            where,
            f"camera {cam.camera_id} uses unsupported model {name} "
            f"(expected one of {', '.join(SUPPORTED_CAMERA_MODELS)})",
        )
    try:
        return Intrinsics(width=int(cam.width), height=int(cam.height), **kw)
    except ValueError as e:
        raise InputError(where, f"camera {cam.camera_id}: bad intrinsics: {e}") from None


def load_colmap(root: str | Path, *, check_images: bool = True) -> Capture:
    """Read a COLMAP capture: model in ``root/sparse/0`` or ``root/sparse``, images in
    ``root/images``, optional masks ``root/masks/<image name>.png`` (or same name).

    Images without a pose (not registered) are skipped with a warning.

    Returns:
        The :class:`Capture` with :attr:`Capture.points` / ``point_colors`` from points3D.
    """
    import pycolmap

    root = Path(root)
    model = _find_colmap_model(root)
    for stem in ("images", "points3D"):
        if not _model_file(model, stem).is_file():
            raise InputError(
                model / f"{stem}.bin",
                "does not exist (a COLMAP model needs cameras, images, points3D)",
            )
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with C++ messages
        msg = " ".join(str(e).split())
        raise InputError(model, f"cannot read COLMAP model: {msg}") from None
    cameras_file = _model_file(model, "cameras")
    images_file = _model_file(model, "images")
    images = sorted(rec.images.values(), key=lambda im: im.name)
    unposed = [im.name for im in images if not im.has_pose]
    if unposed:
        logger.warning(
            "%s: skipping %d images without a pose (first: %s)",
            images_file,
            len(unposed),
            unposed[0],
        )
    images = [im for im in images if im.has_pose]
    if not images:
        raise InputError(images_file, "has no registered images")

    intr_cache: dict[int, Intrinsics] = {}
    image_paths, mask_paths, intrinsics, w2cs = [], [], [], []
    for im in images:
        if im.camera_id not in intr_cache:
            intr_cache[im.camera_id] = _intrinsics_from_colmap(
                rec.cameras[im.camera_id], cameras_file
            )
        intrinsics.append(intr_cache[im.camera_id])
        pose = im.cam_from_world
        pose = pose() if callable(pose) else pose  # a method since pycolmap 3.12
        w2c = np.concatenate([np.asarray(pose.matrix(), dtype=np.float64), [[0.0, 0.0, 0.0, 1.0]]])
        check_pose(w2c, f"{images_file} (image {im.name})")
        w2cs.append(w2c)
        image_paths.append(root / "images" / im.name)
        mask = next(
            (
                m
                for m in (root / "masks" / f"{im.name}.png", root / "masks" / im.name)
                if m.is_file()
            ),
            None,
        )
        mask_paths.append(mask)
    if check_images:
        _check_files_exist(image_paths, "image", images_file)

    pts = list(rec.points3D.values())
    points = colors = None
    if pts:
        points = torch.tensor(np.stack([p.xyz for p in pts]), dtype=torch.float32)
        colors = torch.tensor(np.stack([p.color for p in pts]), dtype=torch.float32) / 255.0
    logger.info("read %d views and %d points from %s", len(images), len(pts), model)
    return Capture(
        root=root,
        image_paths=image_paths,
        cameras=CameraSet(torch.from_numpy(np.stack(w2cs)), intrinsics),
        mask_paths=mask_paths,
        names=_unique_names(image_paths, root),
        format="colmap",
        points=points,
        point_colors=colors,
        source=cameras_file,
    )


# --------------------------------------------------------------------------------------------
# LLFF
# --------------------------------------------------------------------------------------------


def load_llff(root: str | Path) -> Capture:
    """Read an LLFF capture: ``root/poses_bounds.npy`` (N x 17) and ``root/images/``.

    Row i of ``poses_bounds.npy`` belongs to the i-th image of ``images/`` in name order. The
    stored focal length is rescaled to the size of the images found (``hwf`` is often for a
    different resolution); the principal point is the image centre.
    """
    root = Path(root)
    path = root / "poses_bounds.npy"
    if not path.is_file():
        raise InputError(path, "does not exist (expected an LLFF poses_bounds.npy)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot be read as a .npy array ({e})") from None
    if (
        arr.ndim != 2
        or arr.shape[1] != 17
        or arr.shape[0] == 0
        or not np.issubdtype(arr.dtype, np.number)
    ):
        raise InputError(
            path, f"has shape {arr.shape} (expected [N, 17]: a 3x5 pose and near/far per image)"
        )
    images_dir = root / "images"
    files = (
        sorted(p for p in images_dir.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if images_dir.is_dir()
        else []
    )
    if len(files) != arr.shape[0]:
        raise InputError(
            images_dir, f"has {len(files)} images but {path.name} has {arr.shape[0]} poses"
        )
    poses = torch.from_numpy(arr[:, :15].reshape(-1, 3, 5).astype(np.float64))
    c2w, hwf = llff_poses_to_opengl_c2w(poses)
    intrinsics = []
    for i, f in enumerate(files):
        where = f"{path} (image {f.name})"
        check_pose(c2w[i], where)
        h, w, focal = (float(v) for v in hwf[i])
        if not (h > 0 and w > 0 and focal > 0):
            raise InputError(
                where, f"hwf is {(h, w, focal)} (expected positive height, width, focal)"
            )
        width, height = image_size(f)
        if abs(width / w - height / h) > 0.01 * width / w:
            raise InputError(
                f,
                f"image is {width}x{height} but {path.name} says {w:g}x{h:g} (different aspect ratio)",
            )
        s = width / w
        intrinsics.append(Intrinsics(focal * s, focal * s, width / 2, height / 2, width, height))
    bounds = arr[:, 15:17]
    logger.info(
        "read %d views from %s (depth bounds %.3g..%.3g)",
        len(files),
        path,
        bounds.min(),
        bounds.max(),
    )
    return Capture(
        root=root,
        image_paths=files,
        cameras=CameraSet(opengl_c2w_to_w2c(c2w), intrinsics),
        mask_paths=[None] * len(files),
        names=_unique_names(files, root),
        format="llff",
        source=path,
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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
