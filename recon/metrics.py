"""Quality metrics: PSNR, SSIM (3DGS/nerfstudio definition) and offline-safe LPIPS for images;
the Chamfer distance for point sets and meshes (surface samples).

LPIPS needs ImageNet AlexNet weights that torchvision downloads on first use. Nothing here
downloads: LPIPS is computed only when those weights are already in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``), otherwise it is reported as unavailable with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() not in (3, 4) or pred.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [..., H, W, C] with C in (1, 3), got {tuple(pred.shape)}")


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, one value per image.

    Args:
        pred: ``[H, W, C]`` or ``[B, H, W, C]`` rendered image(s).
        target: same shape as ``pred``.
        data_range: peak value (1.0 for images in [0, 1]).

    Returns:
        ``[]`` or ``[B]`` PSNR.
    """
    _check_pair(pred, target)
    mse = ((pred.float() - target.float()) ** 2).flatten(-3).mean(-1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM with a Gaussian window (valid region only), averaged over channels.

    Args:
        pred: ``[B, H, W, C]`` images in [0, data_range].
        target: same shape.

    Returns:
        ``[B, H - window + 1, W - window + 1]`` SSIM map (differentiable).
    """
    _check_pair(pred, target)
    if pred.dim() == 3:
        pred, target = pred[None], target[None]
    c = pred.shape[-1]
    x = pred.permute(0, 3, 1, 2).float()
    y = target.permute(0, 3, 1, 2).float()
    g = _gaussian_window(window, sigma, x.dtype).to(x.device)
    kh = g.view(1, 1, window, 1).expand(c, 1, window, 1)
    kw = g.view(1, 1, 1, window).expand(c, 1, 1, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(1)


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image (Wang et al. 2004, Gaussian window 11 / sigma 1.5, as 3DGS and nerfstudio).

    Args:
        pred: ``[H, W, C]`` or ``[B, H, W, C]``.
        target: same shape.

    Returns:
        ``[]`` or ``[B]`` SSIM.
    """
    batched = pred.dim() == 4
    out = ssim_map(pred, target, window, sigma, data_range).flatten(1).mean(1)
    return out if batched else out[0]


def torch_hub_checkpoints() -> Path:
    """Where torchvision looks for downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass
class LpipsStatus:
    available: bool
    reason: str


def lpips_status() -> LpipsStatus:
    """Whether LPIPS (AlexNet) can be computed offline on this machine, and why not."""
    path = torch_hub_checkpoints() / ALEXNET_FILE
    if not path.is_file():
        return LpipsStatus(False, f"AlexNet weights not found at {path} (LPIPS needs them; nothing is downloaded)")
    try:
        import torchmetrics.image.lpip  # noqa: F401
    except ImportError as err:  # pragma: no cover - torchmetrics ships with nerfstudio
        return LpipsStatus(False, f"torchmetrics LPIPS unavailable: {err}")
    return LpipsStatus(True, f"AlexNet weights from {path}")


class Lpips:
    """LPIPS (AlexNet) that refuses to run without local weights instead of downloading them."""

    def __init__(self) -> None:
        status = lpips_status()
        if not status.available:
            raise RuntimeError(status.reason)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self._metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[H, W, 3]`` images in [0, 1] -> scalar LPIPS."""
        _check_pair(pred, target)
        p = pred.reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2).float().cpu().clamp(0, 1)
        t = target.reshape(-1, *target.shape[-3:]).permute(0, 3, 1, 2).float().cpu().clamp(0, 1)
        return self._metric(p, t)


def score_images(preds: Tensor, targets: Tensor, names: list[str]) -> dict:
    """Per-view and mean PSNR / SSIM (/ LPIPS when its weights exist locally).

    Args:
        preds: ``[B, H, W, 3]`` renders in [0, 1].
        targets: ``[B, H, W, 3]`` ground-truth images.
        names: ``B`` view names (image file names).

    Returns:
        ``{"views": {name: {...}}, "mean": {...}, "lpips": "available" | reason}``.
    """
    if len(names) != preds.shape[0]:
        raise ValueError(f"{len(names)} names for {preds.shape[0]} images")
    preds = preds.clamp(0, 1)
    p = psnr(preds, targets)
    s = ssim(preds, targets)
    status = lpips_status()
    lp = None
    if status.available:
        metric = Lpips()
        lp = torch.stack([metric(a, b) for a, b in zip(preds, targets)])
    views = {}
    for i, name in enumerate(names):
        views[name] = {"psnr": float(p[i]), "ssim": float(s[i])}
        if lp is not None:
            views[name]["lpips"] = float(lp[i])
    mean = {"psnr": float(p.mean()), "ssim": float(s.mean()), "n_views": len(names)}
    if lp is not None:
        mean["lpips"] = float(lp.mean())
    return {"views": views, "mean": mean, "lpips": "available" if lp is not None else f"unavailable: {status.reason}"}


@dataclass(frozen=True)
class Chamfer:
    """Distances between two point sets ``a`` (e.g. a reconstructed mesh's surface samples) and
    ``b`` (the reference), in their units."""

    accuracy: float
    """Mean distance from a point of ``a`` to its nearest point of ``b`` (how far the result strays)."""
    completeness: float
    """Mean distance from a point of ``b`` to its nearest point of ``a`` (how much of the reference is covered)."""

    @property
    def chamfer(self) -> float:
        """Symmetric Chamfer distance: the mean of accuracy and completeness (not squared)."""
        return 0.5 * (self.accuracy + self.completeness)


def chamfer_distance(a, b) -> Chamfer:  # a: [N, 3], b: [M, 3] (numpy or tensors)
    """Accuracy, completeness and the symmetric Chamfer distance between point sets ``a``
    ``[N, 3]`` and ``b`` ``[M, 3]`` (Euclidean nearest neighbours, k-d tree)."""
    from scipy.spatial import cKDTree

    pa = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
    pb = b.detach().cpu().numpy() if isinstance(b, Tensor) else np.asarray(b)
    for name, p in (("a", pa), ("b", pb)):
        if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
            raise ValueError(f"{name}: expected a non-empty [N, 3] point set, given {list(p.shape)}")
    acc = cKDTree(pb).query(pa, workers=-1)[0]
    comp = cKDTree(pa).query(pb, workers=-1)[0]
    return Chamfer(float(acc.mean()), float(comp.mean()))
