"""recon.splat.loss.photometric_loss: the fused CPU path against the torch reference."""

from __future__ import annotations

import pytest
import torch

from recon.splat.loss import photometric_loss


def _images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


@pytest.mark.parametrize("shape", [(1, 24, 32, 3), (2, 16, 11, 3)])
def test_fused_matches_reference(shape):
    pred, gt = _images(shape)
    results = []
    for fused in (False, True):
        p = pred.clone().requires_grad_()
        loss, l1 = photometric_loss(p, gt, 0.2, fused=fused)
        loss.backward()
        results.append((loss.detach(), l1.detach(), p.grad))
    (ref_loss, ref_l1, ref_grad), (loss, l1, grad) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, ref_l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_fused_falls_back_to_torch_for_float64():
    pred, gt = _images((1, 16, 16, 3))
    a = photometric_loss(pred.double(), gt.double(), 0.2, fused=True)
    b = photometric_loss(pred.double(), gt.double(), 0.2, fused=False)
    assert a[0].dtype == torch.float64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_shapes():
    pred, gt = _images((1, 16, 16, 3))
    with pytest.raises(ValueError, match="equal shapes"):
        photometric_loss(pred, gt[..., :2], 0.2, fused=True)
