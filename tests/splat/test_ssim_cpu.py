"""recon.splat.ssim_cpu (fused L1 + D-SSIM) against its torch twin (recon.metrics.ssim)."""

from __future__ import annotations

import pytest
import torch

from recon.metrics import ssim as ssim_torch
from recon.splat.ssim_cpu import photometric_loss, photometric_loss_torch, ssim


@pytest.mark.parametrize("shape", [(1, 20, 31, 3), (2, 33, 40, 3), (1, 16, 16, 1)])
@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_matches_torch_twin(shape, lam):
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(shape, generator=g)
    pred0 = (gt + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    pred0[0, :3, :3] = gt[0, :3, :3]  # equal pixels: L1's gradient there is 0 in both
    a, b = pred0.clone().requires_grad_(), pred0.clone().requires_grad_()
    ours = photometric_loss(a, gt, lam)
    ref = photometric_loss_torch(b, gt, lam)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=2e-7)
    w = torch.randn(shape[0], generator=g)
    (ours[0] + 0.3 * ours[1] + (ours[2] * w).sum()).backward()
    (ref[0] + 0.3 * ref[1] + (ref[2] * w).sum()).backward()
    scale = b.grad.abs().max()
    assert scale > 0 and (a.grad - b.grad).abs().max() <= 1e-5 * scale


def test_ssim_equals_metric():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 30, 40, 3, generator=g), torch.rand(2, 30, 40, 3, generator=g)
    torch.testing.assert_close(ssim(x, y), ssim_torch(x, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssim(x, x), torch.ones(2), rtol=1e-6, atol=1e-6)


def test_bad_input():
    x = torch.rand(1, 20, 20, 3)
    with pytest.raises(ValueError, match=r"gt: expected shape"):
        photometric_loss(x, x[:, :10])
    with pytest.raises(ValueError, match=r"at least 11x11"):
        photometric_loss(x[:, :8], x[:, :8])
    with pytest.raises(ValueError, match=r"ssim_lambda"):
        photometric_loss(x, x, 1.5)
    with pytest.raises(ValueError, match=r"float32 CPU"):
        photometric_loss(x.double(), x.double())
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        photometric_loss(x[0], x[0])
