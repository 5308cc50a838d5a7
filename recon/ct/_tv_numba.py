"""Numba CPU kernel of the anisotropic 3D TV loss: value and gradient in one pass (the fast twin
of :func:`recon.ct.voxelize.tv_3d`'s torch path; tests compare both).

``tv = sum_a mean |diff_a(v)|`` over the three axes. The gradient is gathered per voxel (each
voxel reads the signs of its own forward and backward differences), so a ``prange`` over
z-slices writes without races; ``sign(0) = 0`` as torch's ``abs`` backward. One call replaces
~12 torch ops and their autograd (~30 ms at 128^3 on 2 cores) with one parallel pass.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a project dependency, but keep the pure-torch path importable without it
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False


if AVAILABLE:

    @njit(cache=True, nogil=True, inline="always")
    def _sign(d):  # pragma: no cover - compiled
        return (d > 0.0) - (d < 0.0)

    @njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
    def tv3d_value_grad(vol, grad):  # pragma: no cover - compiled
        """vol [Z, Y, X] -> the TV value (float64); grad [Z, Y, X] (written) = d tv / d vol."""
        Z, Y, X = vol.shape
        wz = 1.0 / max((Z - 1) * Y * X, 1)
        wy = 1.0 / max(Z * (Y - 1) * X, 1)
        wx = 1.0 / max(Z * Y * (X - 1), 1)
        part = np.zeros(Z)
        for k in prange(Z):
            s = 0.0
            for j in range(Y):
                for i in range(X):
                    v = vol[k, j, i]
                    g = 0.0
                    if k + 1 < Z:
                        d = vol[k + 1, j, i] - v
                        s += abs(d) * wz
                        g -= _sign(d) * wz
                    if k > 0:
                        g += _sign(v - vol[k - 1, j, i]) * wz
                    if j + 1 < Y:
                        d = vol[k, j + 1, i] - v
                        s += abs(d) * wy
                        g -= _sign(d) * wy
                    if j > 0:
                        g += _sign(v - vol[k, j - 1, i]) * wy
                    if i + 1 < X:
                        d = vol[k, j, i + 1] - v
                        s += abs(d) * wx
                        g -= _sign(d) * wx
                    if i > 0:
                        g += _sign(v - vol[k, j, i - 1]) * wx
                    grad[k, j, i] = g
            part[k] = s
        return part.sum()
