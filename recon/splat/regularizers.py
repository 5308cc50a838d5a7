"""Few-view regularisers for Gaussian splatting: extra losses, Gaussian dropout, pseudo views.

With 3-8 training views plain 3DGS fits the training images almost exactly and fails on new
views (fox, K=4: 39.6 dB on training views, 13.4 dB on unseen ones). Each switch of
:class:`RegularizerConfig` adds one published remedy; all are off by default, so the default
config trains plain 3DGS. The trainer (:mod:`recon.pipelines.capture`) calls the functions
below; they are plain PyTorch, differentiable, and device-agnostic.

=====================  ==========================================================  ==========
switch                 what it does                                                 source
=====================  ==========================================================  ==========
``opacity_reg``        L1 on the activated opacities (fewer, more decisive)         3DGS-MCMC
``scale_reg``          L1 on the activated scales (no huge blobs)                   3DGS-MCMC
``scale_ratio_reg``    penalty on max/min scale above a ratio (no needles)          PhysGaussian
``depth_smooth``       edge-aware TV of the rendered expected depth                 RegNeRF/DNGaussian
``dropout``            drop a fraction p of Gaussians per step, rescale the rest    DropGaussian
``pseudo_every``       render unseen poses between training cameras                 FSGS
``coreg``              two fields, their pseudo-view renders pulled together        CoR-GS
=====================  ==========================================================  ==========
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recon.geometry.cameras import camera_centres, quaternion_to_rotation, rotation_to_quaternion
from recon.checks import check_shape
from recon.metrics import ssim

__all__ = [
    "PseudoViewSampler",
    "RegularizerConfig",
    "coreg_loss",
    "edge_aware_depth_tv",
    "gaussian_dropout",
    "opacity_loss",
    "scale_loss",
    "scale_ratio_loss",
    "slerp_rotation",
]


@dataclass
class RegularizerConfig:
    """Few-view regularisers added to the photometric loss (all off by default)."""

    opacity_reg: float = 0.0
    """Weight of the mean activated opacity (an L1 that drives unneeded Gaussians transparent,
    so densification prunes them); 3DGS-MCMC's ``opacity_reg`` (0.01 there)."""
    scale_reg: float = 0.0
    """Weight of the mean activated scale, in units of the scene scale; 3DGS-MCMC's
    ``scale_reg`` (0.01 there)."""
    scale_ratio_reg: float = 0.0
    """Weight of the anisotropy penalty ``mean(max(max_scale / min_scale, r) - r)``
    (PhysGaussian's needle regulariser), with ``r = max_scale_ratio``."""
    max_scale_ratio: float = 10.0
    """Ratio of largest to smallest axis allowed without penalty (``r`` above)."""
    depth_smooth: float = 0.0
    """Weight of the edge-aware total variation of the rendered expected depth, on the training
    view and on pseudo views (when ``pseudo_every > 0``)."""
    depth_edge_gamma: float = 10.0
    """Edge awareness: a depth step is penalised by ``exp(-gamma * |image gradient|)``."""
    dropout: float = 0.0
    """DropGaussian: fraction of Gaussians dropped at random in each training render, the
    others' opacities scaled by ``1 / (1 - p)``; never applied to evaluation renders."""
    pseudo_every: int = 0
    """Render one pseudo view (a pose between two neighbouring training cameras) every this many
    steps, for ``depth_smooth`` and ``coreg``; 0 = never."""
    pseudo_start: float = 0.2
    """Fraction of the iterations before pseudo views start (FSGS starts at 20%)."""
    pseudo_noise: float = 0.05
    """Std of the pseudo camera's centre jitter, as a fraction of the distance between the two
    training cameras it lies between."""
    coreg: float = 0.0
    """CoR-GS: train a second Gaussian field beside the first and add this weight times
    ``(1 - l) * L1 + l * D-SSIM`` between their pseudo-view renders (``l`` = the fit's
    ``ssim_lambda``); needs ``pseudo_every > 0``; doubles the cost of a step. The second field
    is discarded at the end; the result is the first."""

    def validate(self) -> list[str]:
        """Problems with the values, as ``"--reg.name: what"`` lines (empty when fine)."""
        bad = []
        for name in ("opacity_reg", "scale_reg", "scale_ratio_reg", "depth_smooth", "coreg", "depth_edge_gamma",
                     "pseudo_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad.append(f"--reg.{name.replace('_', '-')}: must be >= 0, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            bad.append(f"--reg.dropout: must be in [0, 1), got {self.dropout}")
        if self.max_scale_ratio < 1.0:
            bad.append(f"--reg.max-scale-ratio: must be >= 1, got {self.max_scale_ratio}")
        if self.pseudo_every < 0:
            bad.append(f"--reg.pseudo-every: must be >= 0, got {self.pseudo_every}")
        if not 0.0 <= self.pseudo_start <= 1.0:
            bad.append(f"--reg.pseudo-start: must be in [0, 1], got {self.pseudo_start}")
        if self.coreg > 0 and self.pseudo_every == 0:
            bad.append("--reg.coreg: needs pseudo views (set --reg.pseudo-every, e.g. 1)")
        return bad

    @property
    def any_active(self) -> bool:
        """Whether any regulariser changes training."""
        return any(
            getattr(self, n) > 0
            for n in ("opacity_reg", "scale_reg", "scale_ratio_reg", "depth_smooth", "dropout", "pseudo_every", "coreg")
        )


# -------------------------------------------------------------------------------------- losses
def _check_last(name: str, x: Tensor, size: int, text: str) -> None:
    check_shape(name, x, (..., size), text=text)


def opacity_loss(opacities: Tensor) -> Tensor:  # [..., N] -> []
    """Mean activated opacity (an L1: opacities are >= 0).

    3DGS-MCMC (Kheradmand et al., "3D Gaussian Splatting as Markov Chain Monte Carlo",
    NeurIPS 2024), ``opacity_reg``.

    Args:
        opacities: activated opacities in [0, 1], [..., N].

    Returns:
        scalar tensor.
    """
    if not isinstance(opacities, Tensor) or opacities.numel() == 0:
        raise ValueError(f"opacities: expected a non-empty tensor [..., N], given {getattr(opacities, 'shape', opacities)}")
    return opacities.abs().mean()


def scale_loss(scales: Tensor, scene_scale: float = 1.0) -> Tensor:  # [..., N, 3] -> []
    """Mean activated scale divided by ``scene_scale``.

    3DGS-MCMC (Kheradmand et al., NeurIPS 2024), ``scale_reg``.

    Args:
        scales: activated (positive) standard deviations, [..., N, 3].
        scene_scale: makes the loss unit-free.
    """
    _check_last("scales", scales, 3, "[..., N, 3]")
    if not scene_scale > 0:
        raise ValueError(f"scene_scale: expected > 0, given {scene_scale}")
    return scales.abs().mean() / scene_scale


def scale_ratio_loss(scales: Tensor, max_ratio: float = 10.0) -> Tensor:  # [..., N, 3] -> []
    """Mean over Gaussians of ``max(max_s / min_s, r) - r``: zero for shapes up to ratio ``r``.

    PhysGaussian (Xie et al., "PhysGaussian: Physics-Integrated 3D Gaussians for Generative
    Dynamics", CVPR 2024), anisotropy regulariser, eq. 14.

    Args:
        scales: activated (positive) standard deviations, [..., N, 3].
        max_ratio: ``r >= 1``.
    """
    _check_last("scales", scales, 3, "[..., N, 3]")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio: expected >= 1, given {max_ratio}")
    ratio = scales.amax(-1) / scales.amin(-1).clamp_min(1e-12)
    return (ratio.clamp_min(max_ratio) - max_ratio).mean()


def edge_aware_depth_tv(
    depth: Tensor,  # [B, H, W, 1]
    image: Tensor,  # [B, H, W, C]
    gamma: float = 10.0,
    weight: Tensor | None = None,  # [B, H, W, 1]
    normalize: bool = True,
) -> Tensor:  # []
    """Edge-aware total variation of a depth map, weighted down where the image has edges.

    ``mean(|dD/dx| * exp(-gamma * mean_c |dI/dx|)) + mean(... y ...)`` over neighbouring pixel
    pairs, the depth smoothness of RegNeRF (Niemeyer et al., CVPR 2022) with the edge weights of
    Godard et al. (CVPR 2017), as used for few-view 3DGS by DNGaussian (Li et al., CVPR 2024)
    and FSGS (Zhu et al., ECCV 2024).

    Args:
        depth: rendered expected depth, [B, H, W, 1].
        image: the image that gives the edges (ground truth, or a detached render on pseudo
            views; no gradient flows into it), [B, H, W, C].
        gamma: edge sensitivity (0: plain TV).
        weight: optional per-pixel weight (e.g. the render's alpha), a pair uses the product of
            its two pixels' weights; [B, H, W, 1].
        normalize: divide the depth by its (detached) mean, so the loss is unit-free.

    Returns:
        scalar tensor.
    """
    if not isinstance(depth, Tensor) or depth.ndim != 4 or depth.shape[-1] != 1:
        raise ValueError(f"depth: expected shape [B, H, W, 1], given {getattr(depth, 'shape', depth)}")
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[:3] != depth.shape[:3]:
        raise ValueError(f"image: expected shape [{', '.join(map(str, depth.shape[:3]))}, C], given {getattr(image, 'shape', image)}")
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != depth.shape):
        raise ValueError(f"weight: expected shape {list(depth.shape)}, given {getattr(weight, 'shape', weight)}")
    if depth.shape[1] < 2 or depth.shape[2] < 2:
        raise ValueError(f"depth: expected at least 2x2 pixels, given {list(depth.shape[1:3])}")
    d = depth / depth.detach().abs().mean().clamp_min(1e-8) if normalize else depth
    img = image.detach()
    total = depth.new_zeros(())
    for dim in (1, 2):  # y, x
        n = d.shape[dim] - 1
        dd = (d.narrow(dim, 1, n) - d.narrow(dim, 0, n)).abs()
        di = (img.narrow(dim, 1, n) - img.narrow(dim, 0, n)).abs().mean(-1, keepdim=True)
        w = torch.exp(-gamma * di)
        if weight is not None:
            wt = weight.detach()
            w = w * wt.narrow(dim, 1, n) * wt.narrow(dim, 0, n)
        total = total + (dd * w).mean()
    return total


def gaussian_dropout(
    opacities: Tensor,  # [N]
    p: float,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:  # [N]
    """Drop each Gaussian with probability ``p`` and scale the kept opacities by ``1 / (1 - p)``.

    DropGaussian (Park et al., "DropGaussian: Structural Regularization for Sparse-view Gaussian
    Splatting", CVPR 2025). The expectation of every opacity is unchanged; the kept ones may
    exceed 1 (the rasteriser clamps each alpha at 0.99). Identity when ``training`` is False or
    ``p == 0``.

    Args:
        opacities: activated opacities, [N].
        p: drop probability in [0, 1).
        training: False for evaluation renders.
        generator: random source (default: torch's global one).
    """
    if not isinstance(opacities, Tensor) or opacities.ndim != 1:
        raise ValueError(f"opacities: expected shape [N], given {getattr(opacities, 'shape', opacities)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a probability in [0, 1), given {p}")
    if not training or p == 0.0:
        return opacities
    dev = opacities.device if generator is None else generator.device
    keep = torch.rand(opacities.shape, generator=generator, device=dev).to(opacities.device) >= p
    keep = keep.to(opacities.dtype)
    return opacities * keep / (1.0 - p)


def coreg_loss(a: Tensor, b: Tensor, ssim_lambda: float = 0.2) -> Tensor:  # [B, H, W, 3] x2 -> []
    """``(1 - l) * |a - b|_1 + l * (1 - SSIM(a, b))`` between two renders, both differentiable.

    CoR-GS (Zhang et al., "CoR-GS: Sparse-View 3D Gaussian Splatting via Co-Regularization",
    ECCV 2024), co-regularisation of two fields on pseudo views (its eq. 6).

    Args:
        a, b: renders of the same pose by the two fields, [B, H, W, 3].
        ssim_lambda: ``l`` in [0, 1].
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"a, b: expected two tensors [B, H, W, C] of one shape, given "
                         f"{getattr(a, 'shape', a)} and {getattr(b, 'shape', b)}")
    if not 0.0 <= ssim_lambda <= 1.0:
        raise ValueError(f"ssim_lambda: expected a value in [0, 1], given {ssim_lambda}")
    l1 = (a - b).abs().mean()
    if ssim_lambda == 0.0:
        return l1
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(a, b)).mean()


# --------------------------------------------------------------------------------- pseudo views
def slerp_rotation(r0: Tensor, r1: Tensor, t: Tensor) -> Tensor:  # [..., 3, 3] x2, [...] -> [..., 3, 3]
    """Rotation ``t`` of the way along the shortest arc from ``r0`` to ``r1`` (quaternion slerp).

    Args:
        r0, r1: rotation matrices, [..., 3, 3].
        t: fractions, [...] (0 gives ``r0``, 1 gives ``r1``).
    """
    q0 = rotation_to_quaternion(r0.double())
    q1 = rotation_to_quaternion(r1.double())
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.arccos(dot)
    tt = t.double()[..., None]
    small = theta < 1e-6
    safe = torch.where(small, torch.ones_like(theta), theta)
    w0 = torch.where(small, 1.0 - tt, torch.sin((1.0 - tt) * safe) / torch.sin(safe))
    w1 = torch.where(small, tt, torch.sin(tt * safe) / torch.sin(safe))
    return quaternion_to_rotation(w0 * q0 + w1 * q1).to(r0.dtype)


@dataclass
class PseudoViewSampler:
    """Unseen camera poses between neighbouring training cameras (FSGS-style pseudo views).

    FSGS (Zhu et al., "FSGS: Real-Time Few-shot View Synthesis using Gaussian Splatting",
    ECCV 2024) renders poses near the training cameras that have no image and regularises them;
    CoR-GS does the same for co-regularisation. A pose here is drawn by picking a training camera
    ``i`` and one of its ``neighbours`` nearest training cameras ``j`` (by centre distance),
    a fraction ``t ~ U(0, 1)``, and then

    * centre ``(1 - t) c_i + t c_j + noise * |c_i - c_j| * N(0, I)``;
    * rotation: ``t`` of the way from ``R_i`` to ``R_j`` (slerp).

    Usage (state is an explicit dict, as with :class:`~recon.splat.strategy.DensifyStrategy`)::

        sampler = PseudoViewSampler(noise=0.05)
        state = sampler.initialize_state(train_w2c)
        w2c = sampler.sample(state, 1)          # [1, 4, 4]
    """

    noise: float = 0.05
    """Std of the centre jitter, a fraction of the pair's distance."""
    neighbours: int = 2
    """Pair each camera with one of this many nearest training cameras."""

    def initialize_state(self, w2c: Tensor) -> dict[str, Any]:  # w2c: [V, 4, 4]
        """``{"w2c": [V, 4, 4], "pairs": [P, 2] long}`` for training poses ``w2c`` (V >= 2)."""
        if not isinstance(w2c, Tensor) or w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
            raise ValueError(f"w2c: expected shape [V, 4, 4], given {getattr(w2c, 'shape', w2c)}")
        if w2c.shape[0] < 2:
            raise ValueError(f"w2c: pseudo views need at least 2 training cameras, given {w2c.shape[0]}")
        if self.neighbours < 1 or self.noise < 0:
            raise ValueError(f"neighbours >= 1 and noise >= 0 expected, given {self.neighbours}, {self.noise}")
        w = w2c.detach().double().cpu()
        centres = camera_centres(w)
        dist = torch.cdist(centres, centres)
        dist.fill_diagonal_(float("inf"))
        k = min(self.neighbours, w.shape[0] - 1)
        nn_idx = dist.topk(k, largest=False).indices  # [V, k]
        pairs = torch.stack([torch.arange(w.shape[0]).repeat_interleave(k), nn_idx.reshape(-1)], -1)
        pairs = torch.unique(torch.sort(pairs, dim=-1).values, dim=0)  # undirected, no repeats
        return {"w2c": w, "pairs": pairs}

    def sample(self, state: dict[str, Any], n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """``n`` pseudo poses, OpenCV world-to-camera float32 [n, 4, 4] (CPU).

        Also stores the chosen ``pairs`` indices and fractions ``t`` of the last call in
        ``state["last"]`` (for tests and logs).
        """
        if n < 1:
            raise ValueError(f"n: expected >= 1, given {n}")
        w2c, pairs = state["w2c"], state["pairs"]
        pick = torch.randint(len(pairs), (n,), generator=generator)
        t = torch.rand(n, generator=generator, dtype=torch.float64)
        i, j = pairs[pick, 0], pairs[pick, 1]
        ci, cj = camera_centres(w2c[i]), camera_centres(w2c[j])
        jitter = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        centre = (1 - t[:, None]) * ci + t[:, None] * cj
        centre = centre + self.noise * (ci - cj).norm(dim=-1, keepdim=True) * jitter
        rot = slerp_rotation(w2c[i, :3, :3], w2c[j, :3, :3], t)
        out = torch.zeros(n, 4, 4, dtype=torch.float64)
        out[:, :3, :3] = rot
        out[:, :3, 3] = -(rot @ centre[..., None])[..., 0]
        out[:, 3, 3] = 1.0
        state["last"] = {"pairs": torch.stack([i, j], -1), "t": t}
        return out.float()
