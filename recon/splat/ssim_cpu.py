"""Fused CPU photometric loss: L1 + D-SSIM in numba, forward and backward in two passes each.

The twin is plain PyTorch (``photometric_loss_torch``: ``recon.metrics.ssim``, i.e. five
separable Gaussian blurs by ``conv2d`` and a dozen elementwise ops, autograd for the
gradient). Here each image plane is blurred in two vectorised passes (rows, then columns; the
11 taps are the inner-most *outer* loop so the pixel loop is the vectorised one), the SSIM map
and its three partial derivatives are formed in the same pass, and the backward applies the
adjoint blurs (columns, then rows) to those partials:

    d SSIM / d x = blur^T(g dS/dmu_x) + 2 x blur^T(g dS/dE[x^2]) + y blur^T(g dS/dE[xy])

with ``S = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2))``,
``s_xx = E[x^2] - mu_x^2``, ``s_xy = E[xy] - mu_x mu_y`` (3DGS / nerfstudio definition: Gaussian
window 11, sigma 1.5, valid region only, averaged over channels and pixels). Only ``pred``
receives a gradient (the target is data).

Arithmetic is float32 like the twin's (sums in a different order: the tests compare at 1e-5).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["photometric_loss", "photometric_loss_torch", "ssim", "warmup"]

_WIN = 11
_SIGMA = 1.5
_C1 = (0.01) ** 2
_C2 = (0.03) ** 2


def _window() -> np.ndarray:
    x = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(x**2) / (2 * _SIGMA**2))
    return (g / g.sum()).astype(np.float32)


_W = _window()
_F = np.float32
_U = np.uint64


@njit(parallel=True, cache=True, error_model="numpy")
def _forward(x, y, w, c1, c2, hb, smap, p_mu, p_xx, p_xy):
    """x, y: [P, H, W] planes; hb: workspace [5, P, H, Wo]. Writes the SSIM map [P, Ho, Wo] and
    its partials w.r.t. mu_x, E[x^2], E[xy]; returns the per-row sums (float64) of the map
    [P, Ho] and of |x - y| [P, H]."""
    P, H, W = x.shape
    K = w.shape[0]
    Ho = H - K + 1
    Wo = W - K + 1
    # horizontal blurs of x, y, x^2, y^2, xy: [5, P, H, Wo]; one moment per loop (few arrays
    # per loop: LLVM vectorises it without giving up on alias checks)
    l1 = np.zeros((P, H))
    for job in prange(P * H):
        pl = job // H
        i = job - pl * H
        xr = x[pl, i]
        yr = y[pl, i]
        h0 = hb[0, pl, i]
        h1 = hb[1, pl, i]
        h2 = hb[2, pl, i]
        h3 = hb[3, pl, i]
        h4 = hb[4, pl, i]
        for j in range(_U(Wo)):
            h0[j] = _F(0.0)
            h1[j] = _F(0.0)
            h2[j] = _F(0.0)
            h3[j] = _F(0.0)
            h4[j] = _F(0.0)
        acc = 0.0
        for j in range(W):
            acc += abs(xr[j] - yr[j])
        l1[pl, i] = acc
        for k in range(_U(K)):
            wk = w[k]
            for j in range(_U(Wo)):
                h0[j] += wk * xr[j + k]
            for j in range(_U(Wo)):
                h1[j] += wk * yr[j + k]
            for j in range(_U(Wo)):
                h2[j] += wk * (xr[j + k] * xr[j + k])
            for j in range(_U(Wo)):
                h3[j] += wk * (yr[j + k] * yr[j + k])
            for j in range(_U(Wo)):
                h4[j] += wk * (xr[j + k] * yr[j + k])
    rows = np.zeros((P, Ho))
    for job in prange(P * Ho):
        pl = job // Ho
        i = job - pl * Ho
        mu_x = np.zeros(Wo, np.float32)
        mu_y = np.zeros(Wo, np.float32)
        e_xx = np.zeros(Wo, np.float32)
        e_yy = np.zeros(Wo, np.float32)
        e_xy = np.zeros(Wo, np.float32)
        for k in range(K):
            wk = w[k]
            r0 = hb[0, pl, i + k]
            r1 = hb[1, pl, i + k]
            r2 = hb[2, pl, i + k]
            r3 = hb[3, pl, i + k]
            r4 = hb[4, pl, i + k]
            for j in range(_U(Wo)):
                mu_x[j] += wk * r0[j]
            for j in range(_U(Wo)):
                mu_y[j] += wk * r1[j]
            for j in range(_U(Wo)):
                e_xx[j] += wk * r2[j]
            for j in range(_U(Wo)):
                e_yy[j] += wk * r3[j]
            for j in range(_U(Wo)):
                e_xy[j] += wk * r4[j]
        sm = smap[pl, i]
        pm = p_mu[pl, i]
        px = p_xx[pl, i]
        pxy = p_xy[pl, i]
        two = _F(2.0)
        for j in range(_U(Wo)):
            mx = mu_x[j]
            my = mu_y[j]
            sxx = e_xx[j] - mx * mx
            syy = e_yy[j] - my * my
            sxy = e_xy[j] - mx * my
            a1 = two * mx * my + c1
            a2 = two * sxy + c2
            b1 = mx * mx + my * my + c1
            b2 = sxx + syy + c2
            inv = _F(1.0) / (b1 * b2)
            s = a1 * a2 * inv
            sm[j] = s
            pm[j] = (two * my * (a2 - a1) - two * mx * s * (b2 - b1)) * inv
            px[j] = -s / b2
            pxy[j] = two * a1 * inv
        acc = 0.0
        for j in range(Wo):
            acc += sm[j]
        rows[pl, i] = acc
    return rows, l1


@njit(parallel=True, cache=True, error_model="numpy")
def _backward(x, y, w, coef, coef_l1, p_mu, p_xx, p_xy, grad):
    """grad [P, H, W] = coef * (blur^T(p_mu) + 2 x blur^T(p_xx) + y blur^T(p_xy))
    + coef_l1 * sign(x - y)."""
    P, H, W = x.shape
    K = w.shape[0]
    Ho = H - K + 1
    Wo = W - K + 1
    # adjoint of the vertical blur: [3, P, H, Wo]; row i gathers output rows i - k
    vb = np.zeros((3, P, H, Wo), np.float32)
    for job in prange(P * H):
        pl = job // H
        i = job - pl * H
        for k in range(K):
            io = i - k
            if io < 0 or io >= Ho:
                continue
            wk = w[k]
            for j in range(_U(Wo)):
                vb[0, pl, i, j] += wk * p_mu[pl, io, j]
                vb[1, pl, i, j] += wk * p_xx[pl, io, j]
                vb[2, pl, i, j] += wk * p_xy[pl, io, j]
    two = _F(2.0)
    for job in prange(P * H):
        pl = job // H
        i = job - pl * H
        b0 = np.zeros(W, np.float32)
        b1 = np.zeros(W, np.float32)
        b2 = np.zeros(W, np.float32)
        # adjoint of the horizontal blur: column j gathers output columns j - k
        for k in range(K):
            wk = w[k]
            for j in range(_U(Wo)):
                b0[j + _U(k)] += wk * vb[0, pl, i, j]
                b1[j + _U(k)] += wk * vb[1, pl, i, j]
                b2[j + _U(k)] += wk * vb[2, pl, i, j]
        zero = _F(0.0)
        for j in range(_U(W)):
            d = x[pl, i, j] - y[pl, i, j]
            sg = _F(1.0) if d > zero else (_F(-1.0) if d < zero else zero)
            grad[pl, i, j] = coef * (b0[j] + two * x[pl, i, j] * b1[j] + y[pl, i, j] * b2[j]) + coef_l1 * sg


def _planes(img: Tensor) -> np.ndarray:  # [B, H, W, C] -> [B * C, H, W] float32
    B, H, W, C = img.shape
    return np.ascontiguousarray(img.detach().to(torch.float32).permute(0, 3, 1, 2).reshape(B * C, H, W).numpy())


_WORKSPACE: dict = {}  # blur workspace per shape (reused across steps: no page faults)


def _workspace(shape) -> np.ndarray:
    ws = _WORKSPACE.get(shape)
    if ws is None:
        _WORKSPACE.clear()
        ws = _WORKSPACE[shape] = np.empty(shape, np.float32)
    return ws


class _PhotometricLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, gt, ssim_lambda):
        B, H, W, C = pred.shape
        x = _planes(pred)
        y = _planes(gt)
        Ho, Wo = H - _WIN + 1, W - _WIN + 1
        smap = np.empty((B * C, Ho, Wo), np.float32)
        parts = [np.empty((B * C, Ho, Wo), np.float32) for _ in range(3)]
        rows, l1_rows = _forward(x, y, _W, _F(_C1), _F(_C2), _workspace((5, B * C, H, Wo)), smap, *parts)
        n_map = C * Ho * Wo
        ssim_b = torch.from_numpy(rows.reshape(B, C * Ho).sum(axis=1) / n_map).to(pred.dtype)  # [B]
        l1 = torch.tensor(float(l1_rows.sum()) / pred.numel(), dtype=pred.dtype)
        ssim_mean = ssim_b.mean()
        loss = (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim_mean)
        ctx.state = (x, y, parts, B, H, W, C, n_map, float(ssim_lambda), pred.dtype)
        return loss, l1, ssim_b

    @staticmethod
    def backward(ctx, g_loss, g_l1, g_ssim):
        x, y, parts, B, H, W, C, n_map, lam, dtype = ctx.state
        # d loss / d ssim_b = -lam / B per image; d ssim_b / d map = 1 / n_map
        coefs = ((g_ssim.reshape(B) - lam * g_loss / B) / n_map).to(torch.float32)
        coef_l1 = _F(float(((1.0 - lam) * g_loss + g_l1) / x.size))
        grad = np.empty((B * C, H, W), np.float32)
        if bool((coefs == coefs[0]).all()):
            _backward(x, y, _W, _F(float(coefs[0])), coef_l1, *parts, grad)
        else:  # per-image coefficients: one call per image
            for b in range(B):
                sl = slice(b * C, (b + 1) * C)
                g_b = np.empty((C, H, W), np.float32)
                _backward(x[sl], y[sl], _W, _F(float(coefs[b])), coef_l1, *(p[sl] for p in parts), g_b)
                grad[sl] = g_b
        g = torch.from_numpy(grad).reshape(B, C, H, W).permute(0, 2, 3, 1).to(dtype)
        return g, None, None


def _check(pred: Tensor, gt: Tensor, ssim_lambda: float) -> None:
    if not isinstance(pred, Tensor) or pred.dim() != 4 or pred.shape[-1] not in (1, 3):
        raise ValueError(f"pred: expected images [B, H, W, C] with C in (1, 3), given {getattr(pred, 'shape', pred)}")
    if not isinstance(gt, Tensor) or gt.shape != pred.shape:
        raise ValueError(f"gt: expected shape {tuple(pred.shape)} like pred, given {getattr(gt, 'shape', gt)}")
    if min(pred.shape[1:3]) < _WIN:
        raise ValueError(f"pred: expected images of at least {_WIN}x{_WIN} pixels, given {tuple(pred.shape[1:3])}")
    if not 0.0 <= ssim_lambda <= 1.0:
        raise ValueError(f"ssim_lambda: expected a value in [0, 1], given {ssim_lambda}")


def photometric_loss(
    pred: Tensor,  # [B, H, W, C]
    gt: Tensor,  # [B, H, W, C]
    ssim_lambda: float = 0.2,
) -> tuple[Tensor, Tensor, Tensor]:
    """3DGS training loss ``(1 - l) * L1 + l * (1 - mean SSIM)``, fused (CPU tensors).

    Args:
        pred: rendered images, float32 CPU. [B, H, W, C], C in (1, 3), H, W >= 11
        gt: target images (no gradient). [B, H, W, C]
        ssim_lambda: weight ``l`` of D-SSIM, in [0, 1].

    Returns:
        loss [] (differentiable w.r.t. ``pred``), l1 [], ssim [B] (per image; both also
        differentiable, so they may be used in other terms).
    """
    _check(pred, gt, ssim_lambda)
    if pred.device.type != "cpu" or pred.dtype != torch.float32:
        raise ValueError(f"pred: expected float32 CPU tensors, given {pred.dtype} on {pred.device} (use photometric_loss_torch)")
    return _PhotometricLoss.apply(pred, gt, float(ssim_lambda))


def photometric_loss_torch(
    pred: Tensor,  # [B, H, W, C]
    gt: Tensor,  # [B, H, W, C]
    ssim_lambda: float = 0.2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Plain-PyTorch twin of ``photometric_loss`` (any device/dtype): the capture trainer's
    ``(1 - l) * |pred - gt|.mean() + l * (1 - ssim(pred, gt)).mean()``."""
    from recon.metrics import ssim as ssim_torch

    _check(pred, gt, ssim_lambda)
    l1 = (pred - gt).abs().mean()
    s = ssim_torch(pred, gt)
    loss = (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - s.mean())
    return loss, l1, s


def ssim(pred: Tensor, gt: Tensor) -> Tensor:  # [B, H, W, C] x2 -> [B]
    """Mean SSIM per image, fused (twin: ``recon.metrics.ssim``); differentiable w.r.t. pred."""
    return photometric_loss(pred, gt, 1.0)[2]


def warmup() -> float:
    """Compile (or load from the numba cache) both kernels; returns seconds."""
    import time

    t0 = time.perf_counter()
    pred = torch.rand(1, 16, 16, 3).requires_grad_()
    loss, _, _ = photometric_loss(pred, torch.rand(1, 16, 16, 3))
    loss.backward()
    return time.perf_counter() - t0


del math
