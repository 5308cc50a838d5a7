"""Analytic reconstruction: FDK for cone beam, FBP for fan and parallel beam.

Steps (Feldkamp-Davis-Kress; Kak & Slaney ch. 3 for the fan/parallel special cases):

1. cone/fan: weight each pixel by the cosine of its ray with the central ray,
   ``DSD / sqrt(DSD^2 + U^2 + V^2)`` (U, V: mm from the principal point);
2. short scans: Parker weights (cone/fan) -- only when ``short_scan="parker"``;
3. filter every detector row along u with the ramp filter (spatial-domain Ram-Lak kernel,
   zero-padded to a power of two >= 2 * n_u) times an optional window (Shepp-Logan, cosine,
   Hann, Hamming), on the detector scaled to the isocentre (pitch ``du * DSO / DSD``);
4. voxel-driven backprojection (:func:`recon.ct.project.voxel_driven_backproject`) with FDK's
   ``(DSO / U)^2`` distance weight and the angular step of each view; 1/2 for full 360 deg scans
   (each ray measured twice).

Why not the matched ray-driven adjoint ``Projector.backproject``: its weight falls as
1/distance^2 in 3D but 1/distance in 2D (fan), so the fan-beam ``1/U^2`` weight cannot be
folded into the projections, and it aliases when rays are sparser than voxels. The
interpolating backprojector is the standard choice for FDK (TIGRE does the same).

Units: projections are line integrals (dimensionless); the result is attenuation in 1/mm when
the geometry is in mm.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from recon.geometry.ct import CTGeometry
from recon.ct.project import torch_threads, voxel_driven_backproject
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["FILTERS", "fdk", "fbp", "filter_projections", "ramp_filter_response", "view_weights"]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")
_FILTER_ALIASES = {"ramp": "ram-lak", "ram_lak": "ram-lak", "ramlak": "ram-lak", "shepp_logan": "shepp-logan", "hanning": "hann"}


def filter_name(name: str) -> str:
    key = _FILTER_ALIASES.get(name.lower(), name.lower())
    if key not in FILTERS:
        raise InputError("filter", f"unknown filter {name!r} (expected one of {', '.join(FILTERS)})")
    return key


def ramp_filter_response(n_pad: int, filter: str = "ram-lak", cutoff: float = 1.0) -> np.ndarray:
    """Frequency response [n_pad // 2 + 1] of the windowed ramp for an ``n_pad``-long rfft.

    The ramp is the FFT of the band-limited spatial Ram-Lak kernel (h[0] = 1/4,
    h[odd n] = -1/(pi n)^2, h[even n] = 0; unit sample spacing), which avoids the DC offset of
    a sampled ``|f|``. ``cutoff`` in (0, 1] is a fraction of Nyquist: frequencies above it are
    zeroed and the window is stretched to end there.
    """
    name = filter_name(filter)
    if not 0.0 < cutoff <= 1.0:
        raise InputError("cutoff", f"must be in (0, 1] (fraction of Nyquist), got {cutoff}")
    n = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(-(n_pad // 2) + 1, 0)]).astype(np.float64)
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = (n.astype(np.int64) % 2) == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    ramp = np.real(np.fft.rfft(h))
    f = np.fft.rfftfreq(n_pad)  # cycles / sample, 0 .. 0.5
    x = f / (0.5 * cutoff)  # 0 .. 1 up to the cut-off
    if name == "ram-lak":
        window = np.ones_like(x)
    elif name == "shepp-logan":
        window = np.sinc(x / 2.0)
    elif name == "cosine":
        window = np.cos(np.pi * x / 2.0)
    elif name == "hann":
        window = 0.5 * (1.0 + np.cos(np.pi * x))
    else:  # hamming
        window = 0.54 + 0.46 * np.cos(np.pi * x)
    window[x > 1.0] = 0.0
    return ramp * window


def filter_projections(
    projections: torch.Tensor,  # [V, v, u]
    pixel_mm: float,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
) -> torch.Tensor:  # [V, v, u]
    """Ramp-filter every detector row (last axis) of [V, v, u] projections sampled every
    ``pixel_mm``; zero-padded to a power of two >= 2 * n_u. Returns the same shape, in units of
    the input per mm (the continuous convolution with the ``|omega|`` kernel)."""
    nu = projections.shape[-1]
    n_pad = max(64, 1 << int(math.ceil(math.log2(2 * nu))))
    resp = torch.as_tensor(ramp_filter_response(n_pad, filter, cutoff), dtype=projections.dtype, device=projections.device)
    spec = torch.fft.rfft(projections, n=n_pad, dim=-1)
    out = torch.fft.irfft(spec * resp, n=n_pad, dim=-1)[..., :nu]
    return out / pixel_mm


def _circular_gaps(angles: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort angles modulo ``period``; return (order, gap_before, gap_after) per sorted view."""
    a = np.mod(angles, period)
    order = np.argsort(a, kind="stable")
    s = a[order]
    gaps = np.diff(np.concatenate([s, s[:1] + period]))  # gap after each sorted view
    gap_after = gaps
    gap_before = np.roll(gaps, 1)
    return order, gap_before, gap_after


def view_weights(geometry: CTGeometry) -> tuple[np.ndarray, str, float]:
    """Angular quadrature weight (radians) of each view, the scan kind and its coverage.

    Returns ``(weights [V], kind, coverage_rad)``: kind is ``"full"`` (cone/fan over 360 deg,
    weights include the 1/2 for double coverage; parallel over 180 deg or more, angles taken
    modulo 180 deg) or ``"short"`` (cone/fan with an angular gap; weights are the plain steps,
    to be combined with Parker weights).
    """
    angles = geometry.angles
    V = angles.size
    parallel = geometry.mode == "parallel"
    period = math.pi if parallel else 2.0 * math.pi
    if V == 1:
        return np.array([period / 2.0]), "short", 0.0
    order, before, after = _circular_gaps(angles, period)
    positive = np.concatenate([before, after])
    positive = positive[positive > 1e-12]
    step = float(np.median(positive)) if positive.size else period / V
    largest = float(after.max())
    coverage = period - largest + step
    w_sorted = 0.5 * (np.minimum(before, 3.0 * step) + np.minimum(after, 3.0 * step))
    weights = np.empty(V)
    weights[order] = w_sorted
    if largest <= 1.5 * step + 1e-9:
        kind = "full"
        if not parallel:
            weights = weights * 0.5
    else:
        kind = "short"
    return weights, kind, coverage


def _cone_frame(geometry: CTGeometry):
    """Per-view (dsd, dso, principal-point offsets a_F, b_F in pixels) for cone/fan beams."""
    rays = geometry.per_view_rays()
    s, d, u, v = rays.source_mm, rays.detector_centre_mm, rays.u_mm, rays.v_mm
    n = np.cross(u, v)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    sign = np.sign(np.sum((d - s) * n, axis=1, keepdims=True))
    n = n * np.where(sign == 0, 1.0, sign)
    dsd = np.sum((d - s) * n, axis=1)
    dso = np.sum(-s * n, axis=1)
    foot = s + dsd[:, None] * n - d
    uu, vv, uv = np.sum(u * u, 1), np.sum(v * v, 1), np.sum(u * v, 1)
    fu, fv = np.sum(foot * u, 1), np.sum(foot * v, 1)
    det = uu * vv - uv * uv
    a_f = (fu * vv - fv * uv) / det
    b_f = (fv * uu - fu * uv) / det
    return dsd, dso, a_f, b_f, np.sqrt(uu), np.sqrt(vv)


def _parker_weights(beta: np.ndarray, gamma: np.ndarray, delta: float) -> np.ndarray:
    """Parker (1982) short-scan weights for scan angles ``beta`` [V, 1] in [0, pi + 2 delta] and
    fan angles ``gamma`` [1, nu]; conjugate rays are (beta, gamma) and (beta + pi + 2 gamma, -gamma)."""
    w = np.ones(np.broadcast_shapes(beta.shape, gamma.shape))
    b = np.broadcast_to(beta, w.shape)
    g = np.broadcast_to(gamma, w.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = b < 2.0 * (delta - g)
        w = np.where(r1, np.sin(np.pi / 4.0 * b / (delta - g)) ** 2, w)
        r3 = b > np.pi - 2.0 * g
        w = np.where(r3, np.sin(np.pi / 4.0 * (np.pi + 2.0 * delta - b) / (delta + g)) ** 2, w)
    w = np.where(b > np.pi + 2.0 * delta, 0.0, w)
    w = np.where(b < 0.0, 0.0, w)
    return np.nan_to_num(w, nan=0.0)


def fdk(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    *,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    short_scan: str = "error",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    num_threads: int | str | None = "auto",
) -> torch.Tensor:  # [Z, Y, X]
    """Analytic reconstruction of [V, v, u] line integrals -> [Z, Y, X] attenuation (1/mm).

    Cone beam: FDK. Fan beam: fan-beam FBP (flat detector). Parallel beam: FBP (angles taken
    modulo 180 deg). ``short_scan``: ``"error"`` refuses cone/fan scans that do not cover
    360 deg; ``"parker"`` applies Parker weights (needs >= 180 deg + fan angle). ``filter``:
    one of ``FILTERS``; ``cutoff``: fraction of Nyquist. ``num_threads``: torch CPU threads
    (see :func:`recon.ct.project.torch_threads`).
    """
    with torch_threads(num_threads):
        return _fdk(projections, geometry, filter, cutoff, short_scan, device, dtype)


def _fdk(projections, geometry, filter, cutoff, short_scan, device, dtype) -> torch.Tensor:
    geo = geometry
    if not isinstance(geo, CTGeometry):
        raise InputError("geometry", f"expected a CTGeometry, got {type(geo).__name__}")
    proj = torch.as_tensor(projections)
    if proj.dim() != 3 or tuple(proj.shape) != geo.projection_shape:
        raise InputError("projections", f"expected shape {list(geo.projection_shape)} (views, v, u), got {list(proj.shape)}")
    if not torch.isfinite(proj).all():
        raise InputError("projections", "contains NaN/inf; expected finite line integrals")
    if short_scan not in ("error", "parker"):
        raise InputError("short_scan", f"expected 'error' or 'parker', got {short_scan!r}")
    dev = torch.device(device) if device is not None else proj.device
    proj = proj.to(device=dev, dtype=dtype)
    nv, nu = geo.n_detector
    weights, kind, coverage = view_weights(geo)
    geo.fov_check(shape="cylinder")  # logs a warning when projections of the field of view are truncated

    if geo.mode == "parallel":
        if kind != "full":
            logger.warning(
                "fbp: parallel-beam angles cover %.1f deg of the 180 deg needed; expect limited-angle artefacts",
                math.degrees(coverage),
            )
        q = filter_projections(proj, geo.detector_pixel_mm[1], filter, cutoff)
        return voxel_driven_backproject(q, geo, view_weights=weights)

    dsd, dso, a_f, b_f, du, dv = _cone_frame(geo)
    cols = np.arange(nu, dtype=np.float64) - (nu - 1) / 2.0
    rows = np.arange(nv, dtype=np.float64) - (nv - 1) / 2.0
    U = (cols[None, :] - a_f[:, None]) * du[:, None]  # [V, nu] mm from the principal point
    Vmm = (rows[None, :] - b_f[:, None]) * dv[:, None]  # [V, nv]
    if geo.mode == "fan":
        Vmm = np.zeros_like(Vmm)
    cosw = dsd[:, None, None] / np.sqrt(dsd[:, None, None] ** 2 + U[:, None, :] ** 2 + Vmm[:, :, None] ** 2)  # [V, nv, nu]
    pre = cosw
    if kind == "short":
        if short_scan != "parker":
            raise InputError(
                "projections",
                f"FDK needs a full 360 deg scan, these {geo.n_views} views cover {math.degrees(coverage):.1f} deg; "
                "pass short_scan='parker' for Parker short-scan weighting",
            )
        gamma = np.arctan(U / dsd[:, None])  # [V, nu]
        delta_fan = float(np.max(np.abs(gamma)))
        # scan angle of each view from the start of the scan (after the largest angular gap)
        a = np.mod(geo.angles, 2.0 * np.pi)
        order = np.argsort(a)
        gaps = np.diff(np.concatenate([a[order], a[order][:1] + 2.0 * np.pi]))
        start = a[order][(int(np.argmax(gaps)) + 1) % a.size]
        beta = np.mod(a - start, 2.0 * np.pi)
        span = float(beta.max())
        delta = (span - np.pi) / 2.0
        if delta < delta_fan - 1e-6:
            raise InputError(
                "projections",
                f"short scan covers {math.degrees(span):.1f} deg but Parker weighting needs >= 180 + fan angle "
                f"{math.degrees(2 * delta_fan):.1f} = {180 + math.degrees(2 * delta_fan):.1f} deg",
            )
        # Our conjugate rays are (beta + pi - 2 gamma, -gamma): Parker's formula with -gamma.
        pw = _parker_weights(beta[:, None], -gamma, delta)  # [V, nu]
        pre = pre * pw[:, None, :]
    proj = proj * torch.as_tensor(pre, dtype=dtype, device=dev)
    # Filter on the detector scaled to the isocentre (per-view magnification).
    pitch_iso = du * dso / dsd  # [V] detector pitch at the isocentre
    if np.ptp(pitch_iso) <= 1e-9 * float(np.max(pitch_iso)):  # circular scans: one pitch
        q = filter_projections(proj, float(pitch_iso[0]), filter, cutoff)
    else:  # vector geometries: per-view magnification
        q = torch.stack([filter_projections(proj[i : i + 1], float(pitch_iso[i]), filter, cutoff)[0] for i in range(geo.n_views)])
    return voxel_driven_backproject(q, geo, view_weights=weights, distance_weighting=True)


def fbp(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    **kwargs,
) -> torch.Tensor:  # [Z, Y, X]
    """Filtered backprojection for parallel and fan beams (same as :func:`fdk`, which handles
    every mode); [V, v, u] -> [Z, Y, X]."""
    return fdk(projections, geometry, **kwargs)
