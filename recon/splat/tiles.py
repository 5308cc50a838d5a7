"""Tile binning of projected Gaussians (vectorised PyTorch), gsplat 1.4.0 conventions.

A Gaussian with pixel radius ``r > 0`` at ``(x, y)`` covers the tiles
``[floor((x - r) / ts), ceil((x + r) / ts))`` (and likewise in y), clamped to the grid.
Intersections are sorted by (camera, tile, depth); ties in depth keep Gaussian index order.
``isect_ids`` uses gsplat's 64-bit key ``camera << (32 + tile_bits) | tile << 32 | depth_bits``
and ``flatten_ids`` indexes the flattened ``[C * N]`` Gaussians.

``isect_tiles`` here is the reference twin of the numba binning in ``raster_cpu.bin_gaussians``.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["tile_grid", "tile_rects", "isect_tiles", "isect_offset_encode", "depth_bits"]


def tile_grid(width: int, height: int, tile_size: int) -> Tuple[int, int]:
    """(tile_width, tile_height): number of tile columns and rows covering the image."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)


@torch.no_grad()
def tile_rects(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N] int
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tensor:  # [C, N, 4] int32: x_min, y_min, x_max, y_max (max exclusive); empty when r <= 0
    """Tile rectangle covered by each Gaussian's radius square (gsplat's rule)."""
    t_means = means2d / tile_size
    t_radii = (radii / tile_size).to(means2d.dtype)[..., None]
    mins = torch.floor(t_means - t_radii)
    maxs = torch.ceil(t_means + t_radii)
    lim = torch.tensor([tile_width, tile_height], dtype=means2d.dtype, device=means2d.device)
    mins = torch.minimum(torch.clamp(mins, min=0), lim)
    maxs = torch.minimum(torch.clamp(maxs, min=0), lim)
    rects = torch.cat([mins, maxs], dim=-1).to(torch.int32)
    return torch.where((radii > 0)[..., None], rects, torch.zeros_like(rects))


def depth_bits(depths: Tensor) -> Tensor:  # [...] float -> [...] int64
    """gsplat's depth key: the float32 bit pattern read as int32 (monotone for depth > 0)."""
    return depths.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N] int
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Sorted Gaussian/tile intersections.

    Returns:
        tiles_per_gauss [C, N] int32, isect_ids [M] int64, flatten_ids [M] int32.
    """
    C, N = radii.shape
    device = means2d.device
    rects = tile_rects(means2d, radii, tile_size, tile_width, tile_height).to(torch.int64)
    w = rects[..., 2] - rects[..., 0]
    h = rects[..., 3] - rects[..., 1]
    tiles_per_gauss = (w * h).reshape(-1)  # [C * N]
    M = int(tiles_per_gauss.sum())
    flat = torch.repeat_interleave(torch.arange(C * N, device=device), tiles_per_gauss)  # [M]
    first = torch.cumsum(tiles_per_gauss, 0) - tiles_per_gauss
    local = torch.arange(M, device=device) - first[flat]  # index inside the rectangle
    rf = rects.reshape(-1, 4)[flat]
    wf = w.reshape(-1)[flat]
    tx = rf[:, 0] + local % wf.clamp(min=1)
    ty = rf[:, 1] + local // wf.clamp(min=1)
    cam = flat // N
    tile_id = ty * tile_width + tx
    n_bits = (tile_width * tile_height).bit_length()
    dbits = depth_bits(depths).reshape(-1)[flat]
    isect_ids = (cam << (32 + n_bits)) | (tile_id << 32) | dbits
    # (camera, tile) then depth, stably: sort by depth first, then by the tile key.
    order = torch.argsort(depths.detach().reshape(-1)[flat], stable=True)
    tile_key = (cam * (tile_width * tile_height) + tile_id)[order]
    order = order[torch.argsort(tile_key, stable=True)]
    return (
        tiles_per_gauss.reshape(C, N).to(torch.int32),
        isect_ids[order],
        flat[order].to(torch.int32),
    )


@torch.no_grad()
def isect_offset_encode(
    isect_ids: Tensor,  # [M] int64, sorted
    n_cameras: int,
    tile_width: int,
    tile_height: int,
) -> Tensor:  # [C, tile_height, tile_width] int32
    """Index of each tile's first intersection (gsplat's ``isect_offsets``)."""
    n_bits = (tile_width * tile_height).bit_length()
    key = isect_ids >> 32
    cam = key >> n_bits
    tile = key & ((1 << n_bits) - 1)
    n_tiles = tile_width * tile_height
    counts = torch.bincount(cam * n_tiles + tile, minlength=n_cameras * n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets.reshape(n_cameras, tile_height, tile_width).to(torch.int32)
