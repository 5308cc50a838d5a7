"""COLMAP sparse models (``sparse/0/`` or ``sparse/``, ``.bin`` or ``.txt``, read with pycolmap),
images in ``images/``, optional masks ``masks/<image name>.png``; SfM points are returned in
:attr:`Capture.points`. Camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics, check_pose
from recon.io.capture import SUPPORTED_CAMERA_MODELS, Capture, check_files_exist, unique_names

logger = logging.getLogger(__name__)

__all__ = ["intrinsics_from_colmap", "load_colmap"]


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


def intrinsics_from_colmap(cam: Any, where: Path) -> Intrinsics:
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
        The :class:`Capture` with :attr:`Capture.points` / ``point_colours`` from points3D.
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
    try:
        images = sorted(rec.images.values(), key=lambda im: im.name)
    except UnicodeDecodeError as err:  # pycolmap decodes names lazily
        raise InputError(images_file, f"an image name is not UTF-8 text ({err.reason} at byte {err.start})") from None
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
            intr_cache[im.camera_id] = intrinsics_from_colmap(
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
        check_files_exist(image_paths, "image", images_file)

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
        names=unique_names(image_paths, root),
        format="colmap",
        points=points,
        point_colours=colors,
        source=cameras_file,
    )


