from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recon.ct import _joseph_numba as nb
from recon.ct.phantoms import ball
from recon.ct.project import (
    Projector,
    backproject,
    forward_project,
    voxel_driven_backproject,
)
from recon.errors import InputError
from recon.geometry.ct import CTGeometry, circular_angles

from .conftest import MU, cone_geometry


def _geometries() -> dict[str, CTGeometry]:
    cone = cone_geometry(
        n_views=7, n=16, det=(20, 26), n_voxel=(14, 16, 18), voxel_mm=(1.0, 1.1, 0.9),
        offset_origin_mm=(0.5, -1.0, 2.0), offset_detector_mm=(1.0, -2.0),
    )
    par = dataclasses.replace(cone, mode="parallel", dsd_mm=None, dso_mm=None)
    fan = cone_geometry(mode="fan", n_views=9, det=(1, 30), n_voxel=(1, 16, 16))
    vec = cone.as_vectors()
    rng = np.random.default_rng(1)
    vec = vec + rng.normal(0, 0.3, vec.shape) * np.r_[np.ones(6), np.zeros(6)]  # perturbed source/detector
    calibrated = dataclasses.replace(cone, vectors=vec)
    return {"cone": cone, "parallel": par, "fan": fan, "vectors": calibrated}


GEOMETRIES = _geometries()


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjoint_identity(name, dtype):
    g = GEOMETRIES[name]
    P = Projector(g, max_rays_per_chunk=700)  # several chunks and crops
    x = torch.rand(g.n_voxel, dtype=dtype)
    y = torch.rand(g.projection_shape, dtype=dtype)
    lhs = float((P(x).double() * y.double()).sum())
    rhs = float((x.double() * P.backproject(y).double()).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    assert lhs > 0


@pytest.mark.parametrize("batch", [(), (2,)])
def test_shapes_batches_and_views(cone_geo, batch):
    P = Projector(cone_geo)
    x = torch.rand(*batch, *cone_geo.n_voxel)
    y = P(x)
    assert y.shape == (*batch, *cone_geo.projection_shape)
    if batch:
        torch.testing.assert_close(y[1], P(x[1]))
    sub = P(x, views=[6, 1])
    torch.testing.assert_close(sub, y[..., [6, 1], :, :])
    torch.testing.assert_close(P(x, views=slice(2, 5)), y[..., 2:5, :, :])
    bp = P.backproject(sub, views=[6, 1])
    assert bp.shape == x.shape
    # functional API matches the object
    torch.testing.assert_close(forward_project(x, cone_geo), y)
    torch.testing.assert_close(backproject(y, cone_geo), P.backproject(y))


def test_chunking_does_not_change_results(cone_geo):
    x = torch.rand(cone_geo.n_voxel)
    a = Projector(cone_geo, max_rays_per_chunk=97)(x)
    b = Projector(cone_geo, max_rays_per_chunk=1 << 16)(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs(cone_geo):
    P = Projector(cone_geo)
    with pytest.raises(InputError, match=r"expected shape \[16, 16, 16\]"):
        P(torch.rand(16, 16, 15))
    with pytest.raises(InputError, match="floating-point"):
        P(torch.ones(16, 16, 16, dtype=torch.int64))
    with pytest.raises(InputError, match=r"\[8, 24, 34\]"):
        P.backproject(torch.rand(7, 24, 34))
    with pytest.raises(InputError, match="out of range"):
        P(torch.rand(16, 16, 16), views=[8])
    with pytest.raises(InputError, match="CTGeometry"):
        Projector("cone")  # type: ignore[arg-type]


def test_uniform_box_exact_line_integrals():
    """A uniform volume: Joseph sampling gives N * step exactly for rays that cross all planes."""
    n = 16
    g = CTGeometry(
        mode="parallel", n_detector=(5, 5), detector_pixel_mm=(1.0, 1.0), n_voxel=(n, n, n), voxel_mm=(1.0, 1.0, 1.0),
        angles_rad=[0.0, 0.3, math.pi / 4, math.pi / 2 + 0.2],
    )
    p = Projector(g)(torch.full((n, n, n), MU, dtype=torch.float64))
    expected = [n, n / math.cos(0.3), n * math.sqrt(2), n / math.cos(0.2)]
    for i, e in enumerate(expected):
        assert float(p[i, 2, 2]) == pytest.approx(e * MU, rel=1e-9)
    assert torch.allclose(p[0], torch.full((5, 5), n * MU, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["parallel", "cone"])
def test_ball_chord_through_centre(mode):
    """Uniform ball of radius 12 mm (partial-volume voxelised): the central ray's integral is
    the diameter times mu within 1.5 %."""
    n, radius_mm = 32, 12.0
    vol = torch.from_numpy(ball((n, n, n), radius=radius_mm / (n / 2), supersample=8)) * MU
    g = CTGeometry(
        mode=mode, dsd_mm=500.0 if mode == "cone" else None, dso_mm=300.0 if mode == "cone" else None,
        n_detector=(5, 5), detector_pixel_mm=(0.5, 0.5), n_voxel=(n, n, n), voxel_mm=(1.0, 1.0, 1.0),
        angles_rad=[0.0, 0.7, 2.0],
    )
    p = Projector(g)(vol)
    for i in range(3):
        assert float(p[i, 2, 2]) == pytest.approx(2 * radius_mm * MU, rel=0.015)


def test_gradcheck_float64():
    g = cone_geometry(n_views=2, n=4, det=(3, 3), detector_pixel_mm=(2.0, 2.0), voxel_mm=(1.5, 1.5, 1.5))
    P = Projector(g, dtype=torch.float64)
    x = torch.rand(g.n_voxel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: P(v), (x,), eps=1e-6, atol=1e-7)
    y = torch.rand(g.projection_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: P.backproject(p), (y,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(lambda v: P(v), (x,), eps=1e-6, atol=1e-7)


def test_autograd_gradient_is_backprojection(cone_geo):
    P = Projector(cone_geo)
    x = torch.rand(cone_geo.n_voxel, requires_grad=True)
    w = torch.rand(cone_geo.projection_shape)
    (P(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, P.backproject(w))


def test_cone_tends_to_parallel_for_distant_source():
    """Cone beam with DSO -> infinity (detector pitch scaled by the magnification) converges to
    parallel beam, with the error falling like 1/DSO."""
    n = 16
    common = dict(n_detector=(12, 20), detector_pixel_mm=(1.0, 1.0), n_voxel=(n, n, n), voxel_mm=(1.0, 1.0, 1.0), angles_rad=circular_angles(5))
    x = torch.from_numpy(ball((n, n, n), 0.7)).double() * MU + torch.rand(n, n, n, dtype=torch.float64) * 0.01
    ref = Projector(CTGeometry(mode="parallel", **common))(x)
    errors = []
    for dso in (1e3, 1e5, 1e7):
        mag = (dso + 10.0) / dso
        cone = CTGeometry(mode="cone", dso_mm=dso, dsd_mm=dso + 10.0, **{**common, "detector_pixel_mm": (mag, mag)})
        errors.append(float((Projector(cone)(x) - ref).abs().max()))
    assert errors[0] > 30 * errors[1] > 30 * 30 * errors[2] * 0.9
    assert errors[2] < 1e-6 * float(ref.max())


def test_fan_equals_central_row_of_cone():
    """Fan beam = the central row of a cone beam through a volume that is uniform along z."""
    img = torch.rand(1, 16, 16, dtype=torch.float64) * MU
    fan = cone_geometry(mode="fan", n_views=6, det=(1, 30), n_voxel=(1, 16, 16))
    cone = cone_geometry(n_views=6, det=(5, 30), n_voxel=(9, 16, 16))
    pf = Projector(fan)(img)
    pc = Projector(cone)(img.expand(9, 16, 16).contiguous())
    torch.testing.assert_close(pf[:, 0], pc[:, 2], rtol=1e-9, atol=1e-12)


def test_vector_geometry_matches_circular(cone_geo):
    vec = dataclasses.replace(cone_geo, vectors=cone_geo.as_vectors())
    x = torch.rand(cone_geo.n_voxel, dtype=torch.float64)
    torch.testing.assert_close(Projector(vec)(x), Projector(cone_geo)(x), rtol=1e-9, atol=1e-12)


def test_voxel_driven_backprojection_of_constant_rows(cone_geo):
    """Backprojecting ones with unit view weights gives the number of views wherever every view
    sees the voxel."""
    ones = torch.ones(cone_geo.projection_shape)
    bp = voxel_driven_backproject(ones, cone_geo)
    assert float(bp[8, 8, 8]) == pytest.approx(cone_geo.n_views, rel=1e-5)
    with pytest.raises(InputError, match="expected a tensor of shape"):
        voxel_driven_backproject(torch.ones(3, 3, 3), cone_geo)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(cone_geo):
    x = torch.rand(cone_geo.n_voxel)
    cpu = Projector(cone_geo)(x)
    gpu = Projector(cone_geo, device="cuda")(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    y = torch.rand(cone_geo.projection_shape)
    torch.testing.assert_close(Projector(cone_geo).backproject(y.cuda()).cpu(), Projector(cone_geo).backproject(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cone", "fan", "vectors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_twin_matches_torch(name, dtype):
    """The numba CPU kernels and the grid_sample reference agree (forward and adjoint)."""
    g = GEOMETRIES[name]
    x = torch.rand(2, *g.n_voxel, dtype=dtype)
    y = torch.rand(2, *g.projection_shape, dtype=dtype)
    ref, fast = Projector(g, backend="torch"), Projector(g, backend="numba")
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast(x), ref(x), **tol)
    torch.testing.assert_close(fast.backproject(y), ref.backproject(y), **tol)
    xg = x[0].clone().requires_grad_(True)
    (fast(xg) * y[0]).sum().backward()
    torch.testing.assert_close(xg.grad, ref.backproject(y[0]), **tol)


def test_backend_and_threads_validation(cone_geo):
    with pytest.raises(InputError, match="expected 'auto', 'torch' or 'numba'"):
        Projector(cone_geo, backend="cuda")
    P = Projector(cone_geo, num_threads=0)
    with pytest.raises(InputError, match="num_threads"):
        P(torch.rand(cone_geo.n_voxel))
    before = torch.get_num_threads()
    Projector(cone_geo, num_threads=2)(torch.rand(cone_geo.n_voxel))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_view_groups_and_cache_budget_do_not_change_results(cone_geo, backend):
    x = torch.rand(cone_geo.n_voxel, dtype=torch.float64)
    y = torch.rand(cone_geo.projection_shape, dtype=torch.float64)
    ref = Projector(cone_geo, backend=backend)
    small = Projector(cone_geo, backend=backend, max_rays_per_plan=2000, max_cache_bytes=0)  # 2 views per table, no cache
    torch.testing.assert_close(small(x), ref(x))
    torch.testing.assert_close(small.backproject(y), ref.backproject(y))
    assert not small._plans


@pytest.mark.parametrize("name", ["cone", "parallel", "fan", "vectors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_pair_is_an_exact_transpose(name, dtype):
    """The numba forward and adjoint share their samples: <A x, y> = <x, A^T y> to rounding
    (tighter than the default pair, whose forward is grid_sample)."""
    g = GEOMETRIES[name]
    P = Projector(g, backend="numba")
    x = torch.rand(g.n_voxel, dtype=dtype)
    y = torch.rand(g.projection_shape, dtype=dtype)
    lhs = float((P(x).double() * y.double()).sum())
    rhs = float((x.double() * P.backproject(y).double()).sum())
    assert abs(lhs - rhs) / abs(lhs) < (1e-6 if dtype == torch.float32 else 1e-12)


def test_numba_adjoint_batch_matches_single_items(cone_geo):
    """The batched adjoint (inner loop over the batch) equals the B = 1 fast path item by item."""
    P = Projector(cone_geo, backend="numba")
    y = torch.rand(3, *cone_geo.projection_shape, dtype=torch.float64)
    batched = P.backproject(y)
    for i in range(3):
        torch.testing.assert_close(batched[i], P.backproject(y[i]), rtol=1e-13, atol=1e-15)


@pytest.mark.serial  # make test's parallel phase runs numba with one thread
def test_numba_adjoint_does_not_depend_on_threads(cone_geo):
    """Threads own disjoint plane ranges, so every voxel sums its rays in the same order
    whatever the thread count: bit-identical results, no races."""
    assert nb.AVAILABLE, "numba is a required dependency"
    if nb.numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs >= 2 numba threads (a machine with >= 2 cores)")
    y = torch.rand(cone_geo.projection_shape)
    one = Projector(cone_geo, backend="numba", num_threads=1).backproject(y)
    two = Projector(cone_geo, backend="numba", num_threads=2).backproject(y)
    assert torch.equal(one, two)


def test_numba_matches_torch_when_most_rays_miss():
    """Detector far wider than the volume: most samples fall outside (zero padding) and rays
    enter and leave through every face; numba and grid_sample agree in both directions."""
    g = cone_geometry(n_views=5, n=8, det=(30, 40), detector_pixel_mm=(1.5, 1.5), n_voxel=(6, 8, 7), offset_origin_mm=(1.0, 2.0, -1.5))
    x = torch.rand(g.n_voxel, dtype=torch.float64)
    y = torch.rand(g.projection_shape, dtype=torch.float64)
    ref, fast = Projector(g, backend="torch"), Projector(g, backend="numba")
    assert float((ref(x) == 0).double().mean()) > 0.3  # many rays miss
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.backproject(y), ref.backproject(y), rtol=1e-10, atol=1e-12)


def _flipped_rows(g: CTGeometry) -> CTGeometry:
    """The same scan with the detector's v axis reversed: H decreases along each column."""
    vec = g.as_vectors().copy()
    vec[:, 9:12] *= -1.0
    return dataclasses.replace(g, vectors=vec)


@pytest.mark.parametrize("name", ["cone", "parallel", "flipped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_affine_columns_match_plain_kernels(name, dtype):
    """Circular scans: the x- and y-driven rays of a detector column share W and are evenly
    spaced in H, so batch 1 takes the affine-column kernels; they agree with the plain numba
    kernels (the batched path) and with grid_sample, in both directions. "flipped" has H
    decreasing along the detector rows (its columns are reversed when the tables are built)."""
    assert nb.AVAILABLE, "numba is a required dependency"
    g = _flipped_rows(GEOMETRIES["cone"]) if name == "flipped" else GEOMETRIES[name]
    P = Projector(g, backend="numba", dtype=dtype)
    plan = P._plan(tuple(range(g.n_views)), torch.device("cpu"), dtype)
    assert plan.groups and all(gr.affine is not None for gr in plan.groups)
    x = torch.rand(g.n_voxel, dtype=dtype)
    y = torch.rand(g.projection_shape, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-12}
    torch.testing.assert_close(P(x), P(torch.stack([x, x]))[0], **tol)
    torch.testing.assert_close(P.backproject(y), P.backproject(torch.stack([y, y]))[0], **tol)
    if dtype == torch.float64:
        ref = Projector(g, backend="torch", dtype=dtype)
        torch.testing.assert_close(P(x), ref(x), **tol)
        torch.testing.assert_close(P.backproject(y), ref.backproject(y), **tol)


def test_affine_columns_model_reverses_and_rejects():
    """Runs whose H decreases are reversed (positive spacing); a run that is not evenly spaced
    on some plane, or whose spacing changes sign between planes, disables the model."""
    from recon.ct.project import _affine_columns

    starts = np.array([0, 4, 8])
    i = np.arange(4.0)
    w0, dw = np.repeat([1.0, 2.0], 4), np.repeat([0.1, 0.2], 4)
    h0 = np.r_[3.0 + 0.5 * i, 9.0 - 0.7 * i]
    dh = np.r_[0.1 + 0.01 * i, 0.2 - 0.02 * i]
    cols, order = _affine_columns(starts, w0, dw, h0, dh, n_planes=10)
    np.testing.assert_array_equal(order, [0, 1, 2, 3, 7, 6, 5, 4])
    np.testing.assert_allclose(cols[0], [1.0, 0.1, 3.0, 0.1, 0.5, 0.01])
    np.testing.assert_allclose(cols[1], [2.0, 0.2, 9.0 - 2.1, 0.2 - 0.06, 0.7, 0.02])
    bent = h0.copy()
    bent[1] += 0.01  # off the line by 1e-2 voxel
    assert _affine_columns(starts, w0, dw, bent, dh, n_planes=10) is None
    assert _affine_columns(starts, w0, dw, h0, dh + np.r_[0.0, 1e-3, 0.0, 0.0, 0, 0, 0, 0], n_planes=10) is None
    crossing = np.r_[0.1 - 0.2 * i, dh[4:]]  # spacing 0.5 at plane 0, 0.5 - 0.2 * 9 < 0 at plane 9
    assert _affine_columns(starts, w0, dw, h0, crossing, n_planes=10) is None


def test_tilted_detector_uses_plain_kernels():
    """A detector tilted about its u axis (v leans towards the source): the rays of a column no
    longer share W on a plane, so the column kernels are not used, and numba still matches
    grid_sample. (Perturbed sources alone keep columns affine: "vectors" takes that path.)"""
    g = GEOMETRIES["cone"]
    vec = g.as_vectors().copy()
    toward_source = vec[:, 0:3] - vec[:, 3:6]
    toward_source /= np.linalg.norm(toward_source, axis=1, keepdims=True)
    vec[:, 9:12] += 0.2 * np.linalg.norm(vec[:, 9:12], axis=1, keepdims=True) * toward_source
    tilted = dataclasses.replace(g, vectors=vec)
    P = Projector(tilted, backend="numba", dtype=torch.float64)
    plan = P._plan(tuple(range(g.n_views)), torch.device("cpu"), torch.float64)
    assert all(gr.affine is None for gr in plan.groups)
    ref = Projector(tilted, backend="torch", dtype=torch.float64)
    x = torch.rand(g.n_voxel, dtype=torch.float64)
    y = torch.rand(g.projection_shape, dtype=torch.float64)
    torch.testing.assert_close(P(x), ref(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P.backproject(y), ref.backproject(y), rtol=1e-10, atol=1e-12)


def test_numba_columns_need_a_shared_w_coordinate():
    """Columns whose rays differ in W by even one ulp, or columns of single rays (fan beam),
    are not used by the column adjoint."""
    from recon.ct.project import _shared_w_columns

    ids = np.repeat(np.arange(3), 10)
    w0 = np.repeat(np.array([1.0, 2.0, 3.0], np.float32), 10)
    dw = np.repeat(np.array([0.5, 0.25, 0.0], np.float32), 10)
    np.testing.assert_array_equal(_shared_w_columns(ids, w0, dw), [0, 10, 20, 30])
    w0_bad = w0.copy()
    w0_bad[15] = np.nextafter(w0_bad[15], np.float32(9))
    assert _shared_w_columns(ids, w0_bad, dw) is None
    assert _shared_w_columns(np.arange(30), w0, dw) is None  # one ray per column
    fan = cone_geometry(mode="fan", n_views=9, det=(1, 30), n_voxel=(1, 16, 16))
    plan = Projector(fan, backend="numba")._plan(tuple(range(9)), torch.device("cpu"), torch.float32)
    assert all(g.columns is None for g in plan.groups)
