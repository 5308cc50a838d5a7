"""Fast CPU tile compositor: numba kernels behind a ``torch.autograd.Function``.

Same signature and rules as the reference twin ``raster_torch.rasterize_to_pixels`` (see its
module docstring for the alpha/additive compositing rules); this module also holds the numba
twin of ``tiles.isect_tiles`` (``bin_gaussians``).

Design
------
* Binning (no global sort, no atomics): Gaussians are cut into blocks; each block counts its
  tile hits (parallel over blocks), an exclusive scan over (camera, tile, block) gives every
  block its own write cursor per tile, the blocks scatter their Gaussian ids (parallel), and
  each tile's short list is sorted by the key ``depth bits << 32 | Gaussian id`` (parallel over
  tiles). Unique keys make the result the stable depth order of the torch twin.
* Forward: one task per (camera, tile), scheduled dynamically (chunk size 1) over the numba
  threads. Inside a tile, Gaussians are the outer loop (front to back); for each one only the
  rows of its ellipse (where a term can pass the threshold) and the 8-pixel column chunks that
  its ellipse overlaps are visited. The 8 pixels of a chunk are one SIMD vector: the loop body
  is branch-free (selects instead of ifs) with a vectorisable ``exp`` (Cody-Waite reduction,
  Cephes polynomial, the power of two built from bit selects; 1.4 ulp), so LLVM emits AVX2
  code for it. Per-pixel state (transmittance, colour, last contributing index, alive flag)
  lives in small per-tile float32 arrays, rows with no live pixel are skipped and a tile stops
  when all its pixels have.
* Backward: back to front per tile, recovering T by division from the final transmittance
  (float32, as gsplat). The same inlined arithmetic as the forward (no fast-math, no FMA
  contraction) gives bit-identical alpha decisions. Per-lane gradient accumulators (no
  horizontal reductions in the hot loop) are summed once per (tile, Gaussian) into that
  intersection's own slot row: no races, no atomics, deterministic. Slots are then summed per
  Gaussian in intersection order, in parallel over Gaussians (a counting sort of the
  intersections by Gaussian gives each one its list).
* Kernels compute in float32 on float32 arrays (int32 ids, int64 offsets), so each is compiled
  once (``cache=True``: the first ever call compiles, ~1 min on two busy cores, and caches;
  later processes load in ~1 s). ``parallel_chunksize`` is set to 1 only around the per-tile
  loops.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic
from torch import Tensor

from .raster_torch import (
    ADDITIVE_SIGMA_CUT,
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    COMPOSITING_MODES,
    TRANSMITTANCE_EPS,
    check_raster_inputs,
)
from .tiles import depth_bits

__all__ = ["bin_gaussians", "rasterize_to_pixels", "exp_neg", "warmup"]

# Slot layout of the per-intersection gradient rows: [v_xy(2), v_conic(3), v_opac, |v_xy|(2), v_colors(D)]
_S_XY, _S_CON, _S_OP, _S_ABS, _S_COL = 0, 2, 5, 6, 8

_BBOX_REL = 1e-6  # relative slack on the sigma cut (pixel ranges only bound the exact tests)
_BBOX_PAD = 1e-3  # pixels of slack on the pixel ranges
_LANES = 8  # pixels per SIMD chunk (AVX2: 8 float32)
_BIN_BLOCK = 4096  # Gaussians per binning block

# float32 constants: numba keeps float32 arithmetic only when every operand is float32
_F = np.float32
_ZERO = _F(0.0)
_ONE = _F(1.0)
_HALF = _F(0.5)
_AMAX = _F(ALPHA_MAX)
_ATHR = _F(ALPHA_THRESHOLD)
_TEPS = _F(TRANSMITTANCE_EPS)
_ACUT = _F(ADDITIVE_SIGMA_CUT)
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
_EXP_ARG_MAX = _F(43.0)  # exp(-43) ~ 2e-19: far below every threshold
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_BIAS, _MANT = np.int32(127), np.int32(23)  # float32 exponent bias and mantissa bits


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (LLVM bitcast: free, vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return sig, codegen


@njit(inline="always", cache=True, error_model="numpy")
def exp_neg(s):
    """``exp(-s)`` for a float32 ``s`` (clamped to [0, 43]), vectorisable by LLVM.

    Cody-Waite reduction ``s = n ln2 - r``, Cephes' degree-7 polynomial for ``exp(r)`` and
    ``2^-n`` from its IEEE bits. Max relative error 7.2e-8 (1.2 ulp) against float64.
    """
    s = s if s > _ZERO else _ZERO  # selects, not min/max: those are calls to LLVM
    s = s if s < _EXP_ARG_MAX else _EXP_ARG_MAX
    n = np.int32(s * _LOG2E + _HALF)
    fn = _F(n)
    r = (fn * _LN2_HI - s) + fn * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE
    return p * _bits_to_f32(np.int32((_BIAS - n) << _MANT))


@njit(inline="always", cache=True, error_model="numpy")
def _clamp_alpha(x):
    return x if x < _AMAX else _AMAX


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _rect(mx, my, r, tile_size, tile_width, tile_height):
    """gsplat's tile rectangle, in float32 exactly as ``tiles.tile_rects`` computes it."""
    ts = _F(tile_size)
    tmx = _F(mx) / ts
    tmy = _F(my) / ts
    tr = _F(r) / ts
    x_min = min(max(math.floor(tmx - tr), 0.0), tile_width)
    y_min = min(max(math.floor(tmy - tr), 0.0), tile_height)
    x_max = min(max(math.ceil(tmx + tr), 0.0), tile_width)
    y_max = min(max(math.ceil(tmy + tr), 0.0), tile_height)
    return int(x_min), int(y_min), int(x_max), int(y_max)


@njit(parallel=True, cache=True, error_model="numpy")
def _bin_count(means2d, radii, tile_size, tile_width, tile_height, n_blocks, block):
    """Rectangles [C, N, 4] and tile hits per (camera, block, tile), parallel over blocks."""
    C, N = radii.shape
    n_tiles = tile_width * tile_height
    rects = np.zeros((C, N, 4), np.int32)
    counts = np.zeros((C, n_blocks, n_tiles), np.int64)
    for job in prange(C * n_blocks):
        cam = job // n_blocks
        blk = job - cam * n_blocks
        for g in range(blk * block, min(N, (blk + 1) * block)):
            r = radii[cam, g]
            if r <= 0:
                continue
            x0, y0, x1, y1 = _rect(means2d[cam, g, 0], means2d[cam, g, 1], r, tile_size, tile_width, tile_height)
            rects[cam, g, 0] = x0
            rects[cam, g, 1] = y0
            rects[cam, g, 2] = x1
            rects[cam, g, 3] = y1
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[cam, blk, ty * tile_width + tx] += 1
    return rects, counts


@njit(parallel=True, cache=True, error_model="numpy")
def _bin_scatter(rects, dbits, cursor, tile_width, n_blocks, block, n_bits, flatten_ids, keys):
    """Write each block's hits at its own cursors (Gaussian order inside a block)."""
    C, N = dbits.shape
    n_tiles = cursor.shape[2]
    for job in prange(C * n_blocks):
        cam = job // n_blocks
        blk = job - cam * n_blocks
        c64 = np.int64(cam)
        for g in range(blk * block, min(N, (blk + 1) * block)):
            for ty in range(rects[cam, g, 1], rects[cam, g, 3]):
                for tx in range(rects[cam, g, 0], rects[cam, g, 2]):
                    tile = ty * tile_width + tx
                    pos = cursor[cam, blk, tile]
                    cursor[cam, blk, tile] = pos + 1
                    flatten_ids[pos] = np.int32(c64 * N + g)
                    keys[pos] = (dbits[cam, g] << 32) | np.int64(g)


@njit(parallel=True, cache=True, error_model="numpy")
def _bin_sort(keys, offsets, n_tiles, n_bits, flatten_ids, isect_ids):
    """Sort each tile's hits by (depth bits, Gaussian id) and build gsplat's 64-bit ids."""
    n_all = offsets.shape[0] - 1
    N_mask = np.int64(0xFFFFFFFF)
    for t in prange(n_all):
        s = offsets[t]
        e = offsets[t + 1]
        if e - s == 0:
            continue
        cam = np.int64(t // n_tiles)
        tile = np.int64(t - cam * n_tiles)
        k = np.sort(keys[s:e])
        base = flatten_ids[s] - (keys[s] & N_mask)  # camera offset cam * N (same for the tile)
        for i in range(e - s):
            g = k[i] & N_mask
            flatten_ids[s + i] = np.int32(base + g)
            isect_ids[s + i] = (cam << (32 + n_bits)) | (tile << 32) | (k[i] >> 32)


@njit(cache=True, error_model="numpy")
def _bin_offsets(counts):
    """Exclusive scan over (camera, tile, block): cursors [C, B, T] and tile offsets [C*T + 1]."""
    C, B, T = counts.shape
    cursor = np.empty((C, B, T), np.int64)
    offsets = np.empty(C * T + 1, np.int64)
    run = np.int64(0)
    for cam in range(C):
        for t in range(T):
            offsets[cam * T + t] = run
            for b in range(B):
                cursor[cam, b, t] = run
                run += counts[cam, b, t]
    offsets[C * T] = run
    return cursor, offsets


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N] int
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Numba twin of ``tiles.isect_tiles`` + ``tiles.isect_offset_encode``.

    Returns:
        tiles_per_gauss [C, N] int32, isect_ids [M] int64, flatten_ids [M] int32,
        isect_offsets [C, tile_height, tile_width] int32.
    """
    C, N = radii.shape
    n_blocks = max(1, -(-N // _BIN_BLOCK))
    m2d = means2d.detach().to(torch.float32).contiguous().numpy()
    rad = radii.to(torch.int32).contiguous().numpy()
    rects, counts = _bin_count(m2d, rad, int(tile_size), int(tile_width), int(tile_height), n_blocks, _BIN_BLOCK)
    cursor, offsets = _bin_offsets(counts)
    M = int(offsets[-1])
    flatten_ids = np.empty(M, np.int32)
    keys = np.empty(M, np.int64)
    n_bits = (tile_width * tile_height).bit_length()
    _bin_scatter(rects, depth_bits(depths).contiguous().numpy(), cursor, int(tile_width), n_blocks, _BIN_BLOCK,
                 n_bits, flatten_ids, keys)  # fmt: skip
    isect_ids = np.empty(M, np.int64)
    with _Dynamic():
        _bin_sort(keys, offsets, tile_width * tile_height, n_bits, flatten_ids, isect_ids)
    tiles_per_gauss = (rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])
    isect_offsets = torch.from_numpy(offsets[:-1].astype(np.int32)).reshape(C, tile_height, tile_width)
    return (
        torch.from_numpy(tiles_per_gauss.astype(np.int32)),
        torch.from_numpy(isect_ids),
        torch.from_numpy(flatten_ids),
        isect_offsets,
    )


# --------------------------------------------------------------------------------------------
# Compositing kernels
# --------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _cut_for(op, additive):
    """Largest sigma at which a term can still count (alpha >= 1/255, or the additive cutoff),
    slightly enlarged: the ranges it gives only bound the exact per-pixel tests."""
    if additive:
        cut = ADDITIVE_SIGMA_CUT
    elif op < ALPHA_THRESHOLD:
        return -1.0
    else:
        cut = math.log(op / ALPHA_THRESHOLD)
    return cut * (1.0 + _BBOX_REL) + _BBOX_REL


@njit(cache=True, error_model="numpy")
def _ranges(mx, my, a, b, c, cut, x0, y0, x1, y1):
    """Rows [ys, ye] and 8-pixel chunks [cs, ce] of the tile (x0, y0, x1, y1) where a pixel
    centre may satisfy sigma <= cut (the ellipse's bounding box, with slack)."""
    if cut < 0.0:
        return 0, -1, 0, -1
    det = a * c - b * b
    if det <= 0.0 or a <= 0.0 or c <= 0.0:
        return y0, y1 - 1, 0, (x1 - x0 - 1) // _LANES
    ry = math.sqrt(2.0 * cut * a / det) + _BBOX_PAD  # max |dy| on the ellipse: sqrt(2 cut Sigma_yy)
    rx = math.sqrt(2.0 * cut * c / det) + _BBOX_PAD
    ys = max(float(y0), math.ceil(my - ry - 0.5))
    ye = min(float(y1 - 1), math.floor(my + ry - 0.5))
    xs = max(float(x0), math.ceil(mx - rx - 0.5))
    xe = min(float(x1 - 1), math.floor(mx + rx - 0.5))
    if ys > ye or xs > xe:
        return 0, -1, 0, -1
    return int(ys), int(ye), (int(xs) - x0) // _LANES, (int(xe) - x0) // _LANES


# Per-tile scratch: one float32 array of fields, each _FS pixels long, indexed by unsigned
# pixel positions. Unsigned indices spare numba's negative-index fix-up (which LLVM cannot
# analyse) and the constant field stride lets LLVM prove that fields never overlap, so the
# lane loops vectorise (8 float32 lanes, AVX2) without runtime alias checks. RGB (D = 3) has
# one fused loop per row; other channel counts run the channels in loops of their own.
_U = np.uint64
_BLOCK = 32  # tiles larger than this are composited in blocks of at most 32 x 32 pixels
_FS = _U(_BLOCK * _BLOCK)
# forward fields: transmittance (or weight sum), alive, weight, last contributing index
# (relative to the tile's first, plus one; exact in float32 below 2^24), then D channels
_FT, _FA, _FW, _FL, _FC = _U(0), _FS, _U(2) * _FS, _U(3) * _FS, _U(4) * _FS
_MAX_TILE_LIST = 1 << 24
# backward fields: running T, final T, d/d alpha_render, then D of d/d colour and D of the
# colour behind the current Gaussian; temporaries of the multi-loop (D != 3) path after them
_BT, _BTF, _BVA, _BVC = _U(0), _FS, _U(2) * _FS, _U(3) * _FS
_N_BFIELDS_FIXED = 3
_N_TMP = 7  # dx, e, T*use, ra*use, weight, d/d alpha, geometry mask
_LW = _U(_BLOCK)  # lane accumulators: one row of _BLOCK lanes per slot field
_LXY, _LCON, _LOP, _LABS, _LCOL = (_U(i) * _LW for i in (_S_XY, _S_CON, _S_OP, _S_ABS, _S_COL))


@njit(cache=True, error_model="numpy")
def _forward_block(
    cam, x0, y0, x1, y1, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids,
    start, end, additive, out_colors, out_alphas, t_final, last_ids, S, px, row_alive,
):  # fmt: skip
    n_rows = y1 - y0
    n_cols = x1 - x0
    PW = -(-n_cols // _LANES) * _LANES  # row pitch: whole chunks; lanes past x1 are never alive
    D = colors.shape[1]
    rgb = D == 3 and not additive
    init = _ZERO if additive else _ONE
    for r in range(n_rows):
        for j in range(PW):
            p = _U(r * PW + j)
            S[_FT + p] = init
            S[_FA + p] = _ONE if j < n_cols else _ZERO
            S[_FW + p] = _ZERO
            S[_FL + p] = _ZERO
            for k in range(D):
                S[_FC + _U(k) * _FS + p] = _ZERO
        row_alive[r] = n_cols
    for j in range(PW):
        px[j] = _F(x0 + j) + _HALF
    n_alive = n_rows * n_cols
    for idx in range(start, end):
        g = flatten_ids[idx]
        op = opacities[g]
        mx = means2d[g, 0]
        my = means2d[g, 1]
        a = conics[g, 0]
        b = conics[g, 1]
        c = conics[g, 2]
        ys, ye, cs, ce = _ranges(float(mx), float(my), float(a), float(b), float(c),
                                 _cut_for(float(op), additive), x0, y0, x1, y1)  # fmt: skip
        rel = _F(idx - start + 1)
        c0 = colors[g, 0]
        c1 = colors[g, 1] if D > 1 else _ZERO
        c2 = colors[g, 2] if D > 2 else _ZERO
        for y in range(ys, ye + 1):
            r = y - y0
            if row_alive[r] == 0:
                continue
            dy = my - (_F(y) + _HALF)
            rb = _U(r * PW)
            lo = rb + _U(cs * _LANES)
            hi = rb + _U((ce + 1) * _LANES)
            any_stop = False
            if rgb:
                for p in range(lo, hi):
                    dx = mx - px[p - rb]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = _clamp_alpha(op * exp_neg(sigma))
                    al = S[_FA + p]
                    ok = (sigma >= _ZERO) & (alpha >= _ATHR) & (al > _ZERO)
                    tc = S[_FT + p]
                    keep = _ONE - alpha
                    nt = tc * keep
                    stop = ok & (nt <= _TEPS)
                    contrib = ok & (nt > _TEPS)
                    cf = _ONE if contrib else _ZERO
                    w = alpha * tc * cf
                    S[_FT + p] = tc * (keep if contrib else _ONE)
                    S[_FA + p] = al * (_ZERO if stop else _ONE)
                    lf = S[_FL + p]
                    S[_FL + p] = lf + (rel - lf) * cf
                    S[_FC + p] += w * c0
                    S[_FC + _FS + p] += w * c1
                    S[_FC + _U(2) * _FS + p] += w * c2
                    any_stop = any_stop | stop
            elif additive:
                for p in range(lo, hi):
                    dx = mx - px[p - rb]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    inside = (sigma >= _ZERO) & (sigma <= _ACUT) & (S[_FA + p] > _ZERO)
                    w = op * exp_neg(sigma) if inside else _ZERO
                    S[_FW + p] = w
                    S[_FT + p] += w
            else:
                for p in range(lo, hi):
                    dx = mx - px[p - rb]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = _clamp_alpha(op * exp_neg(sigma))
                    al = S[_FA + p]
                    ok = (sigma >= _ZERO) & (alpha >= _ATHR) & (al > _ZERO)
                    tc = S[_FT + p]
                    keep = _ONE - alpha
                    nt = tc * keep
                    stop = ok & (nt <= _TEPS)
                    contrib = ok & (nt > _TEPS)
                    cf = _ONE if contrib else _ZERO
                    S[_FW + p] = alpha * tc * cf
                    S[_FT + p] = tc * (keep if contrib else _ONE)
                    S[_FA + p] = al * (_ZERO if stop else _ONE)
                    lf = S[_FL + p]
                    S[_FL + p] = lf + (rel - lf) * cf
                    any_stop = any_stop | stop
            if not rgb:
                for k in range(D):
                    ck = colors[g, k]
                    fk = _FC + _U(k) * _FS
                    for p in range(lo, hi):
                        S[fk + p] += S[_FW + p] * ck
            if any_stop:  # rare: recount the row's live pixels
                n = 0
                for p in range(rb, rb + _U(PW)):
                    n += 1 if S[_FA + p] > _ZERO else 0
                n_alive -= row_alive[r] - n
                row_alive[r] = n
        if n_alive == 0 and not additive:
            break
    for r in range(n_rows):
        y = y0 + r
        for j in range(n_cols):
            p = _U(r * PW + j)
            x = x0 + j
            tp = S[_FT + p]
            for k in range(D):
                v = S[_FC + _U(k) * _FS + p]
                if has_bg:
                    v += tp * backgrounds[cam, k]
                out_colors[cam, y, x, k] = v
            out_alphas[cam, y, x] = tp if additive else _ONE - tp
            t_final[cam, y, x] = tp
            last_ids[cam, y, x] = np.int32(start - 1 + np.int64(S[_FL + p])) if S[_FL + p] > _ZERO else -1


@njit(cache=True, error_model="numpy")
def _forward_tile(
    t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, additive,
    out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    cam = t // n_tiles
    tile = t - cam * n_tiles
    ty = tile // tile_width
    tx = tile - ty * tile_width
    tx0 = tx * tile_size
    ty0 = ty * tile_size
    tx1 = min(tx0 + tile_size, width)
    ty1 = min(ty0 + tile_size, height)
    D = colors.shape[1]
    S = np.empty((4 + D) * _BLOCK * _BLOCK, np.float32)
    px = np.empty(_BLOCK, np.float32)
    row_alive = np.empty(_BLOCK, np.int64)
    for y0 in range(ty0, ty1, _BLOCK):
        for x0 in range(tx0, tx1, _BLOCK):
            _forward_block(
                cam, x0, y0, min(x0 + _BLOCK, tx1), min(y0 + _BLOCK, ty1), means2d, conics, colors,
                opacities, backgrounds, has_bg, flatten_ids, offsets[t], offsets[t + 1], additive,
                out_colors, out_alphas, t_final, last_ids, S, px, row_alive,
            )  # fmt: skip


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(
    means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _forward_tile(
            t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
            width, height, tile_size, tile_width, n_tiles, additive,
            out_colors, out_alphas, t_final, last_ids,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _backward_block(
    cam, x0, y0, x1, y1, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids,
    start, end, additive, t_final, last_ids, v_colors, v_alphas, slots, first,
    S, last, px, lane, row_last,
):  # fmt: skip
    n_rows = y1 - y0
    n_cols = x1 - x0
    PW = -(-n_cols // _LANES) * _LANES
    D = colors.shape[1]
    rgb = D == 3 and not additive
    n_slot = slots.shape[1]
    uD = _U(D)
    fbuf = _BVC + uD * _FS  # first colour-behind field
    ftmp = _BVC + _U(2) * uD * _FS  # first temporary field
    f_dx, f_e, f_tc, f_ra = ftmp, ftmp + _FS, ftmp + _U(2) * _FS, ftmp + _U(3) * _FS
    f_fac, f_val, f_geo = ftmp + _U(4) * _FS, ftmp + _U(5) * _FS, ftmp + _U(6) * _FS
    for r in range(n_rows):
        y = y0 + r
        row_last[r] = start - 1
        for j in range(PW):
            p = _U(r * PW + j)
            if j < n_cols:
                x = x0 + j
                tf = t_final[cam, y, x]
                lp = last_ids[cam, y, x] if not additive else np.int32(end - 1)
                bg_dot = _ZERO
                for k in range(D):
                    vck = v_colors[cam, y, x, k]
                    S[_BVC + _U(k) * _FS + p] = vck
                    if has_bg:
                        bg_dot += backgrounds[cam, k] * vck
                va = v_alphas[cam, y, x] - bg_dot
            else:
                tf = _ZERO
                lp = np.int32(-1)
                va = _ZERO
                for k in range(D):
                    S[_BVC + _U(k) * _FS + p] = _ZERO
            S[_BT + p] = tf
            S[_BTF + p] = tf
            S[_BVA + p] = va
            last[p] = lp
            row_last[r] = max(row_last[r], np.int64(lp))
            for k in range(D):
                S[fbuf + _U(k) * _FS + p] = _ZERO
    max_last = start - 1
    for r in range(n_rows):
        max_last = max(max_last, row_last[r])
    for j in range(PW):
        px[j] = _F(x0 + j) + _HALF
    for idx in range(end - 1, start - 1, -1):
        if idx > max_last:
            if first:
                for i in range(n_slot):
                    slots[idx, i] = _ZERO
            continue
        g = flatten_ids[idx]
        op = opacities[g]
        mx = means2d[g, 0]
        my = means2d[g, 1]
        a = conics[g, 0]
        b = conics[g, 1]
        c = conics[g, 2]
        ys, ye, cs, ce = _ranges(float(mx), float(my), float(a), float(b), float(c),
                                 _cut_for(float(op), additive), x0, y0, x1, y1)  # fmt: skip
        if ys > ye or cs > ce:  # nothing of it can count in this block
            if first:
                for i in range(n_slot):
                    slots[idx, i] = _ZERO
            continue
        l0 = _U(cs * _LANES)
        l1 = _U((ce + 1) * _LANES)
        for i in range(n_slot):
            for j in range(_U(i) * _LW + l0, _U(i) * _LW + l1):
                lane[j] = _ZERO
        idx32 = np.int32(idx)
        c0 = colors[g, 0]
        c1 = colors[g, 1] if D > 1 else _ZERO
        c2 = colors[g, 2] if D > 2 else _ZERO
        for y in range(ys, ye + 1):
            r = y - y0
            if idx > row_last[r]:
                continue
            dy = my - (_F(y) + _HALF)
            rb = _U(r * PW)
            lo = rb + _U(cs * _LANES)
            hi = rb + _U((ce + 1) * _LANES)
            if rgb:
                for p in range(lo, hi):
                    j = p - rb  # lane = column in the block
                    dx = mx - px[j]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    e = exp_neg(sigma)
                    ope = op * e
                    alpha = _clamp_alpha(ope)
                    use = (sigma >= _ZERO) & (alpha >= _ATHR) & (last[p] >= idx32)
                    um = _ONE if use else _ZERO
                    ra = _ONE / (_ONE - alpha)
                    tc = S[_BT + p] * (ra if use else _ONE)
                    S[_BT + p] = tc
                    fac = alpha * tc * um
                    tcu = tc * um
                    rau = ra * um
                    v0 = S[_BVC + p]
                    v1 = S[_BVC + _FS + p]
                    v2 = S[_BVC + _U(2) * _FS + p]
                    b0 = S[fbuf + p]
                    b1 = S[fbuf + _FS + p]
                    b2 = S[fbuf + _U(2) * _FS + p]
                    v_alpha = (
                        (c0 * tcu - b0 * rau) * v0 + (c1 * tcu - b1 * rau) * v1
                        + (c2 * tcu - b2 * rau) * v2 + S[_BTF + p] * rau * S[_BVA + p]
                    )  # fmt: skip
                    S[fbuf + p] = b0 + c0 * fac
                    S[fbuf + _FS + p] = b1 + c1 * fac
                    S[fbuf + _U(2) * _FS + p] = b2 + c2 * fac
                    lane[_LCOL + j] += fac * v0
                    lane[_LCOL + _LW + j] += fac * v1
                    lane[_LCOL + _U(2) * _LW + j] += fac * v2
                    geo = um if ope <= _AMAX else _ZERO  # clamped alpha: no gradient
                    v_op = e * v_alpha * geo
                    v_sigma = -op * v_op
                    lane[_LOP + j] += v_op
                    lane[_LCON + j] += _HALF * v_sigma * dx * dx
                    lane[_LCON + _LW + j] += v_sigma * dx * dy
                    lane[_LCON + _U(2) * _LW + j] += _HALF * v_sigma * dy * dy
                    gx = v_sigma * (a * dx + b * dy)
                    gy = v_sigma * (b * dx + c * dy)
                    lane[_LXY + j] += gx
                    lane[_LXY + _LW + j] += gy
                    lane[_LABS + j] += abs(gx)
                    lane[_LABS + _LW + j] += abs(gy)
                continue
            if additive:
                for p in range(lo, hi):
                    dx = mx - px[p - rb]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    e = exp_neg(sigma)
                    use = (sigma >= _ZERO) & (sigma <= _ACUT) & (last[p] >= idx32)
                    um = _ONE if use else _ZERO
                    S[f_dx + p] = dx
                    S[f_e + p] = e * um
                    S[f_fac + p] = op * e * um  # the weight w
                    S[f_val + p] = S[_BVA + p] * um  # d/dw; colour terms below
                    S[f_geo + p] = um
            else:
                for p in range(lo, hi):
                    dx = mx - px[p - rb]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    e = exp_neg(sigma)
                    ope = op * e
                    alpha = _clamp_alpha(ope)
                    use = (sigma >= _ZERO) & (alpha >= _ATHR) & (last[p] >= idx32)
                    um = _ONE if use else _ZERO
                    ra = _ONE / (_ONE - alpha)
                    tc = S[_BT + p] * (ra if use else _ONE)
                    S[_BT + p] = tc
                    S[f_dx + p] = dx
                    S[f_e + p] = e
                    S[f_tc + p] = tc * um
                    S[f_ra + p] = ra * um
                    S[f_fac + p] = alpha * tc * um
                    S[f_val + p] = S[_BTF + p] * ra * um * S[_BVA + p]
                    S[f_geo + p] = um if ope <= _AMAX else _ZERO
            for k in range(D):
                ck = colors[g, k]
                fvc = _BVC + _U(k) * _FS
                fb = fbuf + _U(k) * _FS
                lk = _LCOL + _U(k) * _LW - rb
                if additive:
                    for p in range(lo, hi):
                        vck = S[fvc + p]
                        S[f_val + p] += ck * vck * S[f_geo + p]
                        lane[lk + p] += S[f_fac + p] * vck
                else:
                    for p in range(lo, hi):
                        vck = S[fvc + p]
                        S[f_val + p] += (ck * S[f_tc + p] - S[fb + p] * S[f_ra + p]) * vck
                        S[fb + p] += ck * S[f_fac + p]
                        lane[lk + p] += S[f_fac + p] * vck
            for p in range(lo, hi):
                j = p - rb
                dx = S[f_dx + p]
                v_alpha = S[f_val + p]
                if additive:
                    v_sigma = -S[f_fac + p] * v_alpha
                    lane[_LOP + j] += S[f_e + p] * v_alpha
                else:
                    v_op = S[f_e + p] * v_alpha * S[f_geo + p]
                    v_sigma = -op * v_op
                    lane[_LOP + j] += v_op
                lane[_LCON + j] += _HALF * v_sigma * dx * dx
                lane[_LCON + _LW + j] += v_sigma * dx * dy
                lane[_LCON + _U(2) * _LW + j] += _HALF * v_sigma * dy * dy
                gx = v_sigma * (a * dx + b * dy)
                gy = v_sigma * (b * dx + c * dy)
                lane[_LXY + j] += gx
                lane[_LXY + _LW + j] += gy
                lane[_LABS + j] += abs(gx)
                lane[_LABS + _LW + j] += abs(gy)
        # fold the used chunks lane by lane (vectorised), then a fixed pairwise tree over the 8
        # lanes: a short dependency chain, and the same order every time (deterministic)
        for i in range(n_slot):
            fi = _U(i) * _LW
            for ch in range(l0 + _U(_LANES), l1, _U(_LANES)):
                for j in range(_U(_LANES)):
                    lane[fi + l0 + j] += lane[fi + ch + j]
            q = fi + l0
            s = ((lane[q] + lane[q + _U(1)]) + (lane[q + _U(2)] + lane[q + _U(3)])) + (
                (lane[q + _U(4)] + lane[q + _U(5)]) + (lane[q + _U(6)] + lane[q + _U(7)])
            )
            slots[idx, i] = s if first else slots[idx, i] + s


@njit(cache=True, error_model="numpy")
def _backward_tile(
    t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, additive,
    t_final, last_ids, v_colors, v_alphas, slots,
):  # fmt: skip
    start = offsets[t]
    end = offsets[t + 1]
    if start == end:
        return
    cam = t // n_tiles
    tile = t - cam * n_tiles
    ty = tile // tile_width
    tx = tile - ty * tile_width
    tx0 = tx * tile_size
    ty0 = ty * tile_size
    tx1 = min(tx0 + tile_size, width)
    ty1 = min(ty0 + tile_size, height)
    D = colors.shape[1]
    S = np.empty((_N_BFIELDS_FIXED + 2 * D + _N_TMP) * _BLOCK * _BLOCK, np.float32)
    last = np.empty(_BLOCK * _BLOCK, np.int32)
    px = np.empty(_BLOCK, np.float32)
    lane = np.empty(slots.shape[1] * _BLOCK, np.float32)
    row_last = np.empty(_BLOCK, np.int64)
    first = True
    for y0 in range(ty0, ty1, _BLOCK):
        for x0 in range(tx0, tx1, _BLOCK):
            _backward_block(
                cam, x0, y0, min(x0 + _BLOCK, tx1), min(y0 + _BLOCK, ty1), means2d, conics, colors,
                opacities, backgrounds, has_bg, flatten_ids, start, end, additive, t_final,
                last_ids, v_colors, v_alphas, slots, first, S, last, px, lane, row_last,
            )  # fmt: skip
            first = False


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(
    means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
    width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    t_final, last_ids, v_colors, v_alphas, slots,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _backward_tile(
            t, means2d, conics, colors, opacities, backgrounds, has_bg, flatten_ids, offsets,
            width, height, tile_size, tile_width, n_tiles, additive,
            t_final, last_ids, v_colors, v_alphas, slots,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _by_gaussian(flatten_ids, n_rows):
    """Counting sort of the intersections by Gaussian: ptr [n_rows + 1], order [M] (stable)."""
    M = flatten_ids.shape[0]
    ptr = np.zeros(n_rows + 1, np.int64)
    for i in range(M):
        ptr[flatten_ids[i] + 1] += 1
    for g in range(n_rows):
        ptr[g + 1] += ptr[g]
    cur = ptr[:-1].copy()
    order = np.empty(M, np.int64)
    for i in range(M):
        g = flatten_ids[i]
        order[cur[g]] = i
        cur[g] += 1
    return ptr, order


@njit(parallel=True, cache=True, error_model="numpy")
def _reduce_slots(slots, ptr, order, n_rows):
    """Sum slot rows per Gaussian, in intersection order (deterministic); parallel over Gaussians."""
    S = slots.shape[1]
    out = np.zeros((n_rows, S), np.float32)
    for g in prange(n_rows):
        for i in range(ptr[g], ptr[g + 1]):
            row = order[i]
            for j in range(S):
                out[g, j] += slots[row, j]
    return out


# --------------------------------------------------------------------------------------------
# autograd wrapper
# --------------------------------------------------------------------------------------------
def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _offsets_np(isect_offsets: Tensor, n_isects: int) -> np.ndarray:
    flat = isect_offsets.reshape(-1).to(torch.int64)
    return np.ascontiguousarray(np.append(flat.numpy(), np.int64(n_isects)))


class _Dynamic:
    """Dynamic scheduling (chunks of one tile) for the numba parallel loops."""

    def __enter__(self):
        self._old = numba.get_parallel_chunksize()
        numba.set_parallel_chunksize(1)

    def __exit__(self, *exc):
        numba.set_parallel_chunksize(self._old)


class _RasterizeToPixelsCPU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, means2d, conics, colors, opacities, backgrounds,
        width, height, tile_size, isect_offsets, flatten_ids, additive, absgrad,
    ):  # fmt: skip
        C, N, D = colors.shape
        _, th, tw = isect_offsets.shape
        offsets = _offsets_np(isect_offsets, flatten_ids.shape[0])
        fids = _np(flatten_ids.to(torch.int32))
        has_bg = backgrounds is not None
        bg = _np(backgrounds) if has_bg else np.zeros((C, D), np.float32)
        out_colors = np.empty((C, height, width, D), np.float32)
        out_alphas = np.empty((C, height, width), np.float32)
        t_final = np.empty((C, height, width), np.float32)
        last_ids = np.empty((C, height, width), np.int32)
        arrays = (
            _np(means2d).reshape(C * N, 2),
            _np(conics).reshape(C * N, 3),
            _np(colors).reshape(C * N, D),
            _np(opacities).reshape(C * N),
            bg,
        )
        with _Dynamic():
            _forward_kernel(
                *arrays, has_bg, fids, offsets, width, height, tile_size, tw, tw * th, C,
                additive, out_colors, out_alphas, t_final, last_ids,
            )  # fmt: skip
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds)
        ctx.np_state = (arrays, fids, offsets, t_final, last_ids)
        ctx.meta = (C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg)
        render_colors = torch.from_numpy(out_colors)
        render_alphas = torch.from_numpy(out_alphas)[..., None]
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        means2d, conics, colors, opacities, backgrounds = ctx.saved_tensors
        arrays, fids, offsets, t_final, last_ids = ctx.np_state
        C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg = ctx.meta
        v_c = _np(v_render_colors.to(torch.float32))
        v_a = _np(v_render_alphas.to(torch.float32)).reshape(C, height, width)
        slots = np.empty((fids.shape[0], _S_COL + D), np.float32)
        with _Dynamic():
            _backward_kernel(
                *arrays, has_bg, fids, offsets, width, height, tile_size, tw, tw * th, C,
                additive, t_final, last_ids, v_c, v_a, slots,
            )  # fmt: skip
        ptr, order = _by_gaussian(fids, C * N)
        grads = torch.from_numpy(_reduce_slots(slots, ptr, order, C * N))
        grads = grads.reshape(C, N, _S_COL + D)
        v_means2d = grads[..., _S_XY:_S_CON]
        v_conics = grads[..., _S_CON:_S_OP]
        v_opacities = grads[..., _S_OP]
        v_colors = grads[..., _S_COL:]
        if absgrad:
            means2d.absgrad = grads[..., _S_ABS:_S_COL].clone()
        v_backgrounds = None
        if has_bg and ctx.needs_input_grad[4]:
            t_fin = torch.from_numpy(t_final)[..., None]
            v_backgrounds = (v_render_colors * t_fin).sum(dim=(1, 2))
        return (
            v_means2d, v_conics, v_colors, v_opacities, v_backgrounds,
            None, None, None, None, None, None, None,
        )  # fmt: skip


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    backgrounds: Optional[Tensor] = None,  # [C, D]
    compositing: str = "alpha",
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Numba twin of ``raster_torch.rasterize_to_pixels`` (float32 CPU tensors only).

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1]; differentiable w.r.t.
        means2d, conics, colors, opacities and backgrounds. With ``absgrad`` the backward pass
        sets ``means2d.absgrad`` [C, N, 2].
    """
    check_raster_inputs(
        means2d, conics, colors, opacities, image_width, image_height, tile_size,
        isect_offsets, flatten_ids, backgrounds, compositing,
    )  # fmt: skip
    for name, x in (("means2d", means2d), ("conics", conics), ("colors", colors), ("opacities", opacities)) + (
        (("backgrounds", backgrounds),) if backgrounds is not None else ()
    ):
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"{name}: expected float32 on cpu, given {x.dtype} on {x.device}")
    return _RasterizeToPixelsCPU.apply(
        means2d, conics, colors, opacities, backgrounds,
        int(image_width), int(image_height), int(tile_size), isect_offsets, flatten_ids,
        compositing == "additive", bool(absgrad),
    )  # fmt: skip


def warmup() -> float:
    """Compile (or load from the numba cache) every kernel on a tiny scene; returns seconds."""
    import time

    t0 = time.perf_counter()
    C, N, W, H, ts = 1, 3, 8, 8, 4
    g = torch.Generator().manual_seed(0)
    means2d = (torch.rand(C, N, 2, generator=g) * 8).requires_grad_()
    conics = torch.tensor([[0.5, 0.0, 0.5]]).repeat(C, N, 1).requires_grad_()
    colors = torch.rand(C, N, 3, generator=g).requires_grad_()
    opac = torch.full((C, N), 0.5).requires_grad_()
    radii = torch.full((C, N), 3, dtype=torch.int32)
    depths = torch.rand(C, N, generator=g) + 1
    _, _, fids, offs = bin_gaussians(means2d, radii, depths, ts, 2, 2)
    for mode in COMPOSITING_MODES:
        bg = torch.zeros(C, 3).requires_grad_() if mode == "alpha" else None
        rc, ra = rasterize_to_pixels(means2d, conics, colors, opac, W, H, ts, offs, fids, bg, mode)
        (rc.sum() + ra.sum()).backward()
    return time.perf_counter() - t0
