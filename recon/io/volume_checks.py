"""Checks every volume reader and writer shares: a finite 3D ``[z, y, x]`` array, positive spacing."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from recon.checks import check_finite
from recon.errors import InputError

__all__ = ["check_spacing", "check_volume"]


def check_volume(volume: np.ndarray, where: str | Path) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError(where, f"expected a 3D [z, y, x] volume, got shape {list(vol.shape)}")
    check_finite(vol.astype(np.float64, copy=False) if vol.dtype.kind == "f" else vol, where, "volume")
    return vol


def check_spacing(voxel_mm: Sequence[float] | None, where: str | Path) -> tuple[float, float, float]:
    if voxel_mm is None:
        return (1.0, 1.0, 1.0)
    v = np.asarray(voxel_mm, dtype=np.float64).reshape(-1)
    if v.size != 3 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(where, f"voxel_mm must be 3 positive sizes (z, y, x), got {voxel_mm}")
    return tuple(float(x) for x in v)  # type: ignore[return-value]


