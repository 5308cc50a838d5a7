"""The photometric loss of a capture fit, shared by ``recon fit`` and ``ns-train recon-splat``:
``(1 - lambda) * L1 + lambda * (1 - SSIM)`` (3DGS, Kerbl et al. 2023, with lambda = 0.2).

Two implementations of the same formula: the plain-PyTorch one (any device and dtype; the
reference) and, with ``fused=True`` on float32 CPU tensors, :func:`recon.splat.ssim_cpu.photometric_loss`
(L1 and D-SSIM in one numba pass each way; tested against the torch one in
``tests/splat/test_ssim_cpu.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.metrics import ssim

__all__ = ["photometric_loss"]


def photometric_loss(
    pred: Tensor,  # [B, H, W, 3]
    target: Tensor,  # [B, H, W, 3]
    ssim_lambda: float,
    fused: bool = False,
) -> tuple[Tensor, Tensor]:
    """L1 + D-SSIM between renders and photos; returns ``(loss, l1)`` as scalars (means over
    the batch). ``pred`` and ``target`` must have the same shape ``[B, H, W, 3]``.

    With ``fused``, float32 CPU images of at least 11x11 pixels go through the numba kernels of
    :mod:`recon.splat.ssim_cpu`; anything else uses the torch reference."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred/target: expected equal shapes [B, H, W, 3], given {tuple(pred.shape)} and {tuple(target.shape)}")
    if fused and pred.device.type == "cpu" and pred.dtype == torch.float32 and min(pred.shape[1:3]) >= 11:
        from recon.splat import ssim_cpu  # numba: imported only when used

        loss, l1, _ = ssim_cpu.photometric_loss(pred, target.to(torch.float32), ssim_lambda)
        return loss, l1
    l1 = (pred - target).abs().mean()
    d_ssim = 1.0 - ssim(pred, target).mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * d_ssim, l1
