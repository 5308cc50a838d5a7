#!/usr/bin/env python
"""Few-view fox with and without a diffusion prior (``recon fit --prior repair``), same protocol
as scripts/ablate_fewview.py (bench_fox views: K training views by farthest-point sampling, the
same 8 unseen evaluation views), the ``fewview`` preset, one fit per variant.

    python scripts/bench_prior.py --ks 4 --iterations 1000 --downscale 8 --variants fewview repair --out runs/bench_prior

Variants run one after another in this process (or one per process with ``--variants NAME``, all
writing rows into ``OUT/results.json``); ``--table`` prints the markdown table of the stored rows.
Training time (``train_time_s``) includes everything the prior does: the leave-one-out fits,
training the repair model and every repair. CPU time of the process is recorded beside it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

from bench_fox import ROOT, FoxGrid, protocol_parser
from rich.console import Console

from recon.pipelines.capture import CaptureFitConfig
from recon.prior.guidance import PriorConfig, PriorGuidance
from recon.prior.pseudo_views import make_pseudo_views

VARIANTS: dict[str, dict] = {
    "fewview": {},
    # chosen before any evaluation view was scored: repair from 40 % of the run, every 25 %
    "repair": {"prior": "repair", "prior_options": {"start": 400, "every": 250, "loo_steps": 400}},
    # control, added after "repair" was scored: the same pseudo views, schedule and weights, but
    # the "repaired" targets are the renders themselves (no model): what the targets alone do
    "identity": {"prior": "identity", "prior_options": {"start": 400, "every": 250}},
}


def identity_repairer(images, seed):  # noqa: ARG001 - the Repairer signature
    return images.clone()


def make_job(name: str, data: Path, out: Path, train: list[int], eval_idx: list[int], args):
    """The CaptureFit job of a variant; 'identity' attaches a PriorGuidance whose repairer
    returns the renders unchanged (recon fit has no such --prior)."""
    if VARIANTS[name].get("prior") != "identity":
        return make_config(name, data, out, train, eval_idx, args).setup()
    job = make_config("fewview", data, out, train, eval_idx, args).setup()
    options = PriorConfig(**VARIANTS[name]["prior_options"])
    views = make_pseudo_views(job.train.cameras, options.pseudo_view_config(args.seed))
    job.guidance = PriorGuidance(options, views, identity_repairer, job.train.width, job.train.height, job.background,
                                 seed=args.seed, run=job.run_dir)  # fmt: skip
    return job


def make_config(name: str, data: Path, out: Path, train: list[int], eval_idx: list[int], args) -> CaptureFitConfig:
    opts = dict(VARIANTS[name])
    prior = opts.pop("prior", "none")
    prior_options = PriorConfig(**opts.pop("prior_options", {}))
    return CaptureFitConfig(data=data, out=out, preset="fewview", train_views=tuple(train), eval_indices=tuple(eval_idx),
                            downscale=args.downscale, iterations=args.iterations, seed=args.seed, overwrite=True, coarse_to_fine=0.0,
                            prior=prior, prior_options=prior_options)  # type: ignore[arg-type]  # fmt: skip


def commit() -> str:
    """Short commit of the working tree ("+dirty" when tracked files differ from it)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def table(rows: dict) -> list[str]:
    out = ["| K | variant | eval PSNR (Δ) | eval SSIM | train PSNR | train time (s) | CPU time (s) | load at start | commit |",
           "|---|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    base = {r["K"]: r for r in rows.values() if r.get("variant") == "fewview"}
    for key in sorted(rows):
        r = rows[key]
        b = base.get(r["K"])
        delta = f" ({r['eval_psnr'] - b['eval_psnr']:+.2f})" if b is not None and r is not b else ""
        out.append(f"| {r['K']} | {r['variant']} | {r['eval_psnr']:.2f}{delta} | {r['eval_ssim']:.4f} | {r['train_psnr']:.2f} | "
                   f"{r['train_time_s']:.0f} | {r.get('cpu_s', float('nan')):.0f} | {r.get('load', '')} | {r.get('commit', '')} |")  # fmt: skip
    return out


def main() -> None:
    ap = protocol_parser(__doc__, [4], ROOT / "runs/bench_prior")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--table", action="store_true", help="print the table of stored rows and exit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    console = Console()
    grid = FoxGrid(args, {"variants": VARIANTS})
    head = commit()  # at the start: the tree may change while the fits run
    if args.table:
        console.print("\n".join(table(grid.rows)))
        return
    for k in args.ks:
        for name in args.variants:
            key = f"K{k}/{name}"
            if done := grid.done(key, variant=name, options=VARIANTS[name]):
                console.print(f"{key}: done ({done['eval_psnr']:.2f} dB), skipped")
                continue
            out = args.out / f"K{k}" / name
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            t0, c0 = time.perf_counter(), time.process_time()
            metrics = make_job(name, args.data, out, grid.train[k], grid.eval_idx, args).run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = grid.record(key, k, out, metrics, wall, variant=name, options=VARIANTS[name], cpu_s=round(cpu, 1), load=load,
                              commit=head, prior=metrics.get("prior"))  # fmt: skip
            console.print(f"{key}: eval PSNR {row['eval_psnr']:.2f} SSIM {row['eval_ssim']:.4f}, train {row['train_time_s']:.0f} s, "
                          f"CPU {cpu:.0f} s (load at start {load})")  # fmt: skip
    console.print("\n".join(table(grid.rows)))


if __name__ == "__main__":
    main()
