#!/usr/bin/env python
"""Free vs voxel-anchored Gaussians on the real fox capture (issue #6, use B).

For each K, ``recon fit --model gaussians`` and ``recon fit --model anchored`` train on the same
K views, with the same iterations and seed, and are scored on the same 8 unseen views. Views
follow ``scripts/bench_fox.py`` (imported, so the scripts always agree): K training views by
farthest-point sampling on camera centres, nested over K, and 8 shared evaluation views among
the rest. Everything else is each model's default.

    python scripts/bench_anchored.py --ks 4 8 --iterations 3000 --downscale 4 --out runs/bench_anchored
    python scripts/bench_anchored.py --ks 4 --iterations 30 --downscale 16 --out /tmp/bench_anchored  # smoke test

Resumable: runs already in ``results.json`` with the same iterations, downscale and seed are
skipped; an interrupted run continues from its last checkpoint. Writes one run folder per K and
model, ``results.json`` and ``results.md`` (a table for docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recon.io.atomic import atomic_write_bytes
from recon.io.run import RunDir, read_json
from recon.pipelines.capture import CaptureFitConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fox import FoxGrid, protocol_parser

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("gaussians", "anchored")


def make_config(model: str, out: Path, train: list[int], eval_idx: list[int], args) -> CaptureFitConfig:
    """The fit of one (K, model) cell; resumes a run of these very settings left incomplete."""
    run = RunDir(out)
    resume = False
    if run.latest_checkpoint() is not None and not run.is_complete() and run.path("config.json").is_file():
        old = read_json(run.path("config.json"))
        resume = (old.get("model"), old.get("downscale"), old.get("seed"), old.get("iterations")) == (
            model, args.downscale, args.seed, args.iterations)  # fmt: skip
    return CaptureFitConfig(
        data=args.data,
        preset="plain",  # the documented comparison: same initial points for both models
        out=out,
        model=model,  # type: ignore[arg-type]
        train_views=tuple(train),
        eval_indices=tuple(eval_idx),
        downscale=args.downscale,
        iterations=args.iterations,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        resume=resume,
        overwrite=not resume,
    )


def main() -> None:
    ap = protocol_parser(__doc__, [4, 8], ROOT / "runs/bench_anchored")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--checkpoint-every", type=int, default=500)
    args = ap.parse_args()

    console = Console()
    grid = FoxGrid(args)
    train, eval_idx, rows, results_path = grid.train, grid.eval_idx, grid.rows, grid.path

    for k in args.ks:
        for model in args.models:
            key = f"K{k}/{model}"
            if done := grid.done(key):
                console.print(f"{key}: done ({done['eval_psnr']:.2f} dB), skipped")
                continue
            out = args.out / f"K{k}" / model
            t0 = time.perf_counter()
            metrics = make_config(model, out, train[k], eval_idx, args).setup().run()
            wall = time.perf_counter() - t0
            ev, tr = metrics["eval"]["mean"], metrics["train"]["mean"]
            grid.record(key, k, out, metrics, wall, model=model, n_anchors=metrics.get("n_anchors"))
            console.print(f"{key}: eval PSNR {ev['psnr']:.2f}  SSIM {ev['ssim']:.4f}  train PSNR {tr['psnr']:.2f}  "
                          f"{metrics['n_gaussians']:,} Gaussians  ({wall:.0f} s)")

    shown = [r for r in rows.values() if r["K"] in args.ks and r["model"] in args.models and
             grid.current(r)]
    shown.sort(key=lambda r: (r["K"], MODELS.index(r["model"])))
    free = {r["K"]: r["eval_psnr"] for r in shown if r["model"] == "gaussians"}
    header = ("K", "model", "eval PSNR", "vs gaussians", "eval SSIM", "train PSNR", "Gaussians", "anchors",
              "train time (s)", "wall (s)")
    table = Table(title=f"fox, downscale {args.downscale:g}, {args.iterations} iterations, {len(eval_idx)} unseen views")
    for col in header:
        table.add_column(col, justify="left" if col == "model" else "right")
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in shown:
        delta = f"{r['eval_psnr'] - free[r['K']]:+.2f}" if r["K"] in free else "n/a"
        cells = (str(r["K"]), r["model"], f"{r['eval_psnr']:.2f}", delta, f"{r['eval_ssim']:.4f}",
                 f"{r['train_psnr']:.2f}", f"{r['n_gaussians']:,}", f"{r['n_anchors']:,}" if r["n_anchors"] else "-",
                 f"{r['train_time_s']:.0f}", f"{r['wall_s']:.0f}")
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    atomic_write_bytes(args.out / "results.md", ("\n".join(md) + "\n").encode())
    console.print(f"wrote {results_path} and results.md")


if __name__ == "__main__":
    main()
