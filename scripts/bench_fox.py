#!/usr/bin/env python
"""Few-view quality on the real fox capture: K training views, scored on 8 views never trained on.

Protocol (shared/data/README.md): K views spread over the capture by farthest-point sampling on
camera centres (the K=4 set is the first 4 of the K=8 set); the same 8 evaluation views for every
K, chosen by farthest-point sampling among the views outside the largest training set.

    python scripts/bench_fox.py --ks 4 8 --iterations 3000 --downscale 4 --out runs/bench_fox

Writes one run folder per K, ``results.json`` and ``results.md`` (a table for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from recon.io.formats import load_capture
from recon.geometry.view_selection import farthest_point_views
from recon.pipelines.capture import CaptureFitConfig

ROOT = Path(__file__).resolve().parents[1]


def protocol_views(data: Path, ks: list[int], n_eval: int) -> tuple[dict[int, list[int]], list[int]]:
    """Training indices per K (nested) and the shared evaluation indices."""
    capture = load_capture(data)
    centres = capture.cameras.centres()
    kmax = max(ks)
    order = farthest_point_views(centres, kmax)
    train = {k: sorted(order[:k]) for k in ks}
    rest = [i for i in range(len(capture)) if i not in set(order)]
    picked = farthest_point_views(centres[rest], n_eval)
    return train, sorted(rest[i] for i in picked)


def unseen_views(data: Path, n_eval: int, n_train: int) -> tuple[list[int], list[int]]:
    """Views no choice of the default fit ever saw: ``n_eval`` evaluation indices by farthest-point
    sampling among the views outside the K = 8 protocol training set (``recon fit``'s default
    views) and the protocol's evaluation views, then ``n_train`` training indices the same way
    among the views left (disjoint from all of them). Returns (train, eval), both sorted."""
    capture = load_capture(data)
    centres = capture.cameras.centres()
    train8, protocol_eval = protocol_views(data, [8], 8)
    used = set(train8[8]) | set(protocol_eval)
    rest = [i for i in range(len(capture)) if i not in used]
    picked = sorted(rest[i] for i in farthest_point_views(centres[rest], n_eval))
    left = [i for i in rest if i not in set(picked)]
    train = sorted(left[i] for i in farthest_point_views(centres[left], n_train)) if n_train else []
    return train, picked


def protocol_parser(doc: str, ks: list[int], out: Path) -> argparse.ArgumentParser:
    """The options every fox-protocol script shares: data, K values, evaluation views, steps,
    resolution, seed and output folder."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/object/fox")
    ap.add_argument("--ks", type=int, nargs="+", default=ks)
    ap.add_argument("--n-eval", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--downscale", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)
    return ap


def machine_line() -> str:
    """Architecture, torch threads and version, for results files."""
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


class FoxGrid:
    """A resumable grid of fox-protocol fits, one row per (K, variant), kept in ``OUT/results.json``.

    ``settings`` (steps, resolution, seed, evaluation views) must match for a stored row to count
    as done; ``record`` stores the scores every grid reports and saves at once.
    """

    def __init__(self, args: argparse.Namespace, extra: dict | None = None) -> None:
        from recon.io.run import read_json

        self.args = args
        self.train, self.eval_idx = protocol_views(args.data, sorted(set(args.ks) | {8}), args.n_eval)
        self.path = args.out / "results.json"
        self.rows: dict[str, dict] = (read_json(self.path) if self.path.is_file() else {}).get("rows", {})
        self.settings = {"iterations": args.iterations, "downscale": args.downscale, "seed": args.seed, "eval_views": self.eval_idx}
        self.extra = extra or {}

    def done(self, key: str, **fields) -> dict | None:
        """The stored row of ``key`` if it was run with these settings (and these ``fields``, e.g.
        the same option overrides) and its run is complete."""
        from recon.io.run import RunDir

        row = self.rows.get(key)
        wanted = {**self.settings, **json.loads(json.dumps(fields))}  # compare as stored (tuples -> lists)
        ok = row and all(row.get(s) == v for s, v in wanted.items()) and RunDir(Path(row["run"])).is_complete()
        return row if ok else None

    def current(self, row: dict) -> bool:
        return all(row.get(s) == v for s, v in self.settings.items())

    def record(self, key: str, k: int, out: Path, metrics: dict, wall: float, **fields) -> dict:
        """Store the row of one finished fit (``fields`` first, then the shared scores) and save."""
        from recon.io.atomic import atomic_write_json
        from recon.io.run import read_json

        if self.path.is_file():  # another process of the same grid may have added rows meanwhile
            self.rows = read_json(self.path).get("rows", {})
        ev, tr = metrics["eval"]["mean"], metrics["train"]["mean"]
        self.rows[key] = {
            "K": k, **fields, **self.settings, "train_views": self.train[k],
            "eval_psnr": round(ev["psnr"], 3), "eval_ssim": round(ev["ssim"], 4), "train_psnr": round(tr["psnr"], 3),
            "eval_views_psnr": {n: round(v["psnr"], 3) for n, v in metrics["eval"]["views"].items()},
            "lpips": metrics["eval"].get("lpips"), "n_gaussians": metrics["n_gaussians"],
            "train_time_s": metrics["train_time_s"], "wall_s": round(wall, 1), "resolution": metrics["resolution"],
            "device": metrics["device"], "run": str(out),
        }  # fmt: skip
        atomic_write_json(self.path, {"machine": machine_line(), **self.extra, "rows": self.rows})
        return self.rows[key]


def main() -> None:
    args = protocol_parser(__doc__, [4, 8], ROOT / "runs/bench_fox").parse_args()

    console = Console()
    train, eval_idx = protocol_views(args.data, args.ks, args.n_eval)
    rows = []
    for k in args.ks:
        cfg = CaptureFitConfig(
            data=args.data,
            preset="plain",  # 3DGS as published, the protocol's baseline
            out=args.out / f"K{k}",
            train_views=tuple(train[k]),
            eval_indices=tuple(eval_idx),
            downscale=args.downscale,
            iterations=args.iterations,
            seed=args.seed,
            overwrite=True,
        )
        t0 = time.perf_counter()
        metrics = cfg.setup().run()
        wall = time.perf_counter() - t0
        ev = metrics["eval"]["mean"]
        tr = metrics["train"]["mean"]
        rows.append(
            {
                "K": k,
                "train_views": train[k],
                "eval_views": eval_idx,
                "eval_psnr": round(ev["psnr"], 2),
                "eval_ssim": round(ev["ssim"], 4),
                "train_psnr": round(tr["psnr"], 2),
                "lpips": metrics["eval"]["lpips"],
                "n_gaussians": metrics["n_gaussians"],
                "train_time_s": metrics["train_time_s"],
                "wall_s": round(wall, 1),
                "resolution": metrics["resolution"],
                "device": metrics["device"],
            }
        )
        console.print(f"K={k}: eval PSNR {ev['psnr']:.2f} SSIM {ev['ssim']:.4f}  ({wall:.0f} s)")

    table = Table(title=f"fox, downscale {args.downscale:g}, {args.iterations} iterations, eval on {len(eval_idx)} unseen views")
    for col in ("K", "eval PSNR", "eval SSIM", "train PSNR", "Gaussians", "train time (s)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["K"]), f"{r['eval_psnr']:.2f}", f"{r['eval_ssim']:.4f}", f"{r['train_psnr']:.2f}",
                      f"{r['n_gaussians']:,}", f"{r['train_time_s']:.0f}")
    console.print(table)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    result = {"machine": machine, "iterations": args.iterations, "downscale": args.downscale, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    md = ["| K | eval PSNR | eval SSIM | train PSNR | Gaussians | train time (s) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['K']} | {r['eval_psnr']:.2f} | {r['eval_ssim']:.4f} | {r['train_psnr']:.2f} | {r['n_gaussians']:,} | "
           f"{r['train_time_s']:.0f} |" for r in rows]
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
