"""OS-FISTA for least squares + TV (recon.ct.tv_solver)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recon.ct.project import Projector
from recon.ct.tv_solver import (
    TVSolver,
    grad_3d,
    grad_3d_adjoint,
    huber_residual,
    tv_objective,
    tv_prox,
    tv_sum,
)
from recon.errors import InputError

from .conftest import cone_geometry


@pytest.fixture(scope="module")
def tiny():
    """A 6^3 two-box phantom seen by 4 cone-beam views with 2 % noise, and its dense matrix."""
    g = cone_geometry(n_views=4, n=6, det=(8, 10))
    vol = torch.zeros(g.n_voxel)
    vol[1:5, 1:5, 1:4] = 1.0
    vol[2:4, 2:4, 3:5] += 0.5
    proj = Projector(g)
    gen = torch.Generator().manual_seed(0)
    b = proj(vol)
    b = b + 0.02 * float(b.max()) * torch.randn(b.shape, generator=gen)
    n = vol.numel()
    eye = torch.eye(n, dtype=torch.float32).reshape(n, *g.n_voxel)
    a = proj(eye).reshape(n, -1).T.double().numpy()  # [rays, voxels]
    return g, vol, b, a


def _reference(a: np.ndarray, b: np.ndarray, w: np.ndarray, lam: float, shape: tuple[int, int, int], iterations: int = 4000, isotropic: bool = False, huber: float = 0.0) -> np.ndarray:
    """Plain (unpreconditioned) Chambolle-Pock on the dense problem, in float64 (on this 6^3
    problem 2000 iterations are within 1e-8 of 20000, 4000 within 1e-13). ``huber``: the data
    loss is Huber's, whose conjugate confines the data dual to [-w delta, w delta]."""
    n = a.shape[1]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    gm = torch.stack([grad_3d(e) for e in eye]).reshape(n, -1).T.numpy()  # [3 * voxels, voxels]
    k = np.vstack([a, gm])
    norm = np.linalg.norm(k, 2)
    tau = sigma = 0.99 / norm
    x = np.zeros(n)
    xb = x.copy()
    y1, y2 = np.zeros(a.shape[0]), np.zeros(gm.shape[0])
    hit = w > 0
    for _ in range(iterations):
        y1 = y1 + sigma * (a @ xb)
        y1 = np.where(hit, (y1 - sigma * b) / (1 + sigma / np.where(hit, w, 1)), 0.0)
        if huber > 0:
            y1 = np.clip(y1, -w * huber, w * huber)
        y2 = y2 + sigma * (gm @ xb)
        if isotropic:  # per voxel onto the ball of radius lam (rows of gm: component-major)
            y3 = y2.reshape(3, -1)
            y2 = (y3 / np.maximum(1.0, np.linalg.norm(y3, axis=0) / lam)).ravel()
        else:
            y2 = np.clip(y2, -lam, lam)
        x_new = np.maximum(0.0, x - tau * (a.T @ y1 + gm.T @ y2))
        xb = 2 * x_new - x
        x = x_new
    return x.reshape(shape)


def test_gradient_adjoint_is_exact():
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(5, 6, 7, dtype=torch.float64, generator=gen)
    p = torch.randn(3, 5, 6, 7, dtype=torch.float64, generator=gen)
    assert float((grad_3d(u) * p).sum()) == pytest.approx(float((u * grad_3d_adjoint(p)).sum()), rel=1e-12)
    assert float(grad_3d(u).abs().sum()) == pytest.approx(float(tv_sum(u)), rel=1e-12)


@pytest.mark.parametrize("isotropic", [False, True])
def test_prox_minimises_its_objective(isotropic):
    """The prox beats random non-negative perturbations of itself on its own objective."""
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(6, 7, 8, dtype=torch.float64, generator=gen)
    d = 0.5 + torch.rand(6, 7, 8, dtype=torch.float64, generator=gen)
    lam = 0.3

    def objective(u):
        return float(0.5 * (d * (u - v) ** 2).sum() + lam * tv_sum(u, isotropic))

    u, _p = tv_prox(v, lam, d, iterations=3000, isotropic=isotropic)
    assert float(u.min()) >= 0.0
    best = objective(u)
    assert best < objective(v.clamp_min(0)) - 1.0
    for _ in range(20):
        other = (u + 0.01 * torch.randn(u.shape, dtype=u.dtype, generator=gen)).clamp_min(0)
        assert objective(other) >= best - 1e-9


def test_objective_decreases_monotonically_and_matches_reference(tiny):
    """One subset, no momentum: proximal gradient in a majorising metric never goes uphill; with
    momentum it reaches the dense Chambolle-Pock solution."""
    g, _vol, b, a = tiny
    lam = 0.05
    mono = TVSolver(b, g, lam=lam, n_subsets=1, prox_iterations=50, momentum=False)
    mono.start(torch.zeros(g.n_voxel))
    values = [tv_objective(mono.projector, mono.x, b, mono.w, lam)]
    for _ in range(60):
        mono.step()
        values.append(tv_objective(mono.projector, mono.x, b, mono.w, lam))
        assert float(mono.x.min()) >= 0.0
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in itertools.pairwise(values))
    assert values[-1] < 0.2 * values[0]

    ref = _reference(a, b.double().numpy().ravel(), mono.w.double().numpy().ravel(), lam, g.n_voxel)
    fast = TVSolver(b, g, lam=lam, n_subsets=1, prox_iterations=20)
    fast.start(torch.zeros(g.n_voxel))
    for _ in range(300):  # at 100 steps the objective is within 2e-6 of the reference, at 200 within float32
        fast.step()
    x = fast.x.double().numpy()
    f_ref = tv_objective(fast.projector, torch.from_numpy(ref).float(), b, fast.w, lam)
    f_fast = tv_objective(fast.projector, fast.x, b, fast.w, lam)
    assert f_fast == pytest.approx(f_ref, rel=2e-3)
    assert np.abs(x - ref).max() < 0.02 * ref.max()


def test_isotropic_tv_is_the_gradient_norm():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(4, 5, 6, dtype=torch.float64, generator=gen)
    g = grad_3d(u)
    assert float(tv_sum(u, isotropic=True)) == pytest.approx(float(torch.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2).sum()), rel=1e-12)
    assert float(tv_sum(u, isotropic=True)) < float(tv_sum(u))


@pytest.mark.parametrize("weighted, isotropic", [(True, False), (False, True)])
def test_weighted_and_isotropic_variants_match_reference(tiny, weighted, isotropic):
    """Ray weights multiply the data term's 1 / (A 1); isotropic TV changes the prox. Both reach
    the dense Chambolle-Pock solution of their own objective."""
    g, _vol, b, a = tiny
    lam = 0.05
    rw = (0.3 + torch.rand(b.shape, generator=torch.Generator().manual_seed(4))) if weighted else None
    s = TVSolver(b, g, lam=lam, n_subsets=1, prox_iterations=20, ray_weights=rw, isotropic=isotropic)
    s.start(torch.zeros(g.n_voxel))
    for _ in range(300):
        s.step()
    ref = _reference(a, b.double().numpy().ravel(), s.w.double().numpy().ravel(), lam, g.n_voxel, isotropic=isotropic)
    f_ref = tv_objective(s.projector, torch.from_numpy(ref).float(), b, s.w, lam, isotropic)
    f_fast = tv_objective(s.projector, s.x, b, s.w, lam, isotropic)
    assert f_fast == pytest.approx(f_ref, rel=2e-3)
    assert np.abs(s.x.double().numpy() - ref).max() < 0.02 * ref.max()
    plain = TVSolver(b, g, lam=lam, n_subsets=1)
    if weighted:  # the weights did reach the data term
        assert not torch.allclose(plain.w, s.w)


def test_huber_residual_is_least_squares_inside_and_linear_outside():
    r = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0], dtype=torch.float64)
    h, dh = huber_residual(r, 1.0)
    torch.testing.assert_close(h, torch.tensor([2.5, 0.125, 0.0, 0.02, 1.5], dtype=torch.float64))
    torch.testing.assert_close(dh, torch.tensor([-1.0, -0.5, 0.0, 0.2, 1.0], dtype=torch.float64))
    h0, dh0 = huber_residual(r, 0.0)
    torch.testing.assert_close(h0, 0.5 * r * r)
    torch.testing.assert_close(dh0, r)


def test_huber_data_term_matches_reference(tiny):
    """With a Huber threshold below the largest residuals the solver reaches the dense
    Chambolle-Pock solution of the Huber objective, which differs from the least-squares one."""
    g, _vol, b, a = tiny
    lam, delta = 0.05, 0.01 * float(b.max())
    s = TVSolver(b, g, lam=lam, n_subsets=1, prox_iterations=20, huber=delta)
    s.start(torch.zeros(g.n_voxel))
    for _ in range(300):
        s.step()
    w = s.w.double().numpy().ravel()
    ref = _reference(a, b.double().numpy().ravel(), w, lam, g.n_voxel, huber=delta)
    ref_ls = _reference(a, b.double().numpy().ravel(), w, lam, g.n_voxel)
    f_ref = tv_objective(s.projector, torch.from_numpy(ref).float(), b, s.w, lam, huber=delta)
    f_fast = tv_objective(s.projector, s.x, b, s.w, lam, huber=delta)
    assert f_fast == pytest.approx(f_ref, rel=2e-3)
    assert np.abs(s.x.double().numpy() - ref).max() < 0.02 * ref.max()
    assert np.abs(ref_ls - ref).max() > 0.05 * ref.max()  # the threshold did bite


def test_huber_resists_corrupted_rays():
    """A few rays clipped far below their true line integral (as photon-starved rays are) pull
    the least-squares solution away from the phantom; the Huber loss leaves it near the
    solution from the clean rays."""
    g = cone_geometry(n_views=8, n=12, det=(16, 20))
    vol = torch.zeros(g.n_voxel)
    vol[2:10, 2:10, 2:10] = 1.0
    vol[4:8, 4:7, 5:9] += 1.0
    proj = Projector(g)
    b = proj(vol)
    gen = torch.Generator().manual_seed(5)
    b = b + 0.005 * float(b.max()) * torch.randn(b.shape, generator=gen)
    bad = (torch.rand(b.shape, generator=gen) < 0.02) & (b > 0.3 * float(b.max()))
    b_bad = torch.where(bad, 0.3 * b, b)  # clipped rays: far too little attenuation
    assert int(bad.sum()) > 10

    def error(rays, huber):
        s = TVSolver(rays, g, lam=1e-3, n_subsets=1, prox_iterations=10, huber=huber)
        s.start(torch.zeros(g.n_voxel))
        for _ in range(150):
            s.step()
        return float((s.x - vol).norm() / vol.norm())

    delta = 0.02 * float(b.max())
    clean, ls, robust = error(b, 0.0), error(b_bad, 0.0), error(b_bad, delta)
    assert ls > 2.0 * clean
    assert robust < 0.5 * ls
    assert robust < 1.5 * clean


def test_subset_schedule_positions_and_restart(tiny):
    """A schedule [3, 2, 1]: 3 steps of pass 0, 2 of pass 1, then full-batch steps; the momentum
    restarts where full-batch steps begin, not between subset counts; ``os_passes`` is the
    schedule [n] * k + [1]."""
    g, _vol, b, _a = tiny
    s = TVSolver(b, g, lam=0.05, n_subsets=[3, 2, 1])
    assert [s.position(k) for k in range(7)] == [(0, 3, 0), (0, 3, 1), (0, 3, 2), (1, 2, 0), (1, 2, 1), (2, 1, 0), (3, 1, 0)]
    s.start(torch.zeros(g.n_voxel))
    ends, ts, restarted = [], [], []
    for _ in range(7):
        info = s.step()
        ends.append(info["pass_end"])
        restarted.append(info["restarted"])
        ts.append(s.t)  # after the step
    assert ends == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    if not restarted[3]:  # 3 -> 2 subsets: t goes on growing
        assert ts[3] > ts[2] > 1.0
    assert ts[5] == pytest.approx(0.5 * (1 + 5**0.5))  # restarted into the first full-batch step
    assert ts[4] > ts[5] or restarted[4]
    assert sorted(v for key in s.keys(3) for v in key) == list(range(g.n_views))
    a1 = TVSolver(b, g, lam=0.05, n_subsets=2, os_passes=2)
    a2 = TVSolver(b, g, lam=0.05, n_subsets=[2, 2, 1])
    assert a1.schedule == a2.schedule == [2, 2, 1]
    with pytest.raises(InputError, match="n_subsets"):
        TVSolver(b, g, lam=0.05, n_subsets=[])
    with pytest.raises(InputError, match="ray_weights"):
        TVSolver(b, g, lam=0.05, ray_weights=-torch.ones(b.shape))


def test_subsets_and_resume_are_exact(tiny):
    g, _vol, b, _a = tiny
    s1 = TVSolver(b, g, lam=0.05, n_subsets=2)
    s1.start(torch.zeros(g.n_voxel))
    for _ in range(5):
        s1.step()
    state = s1.state_dict()
    for _ in range(5):
        s1.step()
    s2 = TVSolver(b, g, lam=0.05, n_subsets=2)
    s2.load_state_dict(state)
    for _ in range(5):
        s2.step()
    assert torch.equal(s1.x, s2.x) and torch.equal(s1.p, s2.p) and s1.t == s2.t
    assert float(s1.x.min()) >= 0.0


def test_bad_inputs(tiny):
    g, _vol, b, _a = tiny
    with pytest.raises(InputError, match="projections"):
        TVSolver(b[:2], g, lam=0.1)
    with pytest.raises(InputError):
        TVSolver(b, g, lam=-1.0)
    with pytest.raises(InputError, match="huber"):
        TVSolver(b, g, lam=0.1, huber=-1.0)
    with pytest.raises(InputError, match="x0"):
        TVSolver(b, g, lam=0.1).start(torch.zeros(3, 3, 3))
    with pytest.raises(InputError):
        tv_prox(torch.zeros(3, 3, 3), 0.1, torch.ones(3, 3, 4))


def test_tv_prox_along_z_only():
    """``axes=(0,)``: variation within slices is untouched, variation across slices is reduced
    (and the default, all three axes, smooths both)."""
    g = torch.Generator().manual_seed(0)
    in_plane = torch.rand(1, 6, 6, generator=g).expand(5, 6, 6).contiguous() + 1.0  # constant along z
    d = torch.ones_like(in_plane)
    u, p = tv_prox(in_plane, 0.05, d, iterations=200, axes=(0,))
    torch.testing.assert_close(u, in_plane)
    assert float(p[1:].abs().max()) == 0.0
    u3, _ = tv_prox(in_plane, 0.05, d, iterations=200)
    assert float((u3 - in_plane).abs().max()) > 1e-2
    across = torch.rand(5, 1, 1, generator=g).expand(5, 6, 6).contiguous() + 1.0  # varies along z only
    uz, _ = tv_prox(across, 0.05, d, iterations=200, axes=(0,))
    assert float(torch.diff(uz, dim=0).abs().sum()) < 0.8 * float(torch.diff(across, dim=0).abs().sum())
    torch.testing.assert_close(torch.diff(uz, dim=1), torch.zeros_like(torch.diff(uz, dim=1)))
    with pytest.raises(InputError, match="axes"):
        tv_prox(across, 0.05, d, axes=(3,))
