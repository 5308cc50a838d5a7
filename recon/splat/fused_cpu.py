"""Fused CPU projection + SH colours (+ activations): one numba pass per direction.

The pure-PyTorch twin is ``rasterize.project_and_shade_torch`` (``projection.py`` + ``sh.py``:
a chain of ~150 small torch ops forward and as many backward at N Gaussians); this module
computes the same outputs in one parallel loop over Gaussians and their gradients in another,
with the chain rule written out per Gaussian (gsplat's ``fully_fused_projection_bwd`` and
``compute_sh_bwd`` math, re-derived for this module's exact forward: the FoV clamp of the
Jacobian, the symmetric 2D covariance, the antialiasing compensation, the +0.5 / clamp of the
colours, and the ``F.normalize`` of quaternions and viewing directions).

``project_and_shade`` takes the *activated* inputs of ``rasterization`` (unit or not-unit
quaternions, scales, opacities, SH coefficients). ``project_and_shade_raw`` takes the raw
parameters of a 3DGS trainer (``GaussianModel.params``: log-scales, opacity logits, ``sh0`` and
``shN`` separately) and applies the activations inside the kernels, so the trainer needs no
``exp`` / ``sigmoid`` / ``cat`` ops and no copy of the SH coefficients.

Arithmetic inside the kernels is float64 (outputs float32 or float64 like the inputs); each
Gaussian's gradients are written by the thread that owns it (no atomics, deterministic).
Viewing matrices and intrinsics receive no gradient here: callers that need it (pose
refinement) use the torch twin (``rasterize.py`` chooses).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from . import buffers

__all__ = ["accumulate_grad2d", "project_and_shade", "project_and_shade_raw", "warmup"]

# real SH constants (same as sh.py)
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C20, _C21, _C22 = 1.0925484305920792, 0.31539156525252005, 0.5462742152960396
_C30, _C31, _C32, _C33 = 0.5900435899266435, 1.445305721320277, 0.4570457994644658, 0.3731763325901154
_NORM_EPS = 1e-12  # F.normalize's eps
_BLOCK = 1024  # Gaussians per parallel task
_U = np.uint64


@njit(inline="always", cache=True, error_model="numpy")
def _sh_basis(d, x, y, z, Y):
    """Real SH bases up to degree d at the unit direction (x, y, z) into Y[:16] (gsplat order)."""
    Y[0] = _C0
    if d >= 1:
        Y[1] = -_C1 * y
        Y[2] = _C1 * z
        Y[3] = -_C1 * x
    if d >= 2:
        xx = x * x
        yy = y * y
        zz = z * z
        Y[4] = _C20 * x * y
        Y[5] = -_C20 * y * z
        Y[6] = _C21 * (3.0 * zz - 1.0)
        Y[7] = -_C20 * x * z
        Y[8] = _C22 * (xx - yy)
    if d >= 3:
        c2 = xx - yy
        s2 = 2.0 * x * y
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        p1 = 5.0 * zz - 1.0
        Y[9] = -_C30 * s3
        Y[10] = _C31 * z * s2
        Y[11] = -_C32 * y * p1
        Y[12] = _C33 * z * (5.0 * zz - 3.0)
        Y[13] = -_C32 * x * p1
        Y[14] = _C31 * z * c2
        Y[15] = -_C30 * c3


@njit(inline="always", cache=True, error_model="numpy")
def _sh_basis_grad(d, x, y, z, w, out):
    """out = sum_k w[k] * grad Y_k(x, y, z) for k < (d + 1)^2 (gradient w.r.t. the unit direction)."""
    gx = 0.0
    gy = 0.0
    gz = 0.0
    if d >= 1:
        gy += -_C1 * w[1]
        gz += _C1 * w[2]
        gx += -_C1 * w[3]
    if d >= 2:
        gx += _C20 * y * w[4]
        gy += _C20 * x * w[4]
        gy += -_C20 * z * w[5]
        gz += -_C20 * y * w[5]
        gz += 6.0 * _C21 * z * w[6]
        gx += -_C20 * z * w[7]
        gz += -_C20 * x * w[7]
        gx += 2.0 * _C22 * x * w[8]
        gy += -2.0 * _C22 * y * w[8]
    if d >= 3:
        xx = x * x
        yy = y * y
        zz = z * z
        gx += -6.0 * _C30 * x * y * w[9]
        gy += 3.0 * _C30 * (yy - xx) * w[9]
        gx += 2.0 * _C31 * y * z * w[10]
        gy += 2.0 * _C31 * x * z * w[10]
        gz += 2.0 * _C31 * x * y * w[10]
        gy += _C32 * (1.0 - 5.0 * zz) * w[11]
        gz += -10.0 * _C32 * y * z * w[11]
        gz += _C33 * (15.0 * zz - 3.0) * w[12]
        gx += _C32 * (1.0 - 5.0 * zz) * w[13]
        gz += -10.0 * _C32 * x * z * w[13]
        gx += 2.0 * _C31 * x * z * w[14]
        gy += -2.0 * _C31 * y * z * w[14]
        gz += _C31 * (xx - yy) * w[14]
        gx += 3.0 * _C30 * (yy - xx) * w[15]
        gy += 6.0 * _C30 * x * y * w[15]
    out[0] = gx
    out[1] = gy
    out[2] = gz


# 3x3 matrices are 9-tuples (row-major) of float64: numba keeps them in registers.
@njit(inline="always", cache=True, error_model="numpy")
def _mm(a, b):  # a @ b
    return (
        a[0] * b[0] + a[1] * b[3] + a[2] * b[6], a[0] * b[1] + a[1] * b[4] + a[2] * b[7], a[0] * b[2] + a[1] * b[5] + a[2] * b[8],
        a[3] * b[0] + a[4] * b[3] + a[5] * b[6], a[3] * b[1] + a[4] * b[4] + a[5] * b[7], a[3] * b[2] + a[4] * b[5] + a[5] * b[8],
        a[6] * b[0] + a[7] * b[3] + a[8] * b[6], a[6] * b[1] + a[7] * b[4] + a[8] * b[7], a[6] * b[2] + a[7] * b[5] + a[8] * b[8],
    )  # fmt: skip


@njit(inline="always", cache=True, error_model="numpy")
def _mmt(a, b):  # a @ b^T
    return (
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2], a[0] * b[3] + a[1] * b[4] + a[2] * b[5], a[0] * b[6] + a[1] * b[7] + a[2] * b[8],
        a[3] * b[0] + a[4] * b[1] + a[5] * b[2], a[3] * b[3] + a[4] * b[4] + a[5] * b[5], a[3] * b[6] + a[4] * b[7] + a[5] * b[8],
        a[6] * b[0] + a[7] * b[1] + a[8] * b[2], a[6] * b[3] + a[7] * b[4] + a[8] * b[5], a[6] * b[6] + a[7] * b[7] + a[8] * b[8],
    )  # fmt: skip


@njit(inline="always", cache=True, error_model="numpy")
def _mtm(a, b):  # a^T @ b
    return (
        a[0] * b[0] + a[3] * b[3] + a[6] * b[6], a[0] * b[1] + a[3] * b[4] + a[6] * b[7], a[0] * b[2] + a[3] * b[5] + a[6] * b[8],
        a[1] * b[0] + a[4] * b[3] + a[7] * b[6], a[1] * b[1] + a[4] * b[4] + a[7] * b[7], a[1] * b[2] + a[4] * b[5] + a[7] * b[8],
        a[2] * b[0] + a[5] * b[3] + a[8] * b[6], a[2] * b[1] + a[5] * b[4] + a[8] * b[7], a[2] * b[2] + a[5] * b[5] + a[8] * b[8],
    )  # fmt: skip


@njit(inline="always", cache=True, error_model="numpy")
def _gaussian(g, quats, scales, opacities, raw):
    """Unit quaternion, its norm, rotation R, scales, M = R diag(s), opacity (activated)."""
    qw = float(quats[g, 0])
    qx = float(quats[g, 1])
    qy = float(quats[g, 2])
    qz = float(quats[g, 3])
    qn = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    inv = 1.0 / max(qn, _NORM_EPS)
    w = qw * inv
    x = qx * inv
    y = qy * inv
    z = qz * inv
    R = (
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )  # fmt: skip
    s0 = float(scales[g, 0])
    s1 = float(scales[g, 1])
    s2 = float(scales[g, 2])
    o = float(opacities[g])
    if raw:
        s0 = math.exp(s0)
        s1 = math.exp(s1)
        s2 = math.exp(s2)
        o = 1.0 / (1.0 + math.exp(-o))
    M = (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2, R[6] * s0, R[7] * s1, R[8] * s2)
    return (w, x, y, z), qn, R, (s0, s1, s2), M, o


def _camera_table(viewmats: Tensor, Ks: Tensor, width: int, height: int) -> np.ndarray:
    """Per camera, float64: rotation (9), translation (3), fx, fy, cx, cy, the four FoV limits of
    the Jacobian (x+, x-, y+, y-) and the camera centre (3) -> [C, 23]. Computed once per call
    (not per Gaussian)."""
    vm = viewmats.detach().to(torch.float64).numpy()
    K = Ks.detach().to(torch.float64).numpy()
    C = vm.shape[0]
    out = np.empty((C, 23))
    for c in range(C):
        R = vm[c, :3, :3]
        t = vm[c, :3, 3]
        fx, fy, cx, cy = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2]
        tan_fovx = 0.5 * width / fx
        tan_fovy = 0.5 * height / fy
        lims = ((width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx,
                (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy)  # fmt: skip
        out[c] = np.concatenate([R.reshape(-1), t, [fx, fy, cx, cy], lims, -R.T @ t])
    return out


@njit(inline="always", cache=True, error_model="numpy")
def _camera(cams, cam):
    """Rotation (9-tuple), translation, fx, fy, cx, cy, FoV limits and centre from the table."""
    Rc = (cams[cam, 0], cams[cam, 1], cams[cam, 2], cams[cam, 3], cams[cam, 4], cams[cam, 5],
          cams[cam, 6], cams[cam, 7], cams[cam, 8])  # fmt: skip
    t = (cams[cam, 9], cams[cam, 10], cams[cam, 11])
    lims = (cams[cam, 16], cams[cam, 17], cams[cam, 18], cams[cam, 19])
    centre = (cams[cam, 20], cams[cam, 21], cams[cam, 22])
    return Rc, t, cams[cam, 12], cams[cam, 13], cams[cam, 14], cams[cam, 15], lims, centre


@njit(inline="always", cache=True, error_model="numpy")
def _jacobian(px, py, pz, fx, fy, lims):
    rz = 1.0 / pz
    xr = px * rz
    yr = py * rz
    u = min(lims[0], max(-lims[1], xr))
    v = min(lims[2], max(-lims[3], yr))
    x_in = xr <= lims[0] and xr >= -lims[1]
    y_in = yr <= lims[2] and yr >= -lims[3]
    return rz, u, v, x_in, y_in, fx * rz, -fx * u * rz, fy * rz, -fy * v * rz


@njit(inline="always", cache=True, error_model="numpy")
def _cov2d(J00, J02, J11, J12, Sc):
    c00 = J00 * J00 * Sc[0] + 2.0 * J00 * J02 * Sc[2] + J02 * J02 * Sc[8]
    c01 = J00 * J11 * Sc[1] + J00 * J12 * Sc[2] + J02 * J11 * Sc[7] + J02 * J12 * Sc[8]
    c11 = J11 * J11 * Sc[4] + 2.0 * J11 * J12 * Sc[5] + J12 * J12 * Sc[8]
    return c00, c01, c11


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(
    means, quats, scales, opacities, c0, c1, cams, width, height, eps2d, near, far,
    radius_clip, calc_comp, radius_sigmas, sh_degree, raw,
    radii, means2d, depths, conics, opac_out, colors_out,
):  # fmt: skip
    n_blocks = (means.shape[0] + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        _forward_block(
            blk, means, quats, scales, opacities, c0, c1, cams, width, height, eps2d, near, far,
            radius_clip, calc_comp, radius_sigmas, sh_degree, raw,
            radii, means2d, depths, conics, opac_out, colors_out,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _forward_block(
    blk, means, quats, scales, opacities, c0, c1, cams, width, height, eps2d, near, far,
    radius_clip, calc_comp, radius_sigmas, sh_degree, raw,
    radii, means2d, depths, conics, opac_out, colors_out,
):  # fmt: skip
    """One block of Gaussians (a plain function: numba inlines the helpers here, no array
    reference counting per call)."""
    N = means.shape[0]
    C = cams.shape[0]
    shade = sh_degree >= 0
    n_bases = (sh_degree + 1) * (sh_degree + 1)
    K0 = c0.shape[1]
    K1 = c1.shape[1]
    c0f = c0.reshape(-1)
    c1f = c1.reshape(-1)
    if True:
        Y = np.zeros(16)
        for g in range(blk * _BLOCK, min(N, (blk + 1) * _BLOCK)):
            _, _, _, _, M, o = _gaussian(g, quats, scales, opacities, raw)
            Sig = _mmt(M, M)
            mu0 = float(means[g, 0])
            mu1 = float(means[g, 1])
            mu2 = float(means[g, 2])
            for cam in range(C):
                Rc, t, fx, fy, cx, cy, lims, cc = _camera(cams, cam)
                px = Rc[0] * mu0 + Rc[1] * mu1 + Rc[2] * mu2 + t[0]
                py = Rc[3] * mu0 + Rc[4] * mu1 + Rc[5] * mu2 + t[1]
                pz = Rc[6] * mu0 + Rc[7] * mu1 + Rc[8] * mu2 + t[2]
                keep = False
                comp = 0.0
                if pz > near and pz < far:
                    Sc = _mmt(_mm(Rc, Sig), Rc)
                    rz, _u, _v, _x_in, _y_in, J00, J02, J11, J12 = _jacobian(px, py, pz, fx, fy, lims)
                    c00, c01, c11 = _cov2d(J00, J02, J11, J12, Sc)
                    a = c00 + eps2d
                    b = c01
                    c = c11 + eps2d
                    det = a * c - b * b
                    if det > 0.0:
                        m2x = fx * px * rz + cx
                        m2y = fy * py * rz + cy
                        half_tr = 0.5 * (a + c)
                        v1 = half_tr + math.sqrt(max(half_tr * half_tr - det, 0.01))
                        r = math.ceil(radius_sigmas * math.sqrt(max(v1, 0.0)))
                        keep = (
                            r > radius_clip and m2x + r > 0.0 and m2x - r < width
                            and m2y + r > 0.0 and m2y - r < height
                        )  # fmt: skip
                        if keep:
                            radii[cam, g] = np.int32(r)
                            means2d[cam, g, 0] = m2x
                            means2d[cam, g, 1] = m2y
                            depths[cam, g] = pz
                            inv_det = 1.0 / det
                            conics[cam, g, 0] = c * inv_det
                            conics[cam, g, 1] = -b * inv_det
                            conics[cam, g, 2] = a * inv_det
                            if calc_comp:
                                ratio = (c00 * c11 - b * b) / det
                                comp = math.sqrt(ratio) if ratio > 0.0 else 0.0
                if not keep:
                    radii[cam, g] = 0
                    means2d[cam, g, 0] = 0.0
                    means2d[cam, g, 1] = 0.0
                    depths[cam, g] = 0.0
                    conics[cam, g, 0] = 0.0
                    conics[cam, g, 1] = 0.0
                    conics[cam, g, 2] = 0.0
                opac_out[cam, g] = o * comp if calc_comp else o
                if shade:
                    if not keep:  # as the twin: masked SH (0), then + 0.5
                        for k in range(3):
                            colors_out[cam, g, k] = 0.5
                        continue
                    dx = mu0 - cc[0]
                    dy = mu1 - cc[1]
                    dz = mu2 - cc[2]
                    if sh_degree > 0:
                        inv = 1.0 / max(math.sqrt(dx * dx + dy * dy + dz * dz), _NORM_EPS)
                        dx *= inv
                        dy *= inv
                        dz *= inv
                    _sh_basis(sh_degree, dx, dy, dz, Y)
                    r0 = 0.0
                    r1 = 0.0
                    r2 = 0.0
                    b0 = _U(g * K0 * 3)
                    for bb in range(min(n_bases, K0)):
                        i = b0 + _U(bb * 3)
                        y = Y[bb]
                        r0 += y * c0f[i]
                        r1 += y * c0f[i + _U(1)]
                        r2 += y * c0f[i + _U(2)]
                    b1 = _U(g * K1 * 3)
                    for bb in range(K0, n_bases):
                        i = b1 + _U((bb - K0) * 3)
                        y = Y[bb]
                        r0 += y * c1f[i]
                        r1 += y * c1f[i + _U(1)]
                        r2 += y * c1f[i + _U(2)]
                    colors_out[cam, g, 0] = max(r0 + 0.5, 0.0)
                    colors_out[cam, g, 1] = max(r1 + 0.5, 0.0)
                    colors_out[cam, g, 2] = max(r2 + 0.5, 0.0)


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(
    means, quats, scales, opacities, c0, c1, cams, width, height, eps2d,
    calc_comp, sh_degree, raw, radii,
    v_means2d, v_depths, v_conics, v_opac, v_colors, colors_fwd,
    g_means, g_quats, g_scales, g_opacities, g_c0, g_c1,
):  # fmt: skip
    n_blocks = (means.shape[0] + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        _backward_block(
            blk, means, quats, scales, opacities, c0, c1, cams, width, height, eps2d,
            calc_comp, sh_degree, raw, radii, v_means2d, v_depths, v_conics, v_opac, v_colors,
            colors_fwd, g_means, g_quats, g_scales, g_opacities, g_c0, g_c1,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _backward_block(
    blk, means, quats, scales, opacities, c0, c1, cams, width, height, eps2d,
    calc_comp, sh_degree, raw, radii,
    v_means2d, v_depths, v_conics, v_opac, v_colors, colors_fwd,
    g_means, g_quats, g_scales, g_opacities, g_c0, g_c1,
):  # fmt: skip
    N = means.shape[0]
    C = cams.shape[0]
    shade = sh_degree >= 0
    n_bases = (sh_degree + 1) * (sh_degree + 1)
    K0 = c0.shape[1]
    K1 = c1.shape[1]
    c0f = c0.reshape(-1)
    c1f = c1.reshape(-1)
    g_c0f = g_c0.reshape(-1)  # uninitialised on entry: each row is zeroed here, then
    g_c1f = g_c1.reshape(-1)  # accumulated over cameras (bands above sh_degree stay 0)
    if True:
        Y = np.zeros(16)
        w = np.zeros(16)
        gd = np.empty(3)
        for g in range(blk * _BLOCK, min(N, (blk + 1) * _BLOCK)):
            for i in range(_U(g * K0 * 3), _U((g + 1) * K0 * 3)):
                g_c0f[i] = 0.0
            for i in range(_U(g * K1 * 3), _U((g + 1) * K1 * 3)):
                g_c1f[i] = 0.0
            q, qn, R, s, M, o = _gaussian(g, quats, scales, opacities, raw)
            Sig = _mmt(M, M)
            mu0 = float(means[g, 0])
            mu1 = float(means[g, 1])
            mu2 = float(means[g, 2])
            vmu0 = 0.0
            vmu1 = 0.0
            vmu2 = 0.0
            v_o = 0.0
            vSig = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for cam in range(C):
                if not calc_comp:
                    v_o += float(v_opac[cam, g])
                if radii[cam, g] <= 0:
                    continue
                Rc, t, fx, fy, _cx, _cy, lims, cc = _camera(cams, cam)
                px = Rc[0] * mu0 + Rc[1] * mu1 + Rc[2] * mu2 + t[0]
                py = Rc[3] * mu0 + Rc[4] * mu1 + Rc[5] * mu2 + t[1]
                pz = Rc[6] * mu0 + Rc[7] * mu1 + Rc[8] * mu2 + t[2]
                Sc = _mmt(_mm(Rc, Sig), Rc)
                rz, u, v, x_in, y_in, J00, J02, J11, J12 = _jacobian(px, py, pz, fx, fy, lims)
                c00, c01, c11 = _cov2d(J00, J02, J11, J12, Sc)
                a = c00 + eps2d
                b = c01
                c = c11 + eps2d
                det = a * c - b * b
                id2 = 1.0 / (det * det)
                # conic (A, B, C) = (c, -b, a) / det
                vA = float(v_conics[cam, g, 0])
                vB = float(v_conics[cam, g, 1])
                vC = float(v_conics[cam, g, 2])
                va = (-vA * c * c + vB * b * c - vC * b * b) * id2
                vb = (2.0 * vA * b * c - vB * (det + 2.0 * b * b) + 2.0 * vC * a * b) * id2
                vc = (-vA * b * b + vB * a * b - vC * a * a) * id2
                if calc_comp:
                    det0 = c00 * c11 - b * b
                    ratio = det0 / det
                    comp = math.sqrt(ratio) if ratio > 0.0 else 0.0
                    vop = float(v_opac[cam, g])
                    v_o += comp * vop
                    if ratio > 0.0:
                        vr = o * vop * 0.5 / comp
                        va += vr * (c11 * det - det0 * c) * id2
                        vc += vr * (c00 * det - det0 * a) * id2
                        vb += vr * (-2.0 * b * (det - det0)) * id2
                # cov2d = J Sc J^T with gradient G2 = [[va, h], [h, vc]], h = vb / 2
                h = 0.5 * vb
                vSc = (
                    va * J00 * J00, h * J00 * J11, va * J00 * J02 + h * J00 * J12,
                    h * J11 * J00, vc * J11 * J11, h * J11 * J02 + vc * J11 * J12,
                    va * J02 * J00 + h * J12 * J00, h * J02 * J11 + vc * J12 * J11,
                    va * J02 * J02 + 2.0 * h * J02 * J12 + vc * J12 * J12,
                )  # fmt: skip
                # v_J = 2 G2 J Sc (rows of J Sc: JS0 = J00 Sc[0,:] + J02 Sc[2,:], JS1 = J11 Sc[1,:] + J12 Sc[2,:])
                js00 = J00 * Sc[0] + J02 * Sc[6]
                js01 = J00 * Sc[1] + J02 * Sc[7]
                js02 = J00 * Sc[2] + J02 * Sc[8]
                js10 = J11 * Sc[3] + J12 * Sc[6]
                js11 = J11 * Sc[4] + J12 * Sc[7]
                js12 = J11 * Sc[5] + J12 * Sc[8]
                vJ00 = 2.0 * (va * js00 + h * js10)
                vJ02 = 2.0 * (va * js02 + h * js12)
                vJ11 = 2.0 * (h * js01 + vc * js11)
                vJ12 = 2.0 * (h * js02 + vc * js12)
                vmx = float(v_means2d[cam, g, 0])
                vmy = float(v_means2d[cam, g, 1])
                rz2 = rz * rz
                vpx = fx * rz * vmx
                vpy = fy * rz * vmy
                vpz = -(fx * px * vmx + fy * py * vmy) * rz2 + float(v_depths[cam, g])
                vpz += -fx * rz2 * vJ00 - fy * rz2 * vJ11
                if x_in:  # J02 = -fx x / z^2
                    vpx += -fx * rz2 * vJ02
                    vpz += 2.0 * fx * px * rz2 * rz * vJ02
                else:  # J02 = -fx u / z with u fixed at the FoV limit
                    vpz += fx * u * rz2 * vJ02
                if y_in:
                    vpy += -fy * rz2 * vJ12
                    vpz += 2.0 * fy * py * rz2 * rz * vJ12
                else:
                    vpz += fy * v * rz2 * vJ12
                # world: p = Rc mu + t, Sc = Rc Sig Rc^T
                vmu0 += Rc[0] * vpx + Rc[3] * vpy + Rc[6] * vpz
                vmu1 += Rc[1] * vpx + Rc[4] * vpy + Rc[7] * vpz
                vmu2 += Rc[2] * vpx + Rc[5] * vpy + Rc[8] * vpz
                d = _mm(_mtm(Rc, vSc), Rc)
                vSig = (
                    vSig[0] + d[0], vSig[1] + d[1], vSig[2] + d[2], vSig[3] + d[3], vSig[4] + d[4],
                    vSig[5] + d[5], vSig[6] + d[6], vSig[7] + d[7], vSig[8] + d[8],
                )  # fmt: skip
                if shade:
                    dx = mu0 - cc[0]
                    dy = mu1 - cc[1]
                    dz = mu2 - cc[2]
                    nrm = math.sqrt(dx * dx + dy * dy + dz * dz)
                    inv = 1.0
                    if sh_degree > 0:
                        inv = 1.0 / max(nrm, _NORM_EPS)
                        dx *= inv
                        dy *= inv
                        dz *= inv
                    _sh_basis(sh_degree, dx, dy, dz, Y)
                    # clamp_min(SH + 0.5, 0) passes the gradient where SH + 0.5 >= 0: where the
                    # forward colour is > 0 (== 0 only when clamped, up to an exact 0)
                    v0 = float(v_colors[cam, g, 0]) if colors_fwd[cam, g, 0] > 0.0 else 0.0
                    v1 = float(v_colors[cam, g, 1]) if colors_fwd[cam, g, 1] > 0.0 else 0.0
                    v2 = float(v_colors[cam, g, 2]) if colors_fwd[cam, g, 2] > 0.0 else 0.0
                    b0 = _U(g * K0 * 3)
                    for bb in range(min(n_bases, K0)):
                        i = b0 + _U(bb * 3)
                        y = Y[bb]
                        g_c0f[i] += y * v0
                        g_c0f[i + _U(1)] += y * v1
                        g_c0f[i + _U(2)] += y * v2
                        w[bb] = c0f[i] * v0 + c0f[i + _U(1)] * v1 + c0f[i + _U(2)] * v2
                    b1 = _U(g * K1 * 3)
                    for bb in range(K0, n_bases):
                        i = b1 + _U((bb - K0) * 3)
                        y = Y[bb]
                        g_c1f[i] += y * v0
                        g_c1f[i + _U(1)] += y * v1
                        g_c1f[i + _U(2)] += y * v2
                        w[bb] = c1f[i] * v0 + c1f[i + _U(1)] * v1 + c1f[i + _U(2)] * v2
                    if sh_degree > 0:
                        _sh_basis_grad(sh_degree, dx, dy, dz, w, gd)
                        dot = gd[0] * dx + gd[1] * dy + gd[2] * dz
                        if nrm > _NORM_EPS:
                            vmu0 += (gd[0] - dx * dot) * inv
                            vmu1 += (gd[1] - dy * dot) * inv
                            vmu2 += (gd[2] - dz * dot) * inv
                        else:  # F.normalize below eps: dirs / eps, no projection term
                            vmu0 += gd[0] * inv
                            vmu1 += gd[1] * inv
                            vmu2 += gd[2] * inv
            g_means[g, 0] = vmu0
            g_means[g, 1] = vmu1
            g_means[g, 2] = vmu2
            # Sigma = M M^T, M = R diag(s): v_M = (vSig + vSig^T) M
            vS2 = (
                2.0 * vSig[0], vSig[1] + vSig[3], vSig[2] + vSig[6],
                vSig[3] + vSig[1], 2.0 * vSig[4], vSig[5] + vSig[7],
                vSig[6] + vSig[2], vSig[7] + vSig[5], 2.0 * vSig[8],
            )  # fmt: skip
            vM = _mm(vS2, M)
            s0, s1, s2 = s
            vs0 = vM[0] * R[0] + vM[3] * R[3] + vM[6] * R[6]
            vs1 = vM[1] * R[1] + vM[4] * R[4] + vM[7] * R[7]
            vs2 = vM[2] * R[2] + vM[5] * R[5] + vM[8] * R[8]
            g_scales[g, 0] = vs0 * s0 if raw else vs0
            g_scales[g, 1] = vs1 * s1 if raw else vs1
            g_scales[g, 2] = vs2 * s2 if raw else vs2
            # v_R = v_M diag(s); quaternion (unit) then its normalisation
            w_, x, y, z = q
            r00, r01, r02 = vM[0] * s0, vM[1] * s1, vM[2] * s2
            r10, r11, r12 = vM[3] * s0, vM[4] * s1, vM[5] * s2
            r20, r21, r22 = vM[6] * s0, vM[7] * s1, vM[8] * s2
            gw = 2.0 * (-z * r01 + y * r02 + z * r10 - x * r12 - y * r20 + x * r21)
            gx = 2.0 * (y * r01 + z * r02 + y * r10 - 2.0 * x * r11 - w_ * r12 + z * r20 + w_ * r21 - 2.0 * x * r22)
            gy = 2.0 * (-2.0 * y * r00 + x * r01 + w_ * r02 + x * r10 + z * r12 - w_ * r20 + z * r21 - 2.0 * y * r22)
            gz = 2.0 * (-2.0 * z * r00 - w_ * r01 + x * r02 + w_ * r10 - 2.0 * z * r11 + y * r12 + x * r20 + y * r21)
            if qn > _NORM_EPS:
                dot = gw * w_ + gx * x + gy * y + gz * z
                iq = 1.0 / qn
                g_quats[g, 0] = (gw - w_ * dot) * iq
                g_quats[g, 1] = (gx - x * dot) * iq
                g_quats[g, 2] = (gy - y * dot) * iq
                g_quats[g, 3] = (gz - z * dot) * iq
            else:
                iq = 1.0 / _NORM_EPS
                g_quats[g, 0] = gw * iq
                g_quats[g, 1] = gx * iq
                g_quats[g, 2] = gy * iq
                g_quats[g, 3] = gz * iq
            g_opacities[g] = v_o * o * (1.0 - o) if raw else v_o


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


class _ProjectShade(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, means, quats, scales, opacities, coeffs0, coeffs1, viewmats, Ks,
        width, height, eps2d, near_plane, far_plane, radius_clip, calc_compensations,
        radius_sigmas, sh_degree, raw,
    ):  # fmt: skip
        N = means.shape[0]
        C = viewmats.shape[0]
        dtype = means.dtype
        npd = np.float32 if dtype == torch.float32 else np.float64
        shade = sh_degree is not None
        radii = np.empty((C, N), np.int32)
        means2d = np.empty((C, N, 2), npd)
        depths = np.empty((C, N), npd)
        conics = np.empty((C, N, 3), npd)
        opac = np.empty((C, N), npd)
        colors = np.empty((C, N, 3) if shade else (C, 0, 3), npd)
        arrays = [_np(t) for t in (means, quats, scales, opacities, coeffs0, coeffs1)]
        arrays.append(_camera_table(viewmats, Ks, width, height))
        _forward_kernel(
            *arrays, float(width), float(height), float(eps2d), float(near_plane), float(far_plane),
            float(radius_clip), bool(calc_compensations), float(radius_sigmas),
            -1 if not shade else int(sh_degree), bool(raw),
            radii, means2d, depths, conics, opac, colors,
        )  # fmt: skip
        ctx.arrays = arrays
        ctx.radii = radii
        ctx.colors = colors
        ctx.meta = (width, height, float(eps2d), bool(calc_compensations), sh_degree, bool(raw))
        ctx.mark_non_differentiable(radii_t := torch.from_numpy(radii))
        outs = [torch.from_numpy(a) for a in (means2d, depths, conics, opac)]
        colors_t = torch.from_numpy(colors) if shade else None
        return radii_t, *outs, colors_t

    @staticmethod
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_opac, v_colors):
        width, height, eps2d, calc_comp, sh_degree, raw = ctx.meta
        means, quats, scales, opacities, c0, c1, cams = ctx.arrays
        C, N = ctx.radii.shape
        npd = means.dtype
        shade = sh_degree is not None

        def arr(v, shape):
            return np.zeros(shape, npd) if v is None else _np(v.to(torch.float32 if npd == np.float32 else torch.float64))

        g = [buffers.empty(a.shape, npd) for a in (means, quats, scales, opacities)]
        g_c0 = buffers.empty(c0.shape, npd)  # rows zeroed in the kernel
        g_c1 = buffers.empty(c1.shape, npd)
        _backward_kernel(
            means, quats, scales, opacities, c0, c1, cams, float(width), float(height),
            eps2d, calc_comp, -1 if not shade else int(sh_degree), raw, ctx.radii,
            arr(v_means2d, (C, N, 2)), arr(v_depths, (C, N)), arr(v_conics, (C, N, 3)),
            arr(v_opac, (C, N)), arr(v_colors, (C, N, 3)) if shade else np.zeros((C, 0, 3), npd), ctx.colors,
            *g, g_c0, g_c1,
        )  # fmt: skip
        grads = [torch.from_numpy(x) for x in g]
        g0 = torch.from_numpy(g_c0) if shade else None
        g1 = torch.from_numpy(g_c1) if shade and c1.shape[1] > 0 else None
        return (*grads, g0, g1) + (None,) * 12


def _check_common(means, viewmats, Ks, what):
    for name, x in (("means", means), ("viewmats", viewmats), ("Ks", Ks)):
        if not isinstance(x, Tensor) or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{what}: {name} must be a float32/float64 CPU tensor")


def project_and_shade(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, normalised here
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor | None,  # [N, K, 3] SH coefficients, or None
    viewmats: Tensor,  # [C, 4, 4] (no gradient)
    Ks: Tensor,  # [C, 3, 3] (no gradient)
    width: int,
    height: int,
    sh_degree: int | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    radius_sigmas: float = 3.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Numba twin of ``rasterize.project_and_shade_torch`` (same arguments and outputs).

    Returns:
        radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], opacities
        [C, N] (times the compensation when ``calc_compensations``), colours [C, N, 3]
        (``max(SH + 0.5, 0)``, zero where culled) or None when ``sh_degree`` is None.
        Differentiable w.r.t. means, quats, scales, opacities and colors.
    """
    _check_common(means, viewmats, Ks, "project_and_shade")
    if sh_degree is None:
        colors = means.new_zeros(means.shape[0], 0, 3)
    empty = colors.new_zeros(colors.shape[0], 0, 3)
    return _ProjectShade.apply(
        means, quats, scales, opacities, colors, empty, viewmats, Ks, width, height, eps2d,
        near_plane, far_plane, radius_clip, calc_compensations, radius_sigmas, sh_degree, False,
    )  # fmt: skip


def project_and_shade_raw(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, raw (normalised here)
    log_scales: Tensor,  # [N, 3]
    opacity_logits: Tensor,  # [N]
    sh0: Tensor,  # [N, 1, 3]
    shN: Tensor,  # [N, K - 1, 3]
    viewmats: Tensor,  # [C, 4, 4] (no gradient)
    Ks: Tensor,  # [C, 3, 3] (no gradient)
    width: int,
    height: int,
    sh_degree: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    radius_sigmas: float = 3.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``project_and_shade`` on raw trainer parameters: scales ``exp(log_scales)``, opacities
    ``sigmoid(opacity_logits)``, SH coefficients ``cat([sh0, shN[:, :(d+1)^2 - 1]])`` — the
    activations of ``GaussianModel.activated(d)`` — applied inside the kernels. Gradients go to
    the raw tensors (``shN`` bands above ``sh_degree`` get zeros)."""
    _check_common(means, viewmats, Ks, "project_and_shade_raw")
    return _ProjectShade.apply(
        means, quats, log_scales, opacity_logits, sh0, shN, viewmats, Ks, width, height, eps2d,
        near_plane, far_plane, radius_clip, calc_compensations, radius_sigmas, sh_degree, True,
    )  # fmt: skip


@njit(parallel=True, cache=True, error_model="numpy")
def _accumulate_kernel(grads, radii, sx, sy, grad2d, count):
    C, N = radii.shape
    for g in prange(N):
        for cam in range(C):
            if radii[cam, g] > 0:
                gx = grads[cam, g, 0] * sx
                gy = grads[cam, g, 1] * sy
                grad2d[g] += math.sqrt(gx * gx + gy * gy)
                count[g] += 1.0


@torch.no_grad()
def accumulate_grad2d(
    grad2d: Tensor,  # [N] float32, updated in place
    count: Tensor,  # [N] float32, updated in place
    grads: Tensor,  # [C, N, 2] d loss / d means2d (or absgrad)
    radii: Tensor,  # [C, N] int
    width: int,
    height: int,
) -> None:
    """Densification statistics of ``DensifyStrategy._accumulate`` (non-packed) in one pass:
    for every (camera, Gaussian) with radius > 0, ``grad2d += |grads * (W/2 * C, H/2 * C)|``
    and ``count += 1``. Twin: the strategy's torch code (norm, nonzero, index_add_)."""
    C, N = radii.shape
    if grads.shape != (C, N, 2) or grad2d.shape != (N,) or count.shape != (N,):
        raise ValueError(
            f"accumulate_grad2d: expected grads [C={C}, N={N}, 2], grad2d and count [N], given "
            f"{list(grads.shape)}, {list(grad2d.shape)}, {list(count.shape)}"
        )
    if not (grad2d.dtype == count.dtype == torch.float32 and grad2d.is_contiguous() and count.is_contiguous()):
        raise ValueError("accumulate_grad2d: grad2d and count must be contiguous float32")
    _accumulate_kernel(
        _np(grads.to(torch.float32)), _np(radii.to(torch.int32)), np.float32(width / 2.0 * C),
        np.float32(height / 2.0 * C), grad2d.numpy(), count.numpy(),
    )  # fmt: skip


def warmup() -> float:
    """Compile (or load from the numba cache) the kernels for float32; returns seconds."""
    import time

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    means = (torch.rand(4, 3, generator=g) + torch.tensor([0.0, 0.0, 2.0])).requires_grad_()
    quats = torch.randn(4, 4, generator=g).requires_grad_()
    scales = torch.full((4, 3), 0.1).requires_grad_()
    opac = torch.full((4,), 0.5).requires_grad_()
    sh = torch.randn(4, 16, 3, generator=g).requires_grad_()
    vm = torch.eye(4)[None]
    K = torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]])
    for aa in (False, True):
        out = project_and_shade(means, quats, scales, opac, sh, vm, K, 8, 8, 3, calc_compensations=aa)
        sum(o.sum() for o in out[1:]).backward()
        out = project_and_shade_raw(means, quats, scales, opac, sh[:, :1], sh[:, 1:], vm, K, 8, 8, 3, calc_compensations=aa)
        sum(o.sum() for o in out[1:]).backward()
    return time.perf_counter() - t0
