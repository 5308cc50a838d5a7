"""Differentiable voxeliser: 3D Gaussians with densities -> a [Z, Y, X] density volume.

Each Gaussian ``i`` (centre ``mu_i`` in world mm, covariance ``Sigma_i = R S^2 R^T`` from a wxyz
quaternion and activated scales in mm, density ``rho_i`` in 1/mm) contributes at every voxel
centre ``p`` (R2-Gaussian's voxeliser: densities are summed, not alpha-composited)::

    vol(p) = sum_i rho_i exp(-q_i / 2),   q_i = (p - mu_i)^T Sigma_i^{-1} (p - mu_i),

over its local support ``q_i <= k^2`` (``k = support_sigmas``, default 3: the 3-sigma ellipsoid,
as R2-Gaussian; a 3D Gaussian keeps 97.1 % of its mass inside it, 99.3 % inside 3.5 sigma).

Backends (chosen in :func:`_resolve_backend` only): ``"numba"`` CPU kernels
(:mod:`recon.ct._voxelize_numba`, forward scatter with per-thread volumes, backward gather per
Gaussian) and ``"torch"``, the plain-PyTorch reference twin (dense: every Gaussian at every
voxel of the grid in chunks, masked by the same support rule; O(N * voxels), for tests, small
grids and CUDA). ``"auto"``: numba for CPU tensors when numba is installed, else torch.
Gradients flow to the centres, quaternions, scales and densities (through the precision
matrix, in torch) with either backend; tests compare them.

Grids: :class:`VoxelGrid` is the voxel lattice of a :class:`~recon.geometry.ct.CTGeometry`
(same voxel-centre convention) or a crop of it (:meth:`VoxelGrid.crop`, used for random TV
patches).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recon.ct import _tv_numba, _voxelize_numba as _nb
from recon.geometry.ct import CTGeometry
from recon.errors import InputError
from recon.splat.projection import quat_to_rotmat

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "VoxelGrid", "precision_matrices", "spatial_order", "tv_3d", "voxelize"]

BACKENDS = ("auto", "numba", "torch")
_TORCH_CHUNK_ELEMS = 1 << 22  # Gaussians x voxels evaluated at once by the torch twin


@dataclass(frozen=True)
class VoxelGrid:
    """A regular lattice of voxel centres: ``shape`` (Z, Y, X), spacing ``voxel_mm`` (z, y, x)
    and the world position ``first_mm`` (x, y, z) of the centre of voxel (0, 0, 0)."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    first_mm: tuple[float, float, float]

    @classmethod
    def from_geometry(cls, geometry: CTGeometry) -> VoxelGrid:
        """The reconstruction grid of ``geometry`` (voxel centres as in :mod:`recon.geometry.ct`)."""
        zc, yc, xc = geometry.voxel_centres_mm()
        return cls(tuple(geometry.n_voxel), tuple(geometry.voxel_mm), (float(xc[0]), float(yc[0]), float(zc[0])))

    def crop(self, start: Sequence[int], size: Sequence[int]) -> VoxelGrid:
        """Sub-grid of ``size`` (z, y, x) voxels starting at index ``start`` (k, j, i)."""
        start, size = tuple(int(s) for s in start), tuple(int(s) for s in size)
        if len(start) != 3 or len(size) != 3:
            raise InputError("VoxelGrid.crop", f"expected 3 start indices and 3 sizes, got {start}, {size}")
        if any(s < 0 or n < 1 or s + n > m for s, n, m in zip(start, size, self.shape)):
            raise InputError("VoxelGrid.crop", f"crop start {start} size {size} does not fit in shape {self.shape}")
        dz, dy, dx = self.voxel_mm
        x0, y0, z0 = self.first_mm
        return VoxelGrid(size, self.voxel_mm, (x0 + start[2] * dx, y0 + start[1] * dy, z0 + start[0] * dz))

    def centres_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D world coordinates (z [Z], y [Y], x [X]) of the voxel centres."""
        Z, Y, X = self.shape
        dz, dy, dx = self.voxel_mm
        x0, y0, z0 = self.first_mm
        return z0 + dz * np.arange(Z), y0 + dy * np.arange(Y), x0 + dx * np.arange(X)


def precision_matrices(
    quats: Tensor,  # [N, 4] wxyz, not necessarily normalised
    scales: Tensor,  # [N, 3] activated scales (mm)
) -> tuple[Tensor, Tensor]:
    """Precision ``R S^-2 R^T`` as 6 numbers (xx, xy, xz, yy, yz, zz) [N, 6] and the diagonal
    of the covariance ``R S^2 R^T`` [N, 3] (x, y, z)."""
    R = quat_to_rotmat(quats)  # [N, 3, 3]
    inv_s2 = 1.0 / (scales * scales)  # [N, 3]
    rows = R.unbind(1)  # R[:, a, :], [N, 3] each
    # elementwise rather than batched 3x3 matmuls: ~5x faster forward + backward for 1e5+ Gaussians
    prec6 = torch.stack([(rows[a] * rows[b] * inv_s2).sum(-1) for a, b in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))], dim=-1)
    s2 = scales * scales
    cov_diag = torch.stack([(rows[a] * rows[a] * s2).sum(-1) for a in range(3)], dim=-1)
    return prec6, cov_diag


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise InputError("backend", f"expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if (device.type == "cpu" and _nb.AVAILABLE) else "torch"
    if backend == "numba":
        if not _nb.AVAILABLE:
            raise InputError("backend", "numba is not installed (pip install numba), use backend='torch'")
        if device.type != "cpu":
            raise InputError("backend", f"backend='numba' needs CPU tensors, got {device}")
    return backend


def _grid_arrays(grid: VoxelGrid, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    dz, dy, dx = grid.voxel_mm
    return np.asarray(grid.first_mm, dtype=dtype), np.asarray((dx, dy, dz), dtype=dtype)


def _spatial_order(means: np.ndarray, grid: VoxelGrid, brick: int = 8) -> np.ndarray:
    """Permutation sorting Gaussians by the ``brick``-voxel block holding their centre
    (lexicographic z, y, x; stable): neighbours in the list touch the same cache lines. ~3x faster
    than random order on 128^3 grids. A counting sort in numba (~10x faster than ``np.argsort``
    at 400k Gaussians); :func:`_spatial_order_numpy` is its reference twin."""
    first = np.asarray(grid.first_mm, dtype=np.float64)
    brick_mm = np.asarray(grid.voxel_mm[::-1], dtype=np.float64) * brick
    nb = (np.asarray(grid.shape[::-1], dtype=np.int64) + brick - 1) // brick + 2
    return _nb.brick_order(np.ascontiguousarray(means), first, brick_mm, nb)


def spatial_order(means: Tensor, grid: VoxelGrid | CTGeometry) -> Tensor:  # [N, 3] -> [N] int64
    """The permutation that sorts Gaussians by the brick of ``grid`` holding their centre. A
    model kept in this order (:class:`recon.ct.gaussian_trainer.GaussianTrainer` re-sorts at
    each density control) makes the numba path's gathers and scatters sequential: forward +
    backward 192 -> 129 ms at 450k Gaussians on 128^3, against a random order."""
    if isinstance(grid, CTGeometry):
        grid = VoxelGrid.from_geometry(grid)
    return torch.from_numpy(_spatial_order(means.detach().cpu().numpy(), grid)).to(means.device)


def _spatial_order_numpy(means: np.ndarray, grid: VoxelGrid, brick: int = 8) -> np.ndarray:
    """Reference twin of :func:`_spatial_order` (``np.argsort`` of the brick keys)."""
    first = np.asarray(grid.first_mm)
    step = np.asarray(grid.voxel_mm[::-1])
    idx = np.floor((means - first) / (step * brick)).astype(np.int64)
    nb = (np.asarray(grid.shape[::-1]) + brick - 1) // brick + 2
    idx = np.clip(idx + 1, 0, nb - 1)  # centres outside the grid go to the border bricks
    key = (idx[:, 2] * nb[1] + idx[:, 1]) * nb[0] + idx[:, 0]
    return np.argsort(key, kind="stable")


_SCRATCH = threading.local()
_SCRATCH_MAX_BYTES = 256 << 20


def _thread_volumes(n_threads: int, shape: tuple[int, int, int], dtype: type) -> np.ndarray:  # [T, Z, Y, X] zeroed
    """The forward kernel's per-thread volumes: one buffer per calling thread, reused across
    calls up to ``_SCRATCH_MAX_BYTES`` (a fresh 16 MB buffer per step cost ~9 ms of page faults
    at 128^3); larger grids get a fresh one."""
    full = (n_threads, *shape)
    if int(np.prod(full)) * np.dtype(dtype).itemsize > _SCRATCH_MAX_BYTES:
        return np.zeros(full, dtype=dtype)
    buf = getattr(_SCRATCH, "volumes", None)
    if buf is None or buf.shape != full or buf.dtype != dtype:
        buf = _SCRATCH.volumes = np.empty(full, dtype=dtype)
    buf.fill(0)
    return buf


class _VoxelizeNumba(torch.autograd.Function):
    """Numba path end to end: precision matrices, voxelisation and their gradients (the torch
    twin computes the precision matrices with autograd instead; tests compare both)."""

    @staticmethod
    def forward(ctx, means, quats, scales, dens, grid: VoxelGrid, support_sigmas: float):
        np_dtype = np.float32 if means.dtype == torch.float32 else np.float64
        means, quats, scales, dens = (x.detach().contiguous() for x in (means, quats, scales, dens))
        order = _spatial_order(means.numpy(), grid)
        q, s = quats.numpy(), scales.numpy()
        N = q.shape[0]
        m = np.empty((N, 3), dtype=np_dtype)
        d = np.empty((N,), dtype=np_dtype)
        p = np.empty((N, 6), dtype=np_dtype)
        h = np.empty((N, 3), dtype=np_dtype)
        _nb.precision_forward(order, means.numpy(), q, s, dens.numpy(), np_dtype(support_sigmas), m, d, p, h)
        first, step = _grid_arrays(grid, np_dtype)
        import numba

        T = int(numba.get_num_threads())
        out = _thread_volumes(T, grid.shape, np_dtype)
        cut2 = np_dtype(support_sigmas * support_sigmas)
        _nb.voxelize_forward(m, p, d, h, first, step, out, cut2)
        vol = torch.from_numpy(out.sum(0) if T > 1 else out[0].copy())
        ctx.sorted = (m, d, p, h, order)
        ctx.save_for_backward(quats, scales)  # the precision chain rule reads them in input order
        ctx.grid, ctx.cut2 = grid, cut2
        return vol

    @staticmethod
    def backward(ctx, grad):
        m, d, p, h, order = ctx.sorted
        q, s = (x.numpy() for x in ctx.saved_tensors)
        np_dtype = m.dtype.type
        first, step = _grid_arrays(ctx.grid, np_dtype)
        N = m.shape[0]
        g_means = np.zeros((N, 3), dtype=np_dtype)
        g_prec = np.zeros((N, 6), dtype=np_dtype)
        g_dens = np.zeros((N,), dtype=np_dtype)
        g = np.ascontiguousarray(grad.detach().cpu().numpy().astype(np_dtype, copy=False))
        _nb.voxelize_backward(m, p, d, h, first, step, g, ctx.cut2, g_means, g_prec, g_dens)
        outs = [np.empty(shape, dtype=np_dtype) for shape in ((N, 4), (N, 3), (N, 3), (N,))]
        _nb.precision_backward(order, q, s, g_prec, g_means, g_dens, *outs)
        g_quats, g_scales, g_means, g_dens = (torch.from_numpy(a) for a in outs)
        return g_means, g_quats, g_scales, g_dens, None, None


def _voxelize_torch(means: Tensor, prec6: Tensor, dens: Tensor, grid: VoxelGrid, cut2: float) -> Tensor:
    """Reference twin: every Gaussian at every voxel (chunked), same support rule."""
    zc, yc, xc = (torch.as_tensor(c, dtype=means.dtype, device=means.device) for c in grid.centres_mm())
    Z, Y, X = grid.shape
    pts = torch.stack(torch.meshgrid(xc, yc, zc, indexing="ij"), dim=-1)  # [X, Y, Z, 3] (x, y, z)
    pts = pts.permute(2, 1, 0, 3).reshape(-1, 3)  # [Z*Y*X, 3] in z, y, x order
    vol = torch.zeros(pts.shape[0], dtype=means.dtype, device=means.device)
    chunk = max(1, _TORCH_CHUNK_ELEMS // max(1, pts.shape[0]))
    for s in range(0, means.shape[0], chunk):
        mu, p, rho = means[s : s + chunk], prec6[s : s + chunk], dens[s : s + chunk]
        d = pts[None, :, :] - mu[:, None, :]  # [n, V, 3]
        dx, dy, dz = d.unbind(-1)
        pxx, pxy, pxz, pyy, pyz, pzz = (p[:, i, None] for i in range(6))
        q = pxx * dx * dx + pyy * dy * dy + pzz * dz * dz + 2.0 * (pxy * dx * dy + pxz * dx * dz + pyz * dy * dz)
        inside = q <= cut2
        w = torch.where(inside, torch.exp(-0.5 * torch.where(inside, q, torch.zeros_like(q))), torch.zeros_like(q))
        vol = vol + (rho[:, None] * w).sum(0)
    return vol.reshape(Z, Y, X)


def voxelize(
    means: Tensor,  # [N, 3] world (x, y, z) mm
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated scales, mm
    densities: Tensor,  # [N] activated densities, 1/mm
    grid: VoxelGrid | CTGeometry,
    *,
    support_sigmas: float = 3.0,
    backend: str = "auto",
) -> Tensor:  # [Z, Y, X]
    """Sum of the Gaussians' densities at the voxel centres of ``grid`` -> [Z, Y, X].

    Differentiable with respect to ``means``, ``quats``, ``scales`` and ``densities``. Each
    Gaussian is evaluated inside its ``support_sigmas`` ellipsoid only (module docstring).
    ``backend``: "auto", "numba" (CPU) or "torch" (reference twin, any device).
    """
    if isinstance(grid, CTGeometry):
        grid = VoxelGrid.from_geometry(grid)
    if not isinstance(grid, VoxelGrid):
        raise InputError("grid", f"expected a VoxelGrid or CTGeometry, got {type(grid).__name__}")
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
        raise InputError("means", f"expected a tensor of shape [N, 3], got {getattr(means, 'shape', type(means).__name__)}")
    N = means.shape[0]
    for name, x, shape in (("quats", quats, (N, 4)), ("scales", scales, (N, 3)), ("densities", densities, (N,))):
        if not isinstance(x, Tensor) or tuple(x.shape) != shape:
            raise InputError(name, f"expected shape {list(shape)}, got {getattr(x, 'shape', type(x).__name__)}")
        if x.dtype != means.dtype or x.device != means.device:
            raise InputError(name, f"expected {means.dtype} on {means.device} like means, got {x.dtype} on {x.device}")
    if not means.dtype.is_floating_point:
        raise InputError("means", f"expected a floating-point tensor, got {means.dtype}")
    if not support_sigmas > 0:
        raise InputError("support_sigmas", f"must be > 0, got {support_sigmas}")
    backend = _resolve_backend(backend, means.device)
    if N == 0:
        return torch.zeros(grid.shape, dtype=means.dtype, device=means.device) + 0.0 * densities.sum()
    if backend == "torch":
        prec6, _cov_diag = precision_matrices(quats, scales)
        return _voxelize_torch(means, prec6, densities, grid, float(support_sigmas) ** 2)
    return _VoxelizeNumba.apply(means, quats, scales, densities, grid, float(support_sigmas))


class _TV3dNumba(torch.autograd.Function):
    """:func:`tv_3d` of one [Z, Y, X] CPU volume by the fused numba kernel (value and gradient
    in one pass; the gradient is kept for the backward)."""

    @staticmethod
    def forward(ctx, volume):
        v = np.ascontiguousarray(volume.detach().numpy())
        g = np.empty_like(v)
        value = _tv_numba.tv3d_value_grad(v, g)
        ctx.save_for_backward(torch.from_numpy(g))
        return volume.new_tensor(value)

    @staticmethod
    def backward(ctx, grad_out):
        (g,) = ctx.saved_tensors
        return g * grad_out


def tv_3d(volume: Tensor, eps: float = 0.0) -> Tensor:  # [Z, Y, X] or [B, Z, Y, X] -> scalar
    """Anisotropic 3D total variation, mean absolute forward difference over the three axes
    (R2-Gaussian's TV loss); ``eps`` > 0 smooths ``|d|`` as ``sqrt(d^2 + eps^2) - eps``.
    A single [Z, Y, X] CPU float volume with ``eps`` 0 takes the fused numba kernel
    (:mod:`recon.ct._tv_numba`); everything else the torch ops (its reference twin)."""
    if volume.dim() not in (3, 4):
        raise InputError("volume", f"expected [Z, Y, X] or [B, Z, Y, X], got {list(volume.shape)}")
    if volume.dim() == 3 and eps == 0 and volume.device.type == "cpu" and volume.dtype in (torch.float32, torch.float64) and _tv_numba.AVAILABLE:
        return _TV3dNumba.apply(volume)
    return _tv_3d_torch(volume, eps)


def _tv_3d_torch(volume: Tensor, eps: float = 0.0) -> Tensor:  # [Z, Y, X] or [B, Z, Y, X] -> scalar
    """Reference twin of :func:`tv_3d` (torch ops and autograd)."""
    total = volume.new_zeros(())
    for axis in (-3, -2, -1):
        d = torch.diff(volume, dim=axis)
        total = total + (torch.sqrt(d * d + eps * eps) - eps).mean() if eps > 0 else total + d.abs().mean()
    return total
