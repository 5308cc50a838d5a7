import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from recon import metrics


def test_psnr_known_value():
    a = torch.zeros(4, 5, 3)
    b = torch.full((4, 5, 3), 0.1)
    assert metrics.psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_batched_shape():
    a, b = torch.rand(3, 8, 8, 3), torch.rand(3, 8, 8, 3)
    out = metrics.psnr(a, b)
    assert out.shape == (3,)
    assert out[1] == pytest.approx(metrics.psnr(a[1], b[1]).item())


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    gt = rng.random((40, 50, 3)).astype(np.float32)
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape).astype(np.float32), 0, 1)
    ref = structural_similarity(
        pred, gt, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    ours = metrics.ssim(torch.from_numpy(pred), torch.from_numpy(gt)).item()
    assert ours == pytest.approx(ref, abs=2e-3)


def test_ssim_identical_is_one_and_differentiable():
    x = torch.rand(1, 20, 20, 3, requires_grad=True)
    s = metrics.ssim(x, x.detach())
    assert s.item() == pytest.approx(1.0, abs=1e-5)
    (1 - s).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(torch.rand(4, 4, 3), torch.rand(4, 5, 3))


def test_lpips_unavailable_without_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    status = metrics.lpips_status()
    assert not status.available
    assert str(tmp_path) in status.reason
    out = metrics.score_images(torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16, 3), ["a.png", "b.png"])
    assert out["lpips"].startswith("unavailable")
    assert "lpips" not in out["mean"]
    with pytest.raises(RuntimeError, match="AlexNet weights not found"):
        metrics.Lpips()


def test_chamfer_distance_known_values():
    from recon.metrics import chamfer_distance

    a = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = np.array([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    ch = chamfer_distance(a, b)
    assert ch.accuracy == pytest.approx((0.5 + 0.0) / 2)  # a -> nearest b
    assert ch.completeness == pytest.approx((0.5 + 0.0 + 4.0) / 3)  # b -> nearest a (the far point counts)
    assert ch.chamfer == pytest.approx(0.5 * (0.25 + 4.5 / 3))
    same = chamfer_distance(torch.tensor(b), b)
    assert same.chamfer == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(np.zeros((0, 3)), b)
