"""Numba CPU kernels for Joseph's projector: the fast twin of the ``grid_sample`` path in
:mod:`recon.ct.project` (same sampling, same bilinear zero-padded interpolation; tests compare
forward and adjoint between the two).

One parallel region per call (``prange`` over threads, each owning a contiguous block of rays
in the forward and of planes in the adjoint, so the adjoint's scatter never races): on a busy
machine this avoids paying a scheduler delay per small parallel op.

Coordinates are pixel indices in the driving axis's slice images ``[N, B, H, W]``:
``w(n) = w0 + n * dw``, ``h(n) = h0 + n * dh`` for plane ``n``.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a project dependency, but keep the pure-torch path importable without it
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

_BLOCK = 256

if AVAILABLE:

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_forward(slices, w0, dw, h0, dh, step, ray_index, out, n_threads):  # pragma: no cover - compiled
        """slices [N, B, H+2, W+2] zero-padded by one pixel on each side; w0, dw, h0, dh, step
        [R] float64; ray_index [R] int64; out [B, R_total] (written at ray_index)."""
        N, B, H2, W2 = slices.shape
        H = H2 - 2
        W = W2 - 2
        R = w0.shape[0]
        T = max(1, n_threads)
        per = (R + T - 1) // T
        for t in prange(T):
            r_start = t * per
            r_end = min(R, r_start + per)
            acc = np.zeros((B, _BLOCK), dtype=np.float64)
            for b0 in range(r_start, r_end, _BLOCK):
                b1 = min(r_end, b0 + _BLOCK)
                acc[:, :] = 0.0
                for n in range(N):
                    fn = float(n)
                    for r in range(b0, b1):
                        pw = w0[r] + fn * dw[r] + 1.0  # +1: padded coordinates
                        ph = h0[r] + fn * dh[r] + 1.0
                        if pw > 0.0 and pw < W + 1.0 and ph > 0.0 and ph < H + 1.0:
                            iw = int(pw)
                            ih = int(ph)
                            ax = pw - iw
                            ay = ph - ih
                            for b in range(B):
                                top = slices[n, b, ih, iw] + ax * (slices[n, b, ih, iw + 1] - slices[n, b, ih, iw])
                                bot = slices[n, b, ih + 1, iw] + ax * (slices[n, b, ih + 1, iw + 1] - slices[n, b, ih + 1, iw])
                                acc[b, r - b0] += top + ay * (bot - top)
                for r in range(b0, b1):
                    for b in range(B):
                        out[b, ray_index[r]] = acc[b, r - b0] * step[r]

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_adjoint(values, w0, dw, h0, dh, out, n_threads):  # pragma: no cover - compiled
        """values [B, R] (ray values already times their step); w0, dw, h0, dh [R] float64;
        out [N, B, H+2, W+2] zero-initialised (padded by one pixel on each side), accumulated."""
        N, B, H2, W2 = out.shape
        H = H2 - 2
        W = W2 - 2
        R = w0.shape[0]
        T = max(1, n_threads)
        per = (N + T - 1) // T
        for t in prange(T):
            n_start = t * per
            n_end = min(N, n_start + per)
            for b0 in range(0, R, _BLOCK):
                b1 = min(R, b0 + _BLOCK)
                for n in range(n_start, n_end):
                    fn = float(n)
                    for r in range(b0, b1):
                        pw = w0[r] + fn * dw[r] + 1.0
                        ph = h0[r] + fn * dh[r] + 1.0
                        if pw > 0.0 and pw < W + 1.0 and ph > 0.0 and ph < H + 1.0:
                            iw = int(pw)
                            ih = int(ph)
                            ax = pw - iw
                            ay = ph - ih
                            for b in range(B):
                                v = values[b, r]
                                vb = v * ay
                                vt = v - vb
                                out[n, b, ih, iw] += vt - vt * ax
                                out[n, b, ih, iw + 1] += vt * ax
                                out[n, b, ih + 1, iw] += vb - vb * ax
                                out[n, b, ih + 1, iw + 1] += vb * ax


def num_threads() -> int:
    return numba.get_num_threads() if AVAILABLE else 1


def set_threads(n: int | None) -> int | None:
    """Set numba's thread count (returns the previous one); ``None`` changes nothing."""
    if not AVAILABLE or n is None:
        return None
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return old
