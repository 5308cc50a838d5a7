"""Pure-PyTorch sparse convolution and pooling on kernel maps (gather -> GEMM -> scatter).

These are the reference implementations (and the default backend): every op takes a feature
matrix and a :class:`~recon.sparse.tensor.KernelMap` from the coordinate manager and is
differentiable by autograd with respect to features and weights. They run wherever torch runs
(CPU, CUDA); the only Python loop is over the K kernel offsets, with per-offset sizes cached in
the kernel map, so there is no host sync per call.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from recon.sparse.tensor import KernelMap, SparseTensor

__all__ = [
    "sparse_conv",
    "sparse_conv_reference",
    "sparse_sum_pool",
    "sparse_avg_pool",
    "sparse_max_pool",
    "global_pool",
    "cat",
]


def _check_conv(features: Tensor, kernel: Tensor, kernel_map: KernelMap) -> Tensor:
    """Validate and return the kernel as [K, C_in, C_out]."""
    if kernel.ndim == 2:
        kernel = kernel.unsqueeze(0)
    if features.ndim != 2 or kernel.ndim != 3 or features.shape[1] != kernel.shape[1]:
        raise ValueError(
            f"features/kernel: expected [N, C_in] and [K, C_in, C_out], given "
            f"{tuple(features.shape)} and {tuple(kernel.shape)}"
        )
    if kernel.shape[0] != kernel_map.kernel_volume:
        raise ValueError(f"kernel: expected {kernel_map.kernel_volume} offsets (kernel map), given {kernel.shape[0]}")
    if features.shape[0] != kernel_map.num_in:
        raise ValueError(f"features: expected {kernel_map.num_in} rows (kernel map), given {features.shape[0]}")
    return kernel


def _conv_loop(features: Tensor, kernel: Tensor, kernel_map: KernelMap) -> Tensor:
    """Gather -> GEMM -> scatter-add over the kernel offsets, accumulating in place."""
    if kernel_map.identity >= 0:  # centre offset of a submanifold conv: a plain GEMM
        out = features @ kernel[kernel_map.identity]
    else:
        out = features.new_zeros(kernel_map.num_out, kernel.shape[2])
    for k in range(kernel.shape[0]):
        s, e = kernel_map.ptr[k], kernel_map.ptr[k + 1]
        if k == kernel_map.identity or s == e:
            continue
        gathered = features.index_select(0, kernel_map.in_rows[s:e])
        out.index_add_(0, kernel_map.out_rows[s:e], gathered @ kernel[k])
    return out


class _SparseConvFunction(torch.autograd.Function):
    """Sparse conv with a hand-written backward: the feature gradient is the transposed conv of
    the output gradient (one accumulator, instead of autograd's full-size [N_in, C_in] gradient
    per offset), the kernel gradient one GEMM per offset."""

    @staticmethod
    def forward(ctx, features: Tensor, kernel: Tensor, kernel_map: KernelMap) -> Tensor:
        ctx.save_for_backward(features, kernel)
        ctx.kernel_map = kernel_map
        return _conv_loop(features, kernel, kernel_map)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        features, kernel = ctx.saved_tensors
        kmap: KernelMap = ctx.kernel_map
        grad_out = grad_out.contiguous()
        grad_features = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_features = _conv_loop(grad_out, kernel.transpose(1, 2), kmap.transposed())
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.zeros_like(kernel)
            for k in range(kernel.shape[0]):
                if k == kmap.identity:
                    grad_kernel[k] = features.t() @ grad_out
                    continue
                s, e = kmap.ptr[k], kmap.ptr[k + 1]
                if s == e:
                    continue
                f_k = features.index_select(0, kmap.in_rows[s:e])
                g_k = grad_out.index_select(0, kmap.out_rows[s:e])
                grad_kernel[k] = f_k.t() @ g_k
        return grad_features, grad_kernel, None


def sparse_conv(
    features: Tensor,  # [N_in, C_in]
    kernel: Tensor,  # [K, C_in, C_out] (or [C_in, C_out] when K == 1)
    kernel_map: KernelMap,
) -> Tensor:  # [N_out, C_out]
    """``out[o] = sum_k sum_{(i, o) in map_k} features[i] @ kernel[k]``.

    The same function serves convolution and transposed convolution (pass the transposed
    kernel map). The kernel layout [K, C_in, C_out] and the offset order are MinkowskiEngine's.
    Differentiable once (custom backward); :func:`sparse_conv_reference` is its autograd twin.
    """
    kernel = _check_conv(features, kernel, kernel_map)
    return _SparseConvFunction.apply(features, kernel, kernel_map)


def sparse_conv_reference(
    features: Tensor,  # [N_in, C_in]
    kernel: Tensor,  # [K, C_in, C_out] (or [C_in, C_out] when K == 1)
    kernel_map: KernelMap,
) -> Tensor:  # [N_out, C_out]
    """:func:`sparse_conv` differentiated by plain autograd (reference twin; twice differentiable)."""
    kernel = _check_conv(features, kernel, kernel_map)
    return _conv_loop(features, kernel, kernel_map)


def _counts(kernel_map: KernelMap, like: Tensor) -> Tensor:  # [N_out, 1]
    ones = torch.ones(kernel_map.out_rows.shape[0], dtype=like.dtype, device=like.device)
    return torch.zeros(kernel_map.num_out, dtype=like.dtype, device=like.device).index_add(
        0, kernel_map.out_rows, ones
    ).unsqueeze(1)


def sparse_sum_pool(
    features: Tensor,  # [N_in, C]
    kernel_map: KernelMap,
) -> Tensor:  # [N_out, C]
    """Sum of the inputs each output's kernel covers."""
    src = features.index_select(0, kernel_map.in_rows)
    return features.new_zeros(kernel_map.num_out, features.shape[1]).index_add(0, kernel_map.out_rows, src)


def sparse_avg_pool(
    features: Tensor,  # [N_in, C]
    kernel_map: KernelMap,
) -> Tensor:  # [N_out, C]
    """Mean over the *occupied* inputs each output's kernel covers (MinkowskiEngine's
    ``MinkowskiAvgPooling``); outputs that cover no input are 0."""
    return sparse_sum_pool(features, kernel_map) / _counts(kernel_map, features).clamp(min=1)


def sparse_max_pool(
    features: Tensor,  # [N_in, C]
    kernel_map: KernelMap,
) -> Tensor:  # [N_out, C]
    """Max over the occupied inputs each output's kernel covers; outputs covering none are 0."""
    src = features.index_select(0, kernel_map.in_rows)
    index = kernel_map.out_rows.unsqueeze(1).expand(-1, features.shape[1])
    out = features.new_zeros(kernel_map.num_out, features.shape[1])
    return out.scatter_reduce(0, index, src, reduce="amax", include_self=False)


def global_pool(
    features: Tensor,  # [N, C]
    batch_rows: Tensor,  # [N] int64, output row of each input (0 .. B - 1)
    num_batches: int,
    mode: str = "avg",
) -> Tensor:  # [B, C]
    """Pool all rows of each batch: ``mode`` in ``"avg"``, ``"sum"``, ``"max"``."""
    out = features.new_zeros(num_batches, features.shape[1])
    if mode == "max":
        index = batch_rows.unsqueeze(1).expand(-1, features.shape[1])
        return out.scatter_reduce(0, index, features, reduce="amax", include_self=False)
    total = out.index_add(0, batch_rows, features)
    if mode == "sum":
        return total
    if mode == "avg":
        ones = torch.ones(batch_rows.shape[0], dtype=features.dtype, device=features.device)
        counts = features.new_zeros(num_batches).index_add(0, batch_rows, ones)
        return total / counts.clamp(min=1).unsqueeze(1)
    raise ValueError(f"mode: expected 'avg', 'sum' or 'max', given {mode!r}")


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate features along channels of tensors on the same coordinates (``ME.cat``)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors or not all(isinstance(t, SparseTensor) for t in tensors):
        raise ValueError(f"tensors: expected one or more SparseTensors, given {[type(t).__name__ for t in tensors]}")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if not first._same_coordinates(t):
            raise ValueError(
                f"tensors[{i}]: expected the coordinates of tensors[0] (key {first.coordinate_map_key}), "
                f"given key {t.coordinate_map_key}"
            )
    features: List[Tensor] = [t.F for t in tensors]
    return first._like(torch.cat(features, dim=1))
