"""The one place that picks the sparse-convolution backend.

* ``torch`` (default, always available): :mod:`recon.sparse.nn`, pure PyTorch gather-GEMM-
  scatter; exact, CPU and CUDA. It is the reference twin of the others.
* ``minkowski``: MinkowskiEngine 0.5.4 when ``import MinkowskiEngine`` works. Its layers have
  the same names, arguments and parameter layouts as ours, so a network built from
  ``backend.nn`` loads the same state dict; thin adapters convert our :class:`SparseTensor`
  to and from ``ME.SparseTensor``. Build it with ``scripts/install_minkowski.sh`` (CPU-only,
  ~28 min; its CUDA build is broken upstream on CUDA 12+).
* ``spconv``: CUDA only (its CPU build gives wrong results with more than one thread and
  crashes in backward). Tensor conversion only: spconv layers have other names and weight
  layouts, so ``backend.nn`` is None.

``get_backend("auto")`` reads ``RECON_SPARSE_BACKEND`` when set, else takes ``minkowski`` when
it imports (and supports the device), else ``torch``. Asking for a missing backend by name
raises :class:`SparseBackendUnavailable` with the install hint; nothing falls back silently.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from recon.sparse.tensor import SparseTensor

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "INSTALL_HINT",
    "SparseBackend",
    "SparseBackendUnavailable",
    "available_backends",
    "get_backend",
    "to_minkowski",
    "from_minkowski",
]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "minkowski", "spconv")
ENV_VAR = "RECON_SPARSE_BACKEND"
INSTALL_HINT = (
    "build MinkowskiEngine 0.5.4 (CPU-only, ~28 min) with `bash scripts/install_minkowski.sh`, "
    "or use backend='torch' (exact, always available)"
)


class SparseBackendUnavailable(ImportError):
    """A sparse backend was requested by name but cannot be used here."""


@dataclass(frozen=True)
class SparseBackend:
    """A usable sparse backend."""

    name: str
    """One of :data:`BACKENDS`."""
    nn: Optional[ModuleType]
    """Namespace with the ``Minkowski*`` layer classes and ``cat`` (None: conversion only)."""
    to_native: Callable[[SparseTensor], Any]
    """Our SparseTensor -> the backend's tensor type."""
    from_native: Callable[..., SparseTensor]
    """The backend's tensor -> our SparseTensor; ``like=`` restores that tensor's row order."""


@functools.lru_cache(maxsize=None)
def _import(name: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    """(module, None) or (None, reason)."""
    try:
        if name == "minkowski":
            import MinkowskiEngine as module  # type: ignore[import-not-found]
        elif name == "spconv":
            import spconv.pytorch as module  # type: ignore[import-not-found]
        else:
            from recon.sparse import nn as module
        return module, None
    except Exception as err:  # ImportError, or e.g. AttributeError from an unpatched ME on 3.10+
        return None, f"{type(err).__name__}: {err}"


def _minkowski_cuda(me: ModuleType) -> bool:
    fn = getattr(me, "is_cuda_available", None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:
        return False


def available_backends(device: Union[str, torch.device, None] = None) -> Dict[str, Optional[str]]:
    """``{name: None}`` for each backend usable on ``device`` (default CPU), else ``{name: reason}``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out: Dict[str, Optional[str]] = {}
    for name in BACKENDS:
        module, reason = _import(name)
        if module is not None and name == "minkowski" and dev.type == "cuda" and not _minkowski_cuda(module):
            reason = "this MinkowskiEngine build has no CUDA support (its CUDA build is broken on CUDA 12+)"
        if module is not None and name == "spconv" and dev.type != "cuda":
            reason = "spconv is CUDA-only here (its CPU build is wrong with >1 thread and crashes in backward)"
        out[name] = reason
    return out


def get_backend(
    name: Optional[str] = "auto",
    device: Union[str, torch.device, None] = None,
) -> SparseBackend:
    """The backend ``name`` (``"auto"``, ``"torch"``, ``"minkowski"`` or ``"spconv"``) for ``device``.

    ``"auto"``/None: ``$RECON_SPARSE_BACKEND`` when set, else minkowski when usable, else torch.
    Raises ValueError for an unknown name and :class:`SparseBackendUnavailable` (with the install
    hint) when a named backend cannot be used.
    """
    source = "argument"
    if name is None or name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        name, source = (env, f"${ENV_VAR}") if env else ("auto", "argument")
    name = name.lower()
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"sparse backend ({source}): expected one of {('auto',) + BACKENDS}, given {name!r}")
    status = available_backends(device)
    if name == "auto":
        name = "minkowski" if status["minkowski"] is None else "torch"
        logger.debug("sparse backend auto -> %s", name)
    elif status[name] is not None:
        hint = INSTALL_HINT if name == "minkowski" else "use backend='torch' (exact, always available)"
        raise SparseBackendUnavailable(f"sparse backend {name!r} ({source}) is unavailable: {status[name]}; {hint}")
    module, _ = _import(name)
    if name == "torch":
        return SparseBackend("torch", module, _identity, _identity_from)
    if name == "minkowski":
        return SparseBackend("minkowski", module, to_minkowski, from_minkowski)
    return SparseBackend("spconv", None, to_spconv, from_spconv)


def _identity(x: SparseTensor) -> SparseTensor:
    return x


def _identity_from(x: SparseTensor, like: Optional[SparseTensor] = None) -> SparseTensor:
    return x


def _reorder_like(features: torch.Tensor, coordinates: torch.Tensor, tensor_stride, like: Optional[SparseTensor]):
    """A SparseTensor from (features [N, C], coordinates [N, 1 + D]); on ``like``'s coordinate set
    and in its row order when the two sets are equal."""
    if like is None:
        return SparseTensor(features, coordinates.to(features.device), tensor_stride)
    if list(tensor_stride) != like.tensor_stride or coordinates.shape[0] != len(like):
        return SparseTensor(features, coordinates.to(features.device), tensor_stride)
    rows = like.coordinate_manager.lookup(like.coordinate_map_key, coordinates.to(like.device).long())
    if bool((rows < 0).any()):
        return SparseTensor(features, coordinates.to(features.device), tensor_stride)
    perm = torch.empty_like(rows)
    perm[rows] = torch.arange(rows.numel(), device=rows.device)
    return like._like(features.index_select(0, perm))


def to_minkowski(x: SparseTensor):
    """``ME.SparseTensor`` with the same features, coordinates and tensor stride."""
    me, reason = _import("minkowski")
    if me is None:
        raise SparseBackendUnavailable(f"MinkowskiEngine is unavailable: {reason}; {INSTALL_HINT}")
    return me.SparseTensor(features=x.F, coordinates=x.C.int().contiguous(), tensor_stride=x.tensor_stride)


def from_minkowski(x, like: Optional[SparseTensor] = None) -> SparseTensor:
    """Our SparseTensor from an ``ME.SparseTensor``; rows follow ``like`` when it has the same
    coordinates (MinkowskiEngine may reorder rows, e.g. on CUDA)."""
    return _reorder_like(x.F, x.C, list(x.tensor_stride), like)


def to_spconv(x: SparseTensor):
    """``spconv.pytorch.SparseConvTensor`` (indices = coordinates / tensor stride, non-negative)."""
    spconv, reason = _import("spconv")
    if spconv is None:
        raise SparseBackendUnavailable(f"spconv is unavailable: {reason}")
    c = x.C.long()
    ts = torch.tensor(x.tensor_stride, device=c.device)
    idx = torch.cat([c[:, :1], torch.div(c[:, 1:], ts, rounding_mode="floor")], dim=1)
    if bool((idx < 0).any()):
        raise ValueError("coordinates: expected non-negative values for spconv, given negative ones")
    shape = (idx[:, 1:].max(0).values + 1).tolist()
    return spconv.SparseConvTensor(x.F, idx.int().contiguous(), shape, int(idx[:, 0].max()) + 1)


def from_spconv(x, tensor_stride=1, like: Optional[SparseTensor] = None) -> SparseTensor:
    """Our SparseTensor from a ``SparseConvTensor`` whose indices are at ``tensor_stride``."""
    idx = x.indices.long()
    D = idx.shape[1] - 1
    ts = [tensor_stride] * D if isinstance(tensor_stride, int) else list(tensor_stride)
    coords = torch.cat([idx[:, :1], idx[:, 1:] * torch.tensor(ts, device=idx.device)], dim=1)
    return _reorder_like(x.features, coords, ts, like)
