"""Automatic centre-of-rotation (COR) estimation for parallel-beam and fan-beam scans.

A misplaced rotation axis is the most common calibration error of real tomography data: the
axis does not project onto the detector centre, and a reconstruction that assumes it does
shows doubled edges and half-circle arcs. Here the axis position is estimated from the
projections alone and expressed as the detector shift of :class:`~recon.geometry.ct.CTGeometry`.

Sign convention (checked by ``tests/ct/test_cor.py`` against the projector)
--------------------------------------------------------------------------
``shift_px`` is the detector column onto which the rotation axis projects, minus the detector
centre ``(n_u - 1) / 2``, in detector pixels: positive when the axis lands on higher column
indices. The geometry models this by shifting the detector the other way:
``offset_detector_mm[1] = -shift_px * detector_pixel_mm[1]`` (the detector centre moves along
``+U`` while the axis stays at the world origin). Fan beam: the axis column is where the
central ray (source -> axis) meets the detector.

Methods
-------
``cor_from_mirrored_projections`` (registration, needs views ~180 deg apart)
    Parallel beam: the projection at ``theta + 180 deg`` is the mirror image of the one at
    ``theta`` about the axis column ``c``: ``p(theta + pi, u) = p(theta, 2c - u)``. Each pair
    (the partner interpolated linearly in angle when no view lies exactly 180 deg away) is
    registered by phase correlation (Gaussian low-pass on the normalised cross-power spectrum,
    integer peak, then a sub-pixel peak found on a 0.02 px grid of the band-limited correlation
    and a parabolic fit); the registration shift ``d`` gives ``c = ((n_u - 1) + d) / 2`` (as
    TomoPy's ``find_center_pc``). Rows are registered in blocks (groups of pairs when there
    are >= 8 pairs), so the spread between blocks gives an uncertainty. 180 deg scans have a
    single pair (first and last view); when no pair is within 1.5 angular steps the method
    fails.
    Fan beam (360 deg): the ray at fan angle ``gamma`` of view ``beta`` is measured again,
    reversed, at ``(beta + pi - 2 gamma, -gamma)``. For candidate axis columns ``c`` the
    sinogram is resampled at the conjugate rays and compared with itself; the mean squared
    mismatch is minimised (1 px grid, then 0.05 px around the best, parabolic fit).
``cor_by_image_quality`` (refinement)
    FBP reconstructions (Hann filter) of one or a few detector rows for candidate shifts
    (0.25 px steps), from half a turn of views (a wrong axis then gives doubled edges with
    negative tails; over a full turn it gives a ring blur that no sharpness metric ranks
    reliably, measured). Criterion: the mass of negative values inside the field of view
    (default) or its total variation (``metric="tv"``). Sub-pixel by a least-squares parabola
    through the points within 1 px of the minimum.
``estimate_cor``
    Registration first (when possible), then the image-quality search in a +-3 px window
    around it; the two are combined by inverse-variance weighting (a wide two-stage image
    search alone when no mirror pair exists).

Confidence
----------
Each result has ``confidence`` in [0, 1] and ``uncertainty_px``. Registration: the normalised
phase-correlation peak height (1 = the mirrored projections agree perfectly after the shift)
divided by ``1 + (spread / 0.5 px)^2``, ``spread`` the robust standard deviation
(1.4826 MAD) of independent estimates from groups of pairs or blocks of rows (fan:
``1 - min / median`` of the mismatch curve, same spread penalty).
Image quality: ``r / (r + 0.05)`` where ``r`` is the relative rise of the criterion 2 px
either side of the minimum (0 when the minimum lies on the edge of the search range); its
``uncertainty_px`` is a curvature heuristic (where the fitted parabola rises by 0.1 %).
All uncertainties are statistical: they do not cover model errors (truncation, a tilted axis,
a fan-beam axis shift modelled as a detector shift).
``estimate_cor``: the larger of the two confidences times ``exp(-0.5 (delta / 0.5 px)^2)``,
``delta`` the disagreement between the two methods (0.25 px -> x0.88, 1 px -> x0.14).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from recon.geometry.ct import CTGeometry
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "CORResult",
    "apply_cor",
    "cor_by_image_quality",
    "cor_from_mirrored_projections",
    "estimate_cor",
    "shift_to_offset_mm",
    "offset_mm_to_shift",
]

METRICS = ("tv", "negativity")


@dataclass(frozen=True)
class CORResult:
    """A centre-of-rotation estimate (see the module docstring for the sign convention)."""

    shift_px: float
    """Axis column minus the detector centre ``(n_u - 1) / 2``, detector pixels (+ = higher columns)."""
    axis_column_px: float
    """0-based detector column onto which the rotation axis projects."""
    offset_detector_mm: float
    """The matching ``CTGeometry.offset_detector_mm[1]`` (``-shift_px * detector_pixel_mm[1]``)."""
    confidence: float
    """0..1 (see the module docstring for its definition per method)."""
    uncertainty_px: float
    """Standard error of ``shift_px`` in pixels, from the spread of independent estimates."""
    method: str
    """``"mirror-phase-correlation"``, ``"conjugate-rays"``, ``"fbp-tv"``, ``"fbp-negativity"``,
    or ``"combined(<a>+<b>)"``."""
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    """Per-method diagnostics (per-block estimates, criterion curves, ...), JSON-ready."""

    @property
    def offset_px(self) -> float:
        """The geometry's detector offset in pixels (``-shift_px``)."""
        return -self.shift_px

    def apply(self, geometry: CTGeometry) -> CTGeometry:
        """``geometry`` with ``offset_detector_mm[1]`` set to this estimate (see :func:`apply_cor`)."""
        return apply_cor(geometry, self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- conversions
def shift_to_offset_mm(shift_px: float, geometry: CTGeometry) -> float:
    """Axis shift (px, + = higher columns) -> ``offset_detector_mm[1]`` of ``geometry``."""
    return -float(shift_px) * geometry.detector_pixel_mm[1]


def offset_mm_to_shift(offset_u_mm: float, geometry: CTGeometry) -> float:
    """``offset_detector_mm[1]`` -> axis shift in detector pixels (inverse of :func:`shift_to_offset_mm`)."""
    return -float(offset_u_mm) / geometry.detector_pixel_mm[1]


def apply_cor(geometry: CTGeometry, cor: CORResult | float) -> CTGeometry:
    """Return ``geometry`` with its u detector offset replaced by the estimate.

    ``cor`` is a :class:`CORResult` or an axis shift in pixels. The estimate is absolute (the
    axis column relative to the detector centre), so any offset the geometry had is replaced,
    not added to. The v offset is kept.
    """
    if not isinstance(geometry, CTGeometry):
        raise InputError("geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
    if geometry.vectors is not None:
        raise InputError("geometry", "vector geometries have no detector offset to set; shift the detector centres instead")
    shift = cor.shift_px if isinstance(cor, CORResult) else float(cor)
    if not math.isfinite(shift):
        raise InputError("cor", f"shift must be finite, got {shift}")
    return dataclasses.replace(geometry, offset_detector_mm=(geometry.offset_detector_mm[0], shift_to_offset_mm(shift, geometry)))


def _result(shift: float, geo: CTGeometry, confidence: float, uncertainty: float, method: str, details: dict) -> CORResult:
    nu = geo.n_detector[1]
    return CORResult(
        shift_px=float(shift),
        axis_column_px=float(shift + (nu - 1) / 2.0),
        offset_detector_mm=shift_to_offset_mm(shift, geo),
        confidence=float(np.clip(confidence, 0.0, 1.0)),
        uncertainty_px=float(uncertainty),
        method=method,
        details=details,
    )


# ---------------------------------------------------------------------- input checks
def _check_inputs(projections, geometry: CTGeometry, where: str) -> np.ndarray:
    if not isinstance(geometry, CTGeometry):
        raise InputError(f"{where}.geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
    if geometry.vectors is not None:
        raise InputError(f"{where}.geometry", "vector geometries are not supported (the axis is defined by the circular parameters)")
    if geometry.mode not in ("parallel", "fan", "cone"):
        raise InputError(f"{where}.geometry", f"unsupported mode {geometry.mode!r}")
    if isinstance(projections, torch.Tensor):
        p = projections.detach().cpu().double().numpy()
    else:
        p = np.asarray(projections, dtype=np.float64)
    if p.ndim != 3 or tuple(p.shape) != geometry.projection_shape:
        raise InputError(f"{where}.projections", f"expected shape {list(geometry.projection_shape)} (views, v, u), got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{where}.projections", "contains NaN/inf; expected finite line integrals")
    if geometry.n_detector[1] < 8:
        raise InputError(f"{where}.projections", f"need at least 8 detector columns, got {geometry.n_detector[1]}")
    return p


def _central_fan(p: np.ndarray, geo: CTGeometry) -> tuple[np.ndarray, CTGeometry]:
    """Cone beam -> the fan-beam geometry and sinogram of the detector row through the source
    plane (the only row whose rays stay in one slice)."""
    nv = geo.n_detector[0]
    row = (nv - 1) / 2.0 - geo.offset_detector_mm[0] / geo.detector_pixel_mm[0]  # fractional when between rows
    if not 0 <= row <= nv - 1:
        raise InputError("geometry", f"the central detector row {row:.1f} is off the detector (0..{nv - 1})")
    r0 = min(int(math.floor(row)), nv - 1)
    r1, w = min(r0 + 1, nv - 1), row - r0
    fan = dataclasses.replace(
        geo,
        mode="fan",
        n_detector=(1, geo.n_detector[1]),
        n_voxel=(1, geo.n_voxel[1], geo.n_voxel[2]),
        offset_detector_mm=(0.0, geo.offset_detector_mm[1]),
        offset_origin_mm=(0.0, geo.offset_origin_mm[1], geo.offset_origin_mm[2]),
    )
    return (1.0 - w) * p[:, r0 : r0 + 1, :] + w * p[:, r1 : r1 + 1, :], fan


def _angle_step(angles: np.ndarray) -> float:
    a = np.sort(np.mod(angles, 2.0 * np.pi))
    d = np.diff(np.concatenate([a, a[:1] + 2.0 * np.pi]))
    d = d[d > 1e-9]
    return float(np.median(d)) if d.size else 2.0 * np.pi


def _coverage(angles: np.ndarray) -> float:
    """Angular range (radians, at most 2 pi) the views cover: 2 pi minus the largest gap plus one step."""
    a = np.sort(np.mod(angles, 2.0 * np.pi))
    gaps = np.diff(np.concatenate([a, a[:1] + 2.0 * np.pi]))
    return min(2.0 * np.pi, 2.0 * np.pi - float(gaps.max()) + _angle_step(angles))


def _wrap(a: np.ndarray | float) -> np.ndarray:
    """Angles into (-pi, pi]."""
    return np.pi - np.mod(np.pi - np.asarray(a, dtype=np.float64), 2.0 * np.pi)


# ---------------------------------------------------------------------- (a) registration
def _mirror_pairs(angles: np.ndarray, max_gap_steps: float = 1.5) -> tuple[list[tuple[int, int, int, float]], float]:
    """Pairs for the mirror registration: ``(j, i0, i1, w)`` meaning view ``j`` mirrored against
    ``(1 - w) * view[i0] + w * view[i1]``, the sinogram interpolated at ``theta_j - pi``.
    Returns (pairs, worst angular mismatch in radians; 0 when all partners are interpolated)."""
    step = _angle_step(angles)
    tol = 1e-3 * step
    pairs: list[tuple[int, int, int, float]] = []
    for j, th in enumerate(angles):
        d = _wrap(angles - (th - np.pi))  # signed angle of every view from the partner position
        exact = np.flatnonzero(np.abs(d) <= tol)
        if exact.size:
            pairs.append((j, int(exact[0]), int(exact[0]), 0.0))
            continue
        below = np.flatnonzero((d < 0) & (d >= -max_gap_steps * step))
        above = np.flatnonzero((d > 0) & (d <= max_gap_steps * step))
        if below.size and above.size:
            i0 = int(below[np.argmax(d[below])])
            i1 = int(above[np.argmin(d[above])])
            w = float(-d[i0] / (d[i1] - d[i0]))
            pairs.append((j, i0, i1, w))
    if pairs:
        return pairs, 0.0
    # 180 deg scans without an exact partner (e.g. 0..179 deg): the nearest pair, flagged
    best, best_err = None, np.inf
    for j, th in enumerate(angles):
        d = np.abs(_wrap(angles - (th - np.pi)))
        i = int(np.argmin(d))
        if d[i] < best_err:
            best, best_err = (j, i, i, 0.0), float(d[i])
    if best is not None and best_err <= max_gap_steps * step:
        return [best], best_err
    return [], float(best_err)


def _tukey(n: int, alpha: float = 0.2) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = alpha / 2.0
    lo, hi = x < edge, x > 1.0 - edge
    w[lo] = 0.5 * (1 - np.cos(np.pi * x[lo] / edge))
    w[hi] = 0.5 * (1 - np.cos(np.pi * (1.0 - x[hi]) / edge))
    return w


def _phase_correlation(ref: np.ndarray, mov: np.ndarray, lowpass: float) -> tuple[float, float]:
    """Shift ``d`` (px) with ``ref(k) ~ mov(k - d)`` for [rows, n] arrays registered jointly
    (cross-power summed over rows), and the normalised peak height in [-1, 1]."""
    n = ref.shape[-1]
    n_fft = 1 << int(math.ceil(math.log2(2 * n)))
    win = _tukey(n)

    def prep(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=-1, keepdims=True)
        return a * win

    fr = np.fft.rfft(prep(ref), n=n_fft, axis=-1)
    fm = np.fft.rfft(prep(mov), n=n_fft, axis=-1)
    cross = (fr * np.conj(fm)).sum(axis=0)
    f = np.fft.rfftfreq(n_fft)
    weight = np.exp(-((f / lowpass) ** 2))
    weight[0] = 0.0  # DC carries no shift
    weight = weight * (2.0 - (f == 0.5))  # one-sided spectrum: count the mirrored half
    mag = np.abs(cross)
    r = np.where(mag > 1e-12 * mag.max(), cross / np.maximum(mag, 1e-300), 0.0) * weight
    norm = float(weight[mag > 1e-12 * mag.max()].sum())
    if norm <= 0:
        return 0.0, 0.0
    corr = np.fft.irfft(r, n=n_fft) * n_fft / 2.0  # = 0.5 * sum_f w Re(R e^{i 2 pi f d}) (x2 for one side)
    lags = np.fft.fftfreq(n_fft, d=1.0 / n_fft)  # 0, 1, ..., -1
    valid = np.abs(lags) < n  # a shift of the full detector width means no overlap
    k = int(np.argmax(np.where(valid, corr, -np.inf)))
    d0 = float(lags[k])
    # band-limited correlation evaluated on a fine grid around the integer peak
    fine = d0 + np.arange(-1.0, 1.0 + 1e-9, 0.02)
    c = (r[None, :] * np.exp(2j * np.pi * f[None, :] * fine[:, None])).real.sum(axis=1)
    m = int(np.argmax(c))
    best = float(fine[m])
    if 0 < m < fine.size - 1:
        y0, y1, y2 = c[m - 1], c[m], c[m + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            best += 0.02 * 0.5 * (y0 - y2) / den
    return best, float(c[m] / norm)


def cor_from_mirrored_projections(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    *,
    rows: Sequence[int] | slice | None = None,
    n_row_blocks: int = 4,
    lowpass: float = 0.15,
    max_shift_px: float | None = None,
) -> CORResult | None:
    """Axis shift from views ~180 deg apart (registration); see the module docstring.

    Args:
        projections: line integrals [V, v, u] of ``geometry``'s views (numpy or torch).
        geometry: parallel, fan or cone beam (cone: the central row only); its own u offset is
            ignored (it is what is estimated).
        rows: detector rows to use (parallel beam; default all).
        n_row_blocks: rows are registered in this many blocks; their spread gives the
            uncertainty (parallel beam).
        lowpass: Gaussian low-pass (cycles/pixel) on the phase-correlation spectrum.
        max_shift_px: search range for the fan-beam conjugate-ray method (default n_u / 4).

    Returns:
        a :class:`CORResult`, or ``None`` when the views contain no usable pair (logged).
    """
    p = _check_inputs(projections, geometry, "cor_from_mirrored_projections")
    geo = geometry
    if geo.mode == "cone":
        p, geo = _central_fan(p, geo)
    if geo.mode == "fan":
        return _cor_conjugate_rays(p[:, 0, :], geo, max_shift_px)
    if not 0.0 < lowpass <= 0.5:
        raise InputError("lowpass", f"must be in (0, 0.5] cycles/pixel, got {lowpass}")
    nv, nu = geo.n_detector
    row_idx = np.arange(nv)[rows] if isinstance(rows, slice) else (np.arange(nv) if rows is None else np.asarray(rows, dtype=np.int64))
    if row_idx.size == 0 or row_idx.min() < 0 or row_idx.max() >= nv:
        raise InputError("rows", f"expected detector rows in 0..{nv - 1}, got {rows!r}")
    pairs, gap = _mirror_pairs(geo.angles)
    if not pairs:
        logger.warning(
            "cor_from_mirrored_projections: no two views are within 1.5 angular steps of 180 deg apart (closest %.2f deg off); "
            "use cor_by_image_quality",
            math.degrees(gap),
        )
        return None
    if gap > 0:
        logger.info(
            "cor_from_mirrored_projections: nearest mirror pair is %.2f deg from 180 deg apart; estimate may be biased", math.degrees(gap)
        )
    ref_all, mov_all = [], []
    for j, i0, i1, w in pairs:
        ref_all.append((1.0 - w) * p[i0][row_idx] + w * p[i1][row_idx])  # [rows, nu]
        mov_all.append(p[j][row_idx][:, ::-1])
    ref_all = np.stack(ref_all)  # [P, rows, nu]
    mov_all = np.stack(mov_all)
    # independent estimates for the spread: groups of pairs when there are many, else row blocks
    if len(pairs) >= 8:
        groups = [(np.arange(g, len(pairs), 4), np.arange(row_idx.size)) for g in range(4)]
        grouping = "pairs"
    else:
        blocks = np.array_split(np.arange(row_idx.size), max(1, min(n_row_blocks, row_idx.size)))
        groups = [(np.arange(len(pairs)), blk) for blk in blocks if blk.size]
        grouping = "rows"
    ests, peaks = [], []
    for pg, rg in groups:
        d, h = _phase_correlation(ref_all[pg][:, rg].reshape(-1, nu), mov_all[pg][:, rg].reshape(-1, nu), lowpass)
        ests.append(d / 2.0)
        peaks.append(h)
    d_all, h_all = _phase_correlation(ref_all.reshape(-1, nu), mov_all.reshape(-1, nu), lowpass)
    shift = d_all / 2.0
    spread, uncertainty = _spread(np.asarray(ests))
    if gap > 0:  # no partner 180 deg away: the nearest one is rotated by `gap`
        uncertainty = max(uncertainty, 0.25)
    confidence = max(h_all, 0.0) / (1.0 + (spread / 0.5) ** 2)
    details = {
        "n_pairs": len(pairs),
        "pair_angle_error_deg": math.degrees(gap),
        "rows_used": [int(row_idx.min()), int(row_idx.max())],
        "grouping": grouping,
        "group_shifts_px": [float(e) for e in ests],
        "group_peak_heights": [float(h) for h in peaks],
        "peak_height": float(h_all),
        "spread_px": spread,
    }
    res = _result(shift, geo, confidence, uncertainty, "mirror-phase-correlation", details)
    logger.info(
        "COR (mirror phase correlation): shift %.2f px (axis column %.2f), confidence %.2f", res.shift_px, res.axis_column_px, res.confidence
    )
    return res


def _spread(ests: np.ndarray) -> tuple[float, float]:
    """Robust spread (1.4826 * MAD; standard deviation for < 3 values) of independent estimates,
    and the standard error of their combination. A single estimate gets a nominal 0.25 px."""
    if ests.size < 2:
        return 0.25, 0.25
    if ests.size < 3:
        spread = float(np.std(ests, ddof=1))
    else:
        spread = 1.4826 * float(np.median(np.abs(ests - np.median(ests))))
    return spread, max(spread / math.sqrt(ests.size), 0.02)


def _conjugate_mismatch(
    sino: np.ndarray,  # [V, nu]
    angles: np.ndarray,  # [V]
    geo: CTGeometry,
    shifts: np.ndarray,  # [S]
    views: np.ndarray | None = None,
) -> np.ndarray:  # [S]
    """Mean squared difference between the fan sinogram [V, nu] and itself resampled at the
    conjugate rays, for each candidate axis shift (px). NaN where too few rays have a partner."""
    V, nu = sino.shape
    du = geo.detector_pixel_mm[1]
    dsd = geo.dsd_mm
    order = np.argsort(np.mod(angles, 2.0 * np.pi))
    a_sorted = np.mod(angles, 2.0 * np.pi)[order]
    s_sorted = sino[order]
    step = _angle_step(angles)
    # periodic extension for interpolation in angle
    a_ext = np.concatenate([a_sorted[-1:] - 2.0 * np.pi, a_sorted, a_sorted[:1] + 2.0 * np.pi])
    s_ext = np.concatenate([s_sorted[-1:], s_sorted, s_sorted[:1]])
    gaps = np.diff(a_ext)
    cols = np.arange(nu, dtype=np.float64)
    vsel = np.arange(V) if views is None else np.asarray(views)
    scale = float(np.mean(sino[vsel] ** 2)) + 1e-30
    out = np.full(shifts.shape, np.nan)
    for n, s in enumerate(shifts):
        c0 = (nu - 1) / 2.0 + s
        kc = 2.0 * c0 - cols  # conjugate column of every column
        ok_col = (kc >= 0) & (kc <= nu - 1)
        if ok_col.sum() < nu // 4:
            continue
        gamma = np.arctan((cols - c0) * du / dsd)
        # each view's row resampled at the conjugate columns: [V_ext, nu]
        k0 = np.clip(np.floor(kc).astype(np.int64), 0, nu - 2)
        fk = np.clip(kc - k0, 0.0, 1.0)
        rows = s_ext[:, k0] * (1 - fk) + s_ext[:, k0 + 1] * fk
        target = np.mod(angles[vsel][:, None] + np.pi - 2.0 * gamma[None, :], 2.0 * np.pi)  # [Vs, nu]
        # interpolate in angle between bracketing views (refuse gaps wider than 1.5 steps)
        idx = np.clip(np.searchsorted(a_ext, target, side="right") - 1, 0, a_ext.size - 2)
        fa = (target - a_ext[idx]) / np.maximum(gaps[idx], 1e-12)
        ok = ok_col[None, :] & (gaps[idx] <= 1.5 * step + 1e-9)
        conj = rows[idx, np.arange(nu)[None, :]] * (1 - fa) + rows[idx + 1, np.arange(nu)[None, :]] * fa
        diff = (sino[vsel] - conj) ** 2
        if ok.sum() < 0.25 * ok.size:
            continue
        out[n] = float(diff[ok].mean()) / scale
    return out


def _parabola_min(x: np.ndarray, y: np.ndarray, halfwidth: float) -> float:
    """Least-squares parabola through the points within ``halfwidth`` of the sampled minimum;
    its vertex (clamped to that window), or the sampled minimum when the fit is not convex."""
    good = np.isfinite(y)
    x, y = x[good], y[good]
    k = int(np.argmin(y))
    sel = np.abs(x - x[k]) <= halfwidth + 1e-9
    if sel.sum() >= 3:
        a, b, _ = np.polyfit(x[sel] - x[k], y[sel], 2)
        if a > 0:
            return float(x[k] + np.clip(-b / (2 * a), -halfwidth, halfwidth))
    return float(x[k])


def _cor_conjugate_rays(sino: np.ndarray, geo: CTGeometry, max_shift_px: float | None) -> CORResult | None:
    V, nu = sino.shape
    angles = geo.angles
    step = _angle_step(angles)
    span = _coverage(angles)
    if span < 2.0 * np.pi - 0.5 * step:
        logger.warning(
            "cor_from_mirrored_projections: fan-beam conjugate rays need a 360 deg scan (this one covers %.0f deg)", math.degrees(span)
        )
        return None
    lim = float(nu / 4.0 if max_shift_px is None else max_shift_px)
    coarse = np.arange(-math.floor(lim), math.floor(lim) + 1, 1.0)
    m_coarse = _conjugate_mismatch(sino, angles, geo, coarse)
    if not np.any(np.isfinite(m_coarse)):
        return None
    s0 = float(coarse[int(np.nanargmin(m_coarse))])
    fine = s0 + np.arange(-1.5, 1.5 + 1e-9, 0.05)
    m_fine = _conjugate_mismatch(sino, angles, geo, fine)
    shift = _parabola_min(fine, m_fine, 0.5)
    # spread: the same search with 4 interleaved groups of reference views
    ests = []
    for g in range(4):
        views = np.arange(g, V, 4)
        mg = _conjugate_mismatch(sino, angles, geo, fine, views)
        if np.any(np.isfinite(mg)):
            ests.append(_parabola_min(fine, mg, 0.5))
    spread, uncertainty = _spread(np.asarray(ests))
    contrast = 1.0 - float(np.nanmin(m_coarse)) / float(np.nanmedian(m_coarse))
    confidence = max(contrast, 0.0) / (1.0 + (spread / 0.5) ** 2)
    details = {
        "group_shifts_px": [float(e) for e in ests],
        "spread_px": spread,
        "mismatch_min": float(np.nanmin(m_fine)),
        "mismatch_median_coarse": float(np.nanmedian(m_coarse)),
        "coarse_shifts_px": coarse.tolist(),
        "coarse_mismatch": [None if not np.isfinite(v) else float(v) for v in m_coarse],
    }
    res = _result(shift, geo, confidence, uncertainty, "conjugate-rays", details)
    logger.info(
        "COR (fan conjugate rays): shift %.2f px (axis column %.2f), confidence %.2f", res.shift_px, res.axis_column_px, res.confidence
    )
    return res


# ---------------------------------------------------------------------- (b) image quality
def _structured_rows(p: np.ndarray, n: int) -> list[int]:
    """``n`` detector rows with the most structure (gradient energy along u), one per band of
    the central 80 % of rows."""
    nv = p.shape[1]
    if nv <= n:
        return list(range(nv))
    lo, hi = int(0.1 * nv), max(int(0.1 * nv) + n, int(math.ceil(0.9 * nv)))
    energy = (np.diff(p, axis=2) ** 2).sum(axis=(0, 2))
    rows = []
    for band in np.array_split(np.arange(lo, min(hi, nv)), n):
        if band.size:
            rows.append(int(band[np.argmax(energy[band])]))
    return rows


def _slice_geometry(geo: CTGeometry, n_rows: int, n_cols: int, pixel_mm: float) -> CTGeometry:
    """Geometry reconstructing ``n_rows`` independent detector rows (parallel beam; fan: one)
    on ``n_cols`` x ``n_cols`` slices covering the detector width at the axis, no offsets."""
    pitch = pixel_mm if geo.mode == "parallel" else pixel_mm * geo.dso_mm / geo.dsd_mm
    return dataclasses.replace(
        geo,
        n_detector=(n_rows, n_cols),
        detector_pixel_mm=(geo.detector_pixel_mm[0], pixel_mm),
        n_voxel=(n_rows, n_cols, n_cols),
        voxel_mm=(geo.detector_pixel_mm[0] if geo.mode == "parallel" else geo.voxel_mm[0], pitch, pitch),
        offset_origin_mm=(0.0, 0.0, 0.0),
        offset_detector_mm=(0.0, 0.0),
    )


def _fourier_shift(sino: np.ndarray, shift_px: float) -> np.ndarray:
    """``out[..., k] = sino[..., k + shift_px]`` along the last axis, band-limited (no
    interpolation blur, which would otherwise favour integer shifts); edge values extend
    the rows beyond the detector."""
    n = sino.shape[-1]
    pad = int(math.ceil(abs(shift_px))) + 8
    ext = np.concatenate([np.repeat(sino[..., :1], pad, -1), sino, np.repeat(sino[..., -1:], pad, -1)], axis=-1)
    n_fft = 1 << int(math.ceil(math.log2(ext.shape[-1] + pad)))
    f = np.fft.rfftfreq(n_fft)
    spec = np.fft.rfft(ext, n=n_fft, axis=-1) * np.exp(2j * np.pi * f * shift_px)
    return np.fft.irfft(spec, n=n_fft, axis=-1)[..., pad : pad + n]


def _half_scan_views(geo: CTGeometry, nu: int) -> np.ndarray:
    """Views of the first half-turn of a full scan: 180 deg (parallel) or 180 deg + fan angle +
    one step (fan, for Parker weights). A wrong axis then gives the asymmetric doubled edges
    and negative tails of a half-scan, rather than the ring blur of a full turn. All views when
    the scan is shorter."""
    angles = geo.angles
    step = _angle_step(angles)
    rel = np.mod(angles - angles[0], 2.0 * np.pi)
    if geo.mode == "parallel":
        span = np.pi - 0.5 * step
    else:
        delta = math.atan((nu / 2.0 + 1.0) * geo.detector_pixel_mm[1] / geo.dsd_mm)
        span = np.pi + 2.0 * delta + 1.5 * step
    sel = np.flatnonzero(rel <= span)
    if _coverage(angles) < 2.0 * np.pi - 0.5 * step or sel.size < 8:
        return np.arange(angles.size)
    return sel


def _criterion(img: np.ndarray, mask: np.ndarray, metric: str) -> float:
    if metric == "tv":
        gy = np.diff(img, axis=0)[:, :-1]
        gx = np.diff(img, axis=1)[:-1, :]
        tv = np.sqrt(gx * gx + gy * gy)
        return float(tv[mask[:-1, :-1]].sum())
    neg = np.minimum(img, 0.0)
    return float(-neg[mask].sum())


def cor_by_image_quality(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    *,
    centre_px: float = 0.0,
    search_px: float | None = None,
    step_px: float = 0.25,
    rows: Sequence[int] | None = None,
    metric: str = "negativity",
    half_scan: bool | None = None,
    max_columns: int = 320,
    filter: str = "hann",
) -> CORResult:
    """Axis shift whose FBP reconstructions of a few rows have the fewest artefacts (least
    negative mass, or least TV); see the module docstring.

    Each candidate shifts the sinogram so that the candidate axis column sits on the detector
    centre (a band-limited Fourier shift, so no candidate is favoured by interpolation blur)
    and reconstructs it with FBP on a grid of detector-pitch pixels.

    Args:
        projections: line integrals [V, v, u] (numpy or torch).
        geometry: parallel, fan or cone beam (cone: the central row only); its own u offset
            is ignored (it is what is estimated).
        centre_px, search_px: candidate shifts ``centre_px +- search_px`` every ``step_px``
            (default: a +-n_u/8 px search at 1 px, then +-1.5 px at ``step_px``).
        rows: detector rows to reconstruct (parallel beam; default 3 rows with most structure).
        metric: ``"negativity"`` (sum of negative values in the field of view; default) or
            ``"tv"`` (total variation). Both are fooled by the blur of large errors, so wide
            searches are less reliable than a refinement around a registration estimate.
        half_scan: reconstruct from the first half-turn only (180 deg; fan: 180 deg + fan angle,
            Parker-weighted). ``None`` (default): when the scan is a full turn. A wrong axis
            blurs a full-turn reconstruction into rings, which neither metric detects well.
        max_columns: detectors wider than this are binned by an integer factor first (speed).
        filter: FBP filter; a smooth one (default Hann) keeps noise from dominating the metric.
    """
    p = _check_inputs(projections, geometry, "cor_by_image_quality")
    if metric not in METRICS:
        raise InputError("metric", f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    if step_px <= 0:
        raise InputError("step_px", f"must be > 0, got {step_px}")
    if search_px is not None and search_px <= 0:
        raise InputError("search_px", f"must be > 0, got {search_px}")
    if max_columns < 16:
        raise InputError("max_columns", f"must be >= 16, got {max_columns}")
    geo = geometry
    if geo.mode == "cone":
        p, geo = _central_fan(p, geo)
    nv, nu = geo.n_detector
    if rows is None:
        rows = _structured_rows(p, 3)
    rows = [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= nv:
        raise InputError("rows", f"expected detector rows in 0..{nv - 1}, got {rows!r}")
    if geo.mode == "fan":
        rows = [0]
    views = _half_scan_views(geo, nu) if half_scan in (None, True) else np.arange(geo.n_views)
    if half_scan is True and views.size == geo.n_views:
        logger.info("cor_by_image_quality: the scan covers less than a full turn; using all views")
    geo_v = geo.subset(views)
    sino = p[views][:, rows, :]  # [V', R, nu]
    # optional binning along u; keep track of the centre of the kept columns
    b = max(1, int(math.ceil(nu / max_columns)))
    nu_b = nu // b
    kept = nu_b * b
    sino_b = sino[:, :, :kept].reshape(sino.shape[0], len(rows), nu_b, b).mean(axis=3)
    pixel_b = geo.detector_pixel_mm[1] * b
    centre_shift = ((nu - 1) / 2.0) - ((kept - 1) / 2.0)  # original centre relative to the kept one, px
    sgeo = _slice_geometry(geo_v, len(rows), nu_b, pixel_b)
    # field-of-view mask, fixed for all candidates
    lim = float(search_px if search_px is not None else nu / 8.0)
    n = sgeo.n_voxel[1]
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2.0, xx - (n - 1) / 2.0)
    radius = 0.95 * (n / 2.0 - (abs(centre_px) + lim) / b - 1.0)
    if radius < n / 8.0:
        raise InputError("search_px", f"search range {centre_px:+.1f} +- {lim:.1f} px leaves too small a field of view for {nu} columns")
    mask = r <= radius
    short = "parker" if geo.mode == "fan" and views.size < geo.n_views else "error"

    from recon.ct.analytic import fbp  # local import: analytic imports the projector stack

    row_scale: list[float] = []

    def evaluate(shifts: np.ndarray) -> np.ndarray:
        vals = np.zeros((len(rows), shifts.size))
        for k, s in enumerate(shifts):
            # move the candidate axis column onto the detector centre (binned px, kept columns)
            shifted = _fourier_shift(sino_b, (s + centre_shift) / b)
            vol = fbp(torch.as_tensor(shifted, dtype=torch.float32), sgeo, filter=filter, short_scan=short).numpy().astype(np.float64)
            for ri in range(len(rows)):
                vals[ri, k] = _criterion(vol[ri], mask, metric)
        # normalise each row's curve (by its first call's median) so rows of different contrast weigh alike
        if not row_scale:
            row_scale.extend(float(max(m, 1e-30)) for m in np.median(vals, axis=1))
        return (vals / np.asarray(row_scale)[:, None]).mean(axis=0)

    with _quiet("recon.geometry.ct"):
        if search_px is None:
            coarse = centre_px + np.arange(-math.floor(lim), math.floor(lim) + 1, 1.0)
            c_vals = evaluate(coarse)
            center = float(coarse[int(np.argmin(c_vals))])
            on_edge = center in (coarse[0], coarse[-1])
            fine = center + np.arange(-1.5, 1.5 + 1e-9, step_px)
            f_vals = evaluate(fine)
            all_x, all_y = np.concatenate([coarse, fine]), np.concatenate([c_vals, f_vals])
        else:
            fine = centre_px + np.arange(-search_px, search_px + 1e-9, step_px)
            f_vals = evaluate(fine)
            all_x, all_y = fine, f_vals
            on_edge = int(np.argmin(f_vals)) in (0, fine.size - 1)
    order = np.argsort(all_x)
    all_x, all_y = all_x[order], all_y[order]
    shift = _parabola_min(fine, f_vals, 1.0)
    vmin = float(np.min(f_vals))
    side = [np.interp(shift + d, all_x, all_y) for d in (-2.0, 2.0) if all_x[0] <= shift + d <= all_x[-1]]
    rise = (float(np.mean(side)) - vmin) / max(abs(vmin), 1e-30) if side else 0.0
    confidence = 0.0 if on_edge else max(rise, 0.0) / (max(rise, 0.0) + 0.05)
    # uncertainty (heuristic): half-width at which the fitted parabola rises by 0.1 % of the
    # minimum, clamped to 0.02..0.5 px
    sel = np.abs(fine - fine[int(np.argmin(f_vals))]) <= 1.0 + 1e-9
    unc = 0.5
    if sel.sum() >= 3:
        a = np.polyfit(fine[sel], f_vals[sel], 2)[0]
        if a > 0:
            unc = float(np.clip(math.sqrt(1e-3 * max(vmin, 0.0) / a), 0.02, 0.5))
    if on_edge:
        logger.warning(
            "cor_by_image_quality: the %s minimum lies on the edge of the search range (%.1f px); widen search_px", metric, shift
        )
    details = {
        "metric": metric,
        "rows": rows,
        "binning": b,
        "shifts_px": [float(x) for x in all_x],
        "criterion": [float(y) for y in all_y],
        "relative_rise_2px": rise,
        "minimum_on_edge": bool(on_edge),
    }
    res = _result(shift, geo, confidence, unc, f"fbp-{metric}", details)
    logger.info("COR (FBP %s): shift %.2f px (axis column %.2f), confidence %.2f", metric, res.shift_px, res.axis_column_px, res.confidence)
    return res


class _quiet:
    """Raise a logger's level for the block (FBP's field-of-view warnings for every candidate)."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


# ---------------------------------------------------------------------- combined
def estimate_cor(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    *,
    method: str = "auto",
    refine_px: float = 3.0,
    **kwargs,
) -> CORResult:
    """Centre of rotation from the projections alone.

    ``method``: ``"registration"`` (:func:`cor_from_mirrored_projections`), ``"image"``
    (:func:`cor_by_image_quality`, wide search) or ``"auto"``: registration, then the
    image-quality search within ``+-refine_px`` of it, the two combined by inverse-variance
    weighting of their ``uncertainty_px`` (a wide image-quality search alone when no mirror
    pair exists). ``kwargs`` go to :func:`cor_by_image_quality` (``rows``, ``metric``,
    ``step_px``, ``half_scan``, ``max_columns``, ``filter``). The result's ``details`` hold
    both estimates and their disagreement.
    """
    if method not in ("auto", "registration", "image"):
        raise InputError("method", f"expected 'auto', 'registration' or 'image', got {method!r}")
    allowed = {"rows", "metric", "step_px", "half_scan", "max_columns", "filter"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError("estimate_cor", f"unknown options {unknown} (expected some of {', '.join(sorted(allowed))})")
    if refine_px <= 0:
        raise InputError("refine_px", f"must be > 0, got {refine_px}")
    if method == "registration":
        res = cor_from_mirrored_projections(projections, geometry)
        if res is None:
            raise InputError(
                "projections", "no two views are ~180 deg apart (or a fan scan is not a full turn); use method='image' or 'auto'"
            )
        return res
    if method == "image":
        return cor_by_image_quality(projections, geometry, **kwargs)
    a = cor_from_mirrored_projections(projections, geometry)
    if a is None:
        b = cor_by_image_quality(projections, geometry, **kwargs)
        return dataclasses.replace(b, details={**b.details, "registration": None})
    b = cor_by_image_quality(projections, geometry, centre_px=a.shift_px, search_px=refine_px, **kwargs)
    delta = abs(a.shift_px - b.shift_px)
    details = {"registration": a.to_dict(), "image": b.to_dict(), "disagreement_px": delta}
    if b.details["minimum_on_edge"]:
        logger.warning(
            "estimate_cor: the image-quality minimum lies %.1f px or more from the registration; keeping the registration", refine_px
        )
        return dataclasses.replace(a, confidence=a.confidence * 0.5, details=details)
    wa, wb = 1.0 / a.uncertainty_px**2, 1.0 / b.uncertainty_px**2
    shift = (wa * a.shift_px + wb * b.shift_px) / (wa + wb)
    uncertainty = math.sqrt(1.0 / (wa + wb))
    confidence = max(a.confidence, b.confidence) * math.exp(-0.5 * (delta / 0.5) ** 2)
    details["weights"] = {"registration": wa / (wa + wb), "image": wb / (wa + wb)}
    res = _result(shift, geometry, confidence, uncertainty, f"combined({a.method}+{b.method})", details)
    logger.info(
        "COR: shift %.2f px (registration %.2f, image %.2f; axis column %.2f), confidence %.2f",
        res.shift_px, a.shift_px, b.shift_px, res.axis_column_px, res.confidence,
    )
    return res
