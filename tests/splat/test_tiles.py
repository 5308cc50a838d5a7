"""Tile binning: recon.splat.tiles (torch) and raster_cpu.bin_gaussians (numba) vs gsplat."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

from recon.splat.projection import fully_fused_projection
from recon.splat.raster_cpu import bin_gaussians
from recon.splat.tiles import isect_offset_encode, isect_tiles, tile_grid


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_matches_gsplat_and_numba_twin(scene, tile_size):
    s = scene(n=40, n_cameras=2, seed=2)
    radii, m2d, depths, _, _ = fully_fused_projection(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], s["width"], s["height"]
    )
    tw, th = tile_grid(s["width"], s["height"], tile_size)
    tpg, ids, fids = isect_tiles(m2d, radii, depths, tile_size, tw, th)
    offsets = isect_offset_encode(ids, 2, tw, th)
    r_tpg, r_ids, r_fids = _isect_tiles(m2d, radii, depths, tile_size, tw, th)
    r_offsets = _isect_offset_encode(r_ids, 2, tw, th)
    assert ids.shape[0] > 40
    assert torch.equal(tpg, r_tpg) and torch.equal(ids, r_ids) and torch.equal(offsets, r_offsets)
    assert torch.equal(fids, r_fids)
    n_tpg, n_ids, n_fids, n_offsets = bin_gaussians(m2d, radii, depths, tile_size, tw, th)
    assert torch.equal(n_tpg, tpg) and torch.equal(n_ids, ids) and torch.equal(n_fids, fids)
    assert torch.equal(n_offsets, offsets)
    assert n_fids.dtype == torch.int32 and n_offsets.dtype == torch.int32 and n_ids.dtype == torch.int64

    # Depth ties keep Gaussian index order in both twins (gsplat's CUDA radix sort is stable;
    # its torch reference uses an unstable sort, so it is not compared here).
    depths = depths.clone()
    depths[:, 5] = depths[:, 6]
    _, ids, fids = isect_tiles(m2d, radii, depths, tile_size, tw, th)
    _, n_ids, n_fids, _ = bin_gaussians(m2d, radii, depths, tile_size, tw, th)
    assert torch.equal(n_fids, fids) and torch.equal(n_ids, ids)
    pos5, pos6 = (fids == 5).nonzero().flatten(), (fids == 6).nonzero().flatten()
    shared = torch.isin(ids[pos5] >> 32, ids[pos6] >> 32)
    assert shared.any() and torch.all(pos5[shared] < pos6[torch.isin(ids[pos6] >> 32, ids[pos5] >> 32)])


def test_empty():
    means2d = torch.zeros(1, 3, 2)
    radii = torch.zeros(1, 3, dtype=torch.int32)
    depths = torch.ones(1, 3)
    tpg, ids, fids, offsets = bin_gaussians(means2d, radii, depths, 16, 2, 2)
    assert ids.numel() == 0 and fids.numel() == 0 and torch.all(offsets == 0) and torch.all(tpg == 0)
    _, ids_t, fids_t = isect_tiles(means2d, radii, depths, 16, 2, 2)
    assert ids_t.numel() == 0 and fids_t.numel() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_numba_binning_many_blocks_odd_sizes_empty_tiles(seed):
    # > 4096 visible Gaussians per camera (several binning blocks), an image that is not a
    # multiple of the tile size (partial last tiles), Gaussians clustered in the left half
    # (empty tiles on the right), radii that straddle many tiles, culled ones (radius 0) and
    # depth ties: the numba binning equals the torch twin exactly.
    g = torch.Generator().manual_seed(seed)
    C, N, W, H, ts = 2, 9001, 101, 67, 8
    tw, th = tile_grid(W, H, ts)
    means2d = torch.rand(C, N, 2, generator=g) * torch.tensor([W * 0.45, H * 1.1]) - torch.tensor([3.0, 3.0])
    radii = torch.randint(0, 14, (C, N), generator=g, dtype=torch.int32)
    depths = torch.rand(C, N, generator=g) * 5 + 0.5
    depths[:, 100:200] = depths[:, 50:150].clone()  # ties
    tpg, ids, fids = isect_tiles(means2d, radii, depths, ts, tw, th)
    offsets = isect_offset_encode(ids, C, tw, th)
    n_tpg, n_ids, n_fids, n_offsets = bin_gaussians(means2d, radii, depths, ts, tw, th)
    assert int((radii > 0).sum(1).min()) > 2 * 4096
    counts = torch.diff(torch.cat([offsets.reshape(-1), torch.tensor([ids.shape[0]])]))
    assert (counts == 0).any() and (counts > 0).any()  # empty and busy tiles
    assert torch.equal(n_tpg, tpg) and torch.equal(n_offsets, offsets)
    assert torch.equal(n_fids, fids) and torch.equal(n_ids, ids)
