"""Sparse layers with MinkowskiEngine 0.5.4 names, arguments and parameter layouts.

State dicts are interchangeable with MinkowskiEngine's: convolutions hold ``kernel``
[K, C_in, C_out] (``[C_in, C_out]`` for a 1-voxel kernel at stride 1) and ``bias`` [1, C_out];
``MinkowskiBatchNorm.bn``, ``MinkowskiLinear.linear`` and the element-wise ``.module`` wrap the
torch layers. Kernel offsets follow MinkowskiEngine's order (see :mod:`recon.sparse.tensor`).

Output coordinates:

* ``MinkowskiConvolution`` / pooling, stride 1: the input coordinates (submanifold);
  stride s > 1: the input set downsampled to tensor stride ``ts * s``.
* ``MinkowskiConvolutionTranspose``, stride s: the finer set that was downsampled into the
  input (cached by the coordinate manager); stride 1: the input coordinates.
* ``MinkowskiGenerativeConvolutionTranspose``: every coordinate the kernel reaches from each
  input, at tensor stride ``ts / s``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from recon.sparse import functional as SF
from recon.sparse.functional import cat
from recon.sparse.tensor import CoordinateMapKey, IntOrSeq, SparseTensor, _as_tuple

__all__ = [
    "MinkowskiConvolution",
    "MinkowskiConvolutionTranspose",
    "MinkowskiGenerativeConvolutionTranspose",
    "MinkowskiSumPooling",
    "MinkowskiAvgPooling",
    "MinkowskiMaxPooling",
    "MinkowskiGlobalSumPooling",
    "MinkowskiGlobalAvgPooling",
    "MinkowskiGlobalMaxPooling",
    "MinkowskiBatchNorm",
    "MinkowskiLinear",
    "MinkowskiDropout",
    "MinkowskiReLU",
    "MinkowskiLeakyReLU",
    "MinkowskiELU",
    "MinkowskiGELU",
    "MinkowskiSiLU",
    "MinkowskiSigmoid",
    "MinkowskiTanh",
    "MinkowskiPruning",
    "MinkowskiToDenseTensor",
    "cat",
]

OutCoordinates = Optional[Union[SparseTensor, CoordinateMapKey, Tensor]]


def _check_input(module: nn.Module, x, dimension: int, channels: Optional[int] = None) -> None:
    name = type(module).__name__
    if not isinstance(x, SparseTensor):
        raise ValueError(f"{name}: expected a recon.sparse.SparseTensor input, given {type(x).__name__}")
    if x.D != dimension:
        raise ValueError(f"{name}: expected a {dimension}-D SparseTensor, given {x.D}-D")
    if channels is not None and x.F.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} input channels, given {x.F.shape[1]}")


def _explicit_out_key(x: SparseTensor, coordinates: OutCoordinates, tensor_stride) -> CoordinateMapKey:
    """Key of user-given output coordinates (a SparseTensor/key of x's manager, or a tensor)."""
    if isinstance(coordinates, SparseTensor):
        if coordinates.coordinate_manager is not x.coordinate_manager:
            raise ValueError("coordinates: expected a SparseTensor sharing the input's coordinate manager")
        return coordinates.coordinate_map_key
    if isinstance(coordinates, CoordinateMapKey):
        x.coordinate_manager.get_coordinates(coordinates)  # raises when unknown
        return coordinates
    if isinstance(coordinates, Tensor):
        return x.coordinate_manager.insert(coordinates.to(x.device), tensor_stride)
    raise ValueError(f"coordinates: expected a SparseTensor, CoordinateMapKey or tensor, given {type(coordinates).__name__}")


class _ConvolutionBase(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq,
        dilation: IntOrSeq,
        bias: bool,
        dimension: int,
        is_transpose: bool,
        generate_new_coordinates: bool = False,
    ):
        super().__init__()
        if not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"dimension: expected a positive int, given {dimension!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in/out_channels: expected positive ints, given {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _as_tuple(kernel_size, dimension, "kernel_size")
        self.stride = _as_tuple(stride, dimension, "stride")
        self.dilation = _as_tuple(dilation, dimension, "dilation")
        self.dimension = dimension
        self.is_transpose = is_transpose
        self.generate_new_coordinates = generate_new_coordinates
        self.kernel_volume = math.prod(self.kernel_size)
        unit_stride = all(s == 1 for s in self.stride)
        # MinkowskiEngine stores a 1-voxel stride-1 kernel as a matrix and applies it as a matmul
        self.use_mm = self.kernel_volume == 1 and unit_stride and not generate_new_coordinates
        shape = (in_channels, out_channels) if self.use_mm else (self.kernel_volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(*shape))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        self.reset_parameters(is_transpose)

    def reset_parameters(self, is_transpose: bool = False) -> None:
        """Uniform(+-1/sqrt(fan)) with fan = channels * kernel volume (MinkowskiEngine's init)."""
        n = (self.out_channels if is_transpose else self.in_channels) * self.kernel_volume
        stdv = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.kernel.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.uniform_(-stdv, stdv)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, kernel_size={list(self.kernel_size)}, "
            f"stride={list(self.stride)}, dilation={list(self.dilation)}, bias={self.bias is not None}"
        )

    def _out_key(self, x: SparseTensor) -> CoordinateMapKey:
        manager, key = x.coordinate_manager, x.coordinate_map_key
        if self.generate_new_coordinates:
            return manager.stride_region(key, self.kernel_size, self.dilation, self.stride)
        if self.is_transpose:
            return manager.transposed_stride(key, self.stride)
        return manager.stride(key, self.stride)

    def forward(
        self,
        input: SparseTensor,  # features [N, in_channels]
        coordinates: OutCoordinates = None,
    ) -> SparseTensor:  # features [N_out, out_channels]
        """Convolve; ``coordinates`` (a SparseTensor or key of the same manager, or an int tensor
        [M, 1 + D]) overrides the output coordinates."""
        _check_input(self, input, self.dimension, self.in_channels)
        manager = input.coordinate_manager
        if self.use_mm and coordinates is None:
            out_key = input.coordinate_map_key
            features = input.F @ self.kernel
        else:
            if coordinates is None:
                out_key = self._out_key(input)
            else:
                ts = self._out_key_stride(input)
                out_key = _explicit_out_key(input, coordinates, ts)
            kmap = manager.kernel_map(
                input.coordinate_map_key, out_key, self.kernel_size, self.dilation,
                is_transpose=self.is_transpose,
            )  # fmt: skip
            features = SF.sparse_conv(input.F, self.kernel, kmap)
        if self.bias is not None:
            features = features + self.bias
        return SparseTensor(features, coordinate_map_key=out_key, coordinate_manager=manager)

    def _out_key_stride(self, x: SparseTensor):
        ts = x.tensor_stride
        if self.is_transpose:
            return [t // s for t, s in zip(ts, self.stride)]
        return [t * s for t, s in zip(ts, self.stride)]


class MinkowskiConvolution(_ConvolutionBase):
    """Sparse convolution ``out[u] = sum_k W[k]^T in[u + offset_k]`` over occupied inputs.

    Args:
        in_channels, out_channels: feature sizes.
        kernel_size: kernel edge length(s); offsets as in MinkowskiEngine.
        stride: 1 keeps the input coordinates (submanifold); s > 1 outputs the input set
            downsampled to tensor stride ``ts * s``.
        dilation: kernel dilation.
        bias: add a learned bias [1, out_channels].
        dimension: spatial dimension D.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        dilation: IntOrSeq = 1,
        bias: bool = False,
        dimension: int = 3,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension, False)


class MinkowskiConvolutionTranspose(_ConvolutionBase):
    """Transposed sparse convolution (adjoint of :class:`MinkowskiConvolution`'s kernel map).

    With stride s the output lives on the finer coordinate set that a stride-s operation
    downsampled into the input (the coordinate manager caches it), at tensor stride ``ts / s``.
    Arguments as :class:`MinkowskiConvolution`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        dilation: IntOrSeq = 1,
        bias: bool = False,
        dimension: int = 3,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension, True)


class MinkowskiGenerativeConvolutionTranspose(_ConvolutionBase):
    """Transposed convolution that generates its output coordinates: every
    ``c + offset_k * (ts / s) * dilation`` for each input coordinate c, at tensor stride ``ts / s``.
    Arguments as :class:`MinkowskiConvolution`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        dilation: IntOrSeq = 1,
        bias: bool = False,
        dimension: int = 3,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, dilation, bias, dimension, True,
            generate_new_coordinates=True,
        )  # fmt: skip


class _LocalPooling(nn.Module):
    mode = "sum"

    def __init__(
        self,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        dilation: IntOrSeq = 1,
        dimension: int = 3,
    ):
        super().__init__()
        self.kernel_size = _as_tuple(kernel_size, dimension, "kernel_size")
        self.stride = _as_tuple(stride, dimension, "stride")
        self.dilation = _as_tuple(dilation, dimension, "dilation")
        self.dimension = dimension

    def extra_repr(self) -> str:
        return f"kernel_size={list(self.kernel_size)}, stride={list(self.stride)}, dilation={list(self.dilation)}"

    def forward(self, input: SparseTensor) -> SparseTensor:  # features [N, C] -> [N_out, C]
        _check_input(self, input, self.dimension)
        manager = input.coordinate_manager
        out_key = manager.stride(input.coordinate_map_key, self.stride)
        kmap = manager.kernel_map(input.coordinate_map_key, out_key, self.kernel_size, self.dilation, is_pool=True)
        pool = {"sum": SF.sparse_sum_pool, "avg": SF.sparse_avg_pool, "max": SF.sparse_max_pool}[self.mode]
        return SparseTensor(pool(input.F, kmap), coordinate_map_key=out_key, coordinate_manager=manager)


class MinkowskiSumPooling(_LocalPooling):
    """Sum of the occupied inputs under the kernel. Arguments: kernel_size, stride, dilation, dimension."""

    mode = "sum"


class MinkowskiAvgPooling(_LocalPooling):
    """Mean of the occupied inputs under the kernel (empty sites are not counted)."""

    mode = "avg"


class MinkowskiMaxPooling(_LocalPooling):
    """Max of the occupied inputs under the kernel (empty sites are not counted)."""

    mode = "max"


class _GlobalPooling(nn.Module):
    mode = "avg"

    def forward(self, input: SparseTensor) -> SparseTensor:  # features [N, C] -> [B, C]
        """One row per batch present, at coordinates ``[b, 0, ..., 0]`` and tensor stride 0."""
        if not isinstance(input, SparseTensor):
            raise ValueError(f"{type(self).__name__}: expected a SparseTensor input, given {type(input).__name__}")
        manager = input.coordinate_manager
        okey, rows = manager.origin(input.coordinate_map_key)
        features = SF.global_pool(input.F, rows, manager.size(okey), self.mode)
        return SparseTensor(features, coordinate_map_key=okey, coordinate_manager=manager)


class MinkowskiGlobalSumPooling(_GlobalPooling):
    """Sum over all rows of each batch."""

    mode = "sum"


class MinkowskiGlobalAvgPooling(_GlobalPooling):
    """Mean over all rows of each batch."""

    mode = "avg"


class MinkowskiGlobalMaxPooling(_GlobalPooling):
    """Max over all rows of each batch."""

    mode = "max"


class MinkowskiBatchNorm(nn.Module):
    """``torch.nn.BatchNorm1d`` on the features (held as ``.bn``, as in MinkowskiEngine)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine,
                                 track_running_stats=track_running_stats)  # fmt: skip

    def forward(self, input: SparseTensor) -> SparseTensor:  # features [N, C]
        if not isinstance(input, SparseTensor):
            raise ValueError(f"MinkowskiBatchNorm: expected a SparseTensor input, given {type(input).__name__}")
        if input.F.shape[1] != self.bn.num_features:
            raise ValueError(f"MinkowskiBatchNorm: expected {self.bn.num_features} channels, given {input.F.shape[1]}")
        return input._like(self.bn(input.F))


class MinkowskiLinear(nn.Module):
    """``torch.nn.Linear`` on the features (held as ``.linear``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, input: SparseTensor) -> SparseTensor:  # features [N, in] -> [N, out]
        if not isinstance(input, SparseTensor):
            raise ValueError(f"MinkowskiLinear: expected a SparseTensor input, given {type(input).__name__}")
        if input.F.shape[1] != self.linear.in_features:
            raise ValueError(f"MinkowskiLinear: expected {self.linear.in_features} channels, given {input.F.shape[1]}")
        return input._like(self.linear(input.F))


class _ElementWise(nn.Module):
    """Applies ``self.module`` to the features."""

    module: nn.Module

    def forward(self, input: SparseTensor) -> SparseTensor:  # features [N, C]
        if not isinstance(input, SparseTensor):
            raise ValueError(f"{type(self).__name__}: expected a SparseTensor input, given {type(input).__name__}")
        return input._like(self.module(input.F))


class MinkowskiReLU(_ElementWise):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.module = nn.ReLU(inplace=inplace)


class MinkowskiLeakyReLU(_ElementWise):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.module = nn.LeakyReLU(negative_slope=negative_slope, inplace=inplace)


class MinkowskiELU(_ElementWise):
    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.module = nn.ELU(alpha=alpha, inplace=inplace)


class MinkowskiGELU(_ElementWise):
    def __init__(self):
        super().__init__()
        self.module = nn.GELU()


class MinkowskiSiLU(_ElementWise):
    def __init__(self):
        super().__init__()
        self.module = nn.SiLU()


class MinkowskiSigmoid(_ElementWise):
    def __init__(self):
        super().__init__()
        self.module = nn.Sigmoid()


class MinkowskiTanh(_ElementWise):
    def __init__(self):
        super().__init__()
        self.module = nn.Tanh()


class MinkowskiDropout(_ElementWise):
    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.module = nn.Dropout(p=p, inplace=inplace)


class MinkowskiPruning(nn.Module):
    """Keep the rows where ``mask`` is True, on a new coordinate set of the same manager."""

    def forward(
        self,
        input: SparseTensor,  # features [N, C]
        mask: Tensor,  # [N] bool
    ) -> SparseTensor:  # features [N_kept, C]
        if not isinstance(input, SparseTensor):
            raise ValueError(f"MinkowskiPruning: expected a SparseTensor input, given {type(input).__name__}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (len(input),):
            given = (tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask: expected a bool tensor [{len(input)}], given {given}")
        manager = input.coordinate_manager
        key = manager.prune(input.coordinate_map_key, mask.to(input.device))
        return SparseTensor(input.F[mask], coordinate_map_key=key, coordinate_manager=manager)


class MinkowskiToDenseTensor(nn.Module):
    """``input.dense(shape)[0]``: a dense [B, C, *spatial] tensor."""

    def __init__(self, shape: Optional[torch.Size] = None):
        super().__init__()
        self.shape = shape

    def forward(self, input: SparseTensor) -> Tensor:  # [B, C, *spatial]
        if not isinstance(input, SparseTensor):
            raise ValueError(f"MinkowskiToDenseTensor: expected a SparseTensor input, given {type(input).__name__}")
        return input.dense(shape=self.shape)[0]

