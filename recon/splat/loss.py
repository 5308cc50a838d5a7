"""The photometric loss of a capture fit, shared by ``recon fit`` and ``ns-train recon-splat``:
``(1 - lambda) * L1 + lambda * (1 - SSIM)`` (3DGS, Kerbl et al. 2023, with lambda = 0.2)."""

from __future__ import annotations

from torch import Tensor

from recon.metrics import ssim

__all__ = ["photometric_loss"]


def photometric_loss(
    pred: Tensor,  # [B, H, W, 3]
    target: Tensor,  # [B, H, W, 3]
    ssim_lambda: float,
) -> tuple[Tensor, Tensor]:
    """L1 + D-SSIM between renders and photos; returns ``(loss, l1)`` as scalars (means over
    the batch). ``pred`` and ``target`` must have the same shape ``[B, H, W, 3]``."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred/target: expected equal shapes [B, H, W, 3], given {tuple(pred.shape)} and {tuple(target.shape)}")
    l1 = (pred - target).abs().mean()
    d_ssim = 1.0 - ssim(pred, target).mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * d_ssim, l1
