#!/usr/bin/env python
"""Fewer capture steps for the same quality (issue 17, item 3): the default `recon fit` against
the schedule switches, on the fox protocol's unseen views.

Variants (each a full `fewview` fit, the default preset, at --downscale 4 = 270x480):

    default    3000 steps at full resolution (`recon fit`'s default before the fast one;
               --iterations 3000 --coarse-to-fine 0)
    c2f        --coarse-to-fine 0.5 (half resolution for the first half of the 3000 steps)
    early      --early-stop (3000 steps planned, full resolution)
    auto       --auto-iterations (250 steps per view + 500 per 100k initial Gaussians)
    fast1500   --coarse-to-fine 0.5 --iterations 1500
    fast1000   --coarse-to-fine 0.5 --iterations 1000 (the fewview preset's default now)
    fast-early fast1000 + --early-stop (it watches full-resolution steps only, so from step 500;
               it never stops before 85 % of the steps, i.e. 850)
    fast-auto  --coarse-to-fine 0.5 --auto-iterations (the step count from the rule, half of it
               at half resolution)

Each row stores the steps run and the steps planned (``planned``: what --auto-iterations chose,
or --iterations; --early-stop may stop before it).

With ``--unseen`` the fits are scored on 8 evaluation views that neither the tuning of the
default (its 8 training and 8 evaluation views) nor the protocol ever scored (``unseen_views`` in
bench_fox.py: farthest-point sampling among the other views), and ``--disjoint-k N`` adds a
training set of N views chosen the same way among the views left (rows ``K<N>d-<variant>``),
disjoint from every view the default was chosen on:

    python scripts/bench_fit_speed.py --unseen --ks 8 --disjoint-k 6 --variants default fast1000 \
        --out runs/fit_unseen

Rows are stored in OUT/results.json as they finish (resumable: a finished row is skipped; with
--resume an unfinished fit continues from its last checkpoint, every 500 steps, and its row says
``resumed_from``: its wall and CPU time then cover only the resumed part).
Wall and process CPU time are recorded with the load average, because the machine is shared:

    python scripts/bench_fit_speed.py --ks 8 --variants default c2f fast1500 --out runs/fit_speed
    python scripts/bench_fit_speed.py --ks 4 --variants default fast1500 --out runs/fit_speed
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig

try:
    from bench_fox import FoxGrid, protocol_parser, unseen_views
except ImportError:  # run as a module
    from scripts.bench_fox import FoxGrid, protocol_parser, unseen_views

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    "default": {"coarse_to_fine": 0.0},
    "c2f": {"coarse_to_fine": 0.5},
    "early": {"early_stop": True, "coarse_to_fine": 0.0},
    "auto": {"auto_iterations": True, "coarse_to_fine": 0.0},
    "fast1500": {"coarse_to_fine": 0.5, "iterations": 1500},
    "fast1000": {"coarse_to_fine": 0.5, "iterations": 1000},
    "fast-early": {"coarse_to_fine": 0.5, "iterations": 1000, "early_stop": True},
    "fast-auto": {"coarse_to_fine": 0.5, "auto_iterations": True},
}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = protocol_parser(__doc__, [8], ROOT / "runs/fit_speed")
    ap.add_argument("--variants", nargs="+", default=["default", "c2f", "fast1500"], choices=sorted(VARIANTS))
    ap.add_argument("--resume", action="store_true", help="continue unfinished fits from their last checkpoint")
    ap.add_argument("--unseen", action="store_true", help="score on 8 views the default's tuning never scored")
    ap.add_argument("--disjoint-k", type=int, default=0, help="with --unseen: also fit N views disjoint from the tuning views")
    args = ap.parse_args()
    if args.disjoint_k and not args.unseen:
        ap.error("--disjoint-k needs --unseen")
    grid = FoxGrid(args)
    sets = [(f"K{k}", k) for k in args.ks]
    if args.unseen:
        disjoint, grid.eval_idx = unseen_views(args.data, args.n_eval, args.disjoint_k)
        grid.settings["eval_views"] = grid.eval_idx
        if disjoint:
            grid.train[f"{args.disjoint_k}d"] = disjoint
            sets.append((f"K{args.disjoint_k}d", f"{args.disjoint_k}d"))
    console = Console()
    for prefix, k in sets:
        for name in args.variants:
            key = f"{prefix}-{name}"
            if grid.done(key, variant=name, train_views=grid.train[k]):
                console.print(f"{key}: done, skipped")
                continue
            overrides = dict(VARIANTS[name])
            iterations = overrides.pop("iterations", args.iterations)
            out = args.out / key
            resume = args.resume and RunDir(out).latest_checkpoint() is not None
            cfg = CaptureFitConfig(
                data=args.data, out=out, train_views=tuple(grid.train[k]), eval_indices=tuple(grid.eval_idx),
                downscale=args.downscale, iterations=iterations, seed=args.seed, overwrite=not resume, resume=resume, **overrides,
            )  # fmt: skip
            load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), cpu_seconds()
            job = cfg.setup()
            resumed = {"resumed_from": job.trainer.step} if resume else {}
            metrics = job.run()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            row = grid.record(key, k, out, metrics, wall, variant=name, steps=metrics["iterations"], planned=job.config.iterations,
                              cpu_s=round(cpu, 1), load=[round(load0, 1), round(os.getloadavg()[0], 1)], **resumed)  # fmt: skip
            console.print(f"{key}: eval {row['eval_psnr']:.2f} dB / {row['eval_ssim']:.4f}, {row['steps']} steps, "
                          f"train {row['train_time_s']:.0f} s, wall {wall:.0f} s, CPU {cpu:.0f} s, load {row['load']}")  # fmt: skip
    table = Table(title=f"fox fewview fits, downscale {args.downscale:g}, eval on {len(grid.eval_idx)} unseen views")
    for col in ("row", "steps (planned)", "eval PSNR", "eval SSIM", "train (s)", "wall (s)", "CPU (s)", "load"):
        table.add_column(col, justify="right")
    for key, r in sorted(grid.rows.items()):
        if "variant" in r:
            table.add_row(key, f"{r['steps']} ({r.get('planned', '?')})", f"{r['eval_psnr']:.2f}", f"{r['eval_ssim']:.4f}", f"{r['train_time_s']:.0f}",
                          f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}", f"{r['load'][0]}-{r['load'][1]}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
