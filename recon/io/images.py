"""Image files in and out: decoding with clear errors, training views at a resolution, PNGs.

:func:`load_views` turns views of a :class:`~recon.io.capture.Capture` into tensors for
fitting and evaluation: size check against the intrinsics, OpenCV undistortion (same size, same
pinhole K), area downsampling to the scaled intrinsics, alpha -> mask (and optional compositing
onto a background). It returns the matching undistorted, scaled cameras.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from recon.geometry.cameras import CameraSet, Intrinsics, _as_index_list
from recon.errors import InputError

if TYPE_CHECKING:
    from recon.io.capture import Capture

logger = logging.getLogger(__name__)

__all__ = [
    "image_size",
    "load_image",
    "load_views",
    "save_image",
    "side_by_side",
    "clear_image_cache",
]

CACHE_BYTES = 512 * 1024**2
"""Upper bound on the memory :func:`load_views` may keep for processed images (0 disables)."""


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only.

    Raises:
        InputError: the file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except UnidentifiedImageError:
        raise InputError(path, "is not a readable image (expected PNG or JPEG)") from None
    except OSError as e:
        raise InputError(path, f"cannot be read ({e})") from None


def _pil_to_array(im: Image.Image) -> tuple[np.ndarray, float]:
    """PIL image -> (array [H, W, 3 or 4] in its native dtype, value of full intensity)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        arr = np.clip(arr, 0, 65535).astype(np.uint16) if arr.dtype != np.uint16 else arr
        return np.repeat(arr[..., None], 3, axis=-1), 65535.0
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return np.repeat(arr[..., None], 3, axis=-1), 1.0
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    elif mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im), 255.0


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """Decode an image file fully; any failure becomes a one-line InputError."""
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        with Image.open(path) as im:
            im.load()  # raises on truncated data
            return _pil_to_array(im)
    except UnidentifiedImageError:
        raise InputError(path, "is not a readable image (corrupt, or not PNG/JPEG)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot be decoded ({' '.join(str(e).split())})") from None


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 in 0..1.

    Grey images are repeated to RGB; palette images are expanded; 16-bit images keep their
    precision. EXIF orientation is ignored (as COLMAP and nerfstudio do).

    Returns:
        np.ndarray [H, W, C] float32, C = 3 (RGB) or 4 (RGBA).

    Raises:
        InputError: missing, corrupt, truncated or unreadable file.
    """
    arr, full = _decode(Path(path))
    return arr.astype(np.float32) * np.float32(1.0 / full)


def _load_mask_native(path: Path) -> tuple[np.ndarray, float]:
    """A mask file as [H, W] native dtype (its first channel; grey masks are their only one)."""
    arr, full = _decode(path)
    return np.ascontiguousarray(arr[..., 0]), full


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


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
    arr, full = _decode(path)
    height, width = arr.shape[:2]
    if (width, height) != (intr.width, intr.height):
        raise InputError(
            path, f"image is {width}x{height} but {said_by} says {intr.width}x{intr.height}"
        )
    mask, mfull = None, 1.0
    if mask_path is not None:
        mask, mfull = _load_mask_native(mask_path)
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
    idx = _as_index_list(indices, len(capture))
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _to_numpy(image: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu().float().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy array or torch tensor, got {type(image).__name__}"
        )
    return image


def save_image(path: str | Path, image: np.ndarray | Tensor) -> Path:  # image: [H, W, 3]
    """Write an image as PNG atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: destination (parent folders are created).
        image: array or tensor [H, W, 3] (also [H, W], [H, W, 1], [H, W, 4]); floats in 0..1
            (clipped) or uint8.

    Returns:
        ``path``.
    """
    path = Path(path)
    arr = _to_numpy(image, "image")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
        raise ValueError(
            f"image must be [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4]), got {arr.shape}"
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or np.isnan(arr).any():
            raise ValueError("image contains NaN or is not numeric (expected values in 0..1)")
        arr = np.round(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(np.ascontiguousarray(arr)).save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def side_by_side(
    pred: np.ndarray | Tensor,  # [H, W, 3]
    gt: np.ndarray | Tensor,  # [H, W, 3]
    max_error: float = 0.25,
) -> np.ndarray:
    """Comparison strip: prediction | ground truth | absolute-error heat map.

    The heat map is the per-pixel mean absolute error over channels, mapped with the inferno
    colour map on a fixed scale ``0..max_error`` (so strips of different images compare).

    Args:
        pred: prediction [H, W, 3], 0..1.
        gt: ground truth [H, W, 3], 0..1.
        max_error: error shown at full heat.

    Returns:
        np.ndarray [H, 3 * W, 3] float32 in 0..1.
    """
    p, g = _to_numpy(pred, "pred"), _to_numpy(gt, "gt")
    if p.ndim != 3 or p.shape[-1] != 3 or p.shape != g.shape:
        raise ValueError(f"pred and gt must both be [H, W, 3], got {p.shape} and {g.shape}")
    if not max_error > 0:
        raise ValueError(f"max_error must be positive, got {max_error}")
    p = np.clip(p.astype(np.float32), 0, 1)
    g = np.clip(g.astype(np.float32), 0, 1)
    err = np.abs(p - g).mean(axis=-1) / max_error
    err8 = np.round(np.clip(err, 0, 1) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(err8, cv2.COLORMAP_INFERNO)[..., ::-1].astype(np.float32) / 255.0
    return np.concatenate([p, g, heat], axis=1)
