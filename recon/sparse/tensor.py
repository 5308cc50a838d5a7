"""Sparse tensors and their coordinate manager, with MinkowskiEngine 0.5.4 semantics.

A :class:`SparseTensor` is a feature matrix ``F`` [N, C] whose rows live at integer
coordinates ``C`` [N, 1 + D] (batch index first, then D spatial coordinates, at the original
resolution: a tensor at tensor stride 4 has coordinates that are multiples of 4). The
coordinates are owned by a :class:`CoordinateManager`, shared by every tensor a network derives
from one input, which hashes each coordinate set once and caches

* coordinate sets, each under a :class:`CoordinateMapKey` (tensor stride + id);
* downsampled sets (``stride``) and the finer set each one came from (``transposed_stride``);
* kernel maps (pairs ``(in_row, out_row)`` per kernel offset), keyed by
  ``(in_key, out_key, kernel_size, dilation, region, is_transpose, is_pool)``.

Hashing: a coordinate set is linearised into one int64 key per row inside its own bounding box
(mixed radix over batch and spatial axes), sorted once; a lookup is ``torch.searchsorted`` plus
an equality check. No Python dict per point, and the same code runs on CPU and CUDA.

Kernel offsets follow MinkowskiEngine (``src/kernel_region.hpp``): per axis, an odd kernel size
K covers ``-(K // 2) .. K // 2``, an even one ``0 .. K - 1``; offsets are multiplied by
``tensor_stride * dilation``; the kernel index runs with the *first* spatial axis fastest.
A convolution computes ``out[u] = sum_k in[u + offset_k] @ W[k]`` for every output coordinate u.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "CoordinateMapKey",
    "CoordinateManager",
    "KernelMap",
    "SparseTensor",
    "kernel_offsets",
]

logger = logging.getLogger(__name__)

IntOrSeq = Union[int, Sequence[int]]
REGION_TYPES = ("hypercube",)
_MAX_KEY = 2**62


def _as_tuple(value: IntOrSeq, dimension: int, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """``value`` as a D-tuple of ints >= ``minimum``; ValueError otherwise."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, int) and not isinstance(value, bool):
        out = (int(value),) * dimension
    else:
        try:
            out = tuple(int(v) for v in value)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"{name}: expected an int or {dimension} ints, given {value!r}") from None
        if len(out) != dimension:
            raise ValueError(f"{name}: expected an int or {dimension} ints, given {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{name}: expected values >= {minimum}, given {value!r}")
    return out


def kernel_offsets(
    kernel_size: IntOrSeq,
    dimension: int,
    region_type: str = "hypercube",
) -> Tensor:  # [K, D] int64
    """Kernel offsets in units of ``tensor_stride * dilation``, in MinkowskiEngine's order.

    Odd sizes are centred (``-(K // 2) .. K // 2``), even sizes start at 0 (``0 .. K - 1``);
    the first axis varies fastest, so ``k = o_0 + K_0 * (o_1 + K_1 * o_2 ...)`` with ``o_i`` the
    0-based position along axis i.
    """
    if region_type not in REGION_TYPES:
        raise ValueError(f"region_type: expected one of {REGION_TYPES}, given {region_type!r}")
    ks = _as_tuple(kernel_size, dimension, "kernel_size")
    axes = [torch.arange(k) - (k // 2 if k % 2 == 1 else 0) for k in ks]
    # meshgrid over reversed axes with 'ij' makes the last grid axis (= first spatial axis) fastest
    grids = torch.meshgrid(*axes[::-1], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids[::-1]], dim=1).long()


@dataclass(frozen=True)
class CoordinateMapKey:
    """Names one coordinate set of a :class:`CoordinateManager`: its tensor stride and an id."""

    tensor_stride: Tuple[int, ...]
    """Spacing of the set's coordinates along each spatial axis (0 for the batch origin set)."""
    uid: int
    """Unique id inside the manager (sets with the same stride may differ, e.g. after pruning)."""

    def get_tensor_stride(self) -> List[int]:
        """The tensor stride as a list (MinkowskiEngine's accessor)."""
        return list(self.tensor_stride)

    def get_coordinate_size(self) -> int:
        """1 + D, the number of columns of the coordinates (MinkowskiEngine's accessor)."""
        return len(self.tensor_stride) + 1


class _CoordinateSet:
    """One set of unique integer coordinates [N, 1 + D] with a sorted-key hash for lookups."""

    def __init__(self, coordinates: Tensor):  # [N, 1 + D] int32
        self.coordinates = coordinates
        self._hash: Optional[Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = None

    def __len__(self) -> int:
        return self.coordinates.shape[0]

    def hash(self) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(lo [1+D], span [1+D], radix [1+D], sorted_keys [N], perm [N]) built once."""
        if self._hash is None:
            self._hash = _linear_hash(self.coordinates)
        return self._hash

    def has_duplicates(self) -> bool:
        keys = self.hash()[3]
        return bool((keys[1:] == keys[:-1]).any()) if keys.numel() > 1 else False

    def lookup(self, query: Tensor) -> Tensor:  # [M, 1 + D] int64 -> [M] int64, -1 if absent
        """Row index of each query coordinate in this set, -1 where it is absent."""
        lo, span, radix, keys, perm = self.hash()
        if keys.numel() == 0:
            return torch.full(query.shape[:1], -1, dtype=torch.long, device=query.device)
        rel = query - lo
        inside = ((rel >= 0) & (rel < span)).all(dim=1)
        rel = torch.minimum(rel.clamp(min=0), span - 1)  # keeps out-of-box keys from overflowing
        q = (rel * radix).sum(dim=1)
        pos = torch.searchsorted(keys, q).clamp(max=keys.numel() - 1)
        found = inside & (keys[pos] == q)
        return torch.where(found, perm[pos], torch.full_like(pos, -1))


def _linear_hash(coordinates: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Mixed-radix int64 keys of integer rows inside their bounding box, sorted."""
    c = coordinates.long()
    if c.shape[0] == 0:
        z = torch.zeros(c.shape[1], dtype=torch.long, device=c.device)
        empty = torch.zeros(0, dtype=torch.long, device=c.device)
        return z, z + 1, z, empty, empty
    lo = c.min(dim=0).values
    span = c.max(dim=0).values - lo + 1
    spans = span.tolist()
    if math.prod(spans) >= _MAX_KEY:
        raise ValueError(
            f"coordinates: bounding box {spans} (batch, *spatial) is too large to hash into int64 "
            f"(expected a product of extents < 2**62)"
        )
    radix = [1] * len(spans)
    for i in range(len(spans) - 2, -1, -1):
        radix[i] = radix[i + 1] * spans[i + 1]
    radix_t = torch.tensor(radix, dtype=torch.long, device=c.device)
    keys = ((c - lo) * radix_t).sum(dim=1)
    sorted_keys, perm = torch.sort(keys)
    return lo, span, radix_t, sorted_keys, perm


def unique_rows(coordinates: Tensor) -> Tuple[Tensor, Tensor]:  # [N, M] int -> ([U], [N])
    """Unique rows of an integer matrix, ordered by first occurrence.

    Returns ``(unique_map [U], inverse_map [N])`` with ``coordinates[unique_map]`` the unique
    rows (each the first occurrence) and ``coordinates[unique_map][inverse_map] == coordinates``.
    """
    n = coordinates.shape[0]
    device = coordinates.device
    if n == 0:
        e = torch.zeros(0, dtype=torch.long, device=device)
        return e, e
    _, _, _, sorted_keys, perm = _linear_hash(coordinates)
    new_group = torch.ones(n, dtype=torch.bool, device=device)
    new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group = torch.cumsum(new_group.long(), dim=0) - 1  # group id of each sorted row
    num_groups = int(group[-1].item()) + 1
    first = torch.full((num_groups,), n, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, group, perm, reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_groups, device=device)
    inverse = torch.empty(n, dtype=torch.long, device=device)
    inverse[perm] = rank[group]
    return first[order], inverse


@dataclass(frozen=True)
class KernelMap:
    """Pairs ``(in_row, out_row)`` grouped by kernel offset: ``out[o] += in[i] @ W[k]``.

    Offset k owns ``in_rows[ptr[k]:ptr[k+1]]`` and ``out_rows[ptr[k]:ptr[k+1]]``.
    """

    in_rows: Tensor  # [M] int64
    out_rows: Tensor  # [M] int64
    ptr: Tuple[int, ...]
    """K + 1 boundaries of the per-offset groups (Python ints: no device sync when used)."""
    num_in: int
    num_out: int
    identity: int = -1
    """Kernel index whose pairs are exactly ``(r, r)`` for every row, or -1."""

    @property
    def kernel_volume(self) -> int:
        return len(self.ptr) - 1

    def pairs(self, k: int) -> Tuple[Tensor, Tensor]:
        """(in_rows [M_k], out_rows [M_k]) of kernel offset k."""
        s, e = self.ptr[k], self.ptr[k + 1]
        return self.in_rows[s:e], self.out_rows[s:e]

    def transposed(self) -> "KernelMap":
        """The same pairs with inputs and outputs swapped."""
        return KernelMap(self.out_rows, self.in_rows, self.ptr, self.num_out, self.num_in, self.identity)

    def to(self, device: Union[str, torch.device]) -> "KernelMap":
        return KernelMap(
            self.in_rows.to(device), self.out_rows.to(device), self.ptr, self.num_in, self.num_out,
            self.identity,
        )  # fmt: skip


class CoordinateManager:
    """Owns the coordinate sets and kernel maps shared by the tensors of one network pass.

    Args:
        D: spatial dimension.
    """

    def __init__(self, D: int):
        if not isinstance(D, int) or D < 1:
            raise ValueError(f"D: expected a positive int, given {D!r}")
        self.D = D
        self._sets: dict[CoordinateMapKey, _CoordinateSet] = {}
        self._next_uid = 0
        self._strided: dict[Tuple[CoordinateMapKey, Tuple[int, ...]], CoordinateMapKey] = {}
        self._finer: dict[Tuple[CoordinateMapKey, Tuple[int, ...]], CoordinateMapKey] = {}
        self._regions: dict[tuple, CoordinateMapKey] = {}
        self._origins: dict[CoordinateMapKey, Tuple[CoordinateMapKey, Tensor]] = {}
        self._kernel_maps: dict[tuple, KernelMap] = {}
        self.kernel_map_builds = 0
        """How many kernel maps were computed (cache misses); for tests and profiling."""

    # ---------------------------------------------------------------- coordinate sets
    def __repr__(self) -> str:
        sets = ", ".join(f"{k.tensor_stride}#{k.uid}:{len(s)}" for k, s in self._sets.items())
        return f"CoordinateManager(D={self.D}, sets=[{sets}], kernel_maps={len(self._kernel_maps)})"

    def _add(self, coordinates: Tensor, tensor_stride: Tuple[int, ...]) -> CoordinateMapKey:
        key = CoordinateMapKey(tuple(tensor_stride), self._next_uid)
        self._next_uid += 1
        self._sets[key] = _CoordinateSet(coordinates.to(torch.int32).contiguous())
        return key

    def _set(self, key: CoordinateMapKey) -> _CoordinateSet:
        try:
            return self._sets[key]
        except KeyError:
            raise ValueError(f"coordinate_map_key: {key} is not in this CoordinateManager") from None

    def insert(
        self,
        coordinates: Tensor,  # [N, 1 + D] int, batch index first, unique rows
        tensor_stride: IntOrSeq = 1,
    ) -> CoordinateMapKey:
        """Register a coordinate set and return its key. Rows must be unique."""
        if not isinstance(coordinates, Tensor) or coordinates.ndim != 2 or coordinates.shape[1] != self.D + 1:
            shape = tuple(coordinates.shape) if isinstance(coordinates, Tensor) else type(coordinates).__name__
            raise ValueError(f"coordinates: expected [N, {self.D + 1}] (batch index first), given {shape}")
        if coordinates.dtype.is_floating_point or coordinates.dtype.is_complex or coordinates.dtype == torch.bool:
            raise ValueError(
                f"coordinates: expected an integer dtype (int32/int64), given {coordinates.dtype}; "
                "quantize float points with recon.sparse.sparse_quantize first"
            )
        ts = _as_tuple(tensor_stride, self.D, "tensor_stride")
        key = self._add(coordinates, ts)
        s = self._sets[key]
        if s.has_duplicates():
            del self._sets[key]
            raise ValueError(
                "coordinates: expected unique rows, given duplicates; merge them with "
                "recon.sparse.sparse_quantize(..., return_index=True) first"
            )
        return key

    def get_coordinates(self, key: CoordinateMapKey) -> Tensor:  # [N, 1 + D] int32
        """The coordinates of a set."""
        return self._set(key).coordinates

    def size(self, key: CoordinateMapKey) -> int:
        """Number of coordinates in a set."""
        return len(self._set(key))

    def lookup(self, key: CoordinateMapKey, query: Tensor) -> Tensor:  # [M, 1 + D] -> [M]
        """Row index in set ``key`` of each query coordinate, -1 where absent."""
        return self._set(key).lookup(query.long())

    def stride(self, key: CoordinateMapKey, stride: IntOrSeq) -> CoordinateMapKey:
        """The set downsampled by ``stride``: ``floor(c / (ts * stride)) * ts * stride`` (cached)."""
        s = _as_tuple(stride, self.D, "stride")
        if all(v == 1 for v in s):
            return key
        cache = (key, s)
        if cache not in self._strided:
            src = self._set(key)
            ts_out = tuple(a * b for a, b in zip(key.tensor_stride, s))
            step = torch.tensor((1,) + ts_out, dtype=torch.long, device=src.coordinates.device)
            c = torch.div(src.coordinates.long(), step, rounding_mode="floor") * step
            unique_map, _ = unique_rows(c)
            out = self._add(c[unique_map], ts_out)
            self._strided[cache] = out
            self._finer[(out, s)] = key
        return self._strided[cache]

    def transposed_stride(self, key: CoordinateMapKey, stride: IntOrSeq) -> CoordinateMapKey:
        """The cached finer set that :meth:`stride` turned into ``key``: the output set of a
        (non-generative) transposed convolution. ValueError when no such set was cached."""
        s = _as_tuple(stride, self.D, "stride")
        if all(v == 1 for v in s):
            return key
        try:
            return self._finer[(key, s)]
        except KeyError:
            raise ValueError(
                f"transposed stride {s}: no finer coordinate set at tensor stride "
                f"{tuple(a // b for a, b in zip(key.tensor_stride, s))} was downsampled into this "
                f"set (tensor stride {key.tensor_stride}); use MinkowskiGenerativeConvolutionTranspose "
                "to generate new coordinates, or give the output coordinates explicitly"
            ) from None

    def stride_region(
        self,
        key: CoordinateMapKey,
        kernel_size: IntOrSeq,
        dilation: IntOrSeq = 1,
        up_stride: IntOrSeq = 1,
    ) -> CoordinateMapKey:
        """All coordinates a kernel placed on each input reaches, at tensor stride
        ``ts / up_stride``: ``c + offset_k * (ts / up_stride) * dilation`` (cached)."""
        ks = _as_tuple(kernel_size, self.D, "kernel_size")
        dil = _as_tuple(dilation, self.D, "dilation")
        up = _as_tuple(up_stride, self.D, "stride")
        if any(t % u for t, u in zip(key.tensor_stride, up)):
            raise ValueError(
                f"stride: expected to divide the input tensor stride {key.tensor_stride}, given {up}"
            )
        cache = (key, ks, dil, up)
        if cache not in self._regions:
            src = self._set(key)
            ts_out = tuple(t // u for t, u in zip(key.tensor_stride, up))
            device = src.coordinates.device
            off = kernel_offsets(ks, self.D).to(device) * torch.tensor(
                [t * d for t, d in zip(ts_out, dil)], dtype=torch.long, device=device
            )
            off = torch.cat([torch.zeros_like(off[:, :1]), off], dim=1)  # [K, 1 + D]
            c = (src.coordinates.long()[None] + off[:, None]).reshape(-1, self.D + 1)
            unique_map, _ = unique_rows(c)
            self._regions[cache] = self._add(c[unique_map], ts_out)
        return self._regions[cache]

    def prune(self, key: CoordinateMapKey, keep: Tensor) -> CoordinateMapKey:  # keep: [N] bool
        """A new set made of the rows of ``key`` where ``keep`` is True (same tensor stride)."""
        src = self._set(key)
        return self._add(src.coordinates[keep], key.tensor_stride)

    def origin(self, key: CoordinateMapKey) -> Tuple[CoordinateMapKey, Tensor]:
        """The batch-origin set (one row ``[b, 0, ..., 0]`` per batch present, sorted, tensor
        stride 0) and, for each row of ``key``, its row in that set [N] int64."""
        if key not in self._origins:
            batch = self._set(key).coordinates[:, 0].long()
            present, row = torch.unique(batch, return_inverse=True)
            coords = torch.zeros(present.numel(), self.D + 1, dtype=torch.long, device=batch.device)
            coords[:, 0] = present
            okey = self._add(coords, (0,) * self.D)
            self._origins[key] = (okey, row)
        return self._origins[key]

    # ---------------------------------------------------------------- kernel maps
    def kernel_map(
        self,
        in_key: CoordinateMapKey,
        out_key: CoordinateMapKey,
        kernel_size: IntOrSeq,
        dilation: IntOrSeq = 1,
        region_type: str = "hypercube",
        is_transpose: bool = False,
        is_pool: bool = False,
    ) -> KernelMap:
        """Pairs ``(in_row, out_row)`` per kernel offset, cached.

        Forward (``is_transpose=False``): for each output coordinate u and offset k, the input row
        at ``u + offset_k * in_tensor_stride * dilation``. Transposed: the forward map from
        ``out_key`` to ``in_key`` (offsets at the output's finer tensor stride), swapped; a cached
        forward map is reused. Pooling whose kernel size equals its stride maps every input to
        its floored output coordinate (MinkowskiEngine's stride map).
        """
        ks = _as_tuple(kernel_size, self.D, "kernel_size")
        dil = _as_tuple(dilation, self.D, "dilation")
        if region_type not in REGION_TYPES:
            raise ValueError(f"region_type: expected one of {REGION_TYPES}, given {region_type!r}")
        cache = (in_key, out_key, ks, dil, region_type, bool(is_transpose), bool(is_pool))
        kmap = self._kernel_maps.get(cache)
        if kmap is not None:
            return kmap
        if is_transpose:
            fwd = (out_key, in_key, ks, dil, region_type, False, bool(is_pool))
            if fwd not in self._kernel_maps:
                self._kernel_maps[fwd] = self._build_kernel_map(out_key, in_key, ks, dil, is_pool)
            kmap = self._kernel_maps[fwd].transposed()
        else:
            kmap = self._build_kernel_map(in_key, out_key, ks, dil, is_pool)
        self._kernel_maps[cache] = kmap
        return kmap

    def _build_kernel_map(
        self,
        in_key: CoordinateMapKey,
        out_key: CoordinateMapKey,
        ks: Tuple[int, ...],
        dil: Tuple[int, ...],
        is_pool: bool,
    ) -> KernelMap:
        self.kernel_map_builds += 1
        src, dst = self._set(in_key), self._set(out_key)
        device = src.coordinates.device
        ts_in = in_key.tensor_stride
        stride = tuple(o // i if i else 1 for o, i in zip(out_key.tensor_stride, ts_in))
        if is_pool and ks == stride and any(s > 1 for s in stride) and dil == (1,) * self.D:
            return self._build_stride_map(src, dst, in_key, out_key, ks)
        offsets = kernel_offsets(ks, self.D)  # [K, D], on the CPU
        K = offsets.shape[0]
        is_zero = (offsets == 0).all(dim=1).tolist()
        scale = torch.tensor([t * d for t, d in zip(ts_in, dil)], dtype=torch.long)
        off = torch.cat([torch.zeros_like(offsets[:, :1]), offsets * scale], dim=1).to(device)  # [K, 1 + D]
        out_c = dst.coordinates.long()
        ins, outs, counts = [], [], []
        identity = -1
        for k in range(K):
            if in_key == out_key and is_zero[k]:
                identity = k
                rows = torch.arange(len(dst), device=device)
                ins.append(rows), outs.append(rows), counts.append(len(dst))
                continue
            found_rows = src.lookup(out_c + off[k])
            hit = torch.nonzero(found_rows >= 0, as_tuple=True)[0]
            ins.append(found_rows[hit]), outs.append(hit), counts.append(hit.numel())
        ptr = [0]
        for n in counts:
            ptr.append(ptr[-1] + int(n))
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return KernelMap(
            torch.cat(ins) if ins else empty, torch.cat(outs) if outs else empty, tuple(ptr),
            len(src), len(dst), identity,
        )  # fmt: skip

    def _build_stride_map(
        self,
        src: _CoordinateSet,
        dst: _CoordinateSet,
        in_key: CoordinateMapKey,
        out_key: CoordinateMapKey,
        ks: Tuple[int, ...],
    ) -> KernelMap:
        device = src.coordinates.device
        c = src.coordinates.long()
        ts_out = torch.tensor((1,) + out_key.tensor_stride, dtype=torch.long, device=device)
        ts_in = torch.tensor(in_key.tensor_stride, dtype=torch.long, device=device)
        parent = torch.div(c, ts_out, rounding_mode="floor") * ts_out
        out_rows = dst.lookup(parent)
        hit = torch.nonzero(out_rows >= 0, as_tuple=True)[0]
        pos = torch.div(c[hit, 1:] - parent[hit, 1:], ts_in, rounding_mode="floor")  # [M, D]
        radix = torch.tensor([math.prod(ks[:i]) for i in range(self.D)], dtype=torch.long, device=device)
        k = (pos * radix).sum(dim=1)
        order = torch.argsort(k, stable=True)
        counts = torch.bincount(k, minlength=math.prod(ks)).tolist()
        ptr = [0]
        for n in counts:
            ptr.append(ptr[-1] + n)
        return KernelMap(hit[order], out_rows[hit][order], tuple(ptr), len(src), len(dst), -1)


def _check_features(features: Tensor, n: Optional[int], device: Optional[torch.device]) -> None:
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features: expected [N, C], given {shape}")
    if n is not None and features.shape[0] != n:
        raise ValueError(f"features: expected {n} rows (one per coordinate), given {features.shape[0]}")
    if device is not None and features.device != device:
        raise ValueError(f"features: expected device {device} (that of the coordinates), given {features.device}")


class SparseTensor:
    """Features at sparse integer coordinates (MinkowskiEngine's ``SparseTensor``).

    Args:
        features: [N, C] features, one row per coordinate.
        coordinates: [N, 1 + D] integer coordinates, batch index first, unique rows; at tensor
            stride s they are multiples of s. Omit when ``coordinate_map_key`` is given.
        tensor_stride: spacing of the coordinates (int or D ints).
        coordinate_map_key: key of a set already in ``coordinate_manager``.
        coordinate_manager: the manager to share (a new one when None).
    """

    def __init__(
        self,
        features: Tensor,  # [N, C]
        coordinates: Optional[Tensor] = None,  # [N, 1 + D] int
        tensor_stride: IntOrSeq = 1,
        coordinate_map_key: Optional[CoordinateMapKey] = None,
        coordinate_manager: Optional[CoordinateManager] = None,
    ):
        if coordinate_map_key is not None:
            if coordinate_manager is None:
                raise ValueError("coordinate_manager: expected the manager owning coordinate_map_key, given None")
            if coordinates is not None:
                raise ValueError("coordinates: expected None when coordinate_map_key is given")
            coords = coordinate_manager.get_coordinates(coordinate_map_key)
            _check_features(features, coords.shape[0], coords.device)
            self._key = coordinate_map_key
            self._manager = coordinate_manager
        else:
            if coordinates is None:
                raise ValueError("coordinates: expected [N, 1 + D] int coordinates or a coordinate_map_key, given None")
            if not isinstance(coordinates, Tensor) or coordinates.ndim != 2 or coordinates.shape[1] < 2:
                shape = tuple(coordinates.shape) if isinstance(coordinates, Tensor) else type(coordinates).__name__
                raise ValueError(f"coordinates: expected [N, 1 + D] (batch index first, D >= 1), given {shape}")
            _check_features(features, coordinates.shape[0], coordinates.device)
            D = coordinates.shape[1] - 1
            if coordinate_manager is None:
                coordinate_manager = CoordinateManager(D)
            elif coordinate_manager.D != D:
                raise ValueError(f"coordinates: expected {coordinate_manager.D + 1} columns (manager D), given {D + 1}")
            self._key = coordinate_manager.insert(coordinates, tensor_stride)
            self._manager = coordinate_manager
        self._F = features

    # ---------------------------------------------------------------- accessors
    @property
    def F(self) -> Tensor:  # [N, C]
        """Features [N, C]."""
        return self._F

    features = F

    @property
    def C(self) -> Tensor:  # [N, 1 + D] int32
        """Coordinates [N, 1 + D] int32, batch index first."""
        return self._manager.get_coordinates(self._key)

    coordinates = C

    @property
    def tensor_stride(self) -> List[int]:
        return list(self._key.tensor_stride)

    @property
    def coordinate_map_key(self) -> CoordinateMapKey:
        return self._key

    @property
    def coordinate_manager(self) -> CoordinateManager:
        return self._manager

    @property
    def D(self) -> int:
        return self._manager.D

    dimension = D

    @property
    def shape(self) -> torch.Size:
        return self._F.shape

    @property
    def device(self) -> torch.device:
        return self._F.device

    @property
    def dtype(self) -> torch.dtype:
        return self._F.dtype

    @property
    def requires_grad(self) -> bool:
        return self._F.requires_grad

    def __len__(self) -> int:
        return self._F.shape[0]

    def __repr__(self) -> str:
        return (
            f"SparseTensor(N={len(self)}, C={self._F.shape[1]}, D={self.D}, "
            f"tensor_stride={self.tensor_stride}, dtype={self.dtype}, device={self.device})"
        )

    def _like(self, features: Tensor) -> "SparseTensor":
        """A tensor with new features [N, C'] on the same coordinates."""
        return SparseTensor(features, coordinate_map_key=self._key, coordinate_manager=self._manager)

    replace_feature = _like

    def detach(self) -> "SparseTensor":
        return self._like(self._F.detach())

    def double(self) -> "SparseTensor":
        return self._like(self._F.double())

    def float(self) -> "SparseTensor":
        return self._like(self._F.float())

    def to(self, *args, **kwargs) -> "SparseTensor":
        """Move/cast the features; a device change copies the coordinates into a new manager."""
        features = self._F.to(*args, **kwargs)
        if features.device == self.device:
            return self._like(features)
        return SparseTensor(features, self.C.to(features.device), self.tensor_stride)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def cuda(self) -> "SparseTensor":
        return self.to("cuda")

    # ---------------------------------------------------------------- batches
    def decomposition_permutations(self) -> List[Tensor]:
        """Row indices of each batch 0 .. max batch index (empty for absent batches)."""
        batch = self.C[:, 0].long()
        if batch.numel() == 0:
            return []
        order = torch.argsort(batch, stable=True)
        counts = torch.bincount(batch).tolist()
        return list(torch.split(order, counts))

    @property
    def decomposed_coordinates(self) -> List[Tensor]:  # B x [N_b, D]
        """Spatial coordinates of each batch, a list of [N_b, D]."""
        c = self.C
        return [c[p, 1:] for p in self.decomposition_permutations()]

    @property
    def decomposed_features(self) -> List[Tensor]:  # B x [N_b, C]
        """Features of each batch, a list of [N_b, C]."""
        return [self._F[p] for p in self.decomposition_permutations()]

    @property
    def decomposed_coordinates_and_features(self) -> Tuple[List[Tensor], List[Tensor]]:
        perms = self.decomposition_permutations()
        c = self.C
        return [c[p, 1:] for p in perms], [self._F[p] for p in perms]

    def coordinates_at(self, batch_index: int) -> Tensor:  # [N_b, D]
        """Spatial coordinates of one batch, [N_b, D] in row order."""
        c = self.C
        return c[c[:, 0] == batch_index, 1:]

    def features_at(self, batch_index: int) -> Tensor:  # [N_b, C]
        """Features of one batch, [N_b, C] in row order."""
        return self._F[self.C[:, 0] == batch_index]

    # ---------------------------------------------------------------- dense
    def dense(
        self,
        shape: Optional[Sequence[int]] = None,
        min_coordinate: Optional[Union[int, Tensor]] = None,
        contract_stride: bool = True,
    ) -> Tuple[Tensor, Tensor, List[int]]:
        """Densify: ``(dense [B, C, *spatial], min_coordinate [D] int32, tensor_stride)``.

        Site ``dense[b, :, i_0, ...]`` holds the row at coordinate
        ``min_coordinate + i * tensor_stride`` (``i`` without the stride factor when
        ``contract_stride`` is False). With ``min_coordinate=None`` the origin is 0 and all
        coordinates must be non-negative (MinkowskiEngine 0.5.4 indexes from 0 there too, but
        returns the data minimum; we return the origin actually used). ``shape`` is
        ``(B, C, *spatial)`` (its C is replaced by the feature count); by default it just covers
        the data. Differentiable with respect to the features.
        """
        D, dev = self.D, self.device
        ts = torch.tensor(self.tensor_stride, dtype=torch.long, device=dev)
        if shape is not None:
            shape = [int(s) for s in shape]
            if len(shape) != D + 2:
                raise ValueError(f"shape: expected (B, C, *{D} spatial sizes), given {tuple(shape)}")
            shape[1] = self._F.shape[1]
        c = self.C.long()
        if min_coordinate is None or (isinstance(min_coordinate, int) and min_coordinate == 0):
            origin = torch.zeros(D, dtype=torch.long, device=dev)
            if min_coordinate is None and len(self) and bool((c[:, 1:] < 0).any()):
                raise ValueError(
                    f"coordinates: expected non-negative values without min_coordinate, given a minimum "
                    f"of {c[:, 1:].min(0).values.tolist()}; pass min_coordinate"
                )
        else:
            origin = torch.as_tensor(min_coordinate, device=dev).long().reshape(-1)
            if origin.numel() != D:
                raise ValueError(f"min_coordinate: expected {D} values, given {origin.numel()}")
        if bool((origin % ts).any()):
            raise ValueError(
                f"min_coordinate: expected multiples of the tensor stride {self.tensor_stride}, given {origin.tolist()}"
            )
        rel = c[:, 1:] - origin
        if contract_stride:
            rel = torch.div(rel, ts, rounding_mode="floor")
        if len(self) == 0:
            if shape is None:
                raise ValueError("shape: expected a shape to densify an empty tensor, given None")
            return self._F.new_zeros(shape), origin.int(), self.tensor_stride
        if shape is None:
            size = (rel.max(0).values + 1).tolist()
            shape = [int(c[:, 0].max()) + 1, self._F.shape[1], *size]
        bounds = torch.tensor(shape[2:], dtype=torch.long, device=dev)
        if bool((rel < 0).any()) or bool((rel >= bounds).any()) or int(c[:, 0].min()) < 0 or int(c[:, 0].max()) >= shape[0]:
            raise ValueError(f"shape: expected to contain every coordinate, given {tuple(shape)}")
        dense = self._F.new_zeros([shape[0], *shape[2:], shape[1]])
        dense = dense.index_put((c[:, 0], *rel.unbind(1)), self._F)
        return dense.movedim(-1, 1), origin.int(), self.tensor_stride

    # ---------------------------------------------------------------- arithmetic
    def _same_coordinates(self, other: "SparseTensor") -> bool:
        if other._manager is self._manager and other._key == self._key:
            return True
        return other.tensor_stride == self.tensor_stride and torch.equal(other.C, self.C)

    def _binary(self, other, op: Callable[[Tensor, Tensor], Tensor], reverse: bool = False):
        if isinstance(other, SparseTensor):
            if not self._same_coordinates(other):
                raise ValueError(
                    f"other: expected a SparseTensor on the same coordinates (key {self._key}, "
                    f"{len(self)} rows), given key {other._key} with {len(other)} rows"
                )
            value = other._F
        elif isinstance(other, (int, float, Tensor)):
            value = other
        else:
            return NotImplemented
        return self._like(op(value, self._F) if reverse else op(self._F, value))

    def __add__(self, other):
        return self._binary(other, operator.add)

    def __radd__(self, other):
        return self._binary(other, operator.add, reverse=True)

    def __sub__(self, other):
        return self._binary(other, operator.sub)

    def __rsub__(self, other):
        return self._binary(other, operator.sub, reverse=True)

    def __mul__(self, other):
        return self._binary(other, operator.mul)

    def __rmul__(self, other):
        return self._binary(other, operator.mul, reverse=True)

    def __truediv__(self, other):
        return self._binary(other, operator.truediv)

    def __rtruediv__(self, other):
        return self._binary(other, operator.truediv, reverse=True)

    def __neg__(self):
        return self._like(-self._F)
