"""Voxelisation and batching with MinkowskiEngine 0.5.4 semantics (``ME.utils``).

* :func:`sparse_quantize` floors points to a grid and keeps the first point of each voxel;
* :func:`batched_coordinates` stacks per-sample coordinates with a leading batch index;
* :func:`sparse_collate` does the same for coordinates and features (and labels).

Inputs may be numpy arrays or torch tensors; outputs are torch tensors (coordinates int32).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from recon.sparse.tensor import unique_rows

__all__ = ["sparse_quantize", "batched_coordinates", "sparse_collate"]

ArrayLike = Union[np.ndarray, Tensor]


def _to_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Tensor):
        return x
    raise ValueError(f"{name}: expected a numpy array or torch tensor, given {type(x).__name__}")


def sparse_quantize(
    coordinates: ArrayLike,  # [N, D] float or int
    features: Optional[ArrayLike] = None,  # [N, C]
    labels: Optional[ArrayLike] = None,  # [N] int
    ignore_label: int = -100,
    return_index: bool = False,
    return_inverse: bool = False,
    quantization_size: Union[float, Sequence[float]] = 1.0,
):
    """Voxelise points: ``floor(coordinates / quantization_size)``, one row per occupied voxel.

    Args:
        coordinates: [N, D] points (float or int).
        features: optional [N, C] features; the first point's features are kept per voxel.
        labels: optional [N] integer labels; a voxel whose points disagree gets ``ignore_label``.
        ignore_label: label of voxels with conflicting labels.
        return_index: also return ``unique_map`` [U]: ``points[unique_map]`` are the kept points.
        return_inverse: also return ``inverse_map`` [N] with
            ``voxel_coordinates[inverse_map] == floor(coordinates / quantization_size)``;
            requires ``return_index`` (as in MinkowskiEngine).
        quantization_size: voxel edge length, a scalar or D values.

    Returns:
        ``coordinates [U, D] int32``, then ``features [U, C]`` if given, ``labels [U]`` if given,
        ``unique_map [U]`` if ``return_index``, ``inverse_map [N]`` if ``return_inverse`` — a
        single tensor when only the coordinates are returned. Voxels are ordered by their first
        point. Unlike MinkowskiEngine 0.5.4 (which truncates toward zero for
        ``quantization_size != 1``), negative coordinates are always floored.
    """
    coords = _to_tensor(coordinates, "coordinates")
    if coords.ndim != 2:
        raise ValueError(f"coordinates: expected [N, D], given {tuple(coords.shape)}")
    n, D = coords.shape
    if return_inverse and not return_index:
        raise ValueError("return_inverse: expected return_index=True with it (MinkowskiEngine semantics)")
    feats = _to_tensor(features, "features") if features is not None else None
    if feats is not None and (feats.ndim != 2 or feats.shape[0] != n):
        raise ValueError(f"features: expected [{n}, C], given {tuple(feats.shape)}")
    labs = _to_tensor(labels, "labels") if labels is not None else None
    if labs is not None and (labs.ndim != 1 or labs.shape[0] != n):
        raise ValueError(f"labels: expected [{n}], given {tuple(labs.shape)}")

    q = torch.as_tensor(quantization_size, dtype=torch.float64, device=coords.device).reshape(-1)
    if q.numel() not in (1, D) or bool((q <= 0).any()):
        raise ValueError(f"quantization_size: expected a positive scalar or {D} values, given {quantization_size!r}")
    if coords.dtype.is_floating_point or bool((q != 1).any()):
        discrete = torch.floor(coords.double() / q)
    else:
        discrete = coords
    discrete = discrete.to(torch.int32)

    unique_map, inverse_map = unique_rows(discrete)
    out = [discrete[unique_map]]
    if feats is not None:
        out.append(feats[unique_map])
    if labs is not None:
        labs = labs.long()
        u = unique_map.numel()
        lo = torch.full((u,), torch.iinfo(torch.long).max, dtype=torch.long, device=labs.device)
        hi = torch.full((u,), torch.iinfo(torch.long).min, dtype=torch.long, device=labs.device)
        lo = lo.scatter_reduce(0, inverse_map, labs, reduce="amin")
        hi = hi.scatter_reduce(0, inverse_map, labs, reduce="amax")
        out.append(torch.where(lo == hi, lo, torch.full_like(lo, ignore_label)))
    if return_index:
        out.append(unique_map)
    if return_inverse:
        out.append(inverse_map)
    return out[0] if len(out) == 1 else tuple(out)


def batched_coordinates(
    coords: Sequence[ArrayLike],  # B x [N_b, D]
    dtype: torch.dtype = torch.int32,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:  # [sum N_b, 1 + D]
    """Stack per-sample coordinates [N_b, D] into [sum N_b, 1 + D] with the batch index first.

    Float coordinates are floored (MinkowskiEngine semantics).
    """
    if not isinstance(coords, (list, tuple)) or len(coords) == 0:
        raise ValueError(f"coords: expected a non-empty list of [N_b, D] arrays, given {type(coords).__name__}")
    tensors = [_to_tensor(c, f"coords[{i}]") for i, c in enumerate(coords)]
    D = tensors[0].shape[1] if tensors[0].ndim == 2 else -1
    for i, c in enumerate(tensors):
        if c.ndim != 2 or c.shape[1] != D:
            raise ValueError(f"coords[{i}]: expected [N, {D}], given {tuple(c.shape)}")
    device = device if device is not None else tensors[0].device
    rows = []
    for b, c in enumerate(tensors):
        c = torch.floor(c) if c.dtype.is_floating_point else c
        batch = torch.full((c.shape[0], 1), b, dtype=dtype, device=device)
        rows.append(torch.cat([batch, c.to(device=device, dtype=dtype)], dim=1))
    return torch.cat(rows, dim=0)


def sparse_collate(
    coords: Sequence[ArrayLike],  # B x [N_b, D]
    feats: Sequence[ArrayLike],  # B x [N_b, C]
    labels: Optional[Sequence[ArrayLike]] = None,  # B x [N_b, ...]
    dtype: torch.dtype = torch.int32,
    device: Optional[Union[str, torch.device]] = None,
):
    """Collate a batch: ``(coordinates [N, 1 + D], features [N, C])``, plus ``labels [N, ...]``
    when labels are given (MinkowskiEngine's ``sparse_collate``)."""
    if len(coords) != len(feats):
        raise ValueError(f"feats: expected {len(coords)} arrays (one per coords), given {len(feats)}")
    bcoords = batched_coordinates(coords, dtype=dtype, device=device)
    fs = [_to_tensor(f, f"feats[{i}]") for i, f in enumerate(feats)]
    for i, (c, f) in enumerate(zip(coords, fs)):
        if f.shape[0] != len(c):
            raise ValueError(f"feats[{i}]: expected {len(c)} rows, given {f.shape[0]}")
    bfeats = torch.cat([f.to(bcoords.device) for f in fs], dim=0)
    if labels is None:
        return bcoords, bfeats
    if len(labels) != len(coords):
        raise ValueError(f"labels: expected {len(coords)} arrays (one per coords), given {len(labels)}")
    blabels = torch.cat([_to_tensor(l, f"labels[{i}]").to(bcoords.device) for i, l in enumerate(labels)], dim=0)
    return bcoords, bfeats, blabels
