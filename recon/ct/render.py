"""Video frames of CT volumes: a maximum-intensity projection turning about the rotation axis,
and a sweep through the slices. Frames are ``[N, H, W, 3]`` uint8 grey, at the volume's
physical aspect (one pixel = the finest in-plane voxel size), +z up.

Views (world axes of :mod:`recon.geometry.ct`): the MIP at angle 0 looks along +y, with +x to
the right of the image; in later frames the volume turns clockwise seen from +z (the viewpoint
moves counter-clockwise around it, as the scanner's source does at increasing angles). Axial
slices show x to the right and y down; coronal slices x to the right, sagittal slices y to the
right, both with +z up. (For a volume in DICOM's patient axes, x -> left, y -> posterior,
z -> superior, these are the radiological views.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["AXES", "auto_window", "rotating_mip", "slice_sweep"]

AXES = ("axial", "coronal", "sagittal")

StepFn = Callable[[int, int], None]


def _check(volume: np.ndarray, voxel_mm: Sequence[float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume: expected [Z, Y, X], given {list(vol.shape)}")
    if len(voxel_mm) != 3 or any(not float(v) > 0 for v in voxel_mm):
        raise ValueError(f"voxel_mm: expected 3 positive sizes (z, y, x), given {voxel_mm}")
    return vol, tuple(float(v) for v in voxel_mm)  # type: ignore[return-value]


def auto_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Display window ``(lo, hi)``: the ``low`` and ``high`` percentiles of ``values``."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _to_frame(image: np.ndarray, window: tuple[float, float], row_mm: float, col_mm: float) -> np.ndarray:
    """A 2D image -> [H, W, 3] uint8 grey, resized so a pixel is min(row_mm, col_mm) square."""
    from PIL import Image

    lo, hi = window
    grey = np.round(np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    pixel = min(row_mm, col_mm)
    h = max(1, round(image.shape[0] * row_mm / pixel))
    w = max(1, round(image.shape[1] * col_mm / pixel))
    if (h, w) != grey.shape:
        grey = np.asarray(Image.fromarray(grey).resize((w, h), Image.BILINEAR))
    return np.repeat(grey[..., None], 3, axis=2)


def rotating_mip(
    volume: np.ndarray,  # [Z, Y, X]
    voxel_mm: Sequence[float],  # (z, y, x)
    n_frames: int = 60,
    *,
    window: tuple[float, float] | None = None,
    progress: StepFn | None = None,
) -> np.ndarray:  # [N, H, W, 3] uint8
    """Maximum-intensity projections of ``volume`` turning once about the z axis in
    ``n_frames`` steps (see the module docstring); grey levels from ``window`` (in the volume's
    units; default :func:`auto_window` of the first projection)."""
    from scipy import ndimage

    vol, (dz, dy, dx) = _check(volume, voxel_mm)
    if n_frames < 1:
        raise ValueError(f"n_frames: expected >= 1, given {n_frames}")
    pixel = min(dy, dx)
    if dy != dx:  # in-plane rotation needs square voxels
        vol = ndimage.zoom(vol, (1.0, dy / pixel, dx / pixel), order=1)
    fill = float(vol.min())
    frames, win = [], window
    for i in range(n_frames):
        angle = 360.0 * i / n_frames
        turned = vol if i == 0 else ndimage.rotate(vol, angle, axes=(2, 1), reshape=False, order=1, mode="constant", cval=fill)
        mip = turned.max(axis=1)[::-1]  # [Z, X], +z up
        if win is None:
            win = auto_window(mip)
        frames.append(_to_frame(mip, win, dz, pixel))
        if progress is not None:
            progress(i + 1, n_frames)
    return np.stack(frames)


def slice_sweep(
    volume: np.ndarray,  # [Z, Y, X]
    voxel_mm: Sequence[float],  # (z, y, x)
    axis: str = "axial",
    *,
    window: tuple[float, float] | None = None,
    n_frames: int | None = None,
    progress: StepFn | None = None,
) -> np.ndarray:  # [N, H, W, 3] uint8
    """Every slice of ``volume`` along ``axis`` (axial: z, coronal: y, sagittal: x), in order of
    increasing index, or ``n_frames`` evenly spread ones; grey levels from ``window`` (default
    :func:`auto_window` of the volume)."""
    vol, (dz, dy, dx) = _check(volume, voxel_mm)
    if axis not in AXES:
        raise ValueError(f"axis: expected one of {', '.join(AXES)}, given {axis!r}")
    k = AXES.index(axis)
    n = vol.shape[k]
    idx = np.arange(n) if n_frames is None else np.unique(np.round(np.linspace(0, n - 1, max(1, n_frames))).astype(int))
    win = window or auto_window(vol)
    frames = []
    for i, s in enumerate(idx):
        if axis == "axial":
            frame = _to_frame(vol[s], win, dy, dx)
        elif axis == "coronal":
            frame = _to_frame(vol[:, s, :][::-1], win, dz, dx)
        else:
            frame = _to_frame(vol[:, :, s][::-1], win, dz, dy)
        frames.append(frame)
        if progress is not None:
            progress(i + 1, len(idx))
    return np.stack(frames)
