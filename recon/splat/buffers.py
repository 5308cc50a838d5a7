"""Large numpy buffers for the CPU kernels, reused across calls once nothing references them.

Why: glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh
mapping, and every 4 KiB page of a fresh mapping faults on first touch. On the development VM
a fault costs ~2 µs, so the 45 MiB gradient of the SH coefficients at 250k Gaussians cost
~25-50 ms of page faults per backward pass (more than the kernel that fills it, 53 ms on one
thread), and the raster's per-intersection buffers as much again. A training step allocates
the same sizes every step, so ``empty`` hands back the buffer of an earlier step as soon as
its last user (a torch tensor made by ``torch.from_numpy``, a gradient the optimiser has
consumed and ``zero_grad(set_to_none=True)`` dropped, a view) is gone.

"Nothing references it" is CPython's reference count of the owning array: every numpy view
and every ``torch.from_numpy`` tensor (and its views) keeps the owner alive, so a buffer is
only reused when no array or tensor can still see its memory. Buffers come back with the
previous contents: callers must write every element they read (``empty`` semantics).

Small requests (< 4 MiB: malloc reuses heap memory for those anyway) are plain ``np.empty``.
At most ``MAX_IDLE_BYTES`` of unreferenced buffers are kept; the least recently used go first.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["MAX_IDLE_BYTES", "MIN_BYTES", "empty", "idle_bytes", "release_idle"]

MIN_BYTES = 1 << 22  # smaller requests: np.empty
MAX_IDLE_BYTES = 1 << 28  # unreferenced buffers kept for reuse (256 MiB)
_SLACK = 4  # a buffer serves requests down to 1 / (1 + 1/_SLACK) of its size (+25 %)

_lock = threading.Lock()
_pool: list[np.ndarray] = []  # 1-D uint8 owners, least recently used first


def _idle(i: int) -> bool:
    # references: the list slot, the argument of getrefcount: 2 when no view/tensor is alive
    return sys.getrefcount(_pool[i]) == 2


def empty(shape: tuple[int, ...] | int, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array (like ``np.empty``) whose data starts on an
    ``align``-byte boundary (64: a cache line), backed by a reused buffer when it is at least
    ``MIN_BYTES`` long."""
    dt = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"buffers.empty: expected non-negative sizes, given shape {shape}")
    if align < 1 or align & (align - 1) or align % dt.itemsize:
        raise ValueError(f"buffers.empty: align must be a power of two and a multiple of {dt.itemsize}, given {align}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    need = nbytes + align
    if nbytes < MIN_BYTES:
        return _aligned_view(np.empty(need, np.uint8), nbytes, align, dt, shape)
    with _lock:
        hit = next((i for i in range(len(_pool)) if need <= _pool[i].nbytes <= need + need // _SLACK and _idle(i)), None)
        base = np.empty(need, np.uint8) if hit is None else _pool.pop(hit)
        _pool.append(base)  # most recently used last
        out = _aligned_view(base, nbytes, align, dt, shape)
        _trim()
    return out


def _aligned_view(raw: np.ndarray, nbytes: int, align: int, dt: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes].view(dt).reshape(shape)


def _trim() -> None:
    idle = [i for i in range(len(_pool)) if _idle(i)]
    total = sum(_pool[i].nbytes for i in idle)
    drop = set()
    for i in idle:  # least recently used first
        if total <= MAX_IDLE_BYTES:
            break
        total -= _pool[i].nbytes
        drop.add(i)
    if drop:
        _pool[:] = [b for i, b in enumerate(_pool) if i not in drop]


def idle_bytes() -> int:
    """Bytes held in buffers that nothing references (kept for reuse)."""
    with _lock:
        return sum(_pool[i].nbytes for i in range(len(_pool)) if _idle(i))


def release_idle() -> None:
    """Drop every buffer that nothing references (their memory goes back to the allocator)."""
    with _lock:
        _pool[:] = [_pool[i] for i in range(len(_pool)) if not _idle(i)]
