"""Differentiable X-ray projector (line integrals through a voxel volume) and its matched adjoint.

Method (Joseph's ray-driven method; PyTorch on CPU and CUDA, numba kernels on CPU)
----------------------------------------------------------------------------------
Each ray is assigned the volume axis along which it advances the most voxels per mm (its
"driving" axis). The ray is sampled once on every voxel-centre plane perpendicular to that
axis, with bilinear interpolation inside the plane (zero outside the volume), and the samples
are summed times the ray length between two planes. Rays of all views are grouped by driving
axis; for each group the volume is viewed as a stack of 2D slices and a single
``grid_sample`` (bilinear) call samples slice ``n`` at the rays' crossing points with plane
``n``. The crossing points are affine in ``n``, so only two coefficients per ray and
coordinate are stored (cached per view selection in :class:`Projector`).

The volume model is the bilinear interpolant of the voxel values within each plane, and a
plane represents a slab one voxel thick: a ray crossing a uniform box of ``N`` voxels along
its driving axis gets exactly ``N * step * mu``.

The backprojection is the exact transpose of the same sampling (the input gradient of
``grid_sample``), so ``<A x, y> = <x, A^T y>`` to floating-point rounding; both are exposed as
autograd Functions whose backward is the other one (second derivatives work too).

Backends (chosen in ``Projector._use_numba``): the ``grid_sample`` path is the reference and
the only one on CUDA; ``recon.ct._joseph_numba`` implements the same sampling as CPU kernels
(forward and adjoint; tests compare them) and is the default on CPU. Each numba kernel is one
parallel region: the forward splits rays (or detector columns) between threads, the adjoint
splits planes, so every thread scatters into its own planes with no per-thread copies or
reduction.

Detector columns. When the rays of a detector column share their in-plane W coordinate exactly
(x- and y-driven rays of circular cone and parallel scans: a column's rays lie in one plane
containing the rotation axis; checked bit for bit when the ray tables are built) and their H
coordinates are evenly spaced on every plane (checked against an affine model to 1e-3 voxel,
:func:`_affine_columns`), the batch-1 kernels work per (column, plane): the forward blends the
two slice rows around W into one line and interpolates it at each ray's H; the adjoint turns
the column's values into prefix sums once and gets every H bin of the plane from a second
difference of them, so its work scales with the slice height rather than the number of rays
(see :func:`recon.ct._joseph_numba.joseph_adjoint_affine`). On the 64^3 / 50-view / 96^2 cone
benchmark that is about 2x less CPU than the plain kernels in each direction.
The numba tables are float32 for float32 data, so the adjoint identity holds to float32
rounding (~1e-7 relative); the numba forward and adjoint share the same sample computation and
are exact transposes.

Units: with the geometry in mm and the volume in 1/mm, projections are dimensionless line
integrals (mm * 1/mm).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recon.ct import _joseph_numba as _nb
from recon.geometry.ct import CTGeometry, normalize_view_indices
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Projector", "forward_project", "backproject", "voxel_driven_backproject", "torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | str | None):
    """Run the block with a given number of CPU threads (process-wide), restoring them after.

    ``None`` changes nothing; an int sets torch's and numba's thread counts; ``"auto"`` runs
    torch ops single-threaded and leaves numba alone. Why "auto": the projector issues many
    mid-sized torch ops, and on a machine whose cores are shared with other busy processes
    OpenMP makes each parallel op wait for a descheduled thread -- measured here, 2 threads were
    5-15x slower than 1 under load. Numba kernels are a single parallel region per call and
    keep their threads.
    """
    if n is None:
        yield
        return
    if n == "auto":
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old)
        return
    if not isinstance(n, int) or n < 1:
        raise InputError("num_threads", f"expected a positive int, 'auto' or None, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    old_nb = _nb.set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
        _nb.set_threads(old_nb)


DEFAULT_MAX_RAYS_PER_CHUNK = 1 << 13

# For a driving world axis a: (W axis, H axis) of the slice images, as world axes.
_SLICE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
# Permutation of [B, Z, Y, X] into [N_planes, B, H, W] for each driving axis.
_SLICE_PERM = {0: (3, 0, 1, 2), 1: (2, 0, 1, 3), 2: (1, 0, 2, 3)}
# Inverse permutations ([N, B, H, W] -> [B, Z, Y, X]).
_SLICE_INV = {a: tuple(int(i) for i in np.argsort(p)) for a, p in _SLICE_PERM.items()}


@dataclass
class _Chunk:
    """A run of rays sampled by one ``grid_sample`` call, on a crop of the slice images."""

    start: int
    stop: int
    h0: int
    h1: int
    w0: int
    w1: int
    base: torch.Tensor  # [r, 2] normalised (W, H) coordinate at plane 0, relative to the crop
    slope: torch.Tensor  # [r, 2] change of that coordinate per plane


@dataclass
class _Group:
    """Rays driven by one world axis, for one view selection."""

    axis: int  # world axis 0=x, 1=y, 2=z
    ray_index: torch.Tensor  # [R] long, index into the flattened [V_sel * nv * nu] projections
    step_mm: torch.Tensor  # [R] ray length between two planes
    chunks: list[_Chunk]
    # numba twin: pixel-index coordinates on the full slices, numpy [R] each, float32 for
    # float32 plans and float64 otherwise (the kernels compute in the tables' precision)
    pix: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # (w0, dw, h0, dh)
    step_np: np.ndarray | None = None  # [R], dtype of pix
    ray_index_np: np.ndarray | None = None  # [R] int64
    # [C + 1] int64 starts of runs of numba-table rays that share (w0, dw) exactly, or None
    columns: np.ndarray | None = None
    # [C, 6] (w0, dw, h0, dh, s0, ds) per run of ``columns`` when every run's H coordinates are
    # evenly spaced and increasing along the run (see :func:`_affine_columns`), dtype of pix
    affine: np.ndarray | None = None


@dataclass
class _Plan:
    views: tuple[int, ...]
    groups: list[_Group]
    n_rays: int

    @property
    def n_bytes(self) -> int:
        """Approximate memory held by the ray tables (torch and numpy copies)."""
        # torch: index 8 + step 4-8 + base/slope 16-32; numpy: 4 coords 16-32 + step 4-8 + index 8
        return self.n_rays * 100


# The column adjoint pays a per-(column, plane) cost of a few slice rows; below this many rays
# per column on average (e.g. fan beam: one) the plain adjoint is used.
_MIN_RAYS_PER_COLUMN = 8


def _shared_w_columns(column_id: np.ndarray, w0: np.ndarray, dw: np.ndarray) -> np.ndarray | None:
    """Starts [C + 1] of the runs of equal ``column_id`` [R] if every run has one (w0, dw)
    [R] (bit for bit) and runs are long enough to pay off, else None."""
    if column_id.size == 0:
        return None
    cut = np.flatnonzero(column_id[1:] != column_id[:-1]) + 1
    if column_id.size < _MIN_RAYS_PER_COLUMN * (cut.size + 1):
        return None
    starts = np.concatenate([[0], cut, [column_id.size]]).astype(np.int64)
    first = np.repeat(starts[:-1], np.diff(starts))
    if not (np.array_equal(w0, w0[first]) and np.array_equal(dw, dw[first])):
        return None
    return starts


# A column is affine when the evenly spaced model of its H coordinates is within this many
# voxels of every ray's own coordinate on every plane (float rounding of the ray tables is ~1e-5).
_AFFINE_TOL_VOXELS = 1e-3


def _affine_columns(
    starts: np.ndarray,  # [C + 1] int64
    w0: np.ndarray,  # [R] float64, as all coordinates below
    dw: np.ndarray,
    h0: np.ndarray,
    dh: np.ndarray,
    n_planes: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Affine model of column runs: on plane ``n`` ray ``i`` of run ``c`` is at
    ``h = h0_c + n dh_c + i (s0_c + n ds_c)`` with ``s0_c + n ds_c > 0`` on every plane
    (a detector column of a circular cone or parallel scan: its rays lie in one plane that
    contains the rotation axis, and its pixels are evenly spaced).

    Returns (cols [C, 6] float64: w0, dw, h0, dh, s0, ds of each run, order [R]: the ray order
    that makes H increase along every run -- runs whose H decreases are reversed), or None if
    some run is not affine within ``_AFFINE_TOL_VOXELS`` on every plane."""
    lengths = np.diff(starts)
    run = np.repeat(np.arange(lengths.size), lengths)
    local = np.arange(starts[-1]) - starts[run]
    first, last = starts[:-1], starts[1:] - 1
    span = np.maximum(lengths - 1, 1).astype(np.float64)
    s0 = np.where(lengths > 1, (h0[last] - h0[first]) / span, 1.0)
    ds = np.where(lengths > 1, (dh[last] - dh[first]) / span, 0.0)
    dev = np.abs(h0 - (h0[first][run] + local * s0[run])) + (n_planes - 1) * np.abs(dh - (dh[first][run] + local * ds[run]))
    if dev.size and float(dev.max()) > _AFFINE_TOL_VOXELS:
        return None
    s_first, s_last = s0, s0 + (n_planes - 1) * ds
    if not bool(np.all(s_first * s_last > 0)) or float(np.minimum(np.abs(s_first), np.abs(s_last)).min()) < 1e-6:
        return None  # spacing changes sign or vanishes between planes
    flip = s_first < 0
    order = np.where(flip[run], last[run] - local, np.arange(starts[-1]))
    h0_c = np.where(flip, h0[last], h0[first])
    dh_c = np.where(flip, dh[last], dh[first])
    cols = np.stack([w0[first], dw[first], h0_c, dh_c, np.abs(s0), np.where(flip, -ds, ds)], axis=1)
    return cols, order


class Projector:
    """Forward projector and matched backprojector for one :class:`CTGeometry`.

    Ray geometry (per view selection) is computed once and cached on the chosen device.

    Args:
        geometry: the scan.
        device: where ray tables live and computation runs (default: CPU, or the volume's
            device at call time if you do not pass one).
        dtype: floating type of the ray tables (float32 is fast; float64 for gradcheck).
        max_rays_per_chunk: rays sampled per ``grid_sample`` call; memory per chunk is about
            ``planes * rays * (2 + batch) * 4`` bytes.
        max_cached_plans: how many view selections keep their ray tables (LRU).
        max_rays_per_plan: views are processed in groups of at most this many rays (their ray
            tables take ~100 bytes per ray).
        max_cache_bytes: ray tables kept between calls, at most (LRU); larger selections are
            recomputed on every call.
        num_threads: CPU threads while projecting: ``"auto"`` (torch ops single-threaded,
            numba kernels multi-threaded), an int, or ``None`` (leave the current settings);
            see :func:`torch_threads`.
        backend: ``"torch"`` (``grid_sample`` and its input gradient; CPU and CUDA, the
            reference twin), ``"numba"`` (CPU kernels for both directions) or ``"auto"``:
            numba on CPU (about 2x less CPU than ``grid_sample`` forward and 6x less adjoint
            on circular scans, where the column kernels apply), torch on other devices.
    """

    def __init__(
        self,
        geometry: CTGeometry,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_rays_per_chunk: int = DEFAULT_MAX_RAYS_PER_CHUNK,
        max_cached_plans: int = 512,
        max_rays_per_plan: int = 1 << 21,
        max_cache_bytes: int = 1 << 30,
        num_threads: int | str | None = "auto",
        backend: str = "auto",
    ) -> None:
        if not isinstance(geometry, CTGeometry):
            raise InputError("Projector.geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
        if max_rays_per_chunk < 1:
            raise InputError("Projector.max_rays_per_chunk", f"must be >= 1, got {max_rays_per_chunk}")
        self.geometry = geometry
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.max_rays_per_chunk = int(max_rays_per_chunk)
        self.max_cached_plans = int(max_cached_plans)
        self.max_rays_per_plan = max(1, int(max_rays_per_plan))
        self.max_cache_bytes = int(max_cache_bytes)
        self.num_threads = num_threads
        if backend not in ("auto", "torch", "numba"):
            raise InputError("Projector.backend", f"expected 'auto', 'torch' or 'numba', got {backend!r}")
        if backend == "numba" and not _nb.AVAILABLE:
            raise InputError("Projector.backend", "numba is not installed (pip install numba), use backend='torch'")
        self.backend = backend
        self._plans: OrderedDict[tuple[int, ...], _Plan] = OrderedDict()
        self._rays = geometry.per_view_rays()

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        volume: torch.Tensor,  # [Z, Y, X] or [B, Z, Y, X]
        views: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:  # [V, v, u] or [B, V, v, u]
        """Line integrals of ``volume`` (shape [Z, Y, X] or [B, Z, Y, X], attenuation per mm)
        along every ray of the selected views. Returns [V, v, u] (or [B, V, v, u]).
        Differentiable; the gradient is :meth:`backproject`."""
        vol, batched = self._check_volume(volume)
        key = normalize_view_indices(views, self.geometry.n_views)
        with torch_threads(self.num_threads):
            out = _ForwardProject.apply(vol, self, key)
        return out if batched else out[0]

    __call__ = forward

    def backproject(
        self,
        projections: torch.Tensor,  # [V, v, u] or [B, V, v, u]
        views: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:  # [Z, Y, X] or [B, Z, Y, X]
        """Matched adjoint ``A^T`` of :meth:`forward`: projections [V, v, u] (or
        [B, V, v, u]) of the selected views -> volume [Z, Y, X] (or [B, Z, Y, X])."""
        key = normalize_view_indices(views, self.geometry.n_views)
        proj, batched = self._check_projections(projections, len(key))
        with torch_threads(self.num_threads):
            out = _BackProject.apply(proj, self, key)
        return out if batched else out[0]

    def clear_cache(self) -> None:
        self._plans.clear()

    # ------------------------------------------------------------------ checks
    def _check_volume(self, volume: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if not isinstance(volume, torch.Tensor):
            raise InputError("volume", f"expected a torch.Tensor [Z, Y, X] or [B, Z, Y, X], got {type(volume).__name__}")
        if not volume.is_floating_point():
            raise InputError("volume", f"expected a floating-point tensor, got {volume.dtype}")
        shape = tuple(self.geometry.n_voxel)
        if volume.dim() == 3 and tuple(volume.shape) == shape:
            return volume.unsqueeze(0), False
        if volume.dim() == 4 and tuple(volume.shape[1:]) == shape:
            return volume, True
        raise InputError("volume", f"expected shape {list(shape)} or [B, {', '.join(map(str, shape))}] (z, y, x), got {list(volume.shape)}")

    def _check_projections(self, projections: torch.Tensor, n_views: int) -> tuple[torch.Tensor, bool]:
        if not isinstance(projections, torch.Tensor):
            raise InputError("projections", f"expected a torch.Tensor [V, v, u], got {type(projections).__name__}")
        if not projections.is_floating_point():
            raise InputError("projections", f"expected a floating-point tensor, got {projections.dtype}")
        shape = (n_views, *self.geometry.n_detector)
        if projections.dim() == 3 and tuple(projections.shape) == shape:
            return projections.unsqueeze(0), False
        if projections.dim() == 4 and tuple(projections.shape[1:]) == shape:
            return projections, True
        raise InputError(
            "projections", f"expected shape {list(shape)} or [B, {', '.join(map(str, shape))}] (views, v, u), got {list(projections.shape)}"
        )

    # ------------------------------------------------------------------ ray tables
    def _plan(self, key: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> _Plan:
        cache_key = (key, str(device), dtype)
        plan = self._plans.get(cache_key)  # type: ignore[arg-type]
        if plan is not None:
            self._plans.move_to_end(cache_key)  # type: ignore[arg-type]
            return plan
        plan = self._build_plan(key, device, dtype)
        if plan.n_bytes <= self.max_cache_bytes:
            self._plans[cache_key] = plan  # type: ignore[index]
            while len(self._plans) > self.max_cached_plans or sum(p.n_bytes for p in self._plans.values()) > self.max_cache_bytes:
                self._plans.popitem(last=False)
        return plan

    def _build_plan(self, key: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> _Plan:
        geo = self.geometry
        rays = self._rays
        idx = np.asarray(key, dtype=np.int64)
        nv, nu = geo.n_detector
        # Pixel centres [V, nv, nu, 3] in float64.
        d = rays.detector_centre_mm[idx][:, None, None, :]
        u = rays.u_mm[idx][:, None, None, :]
        v = rays.v_mm[idx][:, None, None, :]
        cu = (np.arange(nu, dtype=np.float64) - (nu - 1) / 2.0)[None, None, :, None]
        cv = (np.arange(nv, dtype=np.float64) - (nv - 1) / 2.0)[None, :, None, None]
        pix = d + cu * u + cv * v
        if rays.is_parallel:
            direction = np.broadcast_to(rays.ray_direction[idx][:, None, None, :], pix.shape)
            origin = pix
        else:
            origin = np.broadcast_to(rays.source_mm[idx][:, None, None, :], pix.shape)
            direction = pix - origin
        origin = origin.reshape(-1, 3)
        direction = direction.reshape(-1, 3)
        n_rays = origin.shape[0]
        np_dtype = np.float32 if dtype == torch.float32 else np.float64  # numba tables

        # World-axis ordered voxel grid (x, y, z).
        n_vox = np.array(geo.n_voxel[::-1], dtype=np.float64)
        d_vox = np.array(geo.voxel_mm[::-1], dtype=np.float64)
        first = -(n_vox - 1) / 2.0 * d_vox + np.array(geo.offset_origin_mm[::-1], dtype=np.float64)

        speed = np.abs(direction) / d_vox  # voxels advanced per unit of the ray parameter
        if geo.mode == "fan":
            speed[:, 2] = -1.0  # never drive along z in the 2D case
        axis = np.argmax(speed, axis=1)
        norm = np.linalg.norm(direction, axis=1)
        groups: list[_Group] = []
        for a in (0, 1, 2):
            sel = np.flatnonzero(axis == a)
            if sel.size == 0:
                continue
            o, dr = origin[sel], direction[sel]
            da = dr[:, a]
            # Ray parameter at plane 0 and per plane.
            t0 = (first[a] - o[:, a]) / da
            dt = d_vox[a] / da
            base = np.empty((sel.size, 2))
            slope = np.empty((sel.size, 2))
            pix0 = np.empty((sel.size, 2))
            dpix = np.empty((sel.size, 2))
            for j, b in enumerate(_SLICE_AXES[a]):
                # index coordinate along b: p = (o_b + t d_b - first_b) / d_b ; normalised g = (2p + 1)/N_b - 1
                p0 = (o[:, b] + t0 * dr[:, b] - first[b]) / d_vox[b]
                dp = dt * dr[:, b] / d_vox[b]
                base[:, j] = (2.0 * p0 + 1.0) / n_vox[b] - 1.0
                slope[:, j] = 2.0 * dp / n_vox[b]
                pix0[:, j], dpix[:, j] = p0, dp
            if geo.mode == "fan":
                # The single slice: sample its centre exactly (rays lie in the slice plane).
                base[:, 1] = 0.0
                slope[:, 1] = 0.0
                pix0[:, 1] = 0.0
                dpix[:, 1] = 0.0
            step = np.abs(dt) * norm[sel]
            n_planes = int(n_vox[a])
            sizes = (int(n_vox[_SLICE_AXES[a][0]]), int(n_vox[_SLICE_AXES[a][1]]))  # (W, H)
            chunks = []
            for s in range(0, sel.size, self.max_rays_per_chunk):
                e = min(sel.size, s + self.max_rays_per_chunk)
                b0, b1 = base[s:e], slope[s:e]
                lo_hi = []
                new_base = np.empty_like(b0)
                new_slope = np.empty_like(b1)
                for j in range(2):
                    size = sizes[j]
                    # index coordinates at the first and last plane; p = ((g + 1) N - 1) / 2
                    g_first, g_last = b0[:, j], b0[:, j] + b1[:, j] * (n_planes - 1)
                    p_first = ((g_first + 1.0) * size - 1.0) / 2.0
                    p_last = ((g_last + 1.0) * size - 1.0) / 2.0
                    pmin = float(np.minimum(p_first, p_last).min())
                    pmax = float(np.maximum(p_first, p_last).max())
                    c0 = int(np.clip(np.floor(pmin), 0, size))
                    c1 = int(np.clip(np.ceil(pmax) + 1, 0, size))
                    if c1 <= c0:  # every sample misses the volume; keep a 1-pixel crop far away
                        c0, c1 = 0, 1
                    width = c1 - c0
                    # g' = (g + 1) N / n - 2 c0 / n - 1 keeps the same voxel positions on the crop
                    new_base[:, j] = (b0[:, j] + 1.0) * size / width - 2.0 * c0 / width - 1.0
                    new_slope[:, j] = b1[:, j] * size / width
                    lo_hi.append((c0, c1))
                (w0, w1), (h0, h1) = lo_hi
                chunks.append(
                    _Chunk(
                        start=s, stop=e, h0=h0, h1=h1, w0=w0, w1=w1,
                        base=torch.from_numpy(new_base).to(device=device, dtype=dtype),
                        slope=torch.from_numpy(new_slope).to(device=device, dtype=dtype),
                    )
                )
            # numba tables, ordered by (view, detector column, row): the rays of one detector
            # column often share their W coordinate on every plane (exactly, e.g. x- or y-driven
            # rays of a circular cone scan lie in one vertical plane), which the batch-1 adjoint uses
            order = np.lexsort((sel // nu % nv, sel % nu, sel // (nv * nu)))  # keys: row, column, view (primary)
            pix_np = tuple(np.ascontiguousarray(c[order], dtype=np_dtype) for c in (pix0[:, 0], dpix[:, 0], pix0[:, 1], dpix[:, 1]))
            columns = _shared_w_columns(sel[order] // (nv * nu) * nu + sel[order] % nu, pix_np[0], pix_np[1])
            affine = None
            if columns is not None:
                found = _affine_columns(columns, *(c[order] for c in (pix0[:, 0], dpix[:, 0], pix0[:, 1], dpix[:, 1])), n_planes)
                if found is not None:
                    affine = np.ascontiguousarray(found[0], dtype=np_dtype)
                    order = order[found[1]]
                    pix_np = tuple(np.ascontiguousarray(c[order], dtype=np_dtype) for c in (pix0[:, 0], dpix[:, 0], pix0[:, 1], dpix[:, 1]))
            groups.append(
                _Group(
                    axis=a,
                    ray_index=torch.from_numpy(sel).to(device),
                    step_mm=torch.from_numpy(step).to(device=device, dtype=dtype),
                    chunks=chunks,
                    pix=pix_np,
                    step_np=np.ascontiguousarray(step[order], dtype=np_dtype),
                    ray_index_np=np.ascontiguousarray(sel[order].astype(np.int64)),
                    columns=columns,
                    affine=affine,
                )
            )
        return _Plan(views=key, groups=groups, n_rays=n_rays)

    # ------------------------------------------------------------------ kernels
    def _planes(self, axis: int) -> int:
        return self.geometry.n_voxel[::-1][axis]

    def _use_numba(self, t: torch.Tensor) -> bool:
        if self.backend == "torch" or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
            return False
        return _nb.AVAILABLE

    def _sub_keys(self, key: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Split a view selection so each ray table stays under ``max_rays_per_plan`` rays."""
        nv, nu = self.geometry.n_detector
        per = max(1, self.max_rays_per_plan // (nv * nu))
        return [key[i : i + per] for i in range(0, len(key), per)]

    def _forward_impl(self, volume: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """volume [B, Z, Y, X] -> projections [B, V, nv, nu] (no autograd)."""
        dtype = volume.dtype
        B = volume.shape[0]
        nv, nu = self.geometry.n_detector
        use_numba = self._use_numba(volume)
        slices: dict[int, torch.Tensor | np.ndarray] = {}  # per driving axis, built once per call
        outs = []
        for sub in self._sub_keys(key):
            plan = self._plan(sub, volume.device, dtype)
            if use_numba:
                out_np = np.zeros((B, plan.n_rays), dtype=np.float64)
                for g in plan.groups:
                    transposed = B == 1 and g.affine is not None  # [N, W+2, H+2] for the affine-column kernel
                    if (g.axis, transposed) not in slices:
                        vol_np = volume.detach().numpy()
                        perm = _SLICE_PERM[g.axis]
                        shape = [vol_np.shape[i] + (2 if k >= 2 else 0) for k, i in enumerate(perm)]  # [N, B, H+2, W+2]
                        if transposed:
                            padded = np.zeros((shape[0], shape[3], shape[2]), dtype=vol_np.dtype)
                            padded[:, 1:-1, 1:-1] = vol_np.transpose(perm)[:, 0].transpose(0, 2, 1)
                        else:
                            padded = np.zeros(shape, dtype=vol_np.dtype)
                            padded[:, :, 1:-1, 1:-1] = vol_np.transpose(perm)  # zero border = zero padding
                        slices[(g.axis, transposed)] = padded
                    if transposed:
                        _nb.joseph_forward_affine(slices[(g.axis, True)], g.affine, g.columns, g.step_np, g.ray_index_np, out_np, _nb.num_threads())
                    else:
                        _nb.joseph_forward(slices[(g.axis, False)], *g.pix, g.step_np, g.ray_index_np, out_np, _nb.num_threads())
                outs.append(torch.from_numpy(out_np).to(dtype))
                continue
            out = volume.new_zeros((B, plan.n_rays))
            for g in plan.groups:
                if g.axis not in slices:
                    slices[g.axis] = volume.permute(*_SLICE_PERM[g.axis]).contiguous()  # [N, B, H, W]
                sl = slices[g.axis]
                n_planes = sl.shape[0]
                planes = torch.arange(n_planes, device=volume.device, dtype=dtype).view(n_planes, 1, 1)
                for c in g.chunks:
                    grid = torch.addcmul(c.base.unsqueeze(0), planes, c.slope.unsqueeze(0))  # [N, r, 2]
                    crop = sl[:, :, c.h0 : c.h1, c.w0 : c.w1]
                    samples = F.grid_sample(crop, grid.unsqueeze(2), mode="bilinear", padding_mode="zeros", align_corners=False)
                    # samples: [N, B, r, 1] -> sum over planes
                    vals = samples.sum(dim=0).squeeze(-1) * g.step_mm[c.start : c.stop]
                    out[:, g.ray_index[c.start : c.stop]] = vals
            outs.append(out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return out.view(B, len(key), nv, nu)

    def _backward_impl(self, projections: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """projections [B, V, nv, nu] -> volume [B, Z, Y, X] (the exact transpose of forward)."""
        dtype = projections.dtype
        B = projections.shape[0]
        nv, nu = self.geometry.n_detector
        Z, Y, X = self.geometry.n_voxel
        full = (B, Z, Y, X)
        use_numba = self._use_numba(projections)
        # per driving axis (numba: per (axis, transposed)): [N, B, H(+2), W(+2)] or [N, 1, W+2, H+2]
        accs: dict = {}
        start = 0
        for sub in self._sub_keys(key):
            plan = self._plan(sub, projections.device, dtype)
            flat = projections[:, start : start + len(sub)].reshape(B, plan.n_rays)
            start += len(sub)
            if use_numba:
                flat_np = np.ascontiguousarray(flat.detach().numpy())
                for g in plan.groups:
                    perm = _SLICE_PERM[g.axis]
                    shape = [full[i] + (2 if k >= 2 else 0) for k, i in enumerate(perm)]  # [N, B, H+2, W+2]
                    if B == 1 and g.affine is not None:  # [N, 1, W+2, H+2]
                        if (g.axis, True) not in accs:
                            accs[(g.axis, True)] = np.zeros([shape[0], 1, shape[3], shape[2]], dtype=flat_np.dtype)
                        _nb.joseph_adjoint_affine(flat_np, g.ray_index_np, g.step_np, g.affine, g.columns, accs[(g.axis, True)], _nb.num_threads())
                        continue
                    if (g.axis, False) not in accs:  # accumulate in the input precision
                        accs[(g.axis, False)] = np.zeros(shape, dtype=flat_np.dtype)
                    _nb.joseph_adjoint(flat_np, g.ray_index_np, g.step_np, *g.pix, accs[(g.axis, False)], _nb.num_threads())
                continue
            for g in plan.groups:
                perm = _SLICE_PERM[g.axis]
                slice_shape = [full[i] for i in perm]  # [N, B, H, W]
                n_planes = slice_shape[0]
                if g.axis not in accs:
                    accs[g.axis] = projections.new_zeros(slice_shape)
                acc = accs[g.axis]
                planes = torch.arange(n_planes, device=projections.device, dtype=dtype).view(n_planes, 1, 1)
                for c in g.chunks:
                    r = c.stop - c.start
                    grid = torch.addcmul(c.base.unsqueeze(0), planes, c.slope.unsqueeze(0))  # [N, r, 2]
                    w = flat[:, g.ray_index[c.start : c.stop]] * g.step_mm[c.start : c.stop]  # [B, r]
                    grad_out = w.unsqueeze(0).unsqueeze(-1).expand(n_planes, B, r, 1)
                    shape = (n_planes, B, c.h1 - c.h0, c.w1 - c.w0)
                    grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(
                        grad_out, projections.new_empty(shape), grid.unsqueeze(2), 0, 0, False, [True, False]
                    )
                    acc[:, :, c.h0 : c.h1, c.w0 : c.w1] += grad_in
        if use_numba:
            out_np = np.zeros(full, dtype=projections.detach().numpy().dtype)
            for (axis, transposed), acc in accs.items():
                inner = acc[:, :, 1:-1, 1:-1]
                out_np += (inner.transpose(0, 1, 3, 2) if transposed else inner).transpose(_SLICE_INV[axis])
            return torch.from_numpy(out_np)
        out = projections.new_zeros(full)
        for axis, acc in accs.items():
            out += acc.permute(*_SLICE_INV[axis])
        return out


class _ForwardProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, volume: torch.Tensor, projector: Projector, key: tuple[int, ...]) -> torch.Tensor:
        ctx.projector, ctx.key = projector, key
        return projector._forward_impl(volume, key)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _BackProject.apply(grad.contiguous(), ctx.projector, ctx.key), None, None


class _BackProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projections: torch.Tensor, projector: Projector, key: tuple[int, ...]) -> torch.Tensor:
        ctx.projector, ctx.key = projector, key
        return projector._backward_impl(projections, key)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _ForwardProject.apply(grad.contiguous(), ctx.projector, ctx.key), None, None


# ---------------------------------------------------------------------- functional API
_PROJECTOR_CACHE: "OrderedDict[tuple, Projector]" = OrderedDict()


def _cached_projector(geometry: CTGeometry, max_rays_per_chunk: int) -> Projector:
    key = (geometry, max_rays_per_chunk)
    proj = _PROJECTOR_CACHE.get(key)
    if proj is None:
        proj = Projector(geometry, max_rays_per_chunk=max_rays_per_chunk)
        _PROJECTOR_CACHE[key] = proj
        while len(_PROJECTOR_CACHE) > 4:
            _PROJECTOR_CACHE.popitem(last=False)
    else:
        _PROJECTOR_CACHE.move_to_end(key)
    return proj


def forward_project(
    volume: torch.Tensor,  # [Z, Y, X] or [B, Z, Y, X]
    geometry: CTGeometry,
    views: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    max_rays_per_chunk: int = DEFAULT_MAX_RAYS_PER_CHUNK,
) -> torch.Tensor:  # [V, v, u] or [B, V, v, u]
    """Line integrals of ``volume`` [Z, Y, X] (or [B, Z, Y, X]) for the selected views ->
    [V, v, u] (or [B, V, v, u]). Differentiable. Uses a small cache of :class:`Projector`
    objects keyed by geometry; build a ``Projector`` yourself to control its lifetime."""
    return _cached_projector(geometry, max_rays_per_chunk).forward(volume, views)


def backproject(
    projections: torch.Tensor,  # [V, v, u] or [B, V, v, u]
    geometry: CTGeometry,
    views: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    max_rays_per_chunk: int = DEFAULT_MAX_RAYS_PER_CHUNK,
) -> torch.Tensor:  # [Z, Y, X] or [B, Z, Y, X]
    """Matched adjoint of :func:`forward_project`: [V, v, u] (or [B, V, v, u]) -> [Z, Y, X]
    (or [B, Z, Y, X])."""
    return _cached_projector(geometry, max_rays_per_chunk).backproject(projections, views)


# ---------------------------------------------------------------------- voxel-driven backprojection
def voxel_driven_backproject(
    projections: torch.Tensor,  # [V, v, u]
    geometry: CTGeometry,
    *,
    view_weights: torch.Tensor | np.ndarray | None = None,  # [V]
    distance_weighting: bool = False,
    max_voxels_per_chunk: int = 1 << 22,
) -> torch.Tensor:  # [Z, Y, X]
    """Interpolating (voxel-driven) backprojection, the one analytic methods (FDK/FBP) use.

    Each voxel centre is projected onto every view's detector and the projection is sampled
    there bilinearly (zero outside the detector), multiplied by ``view_weights[s]`` and, when
    ``distance_weighting`` (cone/fan), by FDK's ``(DSO / U)^2`` where ``U`` is the voxel's
    distance from the source along the detector normal and ``DSO`` the source-to-origin
    distance along it. Not the adjoint of :func:`forward_project` (see :meth:`Projector.backproject`).

    projections: [V, v, u] in the geometry's views. Returns [Z, Y, X] with the projections' dtype.
    """
    geo = geometry
    if not isinstance(projections, torch.Tensor) or projections.dim() != 3 or tuple(projections.shape) != geo.projection_shape:
        got = list(projections.shape) if isinstance(projections, torch.Tensor) else type(projections).__name__
        raise InputError("projections", f"expected a tensor of shape {list(geo.projection_shape)} (views, v, u), got {got}")
    device, dtype = projections.device, projections.dtype
    V = geo.n_views
    nv, nu = geo.n_detector
    if view_weights is None:
        vw = torch.ones(V, dtype=torch.float64)
    else:
        vw = torch.as_tensor(np.asarray(view_weights, dtype=np.float64)).reshape(-1)
        if vw.numel() != V:
            raise InputError("view_weights", f"expected {V} weights, got {vw.numel()}")
    rays = geo.per_view_rays()
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=cdt, device=device)  # noqa: E731
    zc, yc, xc = (t(c) for c in geo.voxel_centres_mm())
    Z, Y, X = geo.n_voxel
    d, u, v = rays.detector_centre_mm, rays.u_mm, rays.v_mm
    n = np.cross(u, v)
    uu, vv, uv = np.sum(u * u, 1), np.sum(v * v, 1), np.sum(u * v, 1)
    det = uu * vv - uv * uv
    if rays.is_parallel:
        r = rays.ray_direction
        ref = d
        # q = w + s r on the detector plane (w = p - d): s = -(w.n)/(r.n); then (a, b) from q.u, q.v
        # q.u = w.u - (w.n)(r.u)/(r.n): a single linear form per coordinate
        rn = np.sum(r * n, 1, keepdims=True)
        lin_u = u - n * np.sum(r * u, 1, keepdims=True) / rn
        lin_v = v - n * np.sum(r * v, 1, keepdims=True) / rn
        const_u = np.zeros(V)
        const_v = np.zeros(V)
        forms = [lin_u, lin_v]
    else:
        src = rays.source_mm
        ref = src
        n_hat = n / np.linalg.norm(n, axis=1, keepdims=True)
        sign = np.sign(np.sum((d - src) * n_hat, 1, keepdims=True))
        n_hat = n_hat * np.where(sign == 0, 1.0, sign)
        dsd = np.sum((d - src) * n_hat, 1)
        dso = np.sum(-src * n_hat, 1)
        off = src - d
        const_u = np.sum(off * u, 1)
        const_v = np.sum(off * v, 1)
        forms = [u, v, n_hat]
    # (a, b) = M @ (q.u, q.v) with M the inverse Gram matrix of (u, v)
    m_aa, m_ab, m_bb = vv / det, -uv / det, uu / det
    out = torch.zeros((Z, Y, X), device=device, dtype=dtype)
    img = projections.unsqueeze(1)  # [V, 1, nv, nu]
    per_view = Y * X
    vox_budget = max(1, int(max_voxels_per_chunk))
    slab = max(1, min(Z, vox_budget // per_view))
    vchunk = max(1, vox_budget // (slab * per_view))
    ref_t = t(ref)  # [V, 3]
    forms_t = [t(f) for f in forms]
    consts = t(np.stack([const_u, const_v, m_aa, m_ab, m_bb, vw.numpy()], axis=1))
    if not rays.is_parallel:
        dist = t(np.stack([dsd, dso], axis=1))
    for z0 in range(0, Z, slab):
        z1 = min(Z, z0 + slab)
        zz = zc[z0:z1].view(1, -1, 1, 1)
        yy = yc.view(1, 1, -1, 1)
        xx = xc.view(1, 1, 1, -1)
        for v0 in range(0, V, vchunk):
            v1 = min(V, v0 + vchunk)
            rr = ref_t[v0:v1]
            dz = zz - rr[:, 2].view(-1, 1, 1, 1)
            dy = yy - rr[:, 1].view(-1, 1, 1, 1)
            dx = xx - rr[:, 0].view(-1, 1, 1, 1)

            def form(vec: torch.Tensor) -> torch.Tensor:
                vec = vec[v0:v1]
                return dz * vec[:, 2].view(-1, 1, 1, 1) + dy * vec[:, 1].view(-1, 1, 1, 1) + dx * vec[:, 0].view(-1, 1, 1, 1)

            c = consts[v0:v1].T.reshape(6, -1, 1, 1, 1)
            if rays.is_parallel:
                qu, qv = form(forms_t[0]), form(forms_t[1])
                weight = None
            else:
                wn = form(forms_t[2])  # distance from the source along the detector normal
                tt = dist[v0:v1, 0].view(-1, 1, 1, 1) / wn
                qu = c[0] + tt * form(forms_t[0])
                qv = c[1] + tt * form(forms_t[1])
                weight = (dist[v0:v1, 1].view(-1, 1, 1, 1) / wn) ** 2 if distance_weighting else None
            a = c[2] * qu + c[3] * qv
            b = c[3] * qu + c[4] * qv
            # column a + (nu-1)/2 -> normalised (2 col + 1)/nu - 1 = 2 a / nu
            gu = a * (2.0 / nu)
            gv = b * (2.0 / nv) if nv > 1 else torch.zeros_like(gu)
            grid = torch.stack([gu, gv], dim=-1).to(dtype).view(v1 - v0, -1, 1, 2)
            sampled = F.grid_sample(img[v0:v1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = sampled.view(v1 - v0, z1 - z0, Y, X)
            wv = c[5].to(dtype)
            if weight is not None:
                wv = wv * weight.to(dtype)
            out[z0:z1] += (sampled * wv).sum(dim=0)
    return out
