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


def _ssim_3d_torch_reference(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """The torch implementation ``ssim_3d`` had until 2026-12-04 (float64 ``conv2d`` over batches
    of slices, separable window), kept as the reference of the scipy version: (axial, coronal,
    sagittal)."""
    import torch.nn.functional as F

    p, r = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    L, rmin = float(r.max() - r.min()), float(r.min())
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    out = []
    for axis in (0, 1, 2):
        a, b = p.movedim(axis, 0), r.movedim(axis, 0)
        keep = b.flatten(1).max(dim=1).values > rmin
        if not bool(keep.any()):
            out.append(1.0)
            continue
        a, b = a[keep], b[keep]
        stack = torch.stack([a, b, a * a, b * b, a * b], dim=1)
        stack = F.conv2d(stack, g.view(1, 1, 11, 1).expand(5, 1, 11, 1).contiguous(), padding=(5, 0), groups=5)
        stack = F.conv2d(stack, g.view(1, 1, 1, 11).expand(5, 1, 1, 11).contiguous(), padding=(0, 5), groups=5)
        mu1, mu2, e11, e22, e12 = stack.unbind(1)
        s11, s22, s12 = e11 - mu1 * mu1, e22 - mu2 * mu2, e12 - mu1 * mu2
        m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
        out.append(float(m.mean(dim=(1, 2)).mean()))
    return out[0], out[1], out[2]


@pytest.mark.parametrize("shape", [(16, 16, 16), (9, 23, 14), (40, 33, 27)])
@pytest.mark.parametrize("noise", [0.01, 0.3])
def test_ssim_equals_the_previous_torch_implementation(shape, noise):
    """The scipy (``ndimage.correlate1d``) SSIM gives the numbers the torch version gave, on
    random volumes with empty slices along every axis (skipped by both)."""
    rng = np.random.default_rng(hash((shape, noise)) % 2**32)
    ref = np.zeros(shape, dtype=np.float32)
    inner = tuple(slice(1, n - 2) for n in shape)
    ref[inner] = rng.random(ref[inner].shape).astype(np.float32) * 0.03
    pred = (ref + rng.normal(0, noise * 0.03, shape)).astype(np.float32)
    got = ssim_3d(pred, ref)
    want = _ssim_3d_torch_reference(pred, ref)
    assert (got.axial, got.coronal, got.sagittal) == pytest.approx(want, abs=1e-9)
    assert got.mean == pytest.approx(np.mean(want), abs=1e-9)


def test_ssim_keeps_only_the_slices_through_a_single_bright_voxel():
    """One voxel above the reference's minimum: each axis scores its one slice through it, as the
    torch version did."""
    ref = np.zeros((5, 6, 7))
    ref[2, 3, 4] = 1.0
    pred = ref + 0.01
    got = ssim_3d(pred, ref)
    assert (got.axial, got.coronal, got.sagittal) == pytest.approx(_ssim_3d_torch_reference(pred, ref), abs=1e-9)
