"""The views of a capture as tensors at a training resolution, and :class:`ViewSet`.

:func:`load_views` turns views of a :class:`~recon.io.capture.Capture` into tensors for
fitting and evaluation: size check against the intrinsics, OpenCV undistortion (same size, same
pinhole K), area downsampling to the scaled intrinsics, alpha -> mask (and optional compositing
onto a background). It returns the matching undistorted, scaled cameras. Processed images are
kept in a small in-memory LRU (:data:`CACHE_BYTES`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics, as_index_list
from recon.io.capture import Capture
from recon.io.images import decode_image, load_mask

logger = logging.getLogger(__name__)

__all__ = ["CACHE_BYTES", "ViewSet", "clear_image_cache", "load_split", "load_views"]

CACHE_BYTES = 512 * 1024**2
"""Upper bound on the memory :func:`load_views` may keep for processed images (0 disables)."""




@lru_cache(maxsize=16)
def _undistort_maps(intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    K = intr.K(torch.float64).numpy()
    return cv2.initUndistortRectifyMap(
        K, intr.distortion_coeffs(), None, K, (intr.width, intr.height), cv2.CV_16SC2
    )


def _warp(arr: np.ndarray, intr: Intrinsics, size: tuple[int, int]) -> np.ndarray:
    """Undistort at full size (if needed), then area-downsample to ``size`` = (w, h)."""
    if intr.has_distortion:
        m1, m2 = _undistort_maps(intr)
        arr = cv2.remap(arr, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if (arr.shape[1], arr.shape[0]) != size:
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return arr


class _Cache:
    """A small thread-safe LRU of processed images, bounded in bytes."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: tuple) -> None:
        size = sum(a.nbytes for a in item if isinstance(a, np.ndarray))
        with self._lock:
            if size > CACHE_BYTES or key in self._items:
                return
            self._items[key] = item
            self._bytes += size
            while self._bytes > CACHE_BYTES and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in old if isinstance(a, np.ndarray))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_cache = _Cache()


def clear_image_cache() -> None:
    """Forget the images :func:`load_views` kept in memory."""
    _cache.clear()


def _stat_key(path: Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return (str(path), st.st_mtime_ns, st.st_size)


def _load_view(
    path: Path, mask_path: Path | None, intr: Intrinsics, size: tuple[int, int], said_by: str
) -> tuple[np.ndarray, float, np.ndarray | None, float]:
    """One view, processed, native dtype: (image [h, w, 3|4], full, mask [h, w] | None, full)."""
    key = (_stat_key(path), _stat_key(mask_path), intr, size)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    arr, full = decode_image(path)
    height, width = arr.shape[:2]
    if (width, height) != (intr.width, intr.height):
        raise InputError(
            path, f"image is {width}x{height} but {said_by} says {intr.width}x{intr.height}"
        )
    mask, mfull = None, 1.0
    if mask_path is not None:
        mask, mfull = load_mask(mask_path)
        if mask.shape != (height, width):
            raise InputError(
                mask_path,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}",
            )
        mask = _warp(mask, intr, size)
    arr = _warp(np.ascontiguousarray(arr), intr, size)
    out = (arr, full, mask, mfull)
    if CACHE_BYTES > 0:
        _cache.put(key, out)
    return out


def load_views(
    capture: Capture,
    indices: Sequence[int],
    downscale: float = 1.0,
    background: tuple[float, float, float] | None = None,
) -> tuple[Tensor, Tensor | None, CameraSet]:
    """Load views of a capture as tensors, undistorted and downsampled, with their cameras.

    For each view: check the image size against its intrinsics; undistort with OpenCV if the
    camera has distortion (bilinear remap to the same size and the same pinhole K, borders
    replicated); downsample with area averaging to ``intrinsics.scaled(downscale)``. An alpha
    channel becomes the mask and, when ``background`` is given, RGB is composited onto it
    (``rgb * a + background * (1 - a)``); mask files (:attr:`Capture.mask_paths`, first channel)
    are processed the same way and multiplied in. Processed images are kept in a small
    in-memory LRU (:data:`CACHE_BYTES`).

    Args:
        capture: the capture.
        indices: views to load, in this order.
        downscale: resolution divisor (e.g. 4 for a quarter of the width and height).
        background: RGB in 0..1 to composite transparent images onto, or ``None``.

    Returns:
        ``images`` Tensor [N, H, W, 3] float32 in 0..1; ``masks`` Tensor [N, H, W, 1] float32 in
        0..1 (1 = keep), or ``None`` when no view has alpha or a mask file (views without one
        get ones); and the :class:`CameraSet` of these views at this resolution, distortion
        removed.

    Raises:
        InputError: an image is missing, unreadable, or its size disagrees with its camera;
            views of different sizes were asked for together.
        ValueError: bad ``downscale`` or ``background``.
    """
    if background is not None:
        bg = np.asarray(background, dtype=np.float32)
        if bg.shape != (3,) or not np.isfinite(bg).all() or (bg < 0).any() or (bg > 1).any():
            raise ValueError(f"background must be 3 numbers in 0..1, got {background!r}")
    idx = as_index_list(indices, len(capture))
    cams = capture.cameras.subset(idx)
    targets = [intr.scaled(downscale) for intr in cams.intrinsics]
    if not targets:
        raise ValueError("indices is empty (expected at least one view)")
    size0 = (targets[0].width, targets[0].height)
    for j, t in enumerate(targets):
        if (t.width, t.height) != size0:
            raise InputError(
                capture.image_paths[idx[j]],
                f"is {t.width}x{t.height} at downscale {downscale}, unlike the first view's "
                f"{size0[0]}x{size0[1]} (load views of one size together)",
            )
    said_by = capture.source.name if capture.source is not None else "its camera"

    def work(j: int):
        i = idx[j]
        return _load_view(
            capture.image_paths[i], capture.mask_paths[i], cams.intrinsics[j], size0, said_by
        )

    workers = max(1, min(len(idx), os.cpu_count() or 1, 8))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = list(pool.map(work, range(len(idx))))
    else:
        loaded = [work(j) for j in range(len(idx))]

    n, (w, h) = len(idx), size0
    images = np.empty((n, h, w, 3), dtype=np.float32)
    masks = np.ones((n, h, w, 1), dtype=np.float32)
    any_mask = False
    for j, (arr, full, mask, mfull) in enumerate(loaded):
        rgb = arr[..., :3].astype(np.float32) * np.float32(1.0 / full)
        if arr.shape[-1] == 4:
            any_mask = True
            alpha = arr[..., 3:4].astype(np.float32) * np.float32(1.0 / full)
            if background is not None:
                rgb = rgb * alpha + bg * (1.0 - alpha)
            masks[j] = alpha
        if mask is not None:
            any_mask = True
            masks[j] *= mask[..., None].astype(np.float32) * np.float32(1.0 / mfull)
        images[j] = rgb
    out_cams = CameraSet(cams.w2c, [t.without_distortion() for t in targets])
    return torch.from_numpy(images), (torch.from_numpy(masks) if any_mask else None), out_cams


@dataclass
class ViewSet:
    """Images and cameras of one split (training or evaluation views) at training resolution."""

    indices: list[int]
    """Indices of the views in the capture."""
    names: list[str]
    """Their names (image file names)."""
    images: Tensor  # [V, H, W, 3]
    cameras: CameraSet
    masks: Tensor | None = None  # [V, H, W, 1]
    """Masks from the capture's mask files or alpha channels (1 = keep), if it has any."""

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


def load_split(capture: Capture, indices: list[int], downscale: float) -> ViewSet:
    """Load and undistort the views ``indices`` of ``capture`` at ``downscale``."""
    images, masks, cams = load_views(capture, indices, downscale=downscale)
    return ViewSet(list(indices), [capture.names[i] for i in indices], images, cams, masks)
