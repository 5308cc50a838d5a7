"""Rendering Gaussian models from camera sets: the thin layer between models and
:func:`recon.splat.rasterize.rasterization` that the trainer, evaluation and export share."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet
from recon.splat.model import GaussianModel
from recon.splat.rasterize import rasterization, rasterize_params

__all__ = ["rasterize_params_views", "rasterize_views", "render", "render_all"]


def rasterize_views(
    inputs: Mapping[str, Tensor],  # activated parameters: means [N, 3], quats [N, 4], scales [N, 3], opacities [N], colors [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    render_mode: str = "RGB",
) -> tuple[Tensor, Tensor, dict]:
    """Render activated Gaussians (``GaussianModel.activated``) into ``C`` cameras; returns
    ``[C, H, W, 3 (+1 with depth modes)]`` images, ``[C, H, W, 1]`` alphas and gsplat's meta."""
    dev = inputs["means"].device
    return rasterization(
        **inputs,
        viewmats=viewmats.to(dev),
        Ks=Ks.to(dev),
        width=width,
        height=height,
        sh_degree=sh_degree,
        backgrounds=background.to(dev).expand(len(viewmats), 3),
        render_mode=render_mode,
    )



def rasterize_params_views(
    params: Mapping[str, Tensor],  # GaussianModel.params (raw): means, quats, scales (log), opacities (logit), sh0, shN
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    render_mode: str = "RGB",
) -> tuple[Tensor, Tensor, dict]:
    """:func:`rasterize_views` of ``GaussianModel.activated(sh_degree)`` taking the raw
    parameters (:func:`recon.splat.rasterize.rasterize_params`): on float32 CPU tensors the
    activations run inside the fused numba projection, elsewhere it is the same as
    ``rasterize_views(model.activated(sh_degree), ...)``."""
    dev = params["means"].device
    return rasterize_params(
        params,
        viewmats.to(dev),
        Ks.to(dev),
        width,
        height,
        sh_degree,
        backgrounds=background.to(dev).expand(len(viewmats), 3),
        render_mode=render_mode,
    )


def render(
    model: GaussianModel,
    cameras: CameraSet,
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
    indices: list[int] | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render cameras (all or ``indices``) of ``cameras``: ``[C,H,W,3]`` colours, ``[C,H,W,1]`` alphas, meta."""
    idx = list(range(len(cameras))) if indices is None else indices
    return rasterize_views(model.activated(sh_degree), cameras.w2c[idx], cameras.Ks()[idx], width, height, sh_degree, background)


@torch.no_grad()
def render_all(model: GaussianModel, cameras: CameraSet, width: int, height: int, sh_degree: int, background: Tensor) -> Tensor:
    """Renders ``[V, H, W, 3]`` (clamped to [0, 1], CPU) of every camera, one at a time."""
    out = []
    for i in range(len(cameras)):
        colors, _, _ = render(model, cameras, width, height, sh_degree, background, [i])
        out.append(colors[0, ..., :3].clamp(0, 1).cpu())
    return torch.stack(out)
