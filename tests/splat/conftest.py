"""Tiny Gaussian scenes shared by the splat tests."""

from __future__ import annotations

import math
from typing import Callable, Dict

import pytest
import torch


def make_scene(
    n: int = 20,
    n_cameras: int = 1,
    width: int = 24,
    height: int = 20,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    opacity_range=(0.1, 0.9),
    sigma_px=(0.7, 4.0),
) -> Dict[str, torch.Tensor]:
    """Gaussians spread over (and a little beyond) the image of camera 0; other cameras are
    small rotations/translations of it. Footprints of ~1 to ~4 px std."""
    g = torch.Generator().manual_seed(seed)
    f = 1.1 * width
    z = torch.rand(n, generator=g, dtype=dtype) * 3 + 2
    u = torch.rand(n, generator=g, dtype=dtype) * width * 1.2 - 0.1 * width
    v = torch.rand(n, generator=g, dtype=dtype) * height * 1.2 - 0.1 * height
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], -1)
    lo, hi = sigma_px
    spx = lo * torch.exp(torch.rand(n, generator=g, dtype=dtype) * math.log(hi / lo))
    scales = (spx * z / f)[:, None] * (torch.rand(n, 3, generator=g, dtype=dtype) + 0.5)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    o_lo, o_hi = opacity_range
    opacities = torch.rand(n, generator=g, dtype=dtype) * (o_hi - o_lo) + o_lo
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmats = []
    for c in range(n_cameras):
        ang = 0.08 * c
        R = torch.tensor(
            [[math.cos(ang), 0.0, math.sin(ang)], [0.0, 1.0, 0.0], [-math.sin(ang), 0.0, math.cos(ang)]],
            dtype=dtype,
        )
        vm = torch.eye(4, dtype=dtype)
        vm[:3, :3] = R
        vm[:3, 3] = torch.tensor([0.05 * c, -0.03 * c, 0.1 * c], dtype=dtype)
        viewmats.append(vm)
    Ks = torch.tensor([[f, 0.0, width / 2], [0.0, f * 1.05, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return dict(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
        viewmats=torch.stack(viewmats), Ks=Ks[None].repeat(n_cameras, 1, 1),
        width=width, height=height,
    )  # fmt: skip


@pytest.fixture
def scene() -> Callable[..., Dict[str, torch.Tensor]]:
    return make_scene
