"""Numba CPU kernels of the Gaussian voxeliser: the fast twin of the dense torch path in
:mod:`recon.ct.voxelize` (same support rule, same values; tests compare forward and gradients).

Support: a voxel centre ``p`` receives ``rho * exp(-q / 2)`` from a Gaussian when
``q = (p - mu)^T P (p - mu) <= cut2`` (``P`` the precision matrix, ``cut2 = k^2`` for a
``k``-sigma ellipsoid). Loops run over the axis-aligned box of the ellipsoid along z and y and,
per row, over the x interval solved from the quadratic, widened by one voxel and re-checked.

Forward: one parallel region, ``prange`` over threads, each owning a contiguous block of
Gaussians and its own output volume (no races; the caller sums the per-thread volumes).
Backward: ``prange`` over Gaussians; each writes only its own gradient row.

Precision matrices are passed as 6 numbers per Gaussian ``(xx, xy, xz, yy, yz, zz)``; ``q``
counts the off-diagonal terms twice. Coordinates are world (x, y, z) mm; the grid is given by
the centre of voxel (0, 0, 0) ``first`` (x, y, z), the spacing ``step`` (x, y, z) and its shape
(Z, Y, X).
"""

from __future__ import annotations

import math


try:  # numba is a project dependency, but keep the pure-torch path importable without it
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False


if AVAILABLE:

    @njit(cache=True, nogil=True, inline="always")
    def _x_range(mx, dyv, dzv, p, n, cut2, x0, sx, nx):  # pragma: no cover - compiled
        """Voxel index range [i0, i1] (inclusive) along x of the ellipsoid row at (dy, dz)."""
        a = p[n, 0]
        b = p[n, 1] * dyv + p[n, 2] * dzv
        c = p[n, 3] * dyv * dyv + 2.0 * p[n, 4] * dyv * dzv + p[n, 5] * dzv * dzv - cut2
        disc = b * b - a * c
        if disc < 0.0 or a <= 0.0:
            return 1, 0
        r = math.sqrt(disc)
        lo = (-b - r) / a + mx  # world x of the two crossings
        hi = (-b + r) / a + mx
        i0 = int(math.floor((lo - x0) / sx)) - 1
        i1 = int(math.ceil((hi - x0) / sx)) + 1
        if i0 < 0:
            i0 = 0
        if i1 > nx - 1:
            i1 = nx - 1
        return i0, i1

    @njit(cache=True, nogil=True, inline="always")
    def _axis_range(m, half, f, s, nn):  # pragma: no cover - compiled
        i0 = int(math.floor((m - half - f) / s))
        i1 = int(math.ceil((m + half - f) / s))
        if i0 < 0:
            i0 = 0
        if i1 > nn - 1:
            i1 = nn - 1
        return i0, i1

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def voxelize_forward(means, prec, dens, half, first, step, out, cut2, n_threads):  # pragma: no cover - compiled
        """means [N, 3], prec [N, 6], dens [N], half [N, 3] box half-extents (x, y, z) mm,
        first/step [3] (x, y, z); out [T, Z, Y, X] zeroed, T == n_threads (summed by the caller)."""
        N = means.shape[0]
        T, Z, Y, X = out.shape
        per = (N + T - 1) // T
        x0, y0, z0 = first[0], first[1], first[2]
        sx, sy, sz = step[0], step[1], step[2]
        for t in prange(T):
            n_start = t * per
            n_end = min(N, n_start + per)
            for n in range(n_start, n_end):
                rho = dens[n]
                mx, my, mz = means[n, 0], means[n, 1], means[n, 2]
                k0, k1 = _axis_range(mz, half[n, 2], z0, sz, Z)
                j0, j1 = _axis_range(my, half[n, 1], y0, sy, Y)
                pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
                # exp(-q/2) along a row by recurrence (2 exp per row) unless the Gaussian is much
                # thinner than a voxel along x, where the factors could overflow: then direct.
                stable = pxx * sx * sx < 8.0
                e_xx = math.exp(-pxx * sx * sx) if stable else 0.0
                for k in range(k0, k1 + 1):
                    dz = z0 + k * sz - mz
                    for j in range(j0, j1 + 1):
                        dy = y0 + j * sy - my
                        i0, i1 = _x_range(mx, dy, dz, prec, n, cut2, x0, sx, X)
                        if i0 > i1:
                            continue
                        cyz = pyy * dy * dy + 2.0 * pyz * dy * dz + pzz * dz * dz
                        byz = 2.0 * (pxy * dy + pxz * dz)
                        dx = x0 + i0 * sx - mx
                        q = pxx * dx * dx + byz * dx + cyz
                        dq = pxx * (2.0 * dx * sx + sx * sx) + byz * sx
                        e = math.exp(-0.5 * q) if stable else 0.0
                        r = math.exp(-0.5 * dq) if stable else 0.0
                        for i in range(i0, i1 + 1):
                            if q <= cut2:
                                if not stable:
                                    e = math.exp(-0.5 * q)
                                out[t, k, j, i] += rho * e
                            q += dq
                            dq += 2.0 * pxx * sx * sx
                            if stable:
                                e *= r
                                r *= e_xx

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def voxelize_backward(means, prec, dens, half, first, step, grad, cut2, g_means, g_prec, g_dens):  # pragma: no cover - compiled
        """grad [Z, Y, X] = dL/dvolume -> g_means [N, 3], g_prec [N, 6], g_dens [N] (written)."""
        N = means.shape[0]
        Z, Y, X = grad.shape
        x0, y0, z0 = first[0], first[1], first[2]
        sx, sy, sz = step[0], step[1], step[2]
        for n in prange(N):
            rho = dens[n]
            mx, my, mz = means[n, 0], means[n, 1], means[n, 2]
            k0, k1 = _axis_range(mz, half[n, 2], z0, sz, Z)
            j0, j1 = _axis_range(my, half[n, 1], y0, sy, Y)
            pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
            a_rho = 0.0
            a_xx = a_xy = a_xz = a_yy = a_yz = a_zz = 0.0
            a_mx = a_my = a_mz = 0.0
            stable = pxx * sx * sx < 8.0
            e_xx = math.exp(-pxx * sx * sx) if stable else 0.0
            for k in range(k0, k1 + 1):
                dz = z0 + k * sz - mz
                for j in range(j0, j1 + 1):
                    dy = y0 + j * sy - my
                    i0, i1 = _x_range(mx, dy, dz, prec, n, cut2, x0, sx, X)
                    if i0 > i1:
                        continue
                    cyz = pyy * dy * dy + 2.0 * pyz * dy * dz + pzz * dz * dz
                    byz = 2.0 * (pxy * dy + pxz * dz)
                    dx = x0 + i0 * sx - mx
                    q = pxx * dx * dx + byz * dx + cyz
                    dq = pxx * (2.0 * dx * sx + sx * sx) + byz * sx
                    e = math.exp(-0.5 * q) if stable else 0.0
                    r = math.exp(-0.5 * dq) if stable else 0.0
                    # per-row sums, then the row's contribution to the gradients
                    s0 = s1 = s2 = 0.0  # sum g e, sum g e dx, sum g e dx^2 (times -rho/2 later)
                    for i in range(i0, i1 + 1):
                        if q <= cut2:
                            if not stable:
                                e = math.exp(-0.5 * q)
                            ge = grad[k, j, i] * e
                            s0 += ge
                            s1 += ge * dx
                            s2 += ge * dx * dx
                        q += dq
                        dq += 2.0 * pxx * sx * sx
                        dx += sx
                        if stable:
                            e *= r
                            r *= e_xx
                    a_rho += s0
                    h0 = -0.5 * rho * s0  # sum dL/dq
                    h1 = -0.5 * rho * s1
                    h2 = -0.5 * rho * s2
                    a_xx += h2
                    a_yy += h0 * dy * dy
                    a_zz += h0 * dz * dz
                    a_xy += 2.0 * h1 * dy
                    a_xz += 2.0 * h1 * dz
                    a_yz += 2.0 * h0 * dy * dz
                    # dq/dmu = -2 P d
                    a_mx += -2.0 * (pxx * h1 + pxy * dy * h0 + pxz * dz * h0)
                    a_my += -2.0 * (pxy * h1 + pyy * dy * h0 + pyz * dz * h0)
                    a_mz += -2.0 * (pxz * h1 + pyz * dy * h0 + pzz * dz * h0)
            g_dens[n] = a_rho
            g_prec[n, 0] = a_xx
            g_prec[n, 1] = a_xy
            g_prec[n, 2] = a_xz
            g_prec[n, 3] = a_yy
            g_prec[n, 4] = a_yz
            g_prec[n, 5] = a_zz
            g_means[n, 0] = a_mx
            g_means[n, 1] = a_my
            g_means[n, 2] = a_mz
