"""Dense references for the sparse tests: random occupancy grids and kernel-layout conversion."""

from __future__ import annotations

import torch
from torch import Tensor

from recon.sparse import SparseTensor


def random_sparse(
    batch: int = 2,
    size: int = 7,
    channels: int = 3,
    density: float = 0.35,
    dimension: int = 3,
    dtype: torch.dtype = torch.float64,
    requires_grad: bool = True,
) -> SparseTensor:
    """A random SparseTensor on a [batch, size^D] grid (coordinates >= 0)."""
    occupied = torch.rand(batch, *([size] * dimension)) < density
    coords = occupied.nonzero().int()
    coords = coords[torch.randperm(len(coords))]  # row order must not matter
    features = torch.randn(len(coords), channels, dtype=dtype, requires_grad=requires_grad)
    return SparseTensor(features, coords)


def dense_weight(kernel: Tensor, kernel_size: int, dimension: int, transpose: bool = False) -> Tensor:
    """MinkowskiEngine kernel [K, C_in, C_out] (first axis fastest) -> torch convNd weight
    [C_out, C_in, *k] (or conv_transposeNd weight [C_in, C_out, *k]); differentiable."""
    c_in, c_out = kernel.shape[-2], kernel.shape[-1]
    w = kernel.reshape(*([kernel_size] * dimension), c_in, c_out)  # [k_{D-1}, ..., k_0, C_in, C_out]
    spatial = list(range(dimension - 1, -1, -1))  # -> k_0, ..., k_{D-1}
    order = [dimension, dimension + 1] if transpose else [dimension + 1, dimension]
    return w.permute(*order, *spatial)


def at(dense: Tensor, coords: Tensor, stride: int = 1) -> Tensor:
    """Rows [N, C] of a dense [B, C, *spatial] tensor at coordinates [N, 1 + D] / stride."""
    c = coords.long()
    idx = [c[:, 0]] + [torch.div(c[:, i], stride, rounding_mode="floor") for i in range(1, c.shape[1])]
    return dense.movedim(1, -1)[tuple(idx)]


def conv(dimension: int):
    return {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[dimension]


def conv_transpose(dimension: int):
    F = torch.nn.functional
    return {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dimension]
