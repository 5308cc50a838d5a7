"""LLFF captures: ``poses_bounds.npy`` (one row of 17 numbers per image: a 3x5 pose-and-
intrinsics matrix and near/far bounds) with the images in ``images/``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from recon.errors import InputError
from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    check_pose,
    llff_poses_to_opengl_c2w,
    opengl_c2w_to_w2c,
)
from recon.io.arrays import read_npy
from recon.io.capture import IMAGE_EXTENSIONS, Capture, unique_names
from recon.io.images import image_size

logger = logging.getLogger(__name__)

__all__ = ["load_llff"]


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
    arr = read_npy(path, "poses")
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
        names=unique_names(files, root),
        format="llff",
        source=path,
    )


