"""Image files in and out: decoding with clear errors (8/16-bit, alpha, EXIF orientation
ignored), PNG writing, side-by-side comparisons. Loading the views of a capture at a
resolution lives in :mod:`recon.io.views`."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from recon.errors import InputError
from recon.io.atomic import atomic_write
logger = logging.getLogger(__name__)

__all__ = ["decode_image", "image_size", "load_image", "load_mask", "save_image", "side_by_side"]


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
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image header declares an absurd size ({e})") from None
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


def decode_image(path: Path) -> tuple[np.ndarray, float]:
    """Decode an image file fully; any failure becomes a one-line InputError."""
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        with Image.open(path) as im:
            im.load()  # raises on truncated data
            return _pil_to_array(im)
    except Image.DecompressionBombError as e:  # PIL refuses before allocating
        raise InputError(path, f"image header declares an absurd size ({' '.join(str(e).split())})") from None
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
    arr, full = decode_image(Path(path))
    return arr.astype(np.float32) * np.float32(1.0 / full)


def load_mask(path: Path) -> tuple[np.ndarray, float]:
    """A mask file as [H, W] native dtype (its first channel; grey masks are their only one)."""
    arr, full = decode_image(path)
    return np.ascontiguousarray(arr[..., 0]), full


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
    """Write an image atomically: PNG, or JPEG (quality 92) when ``path`` ends in .jpg/.jpeg.

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
    im = Image.fromarray(np.ascontiguousarray(arr))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return atomic_write(path, lambda f: im.convert("RGB").save(f, format="JPEG", quality=92))
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


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
