"""CT scan geometry: one frozen dataclass for circular cone-, fan- and parallel-beam scans.

Parameters follow TIGRE's (Python) geometry, in millimetres, made explicit in the field names.

Conventions (used by every module in ``recon.ct``)
---------------------------------------------------
World frame
    Right-handed (x, y, z) in mm. The rotation axis is the z axis through the world origin
    (the isocentre).
Volume arrays
    ``[z, y, x]`` (C order, x fastest; TIGRE's layout). Voxel ``(k, j, i)`` has its centre at
    ``x = (i - (X-1)/2) * voxel_mm[2] + offset_origin_mm[2]``, likewise y with ``j`` and
    ``voxel_mm[1]``, z with ``k`` and ``voxel_mm[0]``.
Projection arrays
    ``[views, v, u]``: ``v`` is the detector row, ``u`` the column. Pixel ``(r, c)`` of view
    ``s`` has its centre at ``D_s + (c - (nu-1)/2) * U_s + (r - (nv-1)/2) * V_s`` where ``D``
    is the detector centre and ``U``, ``V`` the per-pixel step vectors (see ``per_view_rays``).
Circular scans (TIGRE's convention)
    At angle ``theta`` the source sits at ``R(theta) @ (dso_mm, 0, 0)``: angle 0 puts the source
    on the +x axis, and increasing angles rotate it counter-clockwise seen from +z (90 deg puts
    it on +y). ``R`` is the rotation about z. The detector centre is
    ``R(theta) @ (-(dsd_mm - dso_mm), offset_u, offset_v)``; ``U = R(theta) @ (0, du, 0)``
    (columns run along +y at angle 0) and ``V = (0, 0, -dv)``: row 0 is the top (+z) row, as in
    TIGRE and in image viewers. ``offset_detector_mm = (v, u)`` shifts the detector along
    (+z, +U). Parallel beam: rays travel along ``R(theta) @ (-1, 0, 0)``.
Fan beam
    2D: one detector row (``n_detector[0] == 1``) and one volume slice (``n_voxel[0] == 1``);
    the rays lie in the slice plane.
Vector geometry
    ``vectors`` ([V, 12], like ASTRA's ``cone_vec`` / ``parallel3d_vec`` in world mm): per view
    ``(source or ray direction, detector centre, U, V)``. When given, it replaces the circular
    parameters for ray geometry (``dsd_mm``/``dso_mm``/offsets are then only informative).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recon.io.atomic import atomic_write_text
from recon.errors import InputError

logger = logging.getLogger(__name__)

MODES = ("cone", "fan", "parallel")


@dataclass(frozen=True)
class ViewRays:
    """Per-view ray geometry in world millimetres; the projector's only input.

    For cone/fan beams ``source_mm`` is set and ``ray_direction`` is ``None``; for parallel
    beams it is the other way round.
    """

    source_mm: np.ndarray | None  # [V, 3] source position (cone, fan)
    ray_direction: np.ndarray | None  # [V, 3] unit ray direction (parallel)
    detector_centre_mm: np.ndarray  # [V, 3] centre of the detector
    u_mm: np.ndarray  # [V, 3] step from pixel (r, c) to (r, c+1)
    v_mm: np.ndarray  # [V, 3] step from pixel (r, c) to (r+1, c)

    @property
    def is_parallel(self) -> bool:
        return self.ray_direction is not None

    def as_vectors(self) -> np.ndarray:
        """[V, 12] ASTRA-style rows: (source or direction, detector centre, U, V)."""
        first = self.ray_direction if self.is_parallel else self.source_mm
        return np.concatenate([first, self.detector_centre_mm, self.u_mm, self.v_mm], axis=1)


@dataclass(frozen=True)
class FOVReport:
    """Result of :meth:`CTGeometry.fov_check`."""

    inside: bool
    """True when every corner of the volume box projects onto the detector in every view."""
    n_views_truncated: int
    """Views where some corner falls outside the detector."""
    max_overflow_u_px: float
    """Largest distance (pixels) a corner falls outside the detector along u (0 if none)."""
    max_overflow_v_px: float
    """Largest distance (pixels) a corner falls outside the detector along v (0 if none)."""
    source_inside_volume: bool
    """True when some source position lies inside the volume box (cone/fan)."""


def _tuple_of(value: Any, n: int, kind: type, name: str, where: str) -> tuple:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(where, f"{name} must be {n} numbers, got {value!r}") from None
    if arr.size != n:
        raise InputError(where, f"{name} must have {n} entries, got {arr.size} ({value!r})")
    if not np.all(np.isfinite(arr)):
        raise InputError(where, f"{name} must be finite, got {value!r}")
    if kind is int:
        if not np.all(arr == np.round(arr)):
            raise InputError(where, f"{name} must be whole numbers, got {value!r}")
        return tuple(int(a) for a in arr)
    return tuple(float(a) for a in arr)


def circular_angles(n_views: int, total_deg: float = 360.0, start_deg: float = 0.0) -> np.ndarray:
    """``n_views`` angles in radians, evenly spread over ``total_deg`` from ``start_deg``.

    The end point is excluded (R2-Gaussian / NAF: ``linspace(0, total, n + 1)[:-1] + start``).
    """
    if n_views < 1:
        raise InputError("n_views", f"must be >= 1, got {n_views}")
    return (np.linspace(0.0, math.radians(total_deg), n_views + 1)[:-1] + math.radians(start_deg)).astype(
        np.float64
    )


@dataclass(frozen=True, kw_only=True)
class CTGeometry:
    """Circular cone-, fan- or parallel-beam scan (TIGRE parameters, mm), or a per-view vector
    geometry. See the module docstring for axis conventions. Immutable and hashable."""

    mode: str
    """"cone", "fan" (2D: one detector row, one volume slice) or "parallel"."""
    n_detector: tuple[int, int]
    """Detector pixels (v rows, u columns)."""
    detector_pixel_mm: tuple[float, float]
    """Detector pixel pitch in mm (v, u)."""
    n_voxel: tuple[int, int, int]
    """Volume size in voxels (z, y, x)."""
    voxel_mm: tuple[float, float, float]
    """Voxel size in mm (z, y, x)."""
    angles_rad: tuple[float, ...] = ()
    """Rotation angle of each view in radians (TIGRE convention: source on +x at 0)."""
    dsd_mm: float | None = None
    """Distance source to detector (mm); required for cone and fan beams."""
    dso_mm: float | None = None
    """Distance source to rotation axis (mm); required for cone and fan beams; < dsd_mm."""
    offset_origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """World position of the volume centre (z, y, x) in mm (TIGRE offOrigin)."""
    offset_detector_mm: tuple[float, float] = (0.0, 0.0)
    """Detector shift (v, u) in mm (TIGRE offDetector): along +z and along +u."""
    vectors: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)
    """Optional [V, 12] per-view rows (source | ray direction, detector centre, U, V) in world
    mm, as ASTRA ``cone_vec`` / ``parallel3d_vec``; replaces the circular ray geometry."""

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        where = "CTGeometry"
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.mode not in MODES:
            raise InputError(f"{where}.mode", f"unknown mode {self.mode!r} (expected one of {', '.join(MODES)})")
        set_("n_detector", _tuple_of(self.n_detector, 2, int, "n_detector", f"{where}.n_detector"))
        set_("detector_pixel_mm", _tuple_of(self.detector_pixel_mm, 2, float, "detector_pixel_mm", f"{where}.detector_pixel_mm"))
        set_("n_voxel", _tuple_of(self.n_voxel, 3, int, "n_voxel", f"{where}.n_voxel"))
        set_("voxel_mm", _tuple_of(self.voxel_mm, 3, float, "voxel_mm", f"{where}.voxel_mm"))
        set_("offset_origin_mm", _tuple_of(self.offset_origin_mm, 3, float, "offset_origin_mm", f"{where}.offset_origin_mm"))
        set_("offset_detector_mm", _tuple_of(self.offset_detector_mm, 2, float, "offset_detector_mm", f"{where}.offset_detector_mm"))
        for name in ("n_detector", "detector_pixel_mm", "n_voxel", "voxel_mm"):
            values = getattr(self, name)
            if any(v <= 0 for v in values):
                raise InputError(f"{where}.{name}", f"all entries must be positive, got {values}")

        angles = np.asarray(self.angles_rad, dtype=np.float64).reshape(-1)
        if angles.size and not np.all(np.isfinite(angles)):
            bad = np.flatnonzero(~np.isfinite(angles))
            raise InputError(
                f"{where}.angles_rad", f"{bad.size} angle(s) are NaN/inf (first at index {int(bad[0])}); expected finite radians"
            )
        set_("angles_rad", tuple(float(a) for a in angles))

        if self.vectors is not None:
            vec = np.asarray(self.vectors, dtype=np.float64)
            if vec.ndim != 2 or vec.shape[1] != 12 or vec.shape[0] == 0:
                raise InputError(f"{where}.vectors", f"expected shape [V, 12], got {list(vec.shape)}")
            if not np.all(np.isfinite(vec)):
                raise InputError(f"{where}.vectors", "contains NaN/inf; expected finite mm values")
            u, v = vec[:, 6:9], vec[:, 9:12]
            if np.any(np.linalg.norm(u, axis=1) <= 0) or np.any(np.linalg.norm(v, axis=1) <= 0):
                raise InputError(f"{where}.vectors", "detector step vectors U and V must be non-zero")
            if np.any(np.linalg.norm(np.cross(u, v), axis=1) <= 1e-9 * np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)):
                raise InputError(f"{where}.vectors", "detector vectors U and V must not be parallel")
            if self.mode == "parallel" and np.any(np.linalg.norm(vec[:, 0:3], axis=1) <= 0):
                raise InputError(f"{where}.vectors", "parallel-beam ray directions (columns 0-2) must be non-zero")
            if angles.size and angles.size != vec.shape[0]:
                raise InputError(
                    f"{where}.angles_rad", f"{angles.size} angles but {vec.shape[0]} vector rows; expected equal counts"
                )
            set_("vectors", tuple(tuple(float(x) for x in row) for row in vec))
            if not angles.size:
                set_("angles_rad", tuple(float(a) for a in _angles_from_vectors(vec, self.mode == "parallel")))
        elif not angles.size:
            raise InputError(f"{where}.angles_rad", "no views: give at least one angle (or vectors)")

        if self.mode in ("cone", "fan"):
            if self.vectors is None or self.dsd_mm is not None or self.dso_mm is not None:
                for name in ("dsd_mm", "dso_mm"):
                    value = getattr(self, name)
                    if value is None or not np.isfinite(value) or value <= 0:
                        raise InputError(f"{where}.{name}", f"must be a positive distance in mm for {self.mode} beam, got {value}")
                    set_(name, float(value))
                if self.dsd_mm <= self.dso_mm:
                    raise InputError(
                        f"{where}.dsd_mm",
                        f"source-detector distance {self.dsd_mm} mm must exceed source-axis distance dso_mm {self.dso_mm} mm",
                    )
        else:
            for name in ("dsd_mm", "dso_mm"):
                value = getattr(self, name)
                if value is not None:
                    if not np.isfinite(value) or value <= 0:
                        raise InputError(f"{where}.{name}", f"must be positive when given, got {value}")
                    set_(name, float(value))
        if self.mode == "fan":
            if self.n_detector[0] != 1 or self.n_voxel[0] != 1:
                raise InputError(
                    where,
                    f"fan beam is 2D: expected n_detector[0] == 1 and n_voxel[0] == 1, got n_detector={self.n_detector}, "
                    f"n_voxel={self.n_voxel} (use mode='cone' for several rows)",
                )
            if self.offset_detector_mm[0] != 0.0:
                raise InputError(f"{where}.offset_detector_mm", "fan beam has one row: the v offset must be 0")

    # ------------------------------------------------------------------ basic properties
    @property
    def n_views(self) -> int:
        return len(self.angles_rad) if self.vectors is None else len(self.vectors)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """Volume array shape ``(Z, Y, X)``."""
        return self.n_voxel

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        """Projection array shape ``(views, v, u)``."""
        return (self.n_views, *self.n_detector)

    @property
    def volume_size_mm(self) -> tuple[float, float, float]:
        """Extent of the volume box (z, y, x) in mm (TIGRE sVoxel)."""
        return tuple(n * d for n, d in zip(self.n_voxel, self.voxel_mm))  # type: ignore[return-value]

    @property
    def detector_size_mm(self) -> tuple[float, float]:
        """Extent of the detector (v, u) in mm (TIGRE sDetector)."""
        return tuple(n * d for n, d in zip(self.n_detector, self.detector_pixel_mm))  # type: ignore[return-value]

    @property
    def angles(self) -> np.ndarray:
        """``angles_rad`` as a float64 array [V]."""
        return np.asarray(self.angles_rad, dtype=np.float64)

    def voxel_centres_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D world coordinates (z [Z], y [Y], x [X]) of the voxel centres in mm."""
        out = []
        for n, d, o in zip(self.n_voxel, self.voxel_mm, self.offset_origin_mm):
            out.append((np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * d + o)
        return tuple(out)  # type: ignore[return-value]

    # ------------------------------------------------------------------ rays
    def per_view_rays(self) -> ViewRays:
        """Per-view source (or ray direction), detector centre, U and V in world mm.

        Computed from the circular parameters when ``vectors`` is absent; the projector uses
        only this representation, so calibrated and circular scans share one code path.
        """
        if self.vectors is not None:
            vec = np.asarray(self.vectors, dtype=np.float64)
            first = vec[:, 0:3]
            if self.mode == "parallel":
                return ViewRays(None, first / np.linalg.norm(first, axis=1, keepdims=True), vec[:, 3:6], vec[:, 6:9], vec[:, 9:12])
            return ViewRays(first.copy(), None, vec[:, 3:6].copy(), vec[:, 6:9].copy(), vec[:, 9:12].copy())

        th = self.angles
        c, s = np.cos(th), np.sin(th)
        zeros = np.zeros_like(th)
        dv, du = self.detector_pixel_mm
        off_v, off_u = self.offset_detector_mm
        # R(theta) applied to (a, b, c): (a cos - b sin, a sin + b cos, c)
        u_mm = np.stack([-du * s, du * c, zeros], axis=1)
        v_mm = np.stack([zeros, zeros, np.full_like(th, -dv)], axis=1)
        if self.mode == "parallel":
            det_x = zeros  # the detector plane through the axis; only its orientation matters
            center = np.stack([det_x * c - off_u * s, det_x * s + off_u * c, np.full_like(th, off_v)], axis=1)
            direction = np.stack([-c, -s, zeros], axis=1)
            return ViewRays(None, direction, center, u_mm, v_mm)
        assert self.dsd_mm is not None and self.dso_mm is not None
        det_x = -(self.dsd_mm - self.dso_mm)
        z_plane = self.offset_origin_mm[0] if self.mode == "fan" else 0.0
        source = np.stack([self.dso_mm * c, self.dso_mm * s, np.full_like(th, z_plane)], axis=1)
        center = np.stack(
            [det_x * c - off_u * s, det_x * s + off_u * c, np.full_like(th, off_v + z_plane)], axis=1
        )
        return ViewRays(source, None, center, u_mm, v_mm)

    def as_vectors(self) -> np.ndarray:
        """[V, 12] ASTRA-style vector rows of this geometry (see ``ViewRays.as_vectors``)."""
        return self.per_view_rays().as_vectors()

    # ------------------------------------------------------------------ derived geometries
    def with_angles(self, angles_rad: Iterable[float]) -> "CTGeometry":
        """Same scanner with other rotation angles (circular geometries only)."""
        if self.vectors is not None:
            raise InputError("CTGeometry.with_angles", "this geometry is defined by per-view vectors; use subset() instead")
        return dataclasses.replace(self, angles_rad=tuple(float(a) for a in np.asarray(angles_rad, dtype=np.float64).reshape(-1)))

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> "CTGeometry":
        """Geometry of the selected views (indices into ``range(n_views)``, or a slice)."""
        idx = normalize_view_indices(indices, self.n_views)
        angles = tuple(self.angles_rad[i] for i in idx)
        vectors = None if self.vectors is None else tuple(self.vectors[i] for i in idx)
        return dataclasses.replace(self, angles_rad=angles, vectors=vectors)

    def view_indices(self, n: int) -> np.ndarray:
        """Indices of ``n`` views spread evenly over the existing ones (sparse-view protocol)."""
        if not 1 <= n <= self.n_views:
            raise InputError("CTGeometry.views", f"asked for {n} views out of {self.n_views}; expected 1..{self.n_views}")
        return np.floor(np.arange(n) * (self.n_views / n)).astype(np.int64)

    def views(self, n: int) -> "CTGeometry":
        """Geometry keeping ``n`` evenly spread views (``view_indices(n)`` of them)."""
        return self.subset(self.view_indices(n))

    def with_volume(self, n_voxel: Sequence[int], voxel_mm: Sequence[float], offset_origin_mm: Sequence[float] | None = None) -> "CTGeometry":
        """Same scan reconstructed on another voxel grid."""
        return dataclasses.replace(
            self,
            n_voxel=tuple(n_voxel),
            voxel_mm=tuple(voxel_mm),
            offset_origin_mm=self.offset_origin_mm if offset_origin_mm is None else tuple(offset_origin_mm),
        )

    # ------------------------------------------------------------------ projection of points
    def project_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Detector coordinates (row r, column c; fractional pixel indices) of world points.

        points_mm: [P, 3] (x, y, z) mm. Returns [V, P, 2] as (r, c); NaN where a point lies
        behind the source.
        """
        rays = self.per_view_rays()
        p = np.asarray(points_mm, dtype=np.float64)[None]  # [1, P, 3]
        d, u, v = rays.detector_centre_mm[:, None], rays.u_mm[:, None], rays.v_mm[:, None]
        n = np.cross(u, v)
        if rays.is_parallel:
            r = rays.ray_direction[:, None]
            # p + s r lies on the detector plane: (p + s r - d) . n = 0
            s = -np.sum((p - d) * n, -1, keepdims=True) / np.sum(r * n, -1, keepdims=True)
            q = p + s * r - d
        else:
            src = rays.source_mm[:, None]
            w = p - src
            denom = np.sum(w * n, -1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.sum((d - src) * n, -1, keepdims=True) / denom
            t = np.where(t > 0, t, np.nan)
            q = src + t * w - d
        # Solve q = a u + b v (u, v need not be orthogonal)
        uu, vv, uv = np.sum(u * u, -1), np.sum(v * v, -1), np.sum(u * v, -1)
        qu, qv = np.sum(q * u, -1), np.sum(q * v, -1)
        det = uu * vv - uv * uv
        a = (qu * vv - qv * uv) / det
        b = (qv * uu - qu * uv) / det
        nv, nu = self.n_detector
        return np.stack([b + (nv - 1) / 2.0, a + (nu - 1) / 2.0], axis=-1)

    def fov_check(
        self,
        volume: "CTGeometry | Sequence[int] | np.ndarray | None" = None,
        *,
        shape: str = "box",
        tolerance_px: float = 0.5,
    ) -> FOVReport:
        """Check that the volume box stays inside the detector field of view in every view.

        ``volume`` may be ``None`` (this geometry's voxel grid), a volume array [Z, Y, X] (its
        shape must match ``n_voxel``), or another ``CTGeometry`` whose voxel grid is checked
        against this scan. ``shape="box"`` checks the corners of the voxel box;
        ``"cylinder"`` the cylinder inscribed in it (around the rotation axis), the usual
        reconstruction field of view. Logs a warning (logger ``recon.geometry.ct``) when corners of the box
        project outside the detector (truncated projections) or a source lies inside the box.
        """
        geo = self
        if isinstance(volume, CTGeometry):
            geo = self.with_volume(volume.n_voxel, volume.voxel_mm, volume.offset_origin_mm)
        elif volume is not None:
            shape = tuple(np.shape(volume))[-3:]
            if shape != self.n_voxel:
                raise InputError("fov_check", f"volume shape {shape} does not match n_voxel {self.n_voxel} (z, y, x)")
        zc, yc, xc = geo.voxel_centres_mm()
        half = np.asarray(geo.voxel_mm) / 2.0
        lo = np.array([xc[0] - half[2], yc[0] - half[1], zc[0] - half[0]])
        hi = np.array([xc[-1] + half[2], yc[-1] + half[1], zc[-1] + half[0]])
        if self.mode == "fan":  # the slice plane only
            lo[2] = hi[2] = geo.offset_origin_mm[0]
        if shape == "box":
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        elif shape == "cylinder":
            centre, radius = (lo[:2] + hi[:2]) / 2.0, float(np.min(hi[:2] - lo[:2]) / 2.0)
            phi = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
            ring = np.stack([centre[0] + radius * np.cos(phi), centre[1] + radius * np.sin(phi)], axis=1)
            corners = np.concatenate([np.column_stack([ring, np.full(64, z)]) for z in (lo[2], hi[2])])
        else:
            raise InputError("fov_check.shape", f"expected 'box' or 'cylinder', got {shape!r}")
        rc = geo.project_points(corners)  # [V, P, 2]
        nv, nu = self.n_detector
        source_inside = False
        if not np.all(np.isfinite(rc)):
            source_inside = True
        rays = geo.per_view_rays()
        if rays.source_mm is not None:
            s = rays.source_mm
            source_inside = source_inside or bool(np.any(np.all((s >= lo - 1e-9) & (s <= hi + 1e-9), axis=1)))
        r, c = np.nan_to_num(rc[..., 0], nan=np.inf), np.nan_to_num(rc[..., 1], nan=np.inf)
        over_v = np.maximum(np.maximum(-0.5 - r, r - (nv - 0.5)), 0.0)
        over_u = np.maximum(np.maximum(-0.5 - c, c - (nu - 0.5)), 0.0)
        if self.mode == "fan":
            over_v = np.zeros_like(over_v)
        truncated = np.any((over_u > tolerance_px) | (over_v > tolerance_px), axis=1)
        report = FOVReport(
            inside=not bool(truncated.any()) and not source_inside,
            n_views_truncated=int(truncated.sum()),
            max_overflow_u_px=float(np.max(over_u)) if over_u.size else 0.0,
            max_overflow_v_px=float(np.max(over_v)) if over_v.size else 0.0,
            source_inside_volume=source_inside,
        )
        if source_inside:
            logger.warning("fov_check: a source position lies inside the volume box; projections are not line integrals through the whole box")
        if truncated.any():
            logger.warning(
                "fov_check: the volume box leaves the detector field of view in %d of %d views "
                "(up to %.1f px along u, %.1f px along v); expect truncation artefacts",
                report.n_views_truncated,
                self.n_views,
                report.max_overflow_u_px,
                report.max_overflow_v_px,
            )
        return report

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with this class's field names (units in the names)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "dsd_mm": self.dsd_mm,
            "dso_mm": self.dso_mm,
            "n_detector": list(self.n_detector),
            "detector_pixel_mm": list(self.detector_pixel_mm),
            "n_voxel": list(self.n_voxel),
            "voxel_mm": list(self.voxel_mm),
            "offset_origin_mm": list(self.offset_origin_mm),
            "offset_detector_mm": list(self.offset_detector_mm),
            "angles_rad": list(self.angles_rad),
        }
        if self.vectors is not None:
            out["vectors"] = [list(row) for row in self.vectors]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | Path = "geometry") -> "CTGeometry":
        """Inverse of :meth:`to_dict`. TIGRE-style dicts (``DSD``, ``nVoxel``, ...) are detected
        and passed to :meth:`from_tigre_dict`. Unknown keys are an error that lists them."""
        if not isinstance(data, Mapping):
            raise InputError(where, f"expected a mapping of geometry fields, got {type(data).__name__}")
        if any(k in data for k in _TIGRE_KEYS - {"mode", "filter", "accuracy"}):
            return cls.from_tigre_dict(data, where=where)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(where, f"unknown geometry keys {unknown} (expected some of {sorted(names)})")
        missing = sorted(k for k in ("mode", "n_detector", "detector_pixel_mm", "n_voxel", "voxel_mm") if k not in data)
        if missing:
            raise InputError(where, f"missing geometry keys {missing}")
        kwargs = dict(data)
        if kwargs.get("angles_rad") is None:
            kwargs["angles_rad"] = ()
        try:
            return cls(**kwargs)
        except InputError as err:
            raise InputError(where, err.problem if err.where is None else f"{err.where}: {err.problem}") from None

    @classmethod
    def from_tigre_dict(
        cls, data: Mapping[str, Any], angles_rad: Iterable[float] | None = None, *, where: str | Path = "TIGRE geometry"
    ) -> "CTGeometry":
        """Build from TIGRE Python geometry fields (mm; ``nVoxel``/``dVoxel``/``sVoxel``/``offOrigin``
        in (z, y, x), ``nDetector``/``dDetector``/``sDetector``/``offDetector`` in (v, u)).

        Angles come from ``angles_rad`` or the dict's ``angles`` (radians). ``accuracy`` and
        ``filter`` are accepted and ignored (they tune TIGRE's own algorithms); a non-zero
        ``COR`` or ``rotDetector`` is refused (express it with ``vectors``). Unknown keys are an
        error that lists them.
        """
        if not isinstance(data, Mapping):
            raise InputError(where, f"expected a mapping of TIGRE geometry fields, got {type(data).__name__}")
        unknown = sorted(set(data) - _TIGRE_KEYS)
        if unknown:
            raise InputError(where, f"unknown TIGRE geometry keys {unknown} (expected some of {sorted(_TIGRE_KEYS)})")

        def arr(key: str, n: int) -> np.ndarray | None:
            if key not in data or data[key] is None:
                return None
            value = np.asarray(data[key], dtype=np.float64).reshape(-1)
            if value.size != n:
                raise InputError(where, f"{key} must have {n} entries, got {value.size}")
            return value

        n_voxel, d_voxel, s_voxel = arr("nVoxel", 3), arr("dVoxel", 3), arr("sVoxel", 3)
        n_det, d_det, s_det = arr("nDetector", 2), arr("dDetector", 2), arr("sDetector", 2)
        if n_voxel is None or n_det is None:
            raise InputError(where, "nVoxel and nDetector are required")
        d_voxel = _pitch(n_voxel, d_voxel, s_voxel, "Voxel", where)
        d_det = _pitch(n_det, d_det, s_det, "Detector", where)
        off_origin = arr("offOrigin", 3)
        off_det = np.asarray(data["offDetector"], dtype=np.float64).reshape(-1)[:2] if data.get("offDetector") is not None else None
        for key in ("COR", "rotDetector"):
            if data.get(key) is not None and np.any(np.asarray(data[key], dtype=np.float64) != 0):
                raise InputError(where, f"{key} != 0 is not supported by the circular geometry; describe the scan with per-view vectors")
        if angles_rad is None:
            angles_rad = data.get("angles", None)
        if angles_rad is None:
            raise InputError(where, "no angles: pass angles_rad or an 'angles' entry (radians)")
        angles = np.asarray(angles_rad, dtype=np.float64)
        if angles.ndim == 2:  # TIGRE (n, 3) Euler angles: only the first may be non-zero
            if angles.shape[1] != 3 or np.any(angles[:, 1:] != 0):
                raise InputError(where, "angles of shape (n, 3) with non-zero tilt are not supported; use per-view vectors")
            angles = angles[:, 0]
        mode = str(data.get("mode") or "cone")
        if mode == "cone" and n_det[0] == 1 and n_voxel[0] == 1:
            mode = "fan"
        return cls(
            mode=mode,
            dsd_mm=None if data.get("DSD") is None else float(np.asarray(data["DSD"]).reshape(-1)[0]),
            dso_mm=None if data.get("DSO") is None else float(np.asarray(data["DSO"]).reshape(-1)[0]),
            n_detector=tuple(n_det),
            detector_pixel_mm=tuple(d_det),
            n_voxel=tuple(n_voxel),
            voxel_mm=tuple(d_voxel),
            offset_origin_mm=(0.0, 0.0, 0.0) if off_origin is None else tuple(off_origin),
            offset_detector_mm=(0.0, 0.0) if off_det is None else tuple(off_det),
            angles_rad=tuple(angles.reshape(-1)),
        )

    def to_tigre_dict(self) -> dict[str, Any]:
        """TIGRE Python geometry fields (mm, (z, y, x) and (v, u) orders) plus ``angles``."""
        if self.vectors is not None:
            raise InputError("CTGeometry.to_tigre_dict", "vector geometries have no TIGRE circular equivalent")
        return {
            "mode": "parallel" if self.mode == "parallel" else "cone",
            "DSD": self.dsd_mm,
            "DSO": self.dso_mm,
            "nDetector": list(self.n_detector),
            "dDetector": list(self.detector_pixel_mm),
            "sDetector": list(self.detector_size_mm),
            "nVoxel": list(self.n_voxel),
            "dVoxel": list(self.voxel_mm),
            "sVoxel": list(self.volume_size_mm),
            "offOrigin": list(self.offset_origin_mm),
            "offDetector": list(self.offset_detector_mm),
            "angles": list(self.angles_rad),
        }

    @classmethod
    def from_json(cls, path: str | Path) -> "CTGeometry":
        """Read a geometry JSON file (this class's keys or TIGRE's)."""
        return cls._from_text_file(path, json.loads, json.JSONDecodeError, "JSON")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CTGeometry":
        """Read a geometry YAML file (this class's keys or TIGRE's)."""
        import yaml

        return cls._from_text_file(path, yaml.safe_load, yaml.YAMLError, "YAML")

    @classmethod
    def _from_text_file(cls, path: str | Path, parse, parse_error: type[Exception], kind: str) -> "CTGeometry":
        """Parse a UTF-8 text file with ``parse``; a missing file or ``parse_error`` is an InputError."""
        path = Path(path)
        try:
            data = parse(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "geometry file not found") from None
        except UnicodeDecodeError:
            raise InputError(path, f"not UTF-8 text (a {kind} geometry file is expected)") from None
        except parse_error as err:
            where = f" ({err.msg} at line {err.lineno})" if isinstance(err, json.JSONDecodeError) else f" ({str(err).splitlines()[0]})"
            raise InputError(path, f"not valid {kind}{where}") from None
        except OSError as err:
            raise InputError(path, f"cannot be read ({err.strerror or err})") from None
        return cls.from_dict(data, where=path)

    @classmethod
    def from_file(cls, path: str | Path) -> "CTGeometry":
        """Read ``.json`` or ``.yaml``/``.yml`` by extension."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            return cls.from_json(path)
        if suffix in (".yaml", ".yml"):
            return cls.from_yaml(path)
        raise InputError(path, f"unknown geometry file type {suffix!r} (expected .json, .yaml or .yml)")

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def to_yaml(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as YAML, atomically."""
        import yaml

        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


_TIGRE_KEYS = frozenset(
    {
        "mode", "DSD", "DSO", "nDetector", "dDetector", "sDetector", "nVoxel", "dVoxel", "sVoxel",
        "offOrigin", "offDetector", "accuracy", "filter", "COR", "rotDetector", "angles", "n_proj",
    }
)


def _pitch(n: np.ndarray, d: np.ndarray | None, s: np.ndarray | None, what: str, where: str | Path) -> np.ndarray:
    if d is None and s is None:
        raise InputError(where, f"need d{what} or s{what}")
    if d is None:
        return s / n
    if s is not None and not np.allclose(d * n, s, rtol=1e-5, atol=1e-9):
        raise InputError(where, f"n{what} * d{what} = {list(d * n)} does not equal s{what} = {list(s)}")
    return d


def _angles_from_vectors(vec: np.ndarray, parallel: bool) -> np.ndarray:
    """Nominal rotation angle of each view (TIGRE convention) from its source / ray direction."""
    if parallel:
        d = vec[:, 0:3]
        return np.arctan2(-d[:, 1], -d[:, 0])
    s = vec[:, 0:3]
    return np.arctan2(s[:, 1], s[:, 0])


def normalize_view_indices(views: slice | Sequence[int] | np.ndarray | None, n_views: int, *, where: str = "views") -> tuple[int, ...]:
    """Turn ``None`` / a slice / integer indices into a validated tuple of view indices."""
    if views is None:
        return tuple(range(n_views))
    if isinstance(views, slice):
        idx = tuple(range(n_views))[views]
    else:
        try:
            arr = np.asarray(views)
            if hasattr(views, "detach"):
                arr = views.detach().cpu().numpy()  # type: ignore[union-attr]
        except Exception:
            raise InputError(where, f"expected a slice or integer indices, got {type(views).__name__}") from None
        if arr.dtype == bool:
            if arr.shape != (n_views,):
                raise InputError(where, f"boolean mask must have {n_views} entries, got {arr.shape}")
            arr = np.flatnonzero(arr)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InputError(where, f"expected 1D integer indices, got dtype {arr.dtype} shape {arr.shape}")
        if arr.size and (arr.min() < -n_views or arr.max() >= n_views):
            raise InputError(where, f"view index out of range for {n_views} views: {arr.min()}..{arr.max()}")
        idx = tuple(int(i) % n_views for i in arr)
    if not idx:
        raise InputError(where, "selects no views")
    return idx
