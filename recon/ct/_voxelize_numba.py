"""Numba CPU kernels of the Gaussian voxeliser: the fast twin of the dense torch path in
:mod:`recon.ct.voxelize` (same support rule, same values; tests compare forward and gradients).

Support: a voxel centre ``p`` receives ``rho * exp(-q / 2)`` from a Gaussian when
``q = (p - mu)^T P (p - mu) <= cut2`` (``P`` the precision matrix, ``cut2 = k^2`` for a
``k``-sigma ellipsoid). Per Gaussian the loops run over its z-slices; each slice cuts an ellipse,
whose bounding rectangle (y- and x-ranges from two Schur complements: 2 square roots a slice) is
walked row by row with ``exp(-q/2)`` carried by recurrences along x and along y (q is quadratic,
so each step multiplies by a factor that itself changes by a constant factor): 3 exponentials
a slice and 3 a Gaussian, none per row or voxel, and the support re-checked (``q <= cut2``) at every voxel.
Solving each row's x-range (a square root and two exponentials per row, as before) cost twice
as much at 450k Gaussians on 128^3. Slabs where q reaches ``_Q_RECURRENCE`` (very elongated
Gaussians) use direct exponentials.

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

import numpy as np

try:  # numba is a project dependency, but keep the pure-torch path importable without it
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

_PAD = 0.01
"""Voxels by which a slab's exact extents are widened against rounding (q is re-checked)."""
_Q_RECURRENCE = 600.0
"""Largest q on a slab for the exponential recurrences: every factor stays within exp(+-300),
far inside float64's range; beyond it (Gaussians elongated across the slab) direct exponentials."""


if AVAILABLE:

    @njit(cache=True, nogil=True, inline="always")
    def _axis_range(m, half, f, s, nn):  # pragma: no cover - compiled
        i0 = int(math.floor((m - half - f) / s))  # noqa: RUF046
        i1 = int(math.ceil((m + half - f) / s))  # noqa: RUF046
        i0 = max(i0, 0)
        i1 = min(i1, nn - 1)
        return i0, i1

    @njit(cache=True, nogil=True, inline="always")
    def _extent(c, b, a, cut, dz2, inv_s, n):  # pragma: no cover - compiled
        """Voxel range [i0, i1] (clipped; i0 > i1 when empty) along one in-plane axis of the
        ellipse where the slice cuts the ellipsoid: the roots of ``a t^2 + 2 b t + dz2 = cut``
        (``a``, ``b dz``, ``dz2`` from the Schur complement over the other in-plane axis), ``c`` the
        centre in voxels, ``inv_s`` the inverse spacing, widened by ``_PAD`` voxels."""
        disc = b * b - a * (dz2 - cut)
        if disc < 0.0:
            return 1, 0
        r = math.sqrt(disc) / a * inv_s
        m = c - b / a * inv_s
        i0 = max(int(math.ceil(m - r - _PAD)), 0)  # noqa: RUF046 (numba: keep the int)
        i1 = min(int(math.floor(m + r + _PAD)), n - 1)  # noqa: RUF046
        return i0, i1

    @njit(cache=True, nogil=True, inline="always")
    def _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx, dy, dz):  # pragma: no cover - compiled
        return pxx * dx * dx + pyy * dy * dy + pzz * dz * dz + 2.0 * (pxy * dx * dy + pxz * dx * dz + pyz * dy * dz)

    @njit(cache=True, nogil=True, inline="always")
    def _schur(pxx, pxy, pxz, pyy, pyz, pzz):  # pragma: no cover - compiled
        """Per Gaussian: the quadratic in (y, z) left after minimising q over x, and the one in
        (x, z) after minimising over y (coefficients ``a``, ``b``, ``c`` of ``a t^2 + 2 b t dz +
        c dz^2``), for :func:`_rect`."""
        ia, ib = 1.0 / pxx, 1.0 / pyy
        return pyy - pxy * pxy * ia, pyz - pxy * pxz * ia, pzz - pxz * pxz * ia, pxx - pxy * pxy * ib, pxz - pxy * pyz * ib, pzz - pyz * pyz * ib

    @njit(cache=True, nogil=True, inline="always")
    def _rect(n, k, means, prec, schur, first, step, Y, X, cut2):  # pragma: no cover - compiled
        """The slab of Gaussian ``n`` at z-slice ``k``: the bounding rectangle [j0, j1] x [i0, i1]
        of the ellipse it cuts (empty: j0 > j1); whether the exponential recurrences are safe on
        it (q <= _Q_RECURRENCE at its four corners: q is convex, so everywhere on it); the offsets
        dz, dx0, dy0 (mm) of its first voxel (i0, j0) from the centre, q there and q's steps
        along x and y. ``schur`` from :func:`_schur`."""
        mx, my, mz = means[n, 0], means[n, 1], means[n, 2]
        pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
        ya, yb, yc, xa, xb, xc = schur
        x0, y0, z0 = first[0], first[1], first[2]
        sx, sy, sz = step[0], step[1], step[2]
        dz = z0 + k * sz - mz
        j0, j1 = _extent((my - y0) / sy, yb * dz, ya, cut2, yc * dz * dz, 1.0 / sy, Y)
        i0, i1 = _extent((mx - x0) / sx, xb * dz, xa, cut2, xc * dz * dz, 1.0 / sx, X)
        if j0 > j1 or i0 > i1:
            return 1, 0, 1, 0, False, dz, 0.0, 0.0, 0.0, 0.0, 0.0
        dx0, dx1 = x0 + i0 * sx - mx, x0 + i1 * sx - mx
        dy0, dy1 = y0 + j0 * sy - my, y0 + j1 * sy - my
        q00 = _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx0, dy0, dz)
        qmax = max(
            q00,
            _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx1, dy0, dz),
            _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx0, dy1, dz),
            _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx1, dy1, dz),
        )
        # q's steps along x (on row j0) and along y (on column i0)
        dqx = pxx * (2.0 * dx0 * sx) + pxx * sx * sx + 2.0 * (pxy * dy0 + pxz * dz) * sx
        dqy = pyy * (2.0 * dy0 * sy) + pyy * sy * sy + 2.0 * (pxy * dx0 + pyz * dz) * sy
        return j0, j1, i0, i1, qmax <= _Q_RECURRENCE, dz, dx0, dy0, q00, dqx, dqy

    @njit(cache=True, nogil=True, inline="always")
    def _gaussian(n, means, prec, half, first, step, Z):  # pragma: no cover - compiled
        """Per Gaussian: q's second differences along x, y and xy (axx, ayy, axy, in voxel
        steps), their exponentials (the recurrences' constant factors) and the z-slices
        [k0, k1] of its box."""
        pxx, pxy, pyy = prec[n, 0], prec[n, 1], prec[n, 3]
        sx, sy = step[0], step[1]
        axx, ayy, axy = pxx * sx * sx, pyy * sy * sy, pxy * sx * sy
        k0, k1 = _axis_range(means[n, 2], half[n, 2], first[2], step[2], Z)
        return axx, ayy, axy, math.exp(-axx), math.exp(-ayy), math.exp(-axy), k0, k1

    @njit(cache=True, nogil=True, inline="always")
    def _degenerate(prec, n):  # pragma: no cover - compiled
        pxx, pxy, pyy = prec[n, 0], prec[n, 1], prec[n, 3]
        return not (pxx > 0.0 and pyy > 0.0 and pxx * pyy - pxy * pxy > 0.0)

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def voxelize_forward(means, prec, dens, half, first, step, out, cut2):  # pragma: no cover - compiled
        """means [N, 3], prec [N, 6], dens [N], half [N, 3] box half-extents (x, y, z) mm,
        first/step [3] (x, y, z); out [T, Z, Y, X] zeroed, one volume per thread (summed by the caller)."""
        N = means.shape[0]
        T, Z, Y, X = out.shape
        per = (N + T - 1) // T
        sx, sy = step[0], step[1]
        for t in prange(T):
            for n in range(t * per, min(N, t * per + per)):
                if _degenerate(prec, n):
                    continue
                rho = 1.0 * dens[n]
                pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
                axx, ayy, axy, e_xx, e_yy, e_xy, k0, k1 = _gaussian(n, means, prec, half, first, step, Z)
                schur = _schur(pxx, pxy, pxz, pyy, pyz, pzz)
                for k in range(k0, k1 + 1):
                    j0, j1, i0, i1, safe, dz, dx0, dy0, q0, dqx, dqy = _rect(n, k, means, prec, schur, first, step, Y, X, cut2)
                    if j0 > j1:
                        continue
                    if not safe:  # very elongated: direct exponentials
                        for j in range(j0, j1 + 1):
                            for i in range(i0, i1 + 1):
                                q = _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx0 + (i - i0) * sx, dy0 + (j - j0) * sy, dz)
                                if q <= cut2:
                                    out[t, k, j, i] += rho * math.exp(-0.5 * q)
                        continue
                    e_row = rho * math.exp(-0.5 * q0)
                    g_row = math.exp(-0.5 * dqy)
                    r_row = math.exp(-0.5 * dqx)
                    for j in range(j0, j1 + 1):
                        q, dq, e, r = q0, dqx, e_row, r_row
                        for i in range(i0, i1 + 1):
                            out[t, k, j, i] += e * (q <= cut2)  # branch-free mask
                            q += dq
                            dq += 2.0 * axx
                            e *= r
                            r *= e_xx
                        q0 += dqy
                        dqy += 2.0 * ayy
                        dqx += 2.0 * axy
                        e_row *= g_row
                        g_row *= e_yy
                        r_row *= e_xy

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def voxelize_backward(means, prec, dens, half, first, step, grad, cut2, g_means, g_prec, g_dens):  # pragma: no cover - compiled
        """grad [Z, Y, X] = dL/dvolume -> g_means [N, 3], g_prec [N, 6], g_dens [N] (written)."""
        N = means.shape[0]
        Z, Y, X = grad.shape
        sx, sy = step[0], step[1]
        for n in prange(N):
            # sums over the Gaussian's voxels of s0 = g e, s1 = g e dx, s2 = g e dx^2, times
            # powers of dy and dz (per slice: t, per Gaussian: u)
            u0 = u0y = u0yy = u0z = u0zz = u0yz = u1 = u1y = u1z = u2 = 0.0
            if not _degenerate(prec, n):
                pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
                axx, ayy, axy, e_xx, e_yy, e_xy, k0, k1 = _gaussian(n, means, prec, half, first, step, Z)
                schur = _schur(pxx, pxy, pxz, pyy, pyz, pzz)
                for k in range(k0, k1 + 1):
                    j0, j1, i0, i1, safe, dz, dx0, dy, q0, dqx, dqy = _rect(n, k, means, prec, schur, first, step, Y, X, cut2)
                    if j0 > j1:
                        continue
                    t0 = t0y = t0yy = t1 = t1y = t2 = 0.0
                    e_row = g_row = r_row = 0.0
                    if safe:
                        e_row = math.exp(-0.5 * q0)
                        g_row = math.exp(-0.5 * dqy)
                        r_row = math.exp(-0.5 * dqx)
                    for j in range(j0, j1 + 1):
                        s0 = s1 = s2 = 0.0  # the row's sums of g e, g e dx, g e dx^2
                        dx = dx0
                        if safe:
                            q, dq, e, r = q0, dqx, e_row, r_row
                            for i in range(i0, i1 + 1):
                                ge = grad[k, j, i] * e * (q <= cut2)  # branch-free mask
                                s0 += ge
                                s1 += ge * dx
                                s2 += ge * dx * dx
                                q += dq
                                dq += 2.0 * axx
                                dx += sx
                                e *= r
                                r *= e_xx
                            e_row *= g_row
                            g_row *= e_yy
                            r_row *= e_xy
                        else:  # very elongated: direct exponentials
                            for i in range(i0, i1 + 1):
                                q = _quad(pxx, pxy, pxz, pyy, pyz, pzz, dx, dy, dz)
                                if q <= cut2:
                                    ge = grad[k, j, i] * math.exp(-0.5 * q)
                                    s0 += ge
                                    s1 += ge * dx
                                    s2 += ge * dx * dx
                                dx += sx
                        t0 += s0
                        t0y += s0 * dy
                        t0yy += s0 * dy * dy
                        t1 += s1
                        t1y += s1 * dy
                        t2 += s2
                        q0 += dqy
                        dqy += 2.0 * ayy
                        dqx += 2.0 * axy
                        dy += sy
                    u0 += t0
                    u0y += t0y
                    u0yy += t0yy
                    u0z += t0 * dz
                    u0zz += t0 * dz * dz
                    u0yz += t0y * dz
                    u1 += t1
                    u1y += t1y
                    u1z += t1 * dz
                    u2 += t2
            # dL/dq = -rho/2 * g e at each voxel; q = d^T P d (off-diagonals twice), dq/dmu = -2 P d
            c = -0.5 * dens[n]
            g_dens[n] = u0
            g_prec[n, 0] = c * u2
            g_prec[n, 1] = 2.0 * c * u1y
            g_prec[n, 2] = 2.0 * c * u1z
            g_prec[n, 3] = c * u0yy
            g_prec[n, 4] = 2.0 * c * u0yz
            g_prec[n, 5] = c * u0zz
            pxx, pxy, pxz, pyy, pyz, pzz = prec[n, 0], prec[n, 1], prec[n, 2], prec[n, 3], prec[n, 4], prec[n, 5]
            g_means[n, 0] = -2.0 * c * (pxx * u1 + pxy * u0y + pxz * u0z)
            g_means[n, 1] = -2.0 * c * (pxy * u1 + pyy * u0y + pyz * u0z)
            g_means[n, 2] = -2.0 * c * (pxz * u1 + pyz * u0y + pzz * u0z)


if AVAILABLE:

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def precision_forward(order, means, quats, scales, dens, k_sigma, means_out, dens_out, prec, half):  # pragma: no cover - compiled
        """Gaussian ``order[i]`` -> row ``i`` (the spatial order; written): means_out [N, 3] and
        dens_out [N] gathered from means [N, 3] and dens [N]; from quats [N, 4] wxyz (normalised
        here) and scales [N, 3], prec [N, 6] (xx, xy, xz, yy, yz, zz of R S^-2 R^T) and half
        [N, 3] = k_sigma * sqrt(diag(R S^2 R^T))."""
        N = quats.shape[0]
        for i in prange(N):
            n = order[i]
            for c in range(3):
                means_out[i, c] = means[n, c]
            dens_out[i] = dens[n]
            w, x, y, z = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
            inv = 1.0 / max(math.sqrt(w * w + x * x + y * y + z * z), 1e-12)
            w, x, y, z = w * inv, x * inv, y * inv, z * inv
            r00, r01, r02 = 1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)
            r10, r11, r12 = 2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)
            r20, r21, r22 = 2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)
            s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
            d0, d1, d2 = 1.0 / (s0 * s0), 1.0 / (s1 * s1), 1.0 / (s2 * s2)
            prec[i, 0] = r00 * r00 * d0 + r01 * r01 * d1 + r02 * r02 * d2
            prec[i, 1] = r00 * r10 * d0 + r01 * r11 * d1 + r02 * r12 * d2
            prec[i, 2] = r00 * r20 * d0 + r01 * r21 * d1 + r02 * r22 * d2
            prec[i, 3] = r10 * r10 * d0 + r11 * r11 * d1 + r12 * r12 * d2
            prec[i, 4] = r10 * r20 * d0 + r11 * r21 * d1 + r12 * r22 * d2
            prec[i, 5] = r20 * r20 * d0 + r21 * r21 * d1 + r22 * r22 * d2
            v0, v1, v2 = s0 * s0, s1 * s1, s2 * s2
            half[i, 0] = k_sigma * math.sqrt(r00 * r00 * v0 + r01 * r01 * v1 + r02 * r02 * v2)
            half[i, 1] = k_sigma * math.sqrt(r10 * r10 * v0 + r11 * r11 * v1 + r12 * r12 * v2)
            half[i, 2] = k_sigma * math.sqrt(r20 * r20 * v0 + r21 * r21 * v1 + r22 * r22 * v2)

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def precision_backward(order, quats, scales, g_prec, g_means_s, g_dens_s, g_quats, g_scales, g_means, g_dens):  # pragma: no cover - compiled
        """Chain rule of :func:`precision_forward`, back to the input order (row ``i`` ->
        Gaussian ``order[i]``; written): dL/dprec [N, 6] (off-diagonals as the single shared
        entry) -> dL/dquats [N, 4] (through the normalisation), dL/dscales [N, 3]; dL/dmeans
        [N, 3] and dL/ddens [N] scattered from g_means_s and g_dens_s."""
        N = quats.shape[0]
        for i in prange(N):
            n = order[i]
            for c in range(3):
                g_means[n, c] = g_means_s[i, c]
            g_dens[n] = g_dens_s[i]
            qw, qx, qy, qz = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
            qn = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
            w, x, y, z = qw / qn, qx / qn, qy / qn, qz / qn
            r00, r01, r02 = 1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)
            r10, r11, r12 = 2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)
            r20, r21, r22 = 2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)
            s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
            d0, d1, d2 = 1.0 / (s0 * s0), 1.0 / (s1 * s1), 1.0 / (s2 * s2)
            # symmetric dL/dP
            g00, g11, g22 = g_prec[i, 0], g_prec[i, 3], g_prec[i, 5]
            g01, g02, g12 = 0.5 * g_prec[i, 1], 0.5 * g_prec[i, 2], 0.5 * g_prec[i, 4]
            # (G R)
            a00 = g00 * r00 + g01 * r10 + g02 * r20
            a01 = g00 * r01 + g01 * r11 + g02 * r21
            a02 = g00 * r02 + g01 * r12 + g02 * r22
            a10 = g01 * r00 + g11 * r10 + g12 * r20
            a11 = g01 * r01 + g11 * r11 + g12 * r21
            a12 = g01 * r02 + g11 * r12 + g12 * r22
            a20 = g02 * r00 + g12 * r10 + g22 * r20
            a21 = g02 * r01 + g12 * r11 + g22 * r21
            a22 = g02 * r02 + g12 * r12 + g22 * r22
            # dL/dd_k = (R^T G R)_kk ; d_k = s_k^-2
            dd0 = r00 * a00 + r10 * a10 + r20 * a20
            dd1 = r01 * a01 + r11 * a11 + r21 * a21
            dd2 = r02 * a02 + r12 * a12 + r22 * a22
            g_scales[n, 0] = dd0 * (-2.0 * d0 / s0)
            g_scales[n, 1] = dd1 * (-2.0 * d1 / s1)
            g_scales[n, 2] = dd2 * (-2.0 * d2 / s2)
            # dL/dR = 2 G R D
            e00, e01, e02 = 2.0 * a00 * d0, 2.0 * a01 * d1, 2.0 * a02 * d2
            e10, e11, e12 = 2.0 * a10 * d0, 2.0 * a11 * d1, 2.0 * a12 * d2
            e20, e21, e22 = 2.0 * a20 * d0, 2.0 * a21 * d1, 2.0 * a22 * d2
            dw = 2.0 * (-z * e01 + y * e02 + z * e10 - x * e12 - y * e20 + x * e21)
            dx = 2.0 * (y * e01 + z * e02 + y * e10 - 2.0 * x * e11 - w * e12 + z * e20 + w * e21 - 2.0 * x * e22)
            dy = 2.0 * (-2.0 * y * e00 + x * e01 + w * e02 + x * e10 + z * e12 - w * e20 + z * e21 - 2.0 * y * e22)
            dz = 2.0 * (-2.0 * z * e00 - w * e01 + x * e02 + w * e10 - 2.0 * z * e11 + y * e12 + x * e20 + y * e21)
            dot = w * dw + x * dx + y * dy + z * dz
            g_quats[n, 0] = (dw - w * dot) / qn
            g_quats[n, 1] = (dx - x * dot) / qn
            g_quats[n, 2] = (dy - y * dot) / qn
            g_quats[n, 3] = (dz - z * dot) / qn


if AVAILABLE:

    @njit(cache=True, nogil=True)
    def brick_order(means, first, brick_mm, nb):  # pragma: no cover - compiled
        """Stable counting sort of the Gaussians by the brick holding their centre: means [N, 3]
        (x, y, z), first [3] the centre of voxel (0, 0, 0), brick_mm [3] a brick's size (x, y, z),
        nb [3] bricks per axis (x, y, z) including one border brick on each side -> order [N]
        int64, the same permutation as ``np.argsort(key, kind="stable")`` with key
        ``(z * nb_y + y) * nb_x + x``, in O(N)."""
        N = means.shape[0]
        keys = np.empty(N, dtype=np.int64)
        counts = np.zeros(nb[0] * nb[1] * nb[2] + 1, dtype=np.int64)
        for n in range(N):
            key = 0
            for a in (2, 1, 0):
                i = int(math.floor((means[n, a] - first[a]) / brick_mm[a])) + 1  # noqa: RUF046
                i = min(max(i, 0), nb[a] - 1)
                key = key * nb[a] + i
            keys[n] = key
            counts[key + 1] += 1
        for k in range(1, counts.shape[0]):
            counts[k] += counts[k - 1]
        order = np.empty(N, dtype=np.int64)
        for n in range(N):
            order[counts[keys[n]]] = n
            counts[keys[n]] += 1
        return order
