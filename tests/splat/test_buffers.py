"""recon.splat.buffers: large buffers reused only once nothing references them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.splat import buffers

BIG = buffers.MIN_BYTES // 4 + 5  # float32 elements: just above the pooling threshold


@pytest.fixture(autouse=True)
def _clean_pool():
    buffers.release_idle()
    yield
    buffers.release_idle()


def test_small_requests_are_plain_arrays():
    a = buffers.empty((3, 5), np.int64)
    assert a.shape == (3, 5) and a.dtype == np.int64 and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    del a
    assert buffers.idle_bytes() == 0


def test_reused_after_the_last_reference_goes():
    a = buffers.empty((BIG,), np.float32)
    a[:] = 1.0
    addr = a.ctypes.data
    del a
    assert buffers.idle_bytes() >= BIG * 4
    b = buffers.empty((BIG // 3, 3), np.float32)  # a shape a little smaller: same buffer
    assert b.ctypes.data == addr and b.shape == (BIG // 3, 3) and b.flags.c_contiguous
    assert buffers.idle_bytes() == 0


@pytest.mark.parametrize("holder", ["view", "tensor", "tensor view"])
def test_not_reused_while_referenced(holder):
    a = buffers.empty((BIG,), np.float32)
    a[:] = 1.0
    addr = a.ctypes.data
    if holder == "view":
        keep = a[10:20]
    elif holder == "tensor":
        keep = torch.from_numpy(a)
    else:
        keep = torch.from_numpy(a).reshape(-1)[5:]
    del a
    b = buffers.empty((BIG,), np.float32)
    addr_b = b.ctypes.data
    assert addr_b != addr
    b[:] = 7.0
    assert float(keep[0]) == 1.0  # keep's memory was not handed out again
    del b, keep
    c = buffers.empty((BIG,), np.float32)  # both idle now: one of them comes back
    assert c.ctypes.data in (addr, addr_b)


def test_much_larger_buffers_are_not_used_for_small_requests():
    a = buffers.empty((4 * BIG,), np.float32)
    addr = a.ctypes.data
    del a
    b = buffers.empty((BIG,), np.float32)
    assert b.ctypes.data != addr


def test_idle_memory_is_capped(monkeypatch):
    monkeypatch.setattr(buffers, "MAX_IDLE_BYTES", 3 * BIG * 4)
    arrays = [buffers.empty((BIG + 1000 * i,), np.float32) for i in range(6)]
    del arrays
    buffers.empty((10,), np.float32)  # small: no trim
    assert buffers.idle_bytes() > 3 * BIG * 4
    keep = buffers.empty((BIG * 2,), np.float32)  # a new buffer trims the idle ones
    assert buffers.idle_bytes() <= 3 * BIG * 4
    del keep


def test_dtypes_shapes_and_bad_input():
    for dt in (np.float32, np.float64, np.int32, np.int64, np.uint8):
        a = buffers.empty((BIG // 2, 2), dt)
        assert a.dtype == dt and a.shape == (BIG // 2, 2) and a.ctypes.data % 64 == 0
        del a
    assert buffers.empty((7, 3), np.float32, align=4096).ctypes.data % 4096 == 0
    with pytest.raises(ValueError, match="align must be a power of two and a multiple of 8, given 12"):
        buffers.empty((2,), np.float64, align=12)
    assert buffers.empty(0, np.float32).shape == (0,)
    assert buffers.empty(BIG, np.float32).shape == (BIG,)
    with pytest.raises(ValueError, match=r"buffers.empty: expected non-negative sizes, given shape \(-1, 2\)"):
        buffers.empty((-1, 2), np.float32)
