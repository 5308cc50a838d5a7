"""TV-regularised voxel reconstruction (recon.ct.tv_trainer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.ct.analytic import fdk
from recon.ct.project import Projector
from recon.ct.sart import sart
from recon.ct.tv_trainer import FISTA_ITERATIONS, TVConfig, TVTrainer, fista_schedule
from recon.errors import InputError
from recon.io.run import RunDir
from recon.train.loop import load_checkpoint_file

from .conftest import MU, cone_geometry, psnr


@pytest.fixture(scope="module")
def noisy_scan():
    """A piecewise-constant 24^3 phantom (two boxes in a ball), 10 views, 1 % noise."""
    torch.manual_seed(0)
    g = cone_geometry(n_views=10, n=24, det=(32, 40))
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 24),) * 3, indexing="ij")
    vol = ((x**2 + y**2 + z**2) < 0.7).astype(np.float32)
    vol += 0.5 * ((np.abs(x - 0.2) < 0.25) & (np.abs(y) < 0.3) & (np.abs(z + 0.1) < 0.35))
    vol = torch.from_numpy(vol * MU)
    proj = Projector(g)(vol)
    proj = proj + 0.01 * float(proj.max()) * torch.randn_like(proj)
    return g, vol, proj


def test_fista_floor_above_fdk_and_sart(noisy_scan):
    """OS-FISTA (two passes over subsets, then full batch) on the noisy phantom: above FDK and
    SART, x >= 0."""
    g, vol, proj = noisy_scan
    ref = vol.numpy()
    x_fdk = fdk(proj, g).clamp_min(0).numpy()
    x_sart = sart(proj, g, 10, init="fdk").numpy()
    tr = TVTrainer(proj, g, TVConfig(solver="fista", iterations=60, fista_lambda_tv=1e-3, fista_full_batch_after=2))
    x_tv = tr.fit().numpy()
    assert x_tv.min() >= 0.0
    assert psnr(x_tv, ref) > psnr(x_fdk, ref) + 5.0
    assert psnr(x_tv, ref) > psnr(x_sart, ref) + 1.0
    assert len(tr.history) == 60 and not tr.converged


def test_fista_stops_when_a_pass_changes_little(noisy_scan):
    """With ``tol`` the run ends at the end of the first pass whose steps all changed x by less."""
    g, _vol, proj = noisy_scan
    tr = TVTrainer(proj, g, TVConfig(solver="fista", iterations=50, fista_lambda_tv=1e-3, fista_full_batch_after=2, tol=0.03))
    tr.fit()
    changes = [h["change"] for h in tr.history]
    assert tr.converged and tr.step < 50
    last_pass = changes[-5:] if tr.step <= 10 else changes[-1:]  # 5 subsets per pass, then full-batch steps
    assert max(last_pass) < 0.03 and changes[0] >= 0.03
    assert tr.step <= 10 or max(changes[5:10]) >= 0.03  # it did not stop at an earlier pass


def test_fista_schedule_and_defaults():
    """fista: by default 2 warm-up passes over 10 subsets (at most half the views), then 5
    subsets (at most views / 5), 110 steps: 20 passes at 25 views."""
    cfg = TVConfig(solver="fista")
    assert cfg.resolved().init == "fdk" and cfg.resolved().iterations == FISTA_ITERATIONS == 2 * 10 + 18 * 5
    assert fista_schedule(cfg, 25) == [10, 10, 5]
    assert fista_schedule(cfg, 10) == [5, 5, 2]
    assert fista_schedule(cfg, 50) == [10, 10, 5]
    assert fista_schedule(TVConfig(fista_warm_passes=0), 25) == [5]
    warm = TVConfig(solver="fista", fista_warm_passes=2)
    assert fista_schedule(warm, 25) == [10, 10, 5]
    assert fista_schedule(warm, 10) == [5, 5, 2]
    assert fista_schedule(TVConfig(fista_warm_passes=2, fista_subset_views=1), 10) == [5, 5, 5]
    assert fista_schedule(TVConfig(fista_warm_passes=2, fista_full_batch_after=3), 25) == [10, 10, 5, 1]
    assert fista_schedule(TVConfig(fista_warm_passes=2, fista_full_batch_after=1), 25) == [10, 1]
    # at least fista_subset_views views per subset after the warm-up: 2 subsets at 10 views
    assert fista_schedule(TVConfig(fista_warm_passes=0), 10) == [2]
    assert fista_schedule(TVConfig(fista_warm_passes=0, fista_subset_views=1), 10) == [5]
    assert fista_schedule(TVConfig(fista_warm_passes=0), 3) == [1]
    with pytest.raises(InputError, match="--tv.fista-relaxation"):
        TVConfig(fista_relaxation=2.0).validate()
    with pytest.raises(InputError, match="--tv.fista-huber"):
        TVConfig(fista_huber=-0.1).validate()
    with pytest.raises(InputError, match="--tv.fista-subset-views"):
        TVConfig(fista_subset_views=0).validate()


def test_fista_huber_reaches_the_solver_in_line_integral_units(noisy_scan):
    """``fista_huber`` is in line-integral units; the solver works on projections / scale."""
    g, _vol, proj = noisy_scan
    tr = TVTrainer(proj, g, TVConfig(solver="fista", iterations=1, fista_huber=0.05))
    assert tr.solver is not None and tr.solver.huber == pytest.approx(0.05 / tr.scale)
    assert TVTrainer(proj, g, TVConfig(solver="fista", iterations=1, fista_huber=0.0)).solver.huber == 0.0


def test_fista_defaults_do_not_diverge_at_few_views(noisy_scan):
    """The default fista settings on the 10-view phantom (2 subsets of 5 views after the warm-up
    passes): every pass ends above FDK, the last one well above, and within 0.5 dB of the best
    pass (before the subset floor, 5 subsets of 2 views drifted away on a 10-view chest)."""
    g, vol, proj = noisy_scan
    ref = vol.numpy()
    x_fdk = fdk(proj, g).clamp_min(0).numpy()
    tr = TVTrainer(proj, g, TVConfig(solver="fista"))
    assert tr.solver is not None and tr.solver.schedule[-1] == 2
    scores = []
    for _ in range(int(tr.config.iterations)):
        info = tr.solver.step()
        if info["pass_end"]:
            scores.append(psnr(tr.volume().numpy(), ref))
    assert min(scores) > psnr(x_fdk, ref) + 1.0
    assert scores[-1] > psnr(x_fdk, ref) + 5.0
    assert scores[-1] > max(scores) - 0.5


def test_tv_beats_sart_on_noisy_sparse_views(noisy_scan):
    g, vol, proj = noisy_scan
    x_sart = sart(proj, g, 10, init="fdk").numpy()
    tr = TVTrainer(proj, g, TVConfig(solver="adam", iterations=150, batch_views=5, lambda_tv=0.1, init_sart_iterations=3))
    x_tv = tr.fit().numpy()
    assert x_tv.min() >= 0.0
    assert psnr(x_tv, vol.numpy()) > psnr(x_sart, vol.numpy()) + 1.0
    assert len(tr.history) == 150 and tr.history[-1]["loss"] < tr.history[0]["loss"]


def test_tv_weight_smooths(noisy_scan):
    """More TV, less total variation in the result (same steps and start)."""
    g, _vol, proj = noisy_scan

    def tv_of(lam: float) -> float:
        x = TVTrainer(proj, g, TVConfig(solver="adam", iterations=40, lambda_tv=lam, init="fdk")).fit()
        return float(sum(torch.diff(x, dim=d).abs().sum() for d in range(3)))

    assert tv_of(1.0) < tv_of(0.0)


@pytest.mark.parametrize("solver", ["fista", "adam"])
def test_checkpoint_continues_exactly(noisy_scan, tmp_path, solver):
    """A checkpoint of step 6 of 12, resumed, ends where the uninterrupted run ends, bit for bit."""
    g, _vol, proj = noisy_scan
    cfg = TVConfig(solver=solver, iterations=12, init="fdk", fista_subsets=4)
    run = RunDir(tmp_path / "run")
    full = TVTrainer(proj, g, cfg).fit(run=run, checkpoint_every=6)
    ckpt = load_checkpoint_file(run.checkpoint_path(6))
    resumed = TVTrainer(proj, g, cfg, state=ckpt["trainer"])
    assert resumed.step == 6
    torch.testing.assert_close(resumed.fit(resumed=ckpt), full, rtol=0, atol=0)


def test_bad_inputs(noisy_scan):
    g, vol, proj = noisy_scan
    with pytest.raises(InputError, match="projections"):
        TVTrainer(proj[:5], g)
    bad = proj.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        TVTrainer(bad, g)
    with pytest.raises(InputError, match="--tv.lr"):
        TVTrainer(proj, g, TVConfig(lr=0.0))
    with pytest.raises(InputError, match="--tv.fista-subsets"):
        TVTrainer(proj, g, TVConfig(fista_subsets=0))
    with pytest.raises(InputError, match="other TV solver"):
        TVTrainer(proj, g, TVConfig(solver="adam"), state=TVTrainer(proj, g, TVConfig(solver="fista", iterations=1)).state_dict())
    with pytest.raises(InputError, match="init_volume"):
        TVTrainer(proj, g, init_volume=vol[:-1])
    state = TVTrainer(proj, g, TVConfig(iterations=1)).state_dict()
    with pytest.raises(InputError, match="other projections"):
        TVTrainer(proj * 2, g, state=state)
