"""Fast CPU tile compositor: numba kernels behind a ``torch.autograd.Function``.

Same signature and rules as the reference twin ``raster_torch.rasterize_to_pixels`` (see its
module docstring for the alpha/additive compositing rules); this module also holds the numba
twin of ``tiles.isect_tiles`` (``bin_gaussians``).

Design
------
* Binning (no comparison sort, no atomics): per camera, the visible Gaussians are put in depth
  order by a stable LSD radix sort of their float32 depth bits; the depth-ordered sequence is
  cut into blocks that count their tile hits (parallel), an exclusive scan over (camera,
  tile, block) gives each block its own write cursor per tile, and the blocks scatter their
  hits' int32 ids (parallel); the 64-bit keys are then written in intersection order (one
  sequential pass). Every tile's list comes out sorted by depth, ties in Gaussian index order,
  exactly the torch twin's stable sort.
* Packing: each Gaussian's compositing data (mean, conic, opacity, colours) and the bounding
  box of the pixels where a term can pass the threshold are computed once into one 64-byte
  aligned row (D <= 6); the compositing loops gather that row through ``flatten_ids``,
  prefetched a few intersections ahead (one cache line per intersection and pass, instead of a
  copy of every row into intersection order).
* Forward: one task per (camera, tile), scheduled dynamically (chunk size 1). Inside a tile,
  Gaussians are the outer loop (front to back). Pixels are stored chunk-major (the rows of an
  8-pixel column chunk are contiguous), so each Gaussian costs one loop per chunk its box
  overlaps, over the rows that still have live pixels and that the ellipse reaches within
  the chunk's columns (its exact y-extent over that strip, in float64 with the box's slack:
  17-20 % fewer lanes than the box's rows on the profile scene, in both passes). The loop body is branch-free
  (selects, multiplications by 0/1 masks: no conditional stores, which LLVM would turn into
  slow masked stores) with a vectorisable ``exp`` (Cody-Waite reduction, Cephes polynomial,
  the power of two from its IEEE bits; 1.2 ulp): LLVM emits 8-lane AVX2 code for it. A tile
  stops when all its pixels have.
* Backward: back to front per tile, recovering T by division from the final transmittance
  (float32, as gsplat). The same inlined float32 arithmetic as the forward (no fast-math, no
  FMA contraction) gives bit-identical alpha decisions. A tile starts at its last used
  intersection (the largest per-pixel last index the forward stored): its later slot rows are
  never written nor read. In the RGB lane loop each lane stores its gradient terms as running
  sums with stride 8 (lane q adds lane q - 8; plain stores, no read-modify-write of shared
  data), so after a Gaussian's last chunk the final 8 lanes hold 8 column sums, which a fixed
  pairwise tree writes into that intersection's own slot row: no races, no atomics,
  deterministic, no second pass over the lanes (other channel counts and additive mode store
  per-lane terms and sum them in a second pass, in the same order). The slot rows are then
  summed per Gaussian in intersection order by a few parts that each own a range of Gaussians
  and scan the used rows sequentially (no sort, no gather). The two |v_xy| fields reach the
  slots only when ``absgrad`` is asked for. Scratch fields are 1024 + 16 float32 apart (a 4 KiB
  stride mapped one pixel's fields to one L1 set).
* Kernels compute in float32 on float32 arrays (int32 ids, int64 offsets), so each is compiled
  once (``cache=True``: the first ever call compiles, ~1-2 min on two busy cores, and caches;
  later processes load in ~1 s). Loop indices are unsigned (no negative-index fix-up) and
  ``error_model="numpy"`` (no division-by-zero branches): both keep the loops vectorisable.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic
from torch import Tensor

from . import buffers
from .raster_torch import (
    ADDITIVE_SIGMA_CUT,
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    COMPOSITING_MODES,
    TRANSMITTANCE_EPS,
    check_raster_inputs,
)

__all__ = ["bin_gaussians", "exp_neg", "rasterize_to_pixels", "warmup"]

# Field layout of the per-lane gradient terms: [v_xy(2), v_conic(3), v_opac, |v_xy|(2), v_colors(D)];
# the per-intersection slot rows have the same layout, without |v_xy| unless absgrad is asked for
_S_XY, _S_CON, _S_OP, _S_ABS, _S_COL = 0, 2, 5, 6, 8

_BBOX_REL = 1e-6  # relative slack on the sigma cut (pixel ranges only bound the exact tests)
_BBOX_PAD = 1e-3  # pixels of slack on the pixel ranges
_LANES = 8  # pixels per SIMD chunk (AVX2: 8 float32)
_BIN_BLOCK = 4096  # Gaussians per binning block
_PREFETCH_ROWS = 8  # gathers through index lists prefetch the row this far ahead
_FEW_GROUPS = 5  # backward: lane sums of up to this many 8-lane groups are kept in registers

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


@intrinsic
def _prefetch(typingctx, ary, i):
    """Hint the cache to load element ``i`` of a C-contiguous 1-D array or row ``i`` of a 2-D
    one (``llvm.prefetch``: read, keep): gathers through index lists are latency-bound."""
    if not (isinstance(ary, types.Array) and ary.ndim in (1, 2) and ary.layout == "C" and isinstance(i, types.Integer)):
        return None
    sig = types.void(ary, i)

    def codegen(context, builder, signature, args):
        aryty, ity = signature.args
        arr = context.make_array(aryty)(context, builder, args[0])
        off = context.cast(builder, args[1], ity, types.intp)
        if aryty.ndim == 2:
            off = builder.mul(off, builder.extract_value(arr.shape, 1))
        i8p = llvm_ir.IntType(8).as_pointer()
        ptr = builder.bitcast(builder.gep(arr.data, [off]), i8p)
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", cache=True, error_model="numpy")
def exp_neg(s):
    """``exp(-s)`` for a float32 ``s`` (clamped to [0, 43]), vectorisable by LLVM.

    Cody-Waite reduction ``s = n ln2 - r``, Cephes' degree-7 polynomial for ``exp(r)`` and
    ``2^-n`` from its IEEE bits. Max relative error 7.2e-8 (1.2 ulp) against float64.
    """
    s = s if s > _ZERO else _ZERO  # selects, not min/max: those are calls to LLVM  # noqa: FURB136
    s = s if s < _EXP_ARG_MAX else _EXP_ARG_MAX  # noqa: FURB136
    n = np.int32(s * _LOG2E + _HALF)
    fn = _F(n)
    r = (fn * _LN2_HI - s) + fn * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE
    return p * _bits_to_f32(np.int32((_BIAS - n) << _MANT))


@njit(inline="always", cache=True, error_model="numpy")
def _clamp_alpha(x):
    return x if x < _AMAX else _AMAX  # noqa: FURB136 (a select, see exp_neg)


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
def _depth_order(radii, dbits):
    """Per camera: the visible Gaussians (radius > 0) in stable depth order, by an LSD radix
    sort (4 passes of 8 bits) of the float32 depth bits (monotone for depth > 0).

    Returns order [C, N] (the first n_vis[c] entries of row c are used) and n_vis [C]."""
    C, N = radii.shape
    order = np.empty((C, N), np.int64)
    n_vis = np.zeros(C, np.int64)
    for cam in prange(C):
        n = 0
        for g in range(N):
            if radii[cam, g] > 0:
                order[cam, n] = g
                n += 1
        n_vis[cam] = n
        src = order[cam, :n].copy()
        dst = np.empty(n, np.int64)
        for shift in range(0, 32, 8):
            cnt = np.zeros(257, np.int64)
            for i in range(n):
                cnt[((dbits[cam, src[i]] >> shift) & 255) + 1] += 1
            for k in range(256):
                cnt[k + 1] += cnt[k]
            for i in range(n):
                d = (dbits[cam, src[i]] >> shift) & 255
                dst[cnt[d]] = src[i]
                cnt[d] += 1
            src, dst = dst, src
        order[cam, :n] = src
    return order, n_vis


@njit(parallel=True, cache=True, error_model="numpy")
def _bin_count(means2d, radii, order, n_vis, tile_size, tile_width, tile_height, n_blocks, block):
    """Tile rectangles in depth order ``rects`` [C, N, 4] (row i: the i-th visible Gaussian of
    ``order``; sequential writes), tiles per Gaussian [C, N] (index order) and hits per
    (camera, block of the depth order, tile)."""
    C, N = radii.shape
    n_tiles = tile_width * tile_height
    rects = np.empty((C, N, 4), np.int32)
    tpg = np.zeros((C, N), np.int32)
    counts = np.zeros((C, n_blocks, n_tiles), np.int64)
    for job in prange(C * n_blocks):
        cam = job // n_blocks
        blk = job - cam * n_blocks
        m2c = means2d[cam]
        rc = radii[cam]
        end = min(n_vis[cam], (blk + 1) * block)
        for i in range(blk * block, end):
            if i + _PREFETCH_ROWS < end:
                _prefetch(m2c, order[cam, i + _PREFETCH_ROWS])
                _prefetch(rc, order[cam, i + _PREFETCH_ROWS])
            g = order[cam, i]
            x0, y0, x1, y1 = _rect(means2d[cam, g, 0], means2d[cam, g, 1], radii[cam, g], tile_size, tile_width, tile_height)
            rects[cam, i, 0] = x0
            rects[cam, i, 1] = y0
            rects[cam, i, 2] = x1
            rects[cam, i, 3] = y1
            tpg[cam, g] = (x1 - x0) * (y1 - y0)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[cam, blk, ty * tile_width + tx] += 1
    return rects, tpg, counts


@njit(parallel=True, cache=True, error_model="numpy")
def _bin_scatter(rects, order, n_vis, cursor, tile_width, n_blocks, block, flatten_ids):
    """Each block writes its hits at its own cursors, in depth order: every tile's list comes
    out sorted by depth, ties in Gaussian index order (the radix sort is stable). Only the
    int32 ids are scattered; ``_isect_keys`` writes the 64-bit keys sequentially."""
    C, N = order.shape
    for job in prange(C * n_blocks):
        cam = job // n_blocks
        blk = job - cam * n_blocks
        base = np.int32(cam * N)
        for i in range(blk * block, min(n_vis[cam], (blk + 1) * block)):
            fid = base + np.int32(order[cam, i])
            for ty in range(rects[cam, i, 1], rects[cam, i, 3]):
                for tx in range(rects[cam, i, 0], rects[cam, i, 2]):
                    tile = ty * tile_width + tx
                    pos = cursor[cam, blk, tile]
                    cursor[cam, blk, tile] = pos + 1
                    flatten_ids[pos] = fid


@njit(parallel=True, cache=True, error_model="numpy")
def _isect_keys(flatten_ids, offsets, dbits, n_tiles, n_bits, isect_ids):
    """gsplat's keys ``camera << (32 + n_bits) | tile << 32 | depth_bits`` in intersection
    order (sequential writes, parallel over tiles)."""
    C, N = dbits.shape
    for t in prange(C * n_tiles):
        cam = t // n_tiles
        tile = np.int64(t - cam * n_tiles)
        head = (np.int64(cam) << (32 + n_bits)) | (tile << 32)
        for pos in range(offsets[t], offsets[t + 1]):
            g = flatten_ids[pos] - cam * N
            isect_ids[pos] = head | np.int64(dbits[cam, g])


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Numba twin of ``tiles.isect_tiles`` + ``tiles.isect_offset_encode``.

    Returns:
        tiles_per_gauss [C, N] int32, isect_ids [M] int64, flatten_ids [M] int32,
        isect_offsets [C, tile_height, tile_width] int32.
    """
    C, _N = radii.shape
    m2d = means2d.detach().to(torch.float32).contiguous().numpy()
    rad = radii.to(torch.int32).contiguous().numpy()
    dbits = depths.detach().to(torch.float32).contiguous().numpy().view(np.int32)  # depth_bits
    order, n_vis = _depth_order(rad, dbits)
    n_blocks = max(1, -(-int(n_vis.max(initial=0)) // _BIN_BLOCK))
    rects, tiles_per_gauss, counts = _bin_count(m2d, rad, order, n_vis, int(tile_size), int(tile_width),
                                                int(tile_height), n_blocks, _BIN_BLOCK)  # fmt: skip
    cursor, offsets = _bin_offsets(counts)
    M = int(offsets[-1])
    flatten_ids = buffers.empty(M, np.int32)
    isect_ids = buffers.empty(M, np.int64)
    n_bits = (tile_width * tile_height).bit_length()
    _bin_scatter(rects, order, n_vis, cursor, int(tile_width), n_blocks, _BIN_BLOCK, flatten_ids)
    _isect_keys(flatten_ids, offsets, dbits, int(tile_width * tile_height), n_bits, isect_ids)
    isect_offsets = torch.from_numpy(offsets[:-1].astype(np.int32)).reshape(C, tile_height, tile_width)
    return (
        torch.from_numpy(tiles_per_gauss),
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


_BIG = 1 << 30  # "whole image" for degenerate conics


@njit(inline="always", cache=True, error_model="numpy")
def _ellipse(a, b, c, cut):
    """float64 constants of ``_strip_rows`` for conic (a, b, c) and the Gaussian's sigma cut:
    (usable, det, 2 cut c, u of the ellipse's top point, 1 / c); not usable when degenerate."""
    a = float(a)
    b = float(b)
    c = float(c)
    cut = float(cut)
    det = a * c - b * b
    if not (cut >= 0.0 and det > 0.0 and a > 0.0 and c > 0.0):
        return False, 0.0, 0.0, 0.0, 0.0
    return True, det, 2.0 * cut * c, -b * math.sqrt(2.0 * cut * a / det) / a, 1.0 / c


@njit(inline="always", cache=True, error_model="numpy")
def _strip_rows(cx0, cx1, mx, my, b, det, k2c, u_top, inv_c):
    """Pixel rows [r0, r1] (absolute) whose centres in columns cx0..cx1 may satisfy
    sigma <= cut: the ellipse's y-extent over the strip of those columns' centres, with the
    box's slack. With u = px - mx, the ellipse's upper edge v(u) = (-b u + sqrt(2 cut c -
    det u^2)) / c is concave with its maximum at the top point: clamped into the strip it gives
    the strip's highest v; the lower edge likewise (mirror point -u_top)."""
    b = float(b)
    mx = float(mx)
    my = float(my)
    u0 = cx0 + 0.5 - mx
    u1 = cx1 + 0.5 - mx
    uh = min(max(u_top, u0), u1)
    ul = min(max(-u_top, u0), u1)
    vh = (-b * uh + math.sqrt(max(k2c - det * uh * uh, 0.0))) * inv_c
    vl = (-b * ul - math.sqrt(max(k2c - det * ul * ul, 0.0))) * inv_c
    lo = min(max(my + vl - 0.5 - _BBOX_PAD, -_BIG), _BIG)
    hi = min(max(my + vh - 0.5 + _BBOX_PAD, -_BIG), _BIG)
    return math.ceil(lo), math.floor(hi)


@njit(parallel=True, cache=True, error_model="numpy")
def _gauss_pack(means2d, conics, opacities, colors, additive, ga, bounds):
    """Per Gaussian (flattened [C * N]): its row of ``ga`` [CN, R] (x, y, conic a, b, c,
    opacity, colours) and the inclusive pixel box [xs, xe, ys, ye] whose pixel centres may
    satisfy sigma <= cut (the ellipse's bounding box, with slack; empty when xs > xe) in
    ``bounds`` [CN, 4]: the wrapper passes int32 views of the last 4 columns of the same rows,
    so one 64-byte row (R = 16 for D <= 6) holds all a Gaussian's compositing data."""
    D = colors.shape[1]
    for g in prange(means2d.shape[0]):
        mx = float(means2d[g, 0])
        my = float(means2d[g, 1])
        a = float(conics[g, 0])
        b = float(conics[g, 1])
        c = float(conics[g, 2])
        ga[g, 0] = means2d[g, 0]
        ga[g, 1] = means2d[g, 1]
        ga[g, 2] = conics[g, 0]
        ga[g, 3] = conics[g, 1]
        ga[g, 4] = conics[g, 2]
        ga[g, 5] = opacities[g]
        for k in range(D):
            ga[g, 6 + k] = colors[g, k]
        cut = _cut_for(float(opacities[g]), additive)
        ga[g, 6 + D] = cut  # < 0: no term can pass
        det = a * c - b * b
        if cut < 0.0:
            xs, xe, ys, ye = 1, 0, 1, 0
        elif det <= 0.0 or a <= 0.0 or c <= 0.0:
            xs, xe, ys, ye = -_BIG, _BIG, -_BIG, _BIG
        else:
            rx = math.sqrt(2.0 * cut * c / det) + _BBOX_PAD  # max |dx| on the ellipse
            ry = math.sqrt(2.0 * cut * a / det) + _BBOX_PAD
            xs = int(max(-_BIG, math.ceil(mx - rx - 0.5)))
            xe = int(min(_BIG, math.floor(mx + rx - 0.5)))
            ys = int(max(-_BIG, math.ceil(my - ry - 0.5)))
            ye = int(min(_BIG, math.floor(my + ry - 0.5)))
        bounds[g, 0] = xs
        bounds[g, 1] = xe
        bounds[g, 2] = ys
        bounds[g, 3] = ye


# Per-block scratch: one float32 array of fields, each _FS pixels long, indexed by unsigned
# pixel positions p. Pixels are stored chunk-major: p = (chunk * rows + row) * 8 + lane, so
# the rows of one 8-pixel column chunk are contiguous and a Gaussian's rows in a chunk are
# ONE loop. Unsigned indices spare numba's negative-index fix-up (which LLVM cannot analyse)
# and constant field strides let LLVM prove that fields never overlap, so the lane loops
# vectorise (8 float32 lanes, AVX2) without runtime alias checks. RGB (D = 3) has one fused
# loop; other channel counts run the channels in loops of their own.
_U = np.uint64
_BLOCK = 32  # tiles larger than this are composited in blocks of at most 32 x 32 pixels
# Field stride: the block's pixels plus one cache line (16 float32). With a stride of exactly
# 4 KiB (32 x 32 float32) the same pixel of every field fell in the same set of the 8-way L1
# (64 sets of 64 bytes): the lane loops touch 9 (forward) to 22 (backward) such fields.
_FIELD = _BLOCK * _BLOCK + 16
_FS = _U(_FIELD)
# fields shared by both passes: pixel centre x, y
_PX, _PY = _U(0), _FS
# forward: transmittance (or weight sum), alive, weight, last contributing index (relative to
# the tile's first intersection, plus one; exact in float32 below 2^24), then D channels
_FT, _FA, _FW, _FL, _FC = _U(2) * _FS, _U(3) * _FS, _U(4) * _FS, _U(5) * _FS, _U(6) * _FS
_N_FFIELDS = 6
_MAX_TILE_LIST = 1 << 24
# backward: running T, final T, d/d render_alpha (minus background . d/d colour), then D of
# d/d colour and D of colour behind the current Gaussian, then temporaries of the multi-loop
# (D != 3) path
_BT, _BTF, _BVA, _BVC = _U(2) * _FS, _U(3) * _FS, _U(4) * _FS, _U(5) * _FS
_N_BFIELDS = 5
_N_TMP = 6  # e, T*use, ra*use, weight, d/d alpha, geometry mask
_LW = _U(_FIELD + _LANES)  # per-lane gradient stores: one row per slot field (the rgb path's running
# sums start after a group of zeros, hence the extra 8 lanes)
_LXY, _LCON, _LOP, _LABS, _LCOL = (_U(i) * _LW for i in (_S_XY, _S_CON, _S_OP, _S_ABS, _S_COL))


@njit(cache=True, error_model="numpy")
def _init_pixels(S, x0, y0, x1, y1, n_rows, n_ch):
    for ch in range(n_ch):
        for r in range(n_rows):
            for j in range(_LANES):
                p = _U((ch * n_rows + r) * _LANES + j)
                S[_PX + p] = _F(x0 + ch * _LANES + j) + _HALF
                S[_PY + p] = _F(y0 + r) + _HALF


@njit(cache=True, error_model="numpy")
def _forward_block(
    cam, x0, y0, x1, y1, ga, bounds, fids, start, end, additive, backgrounds, has_bg,
    out_colors, out_alphas, t_final, last_ids, S, band,
):  # fmt: skip
    n_rows = y1 - y0
    n_cols = x1 - x0
    n_ch = -(-n_cols // _LANES)
    D = out_colors.shape[3]
    rgb = D == 3 and not additive
    init = _ZERO if additive else _ONE
    _init_pixels(S, x0, y0, x1, y1, n_rows, n_ch)
    for ch in range(n_ch):
        for r in range(n_rows):
            for j in range(_LANES):
                p = _U((ch * n_rows + r) * _LANES + j)
                S[_FT + p] = init
                S[_FA + p] = _ONE if ch * _LANES + j < n_cols else _ZERO
                S[_FW + p] = _ZERO
                S[_FL + p] = _ZERO
                for k in range(D):
                    S[_FC + _U(k) * _FS + p] = _ZERO
        band[ch, 0] = 0  # rows of the chunk that still have live pixels
        band[ch, 1] = n_rows - 1
        band[ch, 2] = n_rows * min(_LANES, n_cols - ch * _LANES)  # live pixels
    n_alive = n_rows * n_cols
    for idx in range(start, end):
        if idx + _PREFETCH_ROWS < end:
            _prefetch(ga, fids[idx + _PREFETCH_ROWS])
        g = fids[idx]
        xs = max(bounds[g, 0], x0)
        xe = min(bounds[g, 1], x1 - 1)
        ys = max(bounds[g, 2], y0) - y0
        ye = min(bounds[g, 3], y1 - 1) - y0
        if xs > xe or ys > ye:
            continue
        mx = ga[g, 0]
        my = ga[g, 1]
        a = ga[g, 2]
        b = ga[g, 3]
        c = ga[g, 4]
        op = ga[g, 5]
        rel = _F(idx - start + 1)
        c0 = ga[g, 6]
        c1 = ga[g, 7] if D > 1 else _ZERO
        c2 = ga[g, 8] if D > 2 else _ZERO
        strips, det, k2c, u_top, inv_c = _ellipse(a, b, c, ga[g, 6 + D])
        for ch in range((xs - x0) // _LANES, (xe - x0) // _LANES + 1):
            r0 = max(ys, band[ch, 0])
            r1 = min(ye, band[ch, 1])
            if strips:
                cx = x0 + ch * _LANES
                s0, s1 = _strip_rows(max(cx, xs), min(cx + _LANES - 1, xe), mx, my, b, det, k2c, u_top, inv_c)
                r0 = max(r0, s0 - y0)
                r1 = min(r1, s1 - y0)
            if r0 > r1:
                continue
            lo = _U((ch * n_rows + r0) * _LANES)
            hi = _U((ch * n_rows + r1 + 1) * _LANES)
            any_stop = False
            if rgb:
                for p in range(lo, hi):
                    dx = mx - S[_PX + p]
                    dy = my - S[_PY + p]
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
                    dx = mx - S[_PX + p]
                    dy = my - S[_PY + p]
                    sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                    inside = (sigma >= _ZERO) & (sigma <= _ACUT) & (S[_FA + p] > _ZERO)
                    w = op * exp_neg(sigma) if inside else _ZERO
                    S[_FW + p] = w
                    S[_FT + p] += w
            else:
                for p in range(lo, hi):
                    dx = mx - S[_PX + p]
                    dy = my - S[_PY + p]
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
                    ck = ga[g, 6 + k]
                    fk = _FC + _U(k) * _FS
                    for p in range(lo, hi):
                        S[fk + p] += S[_FW + p] * ck
            if any_stop:  # rare: recount the chunk's live pixels and rows
                n = 0
                first = -1
                last = -1
                for r in range(n_rows):
                    m = 0
                    for j in range(_LANES):
                        m += 1 if S[_FA + _U((ch * n_rows + r) * _LANES + j)] > _ZERO else 0
                    if m > 0:
                        last = r
                        if first < 0:
                            first = r
                    n += m
                n_alive -= band[ch, 2] - n
                band[ch, 2] = n
                band[ch, 0] = first if first >= 0 else n_rows
                band[ch, 1] = last
        if n_alive == 0 and not additive:
            break
    for ch in range(n_ch):
        for r in range(n_rows):
            y = y0 + r
            for j in range(min(_LANES, n_cols - ch * _LANES)):
                x = x0 + ch * _LANES + j
                p = _U((ch * n_rows + r) * _LANES + j)
                tp = S[_FT + p]
                for k in range(D):
                    v = S[_FC + _U(k) * _FS + p]
                    if has_bg:
                        v += tp * backgrounds[cam, k]
                    out_colors[cam, y, x, k] = v
                out_alphas[cam, y, x] = tp if additive else _ONE - tp
                t_final[cam, y, x] = tp
                lf = S[_FL + p]
                last_ids[cam, y, x] = np.int32(start - 1 + np.int64(lf)) if lf > _ZERO else -1


@njit(cache=True, error_model="numpy")
def _forward_tile(
    t, ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, additive, backgrounds,
    has_bg, out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    cam = t // n_tiles
    tile = t - cam * n_tiles
    ty = tile // tile_width
    tx = tile - ty * tile_width
    tx0 = tx * tile_size
    ty0 = ty * tile_size
    tx1 = min(tx0 + tile_size, width)
    ty1 = min(ty0 + tile_size, height)
    D = out_colors.shape[3]
    S = np.empty((_N_FFIELDS + D) * _FIELD, np.float32)
    band = np.empty((_BLOCK // _LANES, 3), np.int64)
    for y0 in range(ty0, ty1, _BLOCK):
        for x0 in range(tx0, tx1, _BLOCK):
            _forward_block(
                cam, x0, y0, min(x0 + _BLOCK, tx1), min(y0 + _BLOCK, ty1), ga, bounds, fids, offsets[t],
                offsets[t + 1], additive, backgrounds, has_bg, out_colors, out_alphas, t_final,
                last_ids, S, band,
            )  # fmt: skip


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(
    ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    backgrounds, has_bg, out_colors, out_alphas, t_final, last_ids,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _forward_tile(
            t, ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, additive,
            backgrounds, has_bg, out_colors, out_alphas, t_final, last_ids,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _backward_block(
    cam, x0, y0, x1, y1, ga, bounds, fids, start, end, tile_last, additive, backgrounds, has_bg, t_final,
    last_ids, v_colors, v_alphas, slots, first, S, last, L, row_last,
):  # fmt: skip
    n_rows = y1 - y0
    n_cols = x1 - x0
    n_ch = -(-n_cols // _LANES)
    D = v_colors.shape[3]
    rgb = D == 3 and not additive
    n_slot = slots.shape[1]
    with_abs = n_slot == _S_COL + D  # else the slot rows skip the two |v_xy| fields
    uD = _U(D)
    fbuf = _BVC + uD * _FS  # first colour-behind field
    ftmp = _BVC + _U(2) * uD * _FS  # temporaries of the multi-loop path
    f_e, f_tc, f_ra = ftmp, ftmp + _FS, ftmp + _U(2) * _FS
    f_fac, f_val, f_geo = ftmp + _U(3) * _FS, ftmp + _U(4) * _FS, ftmp + _U(5) * _FS
    _init_pixels(S, x0, y0, x1, y1, n_rows, n_ch)
    max_last = start - 1
    for ch in range(n_ch):
        for r in range(n_rows):
            y = y0 + r
            rl = start - 1
            for j in range(_LANES):
                p = _U((ch * n_rows + r) * _LANES + j)
                x = x0 + ch * _LANES + j
                if x < x1:
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
                rl = max(rl, np.int64(lp))
                for k in range(D):
                    S[fbuf + _U(k) * _FS + p] = _ZERO
            row_last[ch, r] = rl
            max_last = max(max_last, rl)
    for idx in range(tile_last, start - 1, -1):  # later intersections: no pixel of the tile uses them
        if idx - _PREFETCH_ROWS >= start:
            _prefetch(ga, fids[idx - _PREFETCH_ROWS])
        n_lanes = _U(0)
        g = fids[idx]
        xs = max(bounds[g, 0], x0)
        xe = min(bounds[g, 1], x1 - 1)
        ys = max(bounds[g, 2], y0) - y0
        ye = min(bounds[g, 3], y1 - 1) - y0
        if idx <= max_last and xs <= xe and ys <= ye:
            mx = ga[g, 0]
            my = ga[g, 1]
            a = ga[g, 2]
            b = ga[g, 3]
            c = ga[g, 4]
            op = ga[g, 5]
            c0 = ga[g, 6]
            c1 = ga[g, 7] if D > 1 else _ZERO
            c2 = ga[g, 8] if D > 2 else _ZERO
            idx32 = np.int32(idx)
            strips, det, k2c, u_top, inv_c = _ellipse(a, b, c, ga[g, 6 + D])
            if rgb:  # the group in front of the running sums
                for i in range(_S_COL + D):
                    for j in range(_LANES):
                        L[_U(i) * _LW + _U(j)] = _ZERO
            for ch in range((xs - x0) // _LANES, (xe - x0) // _LANES + 1):
                r0 = ys
                r1 = ye
                if strips:
                    cx = x0 + ch * _LANES
                    s0, s1 = _strip_rows(max(cx, xs), min(cx + _LANES - 1, xe), mx, my, b, det, k2c, u_top, inv_c)
                    r0 = max(r0, s0 - y0)
                    r1 = min(r1, s1 - y0)
                while r0 <= r1 and row_last[ch, r0] < idx:
                    r0 += 1
                while r1 >= r0 and row_last[ch, r1] < idx:
                    r1 -= 1
                if r0 > r1:
                    continue
                lo = _U((ch * n_rows + r0) * _LANES)
                hi = _U((ch * n_rows + r1 + 1) * _LANES)
                off = n_lanes - lo  # lane store q = p + off (wraps; lands in [n_lanes, ...))
                n_lanes += hi - lo
                if rgb:
                    # Each field's lanes are stored as running sums with stride 8 (lane q adds
                    # lane q - 8; the first group adds the zeros in front): after the last
                    # chunk the final group holds the 8 column sums, in the same order as the
                    # two-pass forms below. The loop-carried distance (8) equals the vector
                    # width, so LLVM still vectorises it (with no interleaving).
                    off += _U(_LANES)
                    for p in range(lo, hi):
                        q = p + off
                        qm = q - _U(_LANES)
                        dx = mx - S[_PX + p]
                        dy = my - S[_PY + p]
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
                        L[_LCOL + q] = fac * v0 + L[_LCOL + qm]
                        L[_LCOL + _LW + q] = fac * v1 + L[_LCOL + _LW + qm]
                        L[_LCOL + _U(2) * _LW + q] = fac * v2 + L[_LCOL + _U(2) * _LW + qm]
                        geo = um if ope <= _AMAX else _ZERO  # clamped alpha: no gradient
                        v_op = e * v_alpha * geo
                        v_sigma = -op * v_op
                        L[_LOP + q] = v_op + L[_LOP + qm]
                        L[_LCON + q] = _HALF * v_sigma * dx * dx + L[_LCON + qm]
                        L[_LCON + _LW + q] = v_sigma * dx * dy + L[_LCON + _LW + qm]
                        L[_LCON + _U(2) * _LW + q] = _HALF * v_sigma * dy * dy + L[_LCON + _U(2) * _LW + qm]
                        gx = v_sigma * (a * dx + b * dy)
                        gy = v_sigma * (b * dx + c * dy)
                        L[_LXY + q] = gx + L[_LXY + qm]
                        L[_LXY + _LW + q] = gy + L[_LXY + _LW + qm]
                        L[_LABS + q] = abs(gx) + L[_LABS + qm]  # (2 of ~190 instructions when unused)
                        L[_LABS + _LW + q] = abs(gy) + L[_LABS + _LW + qm]
                    continue
                if additive:
                    for p in range(lo, hi):
                        dx = mx - S[_PX + p]
                        dy = my - S[_PY + p]
                        sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                        e = exp_neg(sigma)
                        use = (sigma >= _ZERO) & (sigma <= _ACUT) & (last[p] >= idx32)
                        um = _ONE if use else _ZERO
                        S[f_e + p] = e * um
                        S[f_fac + p] = op * e * um  # the weight w
                        S[f_val + p] = S[_BVA + p] * um  # d/dw; colour terms below
                        S[f_geo + p] = um
                else:
                    for p in range(lo, hi):
                        dx = mx - S[_PX + p]
                        dy = my - S[_PY + p]
                        sigma = _HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                        e = exp_neg(sigma)
                        ope = op * e
                        alpha = _clamp_alpha(ope)
                        use = (sigma >= _ZERO) & (alpha >= _ATHR) & (last[p] >= idx32)
                        um = _ONE if use else _ZERO
                        ra = _ONE / (_ONE - alpha)
                        tc = S[_BT + p] * (ra if use else _ONE)
                        S[_BT + p] = tc
                        S[f_e + p] = e
                        S[f_tc + p] = tc * um
                        S[f_ra + p] = ra * um
                        S[f_fac + p] = alpha * tc * um
                        S[f_val + p] = S[_BTF + p] * ra * um * S[_BVA + p]
                        S[f_geo + p] = um if ope <= _AMAX else _ZERO
                for k in range(D):
                    ck = ga[g, 6 + k]
                    fvc = _BVC + _U(k) * _FS
                    fb = fbuf + _U(k) * _FS
                    lk = _LCOL + _U(k) * _LW + off
                    if additive:
                        for p in range(lo, hi):
                            vck = S[fvc + p]
                            S[f_val + p] += ck * vck * S[f_geo + p]
                            L[lk + p] = S[f_fac + p] * vck
                    else:
                        for p in range(lo, hi):
                            vck = S[fvc + p]
                            S[f_val + p] += (ck * S[f_tc + p] - S[fb + p] * S[f_ra + p]) * vck
                            S[fb + p] += ck * S[f_fac + p]
                            L[lk + p] = S[f_fac + p] * vck
                for p in range(lo, hi):
                    q = p + off
                    dx = mx - S[_PX + p]
                    dy = my - S[_PY + p]
                    v_alpha = S[f_val + p]
                    if additive:
                        v_sigma = -S[f_fac + p] * v_alpha
                        L[_LOP + q] = S[f_e + p] * v_alpha
                    else:
                        v_op = S[f_e + p] * v_alpha * S[f_geo + p]
                        v_sigma = -op * v_op
                        L[_LOP + q] = v_op
                    L[_LCON + q] = _HALF * v_sigma * dx * dx
                    L[_LCON + _LW + q] = v_sigma * dx * dy
                    L[_LCON + _U(2) * _LW + q] = _HALF * v_sigma * dy * dy
                    gx = v_sigma * (a * dx + b * dy)
                    gy = v_sigma * (b * dx + c * dy)
                    L[_LXY + q] = gx
                    L[_LXY + _LW + q] = gy
        if n_lanes == 0:
            if first:
                for i in range(n_slot):
                    slots[idx, i] = _ZERO
            continue
        # Per field: 8 column sums (lane j sums lanes j, j + 8, j + 16, ... in that order), then
        # a fixed pairwise tree; the same order every time, whichever loop computes it. Few
        # lanes: the sums in registers (one 8-lane add per 8 lanes). Many: a running sum with
        # stride 8 through L, which LLVM vectorises and interleaves (its vector loop needs a
        # longer trip count; below it the scalar remainder loop is slower than the first form).
        if with_abs and not rgb:  # |v_xy| per lane only when asked for
            for q in range(n_lanes):
                L[_LABS + q] = abs(L[_LXY + q])
                L[_LABS + _LW + q] = abs(L[_LXY + _LW + q])
        n8 = n_lanes // _U(_LANES)
        for i in range(n_slot):
            fi = _U(i if with_abs or i < _S_ABS else i + (_S_COL - _S_ABS)) * _LW
            if rgb:  # the running sums' last group
                e8 = fi + n_lanes
                s0, s1, s2, s3 = L[e8], L[e8 + _U(1)], L[e8 + _U(2)], L[e8 + _U(3)]
                s4, s5, s6, s7 = L[e8 + _U(4)], L[e8 + _U(5)], L[e8 + _U(6)], L[e8 + _U(7)]
            elif n8 <= _U(_FEW_GROUPS):
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _ZERO
                for k8 in range(n8):
                    q = fi + k8 * _U(_LANES)
                    s0 += L[q]
                    s1 += L[q + _U(1)]
                    s2 += L[q + _U(2)]
                    s3 += L[q + _U(3)]
                    s4 += L[q + _U(4)]
                    s5 += L[q + _U(5)]
                    s6 += L[q + _U(6)]
                    s7 += L[q + _U(7)]
            else:
                for q in range(fi + _U(_LANES), fi + n_lanes):
                    L[q] += L[q - _U(_LANES)]
                e8 = fi + n_lanes - _U(_LANES)
                s0, s1, s2, s3 = L[e8], L[e8 + _U(1)], L[e8 + _U(2)], L[e8 + _U(3)]
                s4, s5, s6, s7 = L[e8 + _U(4)], L[e8 + _U(5)], L[e8 + _U(6)], L[e8 + _U(7)]
            s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
            slots[idx, i] = s if first else slots[idx, i] + s


@njit(cache=True, error_model="numpy")
def _backward_tile(
    t, ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, additive, backgrounds,
    has_bg, t_final, last_ids, v_colors, v_alphas, slots, tile_end,
):  # fmt: skip
    start = offsets[t]
    end = offsets[t + 1]
    tile_end[t] = start
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
    # the tile's last used intersection: its slot rows after it are never written nor read
    tile_last = end - 1
    if not additive:
        tile_last = start - 1
        for y in range(ty0, ty1):
            for x in range(tx0, tx1):
                tile_last = max(tile_last, np.int64(last_ids[cam, y, x]))
    tile_end[t] = tile_last + 1
    if tile_last < start:
        return
    D = v_colors.shape[3]
    S = np.empty((_N_BFIELDS + 2 * D + _N_TMP) * _FIELD, np.float32)
    last = np.empty(_BLOCK * _BLOCK, np.int32)
    L = np.empty((_S_COL + D) * (_FIELD + _LANES), np.float32)  # every field, |v_xy| included
    row_last = np.empty((_BLOCK // _LANES, _BLOCK), np.int64)
    first = True
    for y0 in range(ty0, ty1, _BLOCK):
        for x0 in range(tx0, tx1, _BLOCK):
            _backward_block(
                cam, x0, y0, min(x0 + _BLOCK, tx1), min(y0 + _BLOCK, ty1), ga, bounds, fids, start, end,
                tile_last, additive, backgrounds, has_bg, t_final, last_ids, v_colors, v_alphas, slots,
                first, S, last, L, row_last,
            )  # fmt: skip
            first = False


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(
    ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, n_cameras, additive,
    backgrounds, has_bg, t_final, last_ids, v_colors, v_alphas, slots, tile_end,
):  # fmt: skip
    for t in prange(n_cameras * n_tiles):
        _backward_tile(
            t, ga, bounds, fids, offsets, width, height, tile_size, tile_width, n_tiles, additive,
            backgrounds, has_bg, t_final, last_ids, v_colors, v_alphas, slots, tile_end,
        )  # fmt: skip


@njit(parallel=True, cache=True, error_model="numpy")
def _reduce_slots(slots, fids, offsets, tile_end, n_rows, n_parts):
    """Sum the used slot rows (``offsets[t] <= i < tile_end[t]`` per tile t) per Gaussian, in
    intersection order (deterministic; the rows after a tile's last used intersection are
    never written). Part k of ``n_parts`` owns the Gaussians [k n / P, (k + 1) n / P) and scans
    every intersection: sequential reads, no gather, no sort, no atomics."""
    S = slots.shape[1]
    out = np.empty((n_rows, S), np.float32)
    for k in prange(n_parts):
        lo = np.int32(k * n_rows // n_parts)
        hi = np.int32((k + 1) * n_rows // n_parts)
        for g in range(lo, hi):
            for j in range(S):
                out[g, j] = _ZERO
        for t in range(tile_end.shape[0]):
            for i in range(offsets[t], tile_end[t]):
                g = fids[i]
                if g >= lo and g < hi:
                    for j in range(S):
                        out[g, j] += slots[i, j]
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
        M = flatten_ids.shape[0]
        offsets = _offsets_np(isect_offsets, M)
        if M and int(np.max(np.diff(offsets))) >= _MAX_TILE_LIST:
            raise ValueError(f"rasterize_to_pixels: a tile lists >= {_MAX_TILE_LIST} Gaussians (backend='cpu' limit)")
        fids = _np(flatten_ids.to(torch.int32))
        has_bg = backgrounds is not None
        bg = _np(backgrounds) if has_bg else np.zeros((C, D), np.float32)
        m2d, con, col, opa = (
            _np(means2d).reshape(C * N, 2),
            _np(conics).reshape(C * N, 3),
            _np(colors).reshape(C * N, D),
            _np(opacities).reshape(C * N),
        )
        R = -(-(11 + D) // 16) * 16  # 6 + D floats, the cut, the int32 box; 64-byte rows
        ga = buffers.empty((C * N, R), np.float32)
        bounds = ga.view(np.int32)[:, R - 4 :]
        _gauss_pack(m2d, con, opa, col, additive, ga, bounds)
        out_colors = np.empty((C, height, width, D), np.float32)
        out_alphas = np.empty((C, height, width), np.float32)
        t_final = np.empty((C, height, width), np.float32)
        last_ids = np.empty((C, height, width), np.int32)
        with _Dynamic():
            _forward_kernel(
                ga, bounds, fids, offsets, width, height, tile_size, tw, tw * th, C, additive, bg, has_bg,
                out_colors, out_alphas, t_final, last_ids,
            )  # fmt: skip
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds)
        ctx.np_state = (ga, bounds, bg, fids, offsets, t_final, last_ids)
        ctx.meta = (C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg)
        render_colors = torch.from_numpy(out_colors)
        render_alphas = torch.from_numpy(out_alphas)[..., None]
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        means2d, _conics, _colors, _opacities, _backgrounds = ctx.saved_tensors
        ga, bounds, bg, fids, offsets, t_final, last_ids = ctx.np_state
        C, N, D, width, height, tile_size, tw, th, additive, absgrad, has_bg = ctx.meta
        v_c = _np(v_render_colors.to(torch.float32))
        v_a = _np(v_render_alphas.to(torch.float32)).reshape(C, height, width)
        s_col = _S_COL if absgrad else _S_ABS  # |v_xy| only when asked for
        slots = buffers.empty((fids.shape[0], s_col + D), np.float32)
        tile_end = np.empty(C * tw * th, np.int64)
        with _Dynamic():
            _backward_kernel(
                ga, bounds, fids, offsets, width, height, tile_size, tw, tw * th, C, additive, bg, has_bg,
                t_final, last_ids, v_c, v_a, slots, tile_end,
            )  # fmt: skip
        grads = torch.from_numpy(_reduce_slots(slots, fids, offsets, tile_end, C * N, numba.get_num_threads()))
        grads = grads.reshape(C, N, s_col + D)
        v_means2d = grads[..., _S_XY:_S_CON]
        v_conics = grads[..., _S_CON:_S_OP]
        v_opacities = grads[..., _S_OP]
        v_colors = grads[..., s_col:]
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
    backgrounds: Tensor | None = None,  # [C, D]
    compositing: str = "alpha",
    absgrad: bool = False,
) -> tuple[Tensor, Tensor]:
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
