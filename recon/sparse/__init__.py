"""recon.sparse: sparse tensors and sparse convolutions with MinkowskiEngine 0.5.4's API.

The default backend is pure PyTorch (:mod:`recon.sparse.nn`, exact, CPU and CUDA);
MinkowskiEngine is used through :func:`get_backend` when it is installed. ``MinkUNet`` lives in
:mod:`recon.sparse.nets` and is imported lazily (it pulls in diffusers).

Typical use::

    from recon import sparse as rs
    coords, feats = rs.sparse_collate([c0, c1], [f0, f1])
    x = rs.SparseTensor(feats, coords)
    y = rs.MinkowskiConvolution(4, 16, kernel_size=3, dimension=3)(x)
"""

from recon.sparse.backends import (
    SparseBackend,
    SparseBackendUnavailable,
    available_backends,
    get_backend,
)
from recon.sparse.collate import batched_coordinates, sparse_collate, sparse_quantize
from recon.sparse.nn import *  # noqa: F401,F403  (the Minkowski* layers and cat)
from recon.sparse.nn import __all__ as _nn_all
from recon.sparse.tensor import CoordinateManager, CoordinateMapKey, KernelMap, SparseTensor, kernel_offsets

__all__ = [
    "SparseTensor",
    "CoordinateManager",
    "CoordinateMapKey",
    "KernelMap",
    "kernel_offsets",
    "sparse_quantize",
    "batched_coordinates",
    "sparse_collate",
    "SparseBackend",
    "SparseBackendUnavailable",
    "available_backends",
    "get_backend",
    "MinkUNet",
    *_nn_all,
]


def __getattr__(name: str):
    if name == "MinkUNet":
        from recon.sparse.nets import MinkUNet

        return MinkUNet
    raise AttributeError(f"module 'recon.sparse' has no attribute {name!r}")
