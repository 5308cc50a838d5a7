"""Numba CPU kernels for Joseph's projector: the fast twin of the ``grid_sample`` path in
:mod:`recon.ct.project` (same sampling, same bilinear zero-padded interpolation; tests compare
forward and adjoint between the two).

One parallel region per call (``prange`` over threads, each owning a contiguous block of rays
in the forward and of planes in the adjoint): on a busy machine this avoids paying a scheduler
delay per small parallel op.

Race-free adjoint without reductions: a ray's sample on plane ``n`` only touches plane ``n``,
so each thread scatters into its own range of planes, for all rays, straight into the shared
output (no per-thread volume copies to add up).

Both directions share :func:`_plane_samples`, which turns a block of rays' coordinates on one
plane into (flat index of the top-left pixel, bilinear weights); the adjoint is then the exact
transpose of the forward (same indices, same weights). The work is done in two passes per
(block of rays, plane): that pass vectorises (SIMD), and the gather (forward) or scatter
(adjoint) reads its results from L1-resident buffers. Ray coordinates are read through
per-block slices: indexing the whole table as ``w0[b0 + i]`` kept LLVM from vectorising
(measured ~5x slower on that pass).

:func:`joseph_forward_affine` and :func:`joseph_adjoint_affine` are the batch-1 kernels for ray
tables grouped into detector columns whose rays share the W coordinate on every plane
(exactly: x- and y-driven rays of a circular scan) and are evenly spaced along H (ray ``i``
at ``hc + i s`` on a plane): the forward blends two slice rows into one line per (column, plane) and interpolates it; the adjoint sums
the column once into prefix sums and reads each H bin of a plane off their second difference
(no scattered writes; work per plane ~ slice height). Both split each loop in two: the cells and
fractions vectorise, and a short scalar loop does the table reads. LLVM emits no gather
instructions for this CPU, and with the single fused loop the scalar float->int conversions
and rounding were the bottleneck (the split is ~2x faster in each direction).

Coordinates are pixel indices in the driving axis's slice images ``[N, B, H, W]``:
``w(n) = w0 + n * dw``, ``h(n) = h0 + n * dh`` for plane ``n``. The coordinate tables and the
ray steps are float32 for float32 data and float64 for float64 data.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a project dependency, but keep the pure-torch path importable without it
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

_BLOCK = 256  # rays per block: their coordinates, indices and weights stay in L1

if AVAILABLE:

    @njit(inline="always", fastmath=True, error_model="numpy")
    def _plane_samples(w0, dw, h0, dh, n, W2, H2, base, kk, wax, way):  # pragma: no cover - compiled
        """Samples of a block of rays on plane ``n`` of padded slices [.., H2, W2]: for ray i,
        ``kk[i]`` = ``base`` + flat index of the top-left of its 2x2 pixel cell, ``wax[i]``,
        ``way[i]`` the bilinear fractions; ``way[i] = -1`` marks a sample outside the slice
        (all four pixels would be zero padding)."""
        ft = w0.dtype.type
        one = ft(1.0)
        zero = ft(0.0)
        half = ft(0.5)
        w_max = ft(W2 - 1)
        h_max = ft(H2 - 1)
        fn = ft(n)
        for i in range(w0.shape[0]):
            pw = w0[i] + fn * dw[i] + one  # +1: padded coordinates
            ph = h0[i] + fn * dh[i] + one
            ok = (pw > zero) & (pw < w_max) & (ph > zero) & (ph < h_max)
            pw = pw if ok else half  # keep the int conversion in range
            ph = ph if ok else half
            iw = int(pw)
            ih = int(ph)
            wax[i] = pw - iw
            way[i] = (ph - ih) if ok else -one
            kk[i] = base + ih * W2 + iw

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_forward(slices, w0, dw, h0, dh, step, ray_index, out, n_threads):  # pragma: no cover - compiled
        """slices [N, B, H+2, W+2] zero-padded by one pixel on each side; w0, dw, h0, dh, step
        [R] (one float dtype); ray_index [R] int64; out [B, R_total] (written at ray_index)."""
        N, B, H2, W2 = slices.shape
        flat = slices.reshape(-1)
        plane = H2 * W2
        R = w0.shape[0]
        # unsigned offsets (uint64 + uint64 stays uint64): numba then skips negative-index wraparound
        one, row, row1, plane_u = np.uint64(1), np.uint64(W2), np.uint64(W2 + 1), np.uint64(plane)
        T = max(1, n_threads)
        per = (R + T - 1) // T
        for t in prange(T):
            r_start = t * per
            r_end = min(R, r_start + per)
            kk = np.empty(_BLOCK, np.uint64)
            wax = np.empty(_BLOCK, w0.dtype)
            way = np.empty(_BLOCK, w0.dtype)
            acc = np.empty((B, _BLOCK), dtype=np.float64)
            for b0 in range(r_start, r_end, _BLOCK):
                b1 = min(r_end, b0 + _BLOCK)
                m = b1 - b0
                acc[:, :] = 0.0
                for n in range(N):
                    _plane_samples(w0[b0:b1], dw[b0:b1], h0[b0:b1], dh[b0:b1], n, W2, H2, n * B * plane, kk, wax, way)
                    if B == 1:  # the common case, without the inner loop
                        a0 = acc[0]
                        for i in range(m):
                            ay = way[i]
                            if ay >= 0.0:
                                ax = wax[i]
                                k = kk[i]
                                top = flat[k] + ax * (flat[k + one] - flat[k])
                                bot = flat[k + row] + ax * (flat[k + row1] - flat[k + row])
                                a0[i] += top + ay * (bot - top)
                        continue
                    for i in range(m):
                        ay = way[i]
                        if ay >= 0.0:
                            ax = wax[i]
                            k = kk[i]
                            for b in range(B):
                                top = flat[k] + ax * (flat[k + one] - flat[k])
                                bot = flat[k + row] + ax * (flat[k + row1] - flat[k + row])
                                acc[b, i] += top + ay * (bot - top)
                                k += plane_u
                for i in range(m):
                    r = b0 + i
                    for b in range(B):
                        out[b, ray_index[r]] = acc[b, i] * step[r]

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_adjoint(proj, ray_index, step, w0, dw, h0, dh, out, n_threads):  # pragma: no cover - compiled
        """proj [B, R_total] ray values, read at ray_index [R] int64 and times step [R]; w0, dw,
        h0, dh [R] (same float dtype as step); out [N, B, H+2, W+2] (padded by one pixel on each
        side), accumulated. Thread t owns planes [t * N / T, (t + 1) * N / T)."""
        N, B, H2, W2 = out.shape
        flat = out.reshape(-1)
        plane = H2 * W2
        R = w0.shape[0]
        # unsigned offsets (uint64 + uint64 stays uint64): numba then skips negative-index wraparound
        one, row, row1, plane_u = np.uint64(1), np.uint64(W2), np.uint64(W2 + 1), np.uint64(plane)
        T = max(1, n_threads)
        per = (N + T - 1) // T
        for t in prange(T):
            n_start = t * per
            n_end = min(N, n_start + per)
            kk = np.empty(_BLOCK, np.uint64)
            wax = np.empty(_BLOCK, w0.dtype)
            way = np.empty(_BLOCK, w0.dtype)
            vals = np.empty((B, _BLOCK), dtype=out.dtype)
            for b0 in range(0, R, _BLOCK):
                b1 = min(R, b0 + _BLOCK)
                m = b1 - b0
                for i in range(m):
                    r = b0 + i
                    for b in range(B):
                        vals[b, i] = proj[b, ray_index[r]] * step[r]
                for n in range(n_start, n_end):
                    _plane_samples(w0[b0:b1], dw[b0:b1], h0[b0:b1], dh[b0:b1], n, W2, H2, n * B * plane, kk, wax, way)
                    if B == 1:  # the common case, without the inner loop
                        v0 = vals[0]
                        for i in range(m):
                            ay = way[i]
                            if ay >= 0.0:
                                ax = wax[i]
                                k = kk[i]
                                vb = v0[i] * ay
                                vt = v0[i] - vb
                                flat[k] += vt - vt * ax
                                flat[k + one] += vt * ax
                                flat[k + row] += vb - vb * ax
                                flat[k + row1] += vb * ax
                    else:
                        for i in range(m):
                            ay = way[i]
                            if ay >= 0.0:
                                ax = wax[i]
                                k = kk[i]
                                for b in range(B):
                                    vb = vals[b, i] * ay
                                    vt = vals[b, i] - vb
                                    flat[k] += vt - vt * ax
                                    flat[k + one] += vt * ax
                                    flat[k + row] += vb - vb * ax
                                    flat[k + row1] += vb * ax
                                    k += plane_u


    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_forward_affine(slices_t, cols, col_start, step, ray_index, out, n_threads):  # pragma: no cover - compiled
        """Batch-1 forward for *affine columns*: rays ``col_start[c]:col_start[c + 1]`` share
        their W coordinate on every plane and their H coordinates are evenly spaced and
        increasing (ray ``i`` of column ``c`` on plane ``n``: ``h = h0 + n dh + i (s0 + n ds)``;
        one detector column of a circular cone or parallel scan). Per (column, plane) the two
        slice rows around W are blended once into a line, then each ray interpolates that line
        linearly (two gathers instead of four).

        slices_t [N, W+2, H+2] zero-padded, H contiguous; cols [C, 6] (w0, dw, h0, dh, s0, ds)
        per column, pixel-index coordinates; col_start [C + 1] int64; step [R], ray_index [R];
        out [1, R_total] float64, written at ray_index. Thread t owns a range of columns."""
        N, W2, H2 = slices_t.shape
        C = col_start.shape[0] - 1
        ft = cols.dtype.type
        one, zero, half = ft(1.0), ft(0.0), ft(0.5)
        w_max, h_max = ft(W2 - 1), ft(H2 - 1)
        L = 1
        for c in range(C):
            L = max(L, col_start[c + 1] - col_start[c])
        T = max(1, n_threads)
        per = (C + T - 1) // T
        for t in prange(T):
            c_start = t * per
            c_end = min(C, c_start + per)
            line = np.empty(H2, dtype=slices_t.dtype)
            acc = np.empty(L, dtype=np.float64)
            kh = np.empty(L, np.uint32)
            fh = np.empty(L, dtype=cols.dtype)
            fi = np.arange(L).astype(cols.dtype)
            for c in range(c_start, c_end):
                r0 = col_start[c]
                m = col_start[c + 1] - r0
                acc[:m] = 0.0
                w0, dw, h0, dh, s0, ds = cols[c, 0], cols[c, 1], cols[c, 2], cols[c, 3], cols[c, 4], cols[c, 5]
                for n in range(N):
                    fn = ft(n)
                    pw = w0 + fn * dw + one  # +1: padded coordinates
                    if not ((pw > zero) & (pw < w_max)):
                        continue
                    iw = int(pw)
                    ax = pw - iw
                    bx = one - ax
                    row0 = slices_t[n, iw]
                    row1 = slices_t[n, iw + 1]
                    for h in range(H2):  # vectorised
                        line[h] = bx * row0[h] + ax * row1[h]
                    hc = h0 + fn * dh + one
                    s = s0 + fn * ds
                    # two passes: the cells and fractions vectorise (no gathers: LLVM does not
                    # emit them for this CPU), then a short scalar loop reads the L1-resident line.
                    # A sample outside the slice reads cell 0 with fraction 0: the zero padding.
                    for i in range(m):
                        ph = hc + fi[i] * s
                        ok = (ph > zero) & (ph < h_max)
                        k = np.uint32(ph if ok else half)
                        kh[i] = k
                        fh[i] = (ph - k) if ok else zero
                    for i in range(m):
                        k = kh[i]
                        a = line[k]
                        acc[i] += a + fh[i] * (line[k + np.uint32(1)] - a)
                for i in range(m):
                    out[0, ray_index[r0 + i]] = acc[i] * step[r0 + i]

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def joseph_adjoint_affine(proj, ray_index, step, cols, col_start, out, n_threads):  # pragma: no cover - compiled
        """Batch-1 adjoint of :func:`joseph_forward_affine` (same columns and samples).

        On a plane, a column's rays sit at ``p_i = hc + i s`` (s > 0) and bin ``h`` receives
        ``sum_i v_i max(0, 1 - |p_i - h|)``. With ``D(x) = sum_{p_i < x} v_i (x - p_i)`` that is
        the second difference ``D(h + 1) - 2 D(h) + D(h - 1)``, and ``D(x) = (x - hc) C0[K] -
        s C1[K]`` with ``K`` = #rays below ``x`` = ``clip(ceil((x - hc) / s), 0, m)`` and the
        prefix sums ``C0[k] = sum_{i<k} v_i``, ``C1[k] = sum_{i<k} i v_i`` (once per column, in
        float64). So the work per (column, plane) scales with the slice height, not with the
        number of rays, and has no scattered writes. ``D`` is continuous in ``x``, so a ray
        exactly on a bin edge counts the same on either side.

        proj [1, R_total], ray_index [R], step [R], cols [C, 6] and col_start [C + 1] as in the
        forward; out [N, 1, W+2, H+2] (padded, H contiguous), accumulated. Thread t owns a range
        of planes."""
        N, _, W2, H2 = out.shape
        flat = out.reshape(-1)
        plane = W2 * H2
        C = col_start.shape[0] - 1
        ft = cols.dtype.type
        one, zero = ft(1.0), ft(0.0)
        w_max = ft(W2 - 1)
        L = 1
        for c in range(C):
            L = max(L, col_start[c + 1] - col_start[c])
        T = max(1, n_threads)
        per = (N + T - 1) // T
        for t in prange(T):
            n_start = t * per
            n_end = min(N, n_start + per)
            c0 = np.empty(L + 1, dtype=np.float64)
            c1 = np.empty(L + 1, dtype=np.float64)
            d = np.empty(H2, dtype=np.float64)
            xr = np.empty(H2, dtype=np.float64)
            kx = np.empty(H2, np.uint32)
            xs = np.arange(H2).astype(np.float64)
            for c in range(C):
                r0 = col_start[c]
                m = col_start[c + 1] - r0
                a0 = 0.0
                a1 = 0.0
                c0[0] = 0.0
                c1[0] = 0.0
                for i in range(m):
                    v = np.float64(proj[0, ray_index[r0 + i]] * step[r0 + i])
                    a0 += v
                    a1 += i * v
                    c0[i + 1] = a0
                    c1[i + 1] = a1
                w0, dw, h0, dh, s0, ds = cols[c, 0], cols[c, 1], cols[c, 2], cols[c, 3], cols[c, 4], cols[c, 5]
                for n in range(n_start, n_end):
                    fn = ft(n)
                    pw = w0 + fn * dw + one
                    if not ((pw > zero) & (pw < w_max)):
                        continue
                    iw = int(pw)
                    ax = pw - iw
                    bx = one - ax
                    hc = np.float64(h0 + fn * dh + one)
                    s = np.float64(s0 + fn * ds)
                    inv = 1.0 / s
                    fm = np.float64(m)
                    for x in range(H2):  # vectorised
                        r = xs[x] - hc
                        xr[x] = r
                        kx[x] = np.uint32(min(max(np.ceil(r * inv), 0.0), fm))
                    for x in range(H2):  # scalar reads of the L1-resident prefix sums
                        k = kx[x]
                        d[x] = xr[x] * c0[k] - s * c1[k]
                    k0 = n * plane + iw * H2
                    row0 = flat[k0 : k0 + H2]
                    row1 = flat[k0 + H2 : k0 + 2 * H2]
                    for h in range(1, H2 - 1):  # vectorised
                        b = (d[h + 1] - d[h]) - (d[h] - d[h - 1])
                        row0[h] += b * bx
                        row1[h] += b * ax


def num_threads() -> int:
    return numba.get_num_threads() if AVAILABLE else 1


def set_threads(n: int | None) -> int | None:
    """Set numba's thread count (returns the previous one); ``None`` changes nothing."""
    if not AVAILABLE or n is None:
        return None
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return old
