"""Benchmark the CPU Gaussian rasteriser (forward + backward) against gsplat's PyTorch reference.

Reference path (all on CPU, autograd for the backward):
  gsplat ``_quat_scale_to_covar_preci`` + ``_fully_fused_projection`` (torch projection),
  gsplat ``_isect_tiles`` + ``_isect_offset_encode`` (its Python/torch binning), and
  ``recon.splat.raster_torch.rasterize_to_pixels`` as the compositor, because gsplat's own
  ``_rasterize_to_pixels`` calls the CUDA-only ``rasterize_to_indices_in_range``.
Ours: ``recon.splat.rasterization(..., backend="cpu")`` (torch projection, numba binning and
compositing).

Scenes: one camera looking down +z; Gaussian centres uniform over (and slightly beyond) the
image at depths 2..6; per-axis scales giving pixel std devs ~0.25..9 (3-sigma footprints of a
few to tens of pixels); opacities U(0.1, 0.9); RGB colours. Loss = sum(render * fixed weights).

    python scripts/bench_raster.py [--repeats 5] [--ref-repeats 3] [--ref-repeats-50k 2] [--no-ref-50k]
        [--scenes 5000x128 50000x256] [--rounds R]

With ``--rounds R`` the reference and ours are timed in alternation, R rounds of (reference
once, ours ``--repeats`` times), and the speed-up is the ratio of the medians: on a shared
machine both then see the same load.

The machine is shared, so OMP_WAIT_POLICY defaults to PASSIVE here (set before torch loads):
with busy-waiting OpenMP threads, torch ops on an oversubscribed 2-core box slow down by up
to 10x, for both paths alike. Export OMP_WAIT_POLICY to override.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba
import torch
from rich.console import Console
from rich.table import Table

from recon.splat import raster_cpu, raster_torch
from recon.splat.rasterize import rasterization


def make_scene(n: int, width: int, height: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    z = torch.rand(n, generator=g) * 4 + 2
    u = torch.rand(n, generator=g) * width * 1.1 - 0.05 * width
    v = torch.rand(n, generator=g) * height * 1.1 - 0.05 * height
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], -1)
    sigma_px = 0.5 * torch.exp(torch.rand(n, generator=g) * math.log(12.0))  # 0.5..6 px
    scales = (sigma_px * z / f)[:, None] * (torch.rand(n, 3, generator=g) + 0.5)
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])[None]
    weights = torch.rand(1, height, width, 3, generator=g)
    return (means, quats, scales, opacities, colors), viewmats, Ks, weights


def render_ours(params, viewmats, Ks, width, height):
    colors, _alphas, meta = rasterization(*params, viewmats, Ks, width, height, backend="cpu")
    return colors, meta["flatten_ids"].shape[0]


def render_reference(params, viewmats, Ks, width, height, tile_size=16):
    from gsplat.cuda._torch_impl import (
        _fully_fused_projection,
        _isect_offset_encode,
        _isect_tiles,
        _quat_scale_to_covar_preci,
    )

    means, quats, scales, opacities, colors = params
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height
    )
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    _, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, tile_size, tw, th)
    offsets = _isect_offset_encode(isect_ids, 1, tw, th)
    C, N = radii.shape
    out, _ = raster_torch.rasterize_to_pixels(
        means2d, conics, colors.expand(C, N, 3), opacities.expand(C, N), width, height,
        tile_size, offsets, flatten_ids,
    )  # fmt: skip
    return out, flatten_ids.shape[0]


def time_fwd_bwd(fn, params, viewmats, Ks, weights, width, height, repeats):
    fwd, bwd = [], []
    out = None
    for _ in range(repeats):
        leaves = [p.detach().clone().requires_grad_() for p in params]
        t0 = time.perf_counter()
        out, n_isect = fn(leaves, viewmats, Ks, width, height)
        t1 = time.perf_counter()
        (out * weights).sum().backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    grad_means = leaves[0].grad
    return statistics.median(fwd), statistics.median(bwd), out.detach(), grad_means, n_isect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of ours (after one warm-up)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the reference (5k)")
    ap.add_argument("--ref-repeats-50k", type=int, default=2, help="timed runs of the reference (50k)")
    ap.add_argument("--no-ref-50k", action="store_true", help="skip the slow reference at 50k")
    ap.add_argument("--scenes", nargs="+", default=["5000x128", "5000x256", "50000x128", "50000x256"],
                    help="scenes as NxSIZE (N Gaussians, SIZE x SIZE image)")
    ap.add_argument("--rounds", type=int, default=0, help="alternate reference and ours for this many rounds")
    ap.add_argument("--skip-training-resolution", action="store_true")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 132))
    console.print(
        f"torch {torch.__version__} threads={torch.get_num_threads()}, numba {numba.__version__} "
        f"threads={numba.get_num_threads()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"load avg {os.getloadavg()[0]:.2f}"
    )
    t0 = time.perf_counter()
    raster_cpu.warmup()
    console.print(f"numba kernels ready in {time.perf_counter() - t0:.2f} s (compile on first ever run, else cache load)")
    console.print(
        "reference = gsplat torch projection + gsplat _isect_tiles/_isect_offset_encode + "
        "recon raster_torch compositor (gsplat's _rasterize_to_pixels needs CUDA)"
    )

    table = Table(title="CPU rasterisation, forward + backward, median seconds")
    cols = ("N", "image", "isects", "ref fwd", "ref bwd", "ref", "ours fwd", "ours bwd", "ours", "ref/ours", "max|Δimg|", "Δ∂means rel")
    for col in cols:
        table.add_column(col, justify="right")
    for spec in args.scenes:
        n, size = (int(v) for v in spec.lower().split("x"))
        params, viewmats, Ks, weights = make_scene(n, size, size)
        time_fwd_bwd(render_ours, params, viewmats, Ks, weights, size, size, 1)  # warm-up
        if args.rounds:
            o_runs, r_runs = [], []
            for _ in range(args.rounds):
                rf, rb, r_img, r_grad, _ = time_fwd_bwd(render_reference, params, viewmats, Ks, weights, size, size, 1)
                r_runs.append((rf, rb))
                of, ob, o_img, o_grad, m = time_fwd_bwd(render_ours, params, viewmats, Ks, weights, size, size, args.repeats)
                o_runs.append((of, ob))
            rf, rb = (statistics.median(x[i] for x in r_runs) for i in (0, 1))
            of, ob = (statistics.median(x[i] for x in o_runs) for i in (0, 1))
            d_img = (r_img - o_img).abs().max().item()
            d_grad = ((r_grad - o_grad).abs().max() / r_grad.abs().max().clamp(min=1e-12)).item()
            table.add_row(
                f"{n:,}", f"{size}x{size}", f"{m:,}", f"{rf:.3f}", f"{rb:.3f}", f"{rf + rb:.3f}",
                f"{of:.3f}", f"{ob:.3f}", f"{of + ob:.3f}", f"{(rf + rb) / (of + ob):.1f}x",
                f"{d_img:.1e}", f"{d_grad:.1e}",
            )  # fmt: skip
            console.print(f"  done N={n:,} {size}x{size} ({args.rounds} alternating rounds)")
            continue
        of, ob, o_img, o_grad, m = time_fwd_bwd(render_ours, params, viewmats, Ks, weights, size, size, args.repeats)
        if n >= 50_000 and args.no_ref_50k:
            rf = rb = float("nan")
            d_img = d_grad = float("nan")
        else:
            reps = args.ref_repeats_50k if n >= 50_000 else args.ref_repeats
            rf, rb, r_img, r_grad, _ = time_fwd_bwd(render_reference, params, viewmats, Ks, weights, size, size, reps)
            d_img = (r_img - o_img).abs().max().item()
            d_grad = ((r_grad - o_grad).abs().max() / r_grad.abs().max().clamp(min=1e-12)).item()
        table.add_row(
            f"{n:,}", f"{size}x{size}", f"{m:,}", f"{rf:.3f}", f"{rb:.3f}", f"{rf + rb:.3f}",
            f"{of:.3f}", f"{ob:.3f}", f"{of + ob:.3f}", f"{(rf + rb) / (of + ob):.1f}x",
            f"{d_img:.1e}", f"{d_grad:.1e}",
        )  # fmt: skip
        console.print(f"  done N={n:,} {size}x{size}")
    console.print(table)
    if args.skip_training_resolution:
        return

    width, height, n = 480, 270, 50_000
    params, viewmats, Ks, weights = make_scene(n, width, height, seed=1)
    time_fwd_bwd(render_ours, params, viewmats, Ks, weights, width, height, 1)
    of, ob, _, _, m = time_fwd_bwd(render_ours, params, viewmats, Ks, weights, width, height, args.repeats)
    console.print(
        f"training resolution 270x480, N={n:,} ({m:,} intersections): ours fwd {of:.3f} s + "
        f"bwd {ob:.3f} s = [bold]{of + ob:.3f} s[/bold] per view (median of {args.repeats})"
    )
    console.print(f"load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
