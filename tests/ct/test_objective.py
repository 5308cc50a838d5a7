"""Shared pieces of the projection-domain optimisers (recon.ct.objective)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.ct.objective import (
    ViewBatches,
    coverage_is_short,
    initial_volume,
    projection_loss,
)
from recon.ct.project import Projector

from .conftest import MU, cone_geometry


def test_projection_loss_terms():
    gt = torch.rand(3, 16, 20)
    loss, l1 = projection_loss(gt.clone(), gt, lambda_dssim=0.25)
    assert float(l1) == 0.0 and float(loss) == pytest.approx(0.0, abs=1e-6)  # SSIM(x, x) = 1
    pred = gt + 0.1
    loss, l1 = projection_loss(pred, gt, lambda_dssim=0.0)
    assert float(l1) == pytest.approx(0.1, rel=1e-5) and float(loss) == float(l1)
    noisy = gt + 0.2 * torch.randn_like(gt)
    with_ssim, l1n = projection_loss(noisy, gt, lambda_dssim=0.25)
    assert float(with_ssim) > float(l1n)  # structure lost -> D-SSIM > 0


def test_projection_loss_fused_ssim_matches_the_torch_twin():
    """float32 CPU projections take the fused numba SSIM (on images divided by the range); the
    float64 path is the conv2d twin with data_range: same loss and gradient."""
    g = torch.Generator().manual_seed(0)
    gt = 3.0 * torch.rand(4, 40, 36, generator=g)  # line integrals, range ~3
    pred = (gt + 0.3 * torch.randn(gt.shape, generator=g)).requires_grad_(True)
    ref = pred.detach().double().requires_grad_(True)
    loss, l1 = projection_loss(pred, gt, lambda_dssim=0.25)
    loss_ref, l1_ref = projection_loss(ref, gt.double(), lambda_dssim=0.25)
    loss.backward()
    loss_ref.backward()
    assert float(loss) == pytest.approx(float(loss_ref), rel=1e-5)
    assert float(l1) == pytest.approx(float(l1_ref), rel=1e-5)
    assert float(loss) > float(l1) + 0.01  # the SSIM term is there
    torch.testing.assert_close(pred.grad.double(), ref.grad, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(("n_views", "batch"), [(25, 5), (12, 5), (7, 7), (5, 9)])
def test_view_batches_cover_every_view_each_epoch(n_views, batch):
    vb = ViewBatches(n_views, batch, np.random.default_rng(3))
    epoch = [vb.next() for _ in range(vb.n_groups)]
    assert sorted(v for g in epoch for v in g) == list(range(n_views))
    assert max(len(g) for g in epoch) <= max(batch, 1) + 1
    again = ViewBatches(n_views, batch, np.random.default_rng(3))
    assert [again.next() for _ in range(vb.n_groups)] == epoch  # same seed, same order


def test_initial_volume_sart_improves_on_fdk():
    g = cone_geometry(n_views=8, n=16)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 16),) * 3, indexing="ij")
    vol = torch.from_numpy(((x**2 + y**2 + z**2) < 0.5).astype(np.float32) * MU)
    proj = Projector(g)(vol)
    fdk = initial_volume(proj, g, init="fdk")
    sart = initial_volume(proj, g, init="sart", sart_iterations=5)
    assert fdk.shape == sart.shape == vol.shape and float(fdk.min()) >= 0 and float(sart.min()) >= 0
    assert float(((sart - vol) ** 2).mean()) < float(((fdk - vol) ** 2).mean())
    assert not coverage_is_short(g)
