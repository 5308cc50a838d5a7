"""A MinkUNet-style sparse U-Net, built from the chosen backend's ``Minkowski*`` layers.

Layout (L = len(planes) levels, tensor stride 2**i at level i)::

    stem   conv k(stem) in -> planes[0], BN, ReLU                       (stride 1, submanifold)
    enc i  [i > 0: conv k2 s2 planes[i-1] -> planes[i], BN, ReLU] + layers[i] residual blocks
    dec i  convT k2 s2 planes[i] -> planes[i-1], BN, ReLU (onto the cached level i-1 set),
           cat with the level i-1 skip, max(1, layers[i-1]) residual blocks (first one
           2 * planes[i-1] -> planes[i-1] with a 1x1 projection on its shortcut)
    head   conv k1 planes[0] -> out_channels, with bias

The output lives on the input's coordinates (same set, same row order). The model is a
diffusers ``ModelMixin`` + ``ConfigMixin`` (``save_pretrained`` / ``from_pretrained`` to a local
folder, safetensors); its state dict is the same for every backend because our layers mirror
MinkowskiEngine's parameter names and layouts. ``forward`` returns a SparseTensor rather than an
output dataclass, like MinkowskiEngine networks, so it composes with other sparse layers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from recon.sparse.backends import get_backend
from recon.sparse.tensor import SparseTensor

__all__ = ["BasicBlock", "MinkUNet"]


class BasicBlock(nn.Module):
    """Residual block: (conv3, BN, ReLU, conv3, BN) + shortcut, ReLU; the shortcut is a 1x1
    conv + BN when the channel count changes.

    Args:
        ME: namespace providing the ``Minkowski*`` layers (``backend.nn``).
        in_channels, out_channels: feature sizes.
        dimension: spatial dimension D.
        bn_momentum: BatchNorm momentum.
    """

    def __init__(self, ME: ModuleType, in_channels: int, out_channels: int, dimension: int, bn_momentum: float):
        super().__init__()
        self.conv1 = ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=3, stride=1, dimension=dimension)
        self.norm1 = ME.MinkowskiBatchNorm(out_channels, momentum=bn_momentum)
        self.conv2 = ME.MinkowskiConvolution(out_channels, out_channels, kernel_size=3, stride=1, dimension=dimension)
        self.norm2 = ME.MinkowskiBatchNorm(out_channels, momentum=bn_momentum)
        self.relu = ME.MinkowskiReLU()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=1, stride=1, dimension=dimension),
                ME.MinkowskiBatchNorm(out_channels, momentum=bn_momentum),
            )

    def forward(self, x):  # sparse tensor [N, in_channels] -> [N, out_channels], same coordinates
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def _conv_bn_relu(ME: ModuleType, conv: nn.Module, channels: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(conv, ME.MinkowskiBatchNorm(channels, momentum=bn_momentum), ME.MinkowskiReLU())


class MinkUNet(ModelMixin, ConfigMixin):
    """Sparse residual U-Net (MinkowskiEngine's MinkUNet family).

    Args:
        in_channels: input feature size.
        out_channels: output feature size (per voxel).
        planes: channels per level, finest first.
        layers: residual blocks per level (encoder; the decoder uses max(1, layers[i])).
        dimension: spatial dimension D.
        stem_kernel_size: kernel size of the first convolution.
        bn_momentum: BatchNorm momentum.
        backend: ``"auto"``, ``"torch"`` or ``"minkowski"`` (see :mod:`recon.sparse.backends`);
            not part of the saved config, so a checkpoint loads on any backend.
    """

    ignore_for_config = ["backend"]

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        planes: Sequence[int] = (32, 64, 128, 256),
        layers: Sequence[int] = (1, 1, 1, 1),
        dimension: int = 3,
        stem_kernel_size: int = 3,
        bn_momentum: float = 0.1,
        backend: str = "auto",
    ):
        super().__init__()
        planes, layers = tuple(int(p) for p in planes), tuple(int(n) for n in layers)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in/out_channels: expected positive ints, given {in_channels}, {out_channels}")
        if len(planes) < 1 or len(planes) != len(layers):
            raise ValueError(f"planes/layers: expected equal non-empty lengths, given {planes} and {layers}")
        if any(p < 1 for p in planes) or any(n < 0 for n in layers):
            raise ValueError(f"planes/layers: expected positive planes and non-negative layers, given {planes}, {layers}")
        self.backend = get_backend(backend)
        if self.backend.nn is None:
            raise ValueError(f"backend: expected one with layers ('torch' or 'minkowski'), given {self.backend.name!r}")
        ME, D, m = self.backend.nn, dimension, bn_momentum
        self.stem = _conv_bn_relu(
            ME, ME.MinkowskiConvolution(in_channels, planes[0], kernel_size=stem_kernel_size, dimension=D), planes[0], m
        )
        self.encoder = nn.ModuleList()
        for i, (p, n) in enumerate(zip(planes, layers)):
            stage = []
            if i > 0:
                down = ME.MinkowskiConvolution(planes[i - 1], p, kernel_size=2, stride=2, dimension=D)
                stage.append(_conv_bn_relu(ME, down, p, m))
            stage += [BasicBlock(ME, p, p, D, m) for _ in range(n)]
            self.encoder.append(nn.Sequential(*stage))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(planes) - 1, 0, -1):
            p = planes[i - 1]
            up = ME.MinkowskiConvolutionTranspose(planes[i], p, kernel_size=2, stride=2, dimension=D)
            self.up.append(_conv_bn_relu(ME, up, p, m))
            blocks = [BasicBlock(ME, 2 * p, p, D, m)]
            blocks += [BasicBlock(ME, p, p, D, m) for _ in range(max(1, layers[i - 1]) - 1)]
            self.decoder.append(nn.Sequential(*blocks))
        self.head = ME.MinkowskiConvolution(planes[0], out_channels, kernel_size=1, bias=True, dimension=D)

    def forward(self, x: SparseTensor) -> SparseTensor:  # features [N, in_channels] -> [N, out_channels]
        """Per-voxel outputs on ``x``'s coordinates (same row order)."""
        if not isinstance(x, SparseTensor):
            raise ValueError(f"x: expected a recon.sparse.SparseTensor, given {type(x).__name__}")
        if x.D != self.config.dimension or x.F.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x: expected D={self.config.dimension} with {self.config.in_channels} channels, "
                f"given D={x.D} with {x.F.shape[1]}"
            )
        h = self.stem(self.backend.to_native(x))
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        for up, decoder, skip in zip(self.up, self.decoder, reversed(skips[:-1])):
            h = decoder(self.backend.nn.cat(up(h), skip))
        return self.backend.from_native(self.head(h), like=x)
