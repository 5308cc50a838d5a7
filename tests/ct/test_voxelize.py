"""Voxeliser: numba kernels vs the torch twin (forward and gradients), brute force, gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.ct import _voxelize_numba
from recon.ct.voxelize import VoxelGrid, _tv_3d_torch, precision_matrices, tv_3d, voxelize
from recon.errors import InputError
from recon.geometry.ct import CTGeometry

GRID = VoxelGrid((10, 12, 14), (1.0, 1.2, 0.9), (-5.85, -6.6, -4.5))


def test_numba_kernel_is_available():
    """numba is a required dependency: its kernel must load (not be skipped)."""
    assert _voxelize_numba.AVAILABLE


def random_gaussians(n: int, dtype=torch.float64, seed: int = 0, extent: float = 12.0, smin: float = 0.5, smax: float = 2.5):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * extent
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = smin + torch.rand(n, 3, generator=g, dtype=dtype) * (smax - smin)
    dens = 0.1 + torch.rand(n, generator=g, dtype=dtype)
    return means, quats, scales, dens


def brute_force(means, quats, scales, dens, grid: VoxelGrid) -> np.ndarray:
    """Every Gaussian at every voxel centre, no cut-off, in numpy float64."""
    from scipy.spatial.transform import Rotation

    zc, yc, xc = grid.centres_mm()
    pts = np.stack(np.meshgrid(xc, yc, zc, indexing="ij"), -1).transpose(2, 1, 0, 3)  # [Z, Y, X, 3]
    out = np.zeros(grid.shape)
    q = quats.detach().numpy()
    R = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], 1)).as_matrix()  # scipy: xyzw
    for i in range(means.shape[0]):
        cov = R[i] @ np.diag(scales[i].detach().numpy() ** 2) @ R[i].T
        d = pts - means[i].detach().numpy()
        m = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
        out += float(dens[i]) * np.exp(-0.5 * m)
    return out


def test_grid_from_geometry_matches_voxel_centres():
    geo = CTGeometry(mode="parallel", n_detector=(4, 4), detector_pixel_mm=(1, 1), n_voxel=(3, 4, 5), voxel_mm=(2.0, 1.5, 1.0), offset_origin_mm=(1.0, -2.0, 3.0), angles_rad=(0.0,))
    grid = VoxelGrid.from_geometry(geo)
    for a, b in zip(grid.centres_mm(), geo.voxel_centres_mm()):
        np.testing.assert_allclose(a, b)
    crop = grid.crop((1, 2, 3), (2, 2, 2))
    np.testing.assert_allclose(crop.centres_mm()[2], geo.voxel_centres_mm()[2][3:5])
    with pytest.raises(InputError):
        grid.crop((2, 0, 0), (2, 1, 1))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_matches_brute_force(backend):
    means, quats, scales, dens = random_gaussians(12)
    # with a 7-sigma support the cut-off changes values by < exp(-24.5) relative
    vol = voxelize(means, quats, scales, dens, GRID, support_sigmas=7.0, backend=backend)
    ref = brute_force(means, quats, scales, dens, GRID)
    assert vol.shape == GRID.shape
    np.testing.assert_allclose(vol.numpy(), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_support_cut_is_the_ellipsoid(backend):
    """A voxel gets a Gaussian's value iff its Mahalanobis distance is <= k."""
    means = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    quats = torch.tensor([[0.9, 0.2, -0.3, 0.1]], dtype=torch.float64)
    scales = torch.tensor([[1.5, 0.8, 2.2]], dtype=torch.float64)
    dens = torch.ones(1, dtype=torch.float64)
    vol = voxelize(means, quats, scales, dens, GRID, support_sigmas=2.0, backend=backend).numpy()
    full = brute_force(means, quats, scales, dens, GRID)
    inside = full >= math.exp(-0.5 * 4.0)
    np.testing.assert_allclose(vol[inside], full[inside], rtol=1e-12)
    assert np.all(vol[~inside] == 0)
    assert inside.sum() > 20 and (~inside).sum() > 20


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_numba_matches_torch_twin_forward_and_gradients(dtype, tol):
    means, quats, scales, dens = random_gaussians(40, dtype=dtype, seed=3, extent=16.0)
    # include a Gaussian much thinner than a voxel (the kernels' direct-exp branch) and one outside
    scales[0] = torch.tensor([0.1, 0.3, 0.2], dtype=dtype)
    means[1] = torch.tensor([30.0, 0.0, 0.0], dtype=dtype)
    w = torch.randn(GRID.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("torch", "numba"):
        params = [t.clone().requires_grad_() for t in (means, quats, scales, dens)]
        vol = voxelize(*params, GRID, support_sigmas=3.0, backend=backend)
        (vol * w).sum().backward()
        results.append((vol.detach(), [p.grad for p in params]))
    (v_t, g_t), (v_n, g_n) = results
    scale = float(v_t.abs().max())
    assert float((v_t - v_n).abs().max()) <= tol * scale
    for name, a, b in zip(("means", "quats", "scales", "densities"), g_t, g_n):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max())), name


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_numba_slabs_both_paths_match_the_twin(dtype, tol):
    """Slabs of a needle-like Gaussian lying diagonally in the x-y slices reach q > _Q_RECURRENCE
    at their corners (direct exponentials), those of the round Gaussians do not (recurrences):
    both paths agree with the torch twin, forward and gradients."""
    from recon.ct._voxelize_numba import _Q_RECURRENCE, _rect, _schur, precision_forward
    from recon.ct.voxelize import _grid_arrays

    grid = VoxelGrid((16, 18, 20), (1.0, 1.0, 1.0), (-9.5, -8.5, -7.5))
    means, quats, scales, dens = random_gaussians(8, dtype=dtype, seed=4, extent=8.0)
    means[0] = torch.tensor([0.3, -0.2, 0.1], dtype=dtype)
    quats[0] = torch.tensor([0.92, 0.05, 0.02, 0.38], dtype=dtype)  # along ~(1, 1, 0): across the x-y slices
    scales[0] = torch.tensor([6.0, 0.12, 0.15], dtype=dtype)
    m0, q, s, d0 = (t.numpy().astype(np.float64) for t in (means, quats, scales, dens))
    m, d, p, h = np.empty((8, 3)), np.empty(8), np.empty((8, 6)), np.empty((8, 3))
    precision_forward(np.arange(8), m0, q, s, d0, 3.0, m, d, p, h)
    first, step = _grid_arrays(grid, np.float64)
    Z, Y, X = grid.shape
    slabs = [(n, _rect(n, k, m, p, _schur(*p[n]), first, step, Y, X, 9.0)) for n in range(8) for k in range(Z)]
    paths = {(n, bool(r[4])) for n, r in slabs if r[0] <= r[1]}
    assert (0, False) in paths, paths  # the needle
    assert all(safe for n, safe in paths if n > 0)
    assert _Q_RECURRENCE > 9.0
    w = torch.randn(grid.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("torch", "numba"):
        params = [t.clone().requires_grad_() for t in (means, quats, scales, dens)]
        vol = voxelize(*params, grid, support_sigmas=3.0, backend=backend)
        (vol * w).sum().backward()
        results.append((vol.detach(), [p.grad for p in params]))
    (v_t, g_t), (v_n, g_n) = results
    assert float(v_t[v_t > 0].numel()) > 0
    assert float((v_t - v_n).abs().max()) <= tol * float(v_t.abs().max())
    for name, a, b in zip(("means", "quats", "scales", "densities"), g_t, g_n):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max())), name


def test_spatial_order_counting_sort_equals_the_argsort_twin():
    """The numba counting sort is the stable argsort of the brick keys, centres outside the grid
    (border bricks) and ties included."""
    from recon.ct.voxelize import _spatial_order, _spatial_order_numpy

    g = torch.Generator().manual_seed(5)
    means = ((torch.rand(3000, 3, generator=g) - 0.5) * 40.0).numpy()  # the grid is ~14 mm wide
    means[:100] = means[100]  # ties keep their input order
    order = _spatial_order(means, GRID, brick=2)
    np.testing.assert_array_equal(order, _spatial_order_numpy(means, GRID, brick=2))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_gradcheck(backend):
    means, quats, scales, dens = random_gaussians(4, seed=5, extent=6.0, smin=1.0, smax=2.0)
    grid = VoxelGrid((5, 6, 7), (1.0, 1.0, 1.0), (-3.0, -2.5, -2.0))
    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, dens))
    # 8-sigma support: the cut-off jump exp(-32) is far below finite-difference resolution
    fn = lambda m, q, s, d: voxelize(m, q, s, d, grid, support_sigmas=8.0, backend=backend)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_crop_equals_slice_of_full_grid():
    means, quats, scales, dens = random_gaussians(30, dtype=torch.float32, seed=2)
    full = voxelize(means, quats, scales, dens, GRID)
    crop = voxelize(means, quats, scales, dens, GRID.crop((2, 3, 4), (5, 6, 7)))
    torch.testing.assert_close(crop, full[2:7, 3:9, 4:11], rtol=1e-5, atol=1e-6)


def test_geometry_grid_and_empty_model():
    geo = CTGeometry(mode="parallel", n_detector=(4, 4), detector_pixel_mm=(1, 1), n_voxel=(4, 5, 6), voxel_mm=(1, 1, 1), angles_rad=(0.0,))
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0)]
    vol = voxelize(*empty, geo)
    assert vol.shape == (4, 5, 6) and float(vol.abs().sum()) == 0


def test_bad_input():
    means, quats, scales, dens = random_gaussians(3)
    with pytest.raises(InputError, match="means"):
        voxelize(means[:, :2], quats, scales, dens, GRID)
    with pytest.raises(InputError, match="quats"):
        voxelize(means, quats[:2], scales, dens, GRID)
    with pytest.raises(InputError, match="densities"):
        voxelize(means, quats, scales, dens.float(), GRID)
    with pytest.raises(InputError, match="support_sigmas"):
        voxelize(means, quats, scales, dens, GRID, support_sigmas=0.0)
    with pytest.raises(InputError, match="backend"):
        voxelize(means, quats, scales, dens, GRID, backend="cuda-magic")
    with pytest.raises(InputError, match="grid"):
        voxelize(means, quats, scales, dens, (4, 4, 4))


def test_precision_matrices_invert_covariances():
    _m, quats, scales, _d = random_gaussians(5)
    prec6, diag = precision_matrices(quats, scales)
    from recon.splat.projection import quat_scale_to_covar

    cov = quat_scale_to_covar(quats, scales)
    P = torch.stack([prec6[:, [0, 1, 2]], prec6[:, [1, 3, 4]], prec6[:, [2, 4, 5]]], dim=1)
    torch.testing.assert_close(P @ cov, torch.eye(3, dtype=cov.dtype).expand(5, 3, 3), atol=1e-10, rtol=0)
    torch.testing.assert_close(diag, torch.diagonal(cov, dim1=-2, dim2=-1))


def test_tv_known_answer():
    vol = torch.zeros(3, 4, 5)
    vol[:, :, 2:] = 1.0  # one step along x on every row
    # mean |dx| over [3, 4, 4] differences = 1/4; no variation along z, y
    assert float(tv_3d(vol)) == pytest.approx(0.25)
    assert float(tv_3d(vol[None])) == pytest.approx(0.25)
    assert float(tv_3d(vol, eps=1e-6)) == pytest.approx(0.25, rel=1e-4)
    with pytest.raises(InputError):
        tv_3d(vol[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tv_numba_matches_torch_twin_value_and_gradient(dtype):
    """The fused kernel (value + gathered gradient) equals the torch ops and their autograd,
    including flat runs where a difference is exactly 0 (torch's abs has gradient 0 there)."""
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(9, 11, 13, generator=g, dtype=dtype)
    vol[2:5, 3:8, :] = 0.5  # plateaus: zero differences along every axis
    a = vol.clone().requires_grad_(True)
    b = vol.clone().requires_grad_(True)
    va, vb = tv_3d(a), _tv_3d_torch(b)
    assert va.dtype == dtype
    (va * 3.0).backward()
    (vb * 3.0).backward()
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(va) == pytest.approx(float(vb), rel=rtol)
    torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=1e-9)
    assert (a.grad == 0).any() and (a.grad != 0).any()
