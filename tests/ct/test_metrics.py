from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.ct.metrics import psnr_3d, ssim_3d
from recon.errors import InputError


def test_psnr_known_value():
    ref = np.zeros((8, 8, 8), dtype=np.float32)
    ref[2:6, 2:6, 2:6] = 2.0
    assert psnr_3d(ref + 0.02, ref) == pytest.approx(20 * math.log10(2.0 / 0.02))
    assert psnr_3d(ref + 0.02, ref, data_range=1.0) == pytest.approx(20 * math.log10(1.0 / 0.02))
    assert psnr_3d(torch.from_numpy(ref), ref) == math.inf
    with pytest.raises(InputError, match="shaped like the reference"):
        psnr_3d(ref[:4], ref)


def _ssim_scipy(a: np.ndarray, b: np.ndarray, L: float) -> float:
    """Independent single-slice SSIM: Gaussian sigma 1.5 truncated to 11 taps, zero padding."""
    f = lambda x: ndimage.gaussian_filter(x, 1.5, mode="constant", truncate=5 / 1.5)  # noqa: E731
    mu1, mu2 = f(a), f(b)
    s11, s22, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    return float(np.mean(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))))


def test_ssim_matches_independent_computation_and_skips_empty_slices():
    rng = np.random.default_rng(0)
    ref = np.zeros((6, 20, 24))
    ref[1:5, 4:16, 3:20] = ndimage.gaussian_filter(rng.random((4, 12, 17)), 1) + 0.5
    pred = ref + rng.normal(0, 0.05, ref.shape)
    L = ref.max() - ref.min()
    res = ssim_3d(pred, ref)
    axial = np.mean([_ssim_scipy(pred[k], ref[k], L) for k in range(1, 5)])  # slices 0 and 5 are empty
    coronal = np.mean([_ssim_scipy(pred[:, j], ref[:, j], L) for j in range(4, 16)])
    sagittal = np.mean([_ssim_scipy(pred[:, :, i], ref[:, :, i], L) for i in range(3, 20)])
    assert res.axial == pytest.approx(axial, rel=1e-6)
    assert res.coronal == pytest.approx(coronal, rel=1e-6)
    assert res.sagittal == pytest.approx(sagittal, rel=1e-6)
    assert float(res) == pytest.approx((axial + coronal + sagittal) / 3)
    assert ssim_3d(ref, ref).mean == pytest.approx(1.0)
    assert 0 < res.mean < 1
