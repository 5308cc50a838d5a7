"""CT projection data in one type, :class:`CTData` (projections + geometry + optional reference
volume), and raw detector counts -> line integrals.

Every reader returns arrays in the conventions of :mod:`recon.geometry.ct`: volumes
``[z, y, x]``, projections ``[views, v, u]`` with row 0 the top (+z) detector row (TIGRE's
layout), geometry in mm. Readers: :mod:`recon.io.r2gaussian`, :mod:`recon.io.naf`,
:mod:`recon.io.tigre`; :func:`recon.io.formats.load_ct_data` picks one by what a path is.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dataclasses import dataclass, field

from recon.checks import check_finite
from recon.errors import InputError
from recon.geometry.ct import CTGeometry

logger = logging.getLogger(__name__)

__all__ = ["CTData", "ClippedTransmissionWarning", "check_projections", "counts_to_line_integrals"]


@dataclass
class CTData:
    """Projections with their geometry, and whatever else a dataset holds."""

    geometry: CTGeometry
    projections: np.ndarray  # [V, v, u] float32 line integrals (dimensionless)
    volume: np.ndarray | None = None  # [Z, Y, X] ground truth / reference, if present
    test_geometry: CTGeometry | None = None
    test_projections: np.ndarray | None = None  # [V_test, v, u]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def angles_rad(self) -> np.ndarray:
        return self.geometry.angles


def check_projections(proj: np.ndarray, geometry: CTGeometry, where: str | Path, what: str = "projections") -> np.ndarray:
    proj = np.asarray(proj)
    if proj.ndim != 3:
        raise InputError(where, f"{what} must be a [views, v, u] stack, got shape {list(proj.shape)}")
    if proj.shape[0] != geometry.n_views:
        raise InputError(where, f"{proj.shape[0]} {what} but {geometry.n_views} angles; expected one angle per projection")
    if tuple(proj.shape[1:]) != geometry.n_detector:
        raise InputError(
            where, f"{what} are {proj.shape[1]}x{proj.shape[2]} pixels but the geometry's detector is "
            f"{geometry.n_detector[0]}x{geometry.n_detector[1]} (v x u)"
        )
    proj = proj.astype(np.float32, copy=False)
    check_finite(proj, where, what)
    return proj


# ---------------------------------------------------------------------- raw counts
class ClippedTransmissionWarning(UserWarning):
    """Some transmissions ``(raw - dark) / (flat - dark)`` were at or below the minimum and were
    clipped before the logarithm."""


def counts_to_line_integrals(
    raw: np.ndarray,  # [V, v, u] or [v, u]
    dark: np.ndarray,  # [v, u] or [k, v, u] (averaged over k)
    flat: np.ndarray,  # [v, u] or [k, v, u] (averaged over k)
    *,
    min_transmission: float = 1e-6,
    dead_pixels: str = "error",
    where: str = "counts",
) -> np.ndarray:  # like raw, float32
    """Detector counts -> line integrals ``-log((raw - dark) / (flat - dark))``.

    Errors for NaN/inf or negative counts and for pixels where ``flat <= dark`` (dead pixels;
    ``dead_pixels="zero"`` sets their line integrals to 0 with a warning instead).
    Transmissions ``<= min_transmission`` (photon starvation, dark noise) are clipped to it with
    a :class:`ClippedTransmissionWarning` that says how many.
    """
    if dead_pixels not in ("error", "zero"):
        raise InputError("dead_pixels", f"expected 'error' or 'zero', got {dead_pixels!r}")
    raw = np.asarray(raw, dtype=np.float64)
    dark = np.asarray(dark, dtype=np.float64)
    flat = np.asarray(flat, dtype=np.float64)
    if raw.ndim not in (2, 3):
        raise InputError(where, f"raw counts must be [views, v, u] or [v, u], got shape {list(raw.shape)}")
    det = raw.shape[-2:]
    for name, arr in (("dark", dark), ("flat", flat)):
        if arr.ndim == 3:
            arr = arr.mean(axis=0)
        if arr.shape != det:
            raise InputError(where, f"{name} field is {list(arr.shape)} but projections are {list(det)} (v, u)")
        if name == "dark":
            dark = arr
        else:
            flat = arr
    for name, arr in (("raw", raw), ("dark", dark), ("flat", flat)):
        check_finite(arr, where, f"{name} counts")
        if np.any(arr < 0):
            raise InputError(where, f"{name} counts contain {int((arr < 0).sum())} negative values; expected counts >= 0")
    bad = flat <= dark
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        if dead_pixels == "error":
            raise InputError(
                where, f"flat <= dark at {int(bad.sum())} pixels (first at {first}); expected a brighter flat field "
                "(dead_pixels='zero' zeroes them)"
            )
        logger.warning("%s: %d dead pixels (flat <= dark, first at %s) set to line integral 0", where, int(bad.sum()), first)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (raw - dark) / (flat - dark)
    t = np.where(bad, 1.0, t)
    low = t <= min_transmission
    if low.any():
        warnings.warn(
            f"{where}: clipped {int(low.sum())} of {t.size} transmissions <= {min_transmission:g} before the log",
            ClippedTransmissionWarning,
            stacklevel=2,
        )
        t = np.maximum(t, min_transmission)
    return (-np.log(t)).astype(np.float32)


