"""Few-view ablation on the real fox capture: plain 3DGS, each few-view remedy alone, the
regularisers combined, and the ``fewview`` preset (the default of ``recon fit``), at K = 3, 4, 6,
8 training views, scored on the same unseen views.

Views follow ``scripts/bench_fox.py`` (imported, so both scripts always agree): K training views
by farthest-point sampling on camera centres, nested over K, and 8 shared evaluation views
among the rest. The ``mvs`` and ``mean_background`` rows take their values from
``PRESETS["fewview"]`` in ``recon.pipelines.capture``, so "X alone" is exactly the X of the
preset; the regularisers' values are ``REGULARISERS`` (each single row uses its own, the
``regularisers`` row all of them); the others (outlier pruning, co-regularisation, pose
refinement, hull init, SH degree 0) are set here. Several processes may fill one grid at once
(different ``--configs`` or ``--ks``): each saves only its own rows.

    python scripts/ablate_fewview.py --ks 3 4 6 8 --iterations 3000 --downscale 4 --out runs/ablate_fewview
    python scripts/ablate_fewview.py --ks 4 --configs plain fewview --iterations 30 --downscale 16  # smoke test

Resumable: runs already in ``results.json`` with the same iterations, downscale, seed, evaluation
views and option overrides are skipped; an interrupted run continues from its last checkpoint. Writes ``results.json``,
``results.md`` (tables), ``contact_sheet.png`` (one evaluation view per K and configuration) and
``psnr_vs_k.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from recon.io.atomic import atomic_write_bytes
from recon.io.formats import load_capture
from recon.io.images import save_image
from recon.io.views import load_views
from recon.io.run import RunDir, read_json
from recon.splat.config import PRESETS, apply_overrides
from recon.pipelines.capture import CaptureFitConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fox import FoxGrid, protocol_parser

ROOT = Path(__file__).resolve().parents[1]
FEWVIEW = PRESETS["fewview"]
REGULARISERS = {
    "reg.opacity_reg": 0.01, "reg.scale_reg": 0.01, "reg.scale_ratio_reg": 0.01,
    "reg.depth_smooth": 0.1, "reg.dropout": 0.1, "reg.pseudo_every": 4,
}  # fmt: skip
"""The regularisers' values (the ``regularisers`` row combines them; each single row uses its own)."""


def _reg(*keys: str) -> dict:
    return {k: REGULARISERS[k] for k in keys}


def _pick(*keys: str) -> dict:
    return {k: FEWVIEW[k] for k in keys}


CONFIGS: dict[str, dict] = {
    "plain": {},
    "opacity_scale": _reg("reg.opacity_reg", "reg.scale_reg", "reg.scale_ratio_reg"),
    "depth_smooth": _reg("reg.depth_smooth", "reg.pseudo_every"),
    "dropout": _reg("reg.dropout"),
    "prune_outliers": {"prune_outliers": True},
    "coreg": {"reg.coreg": 1.0, "reg.pseudo_every": 1},
    "refine_poses": {"refine_poses": True},
    "hull": {"init": "hull", "masks": "grabcut"},
    "sh0": {"sh_degree": 0},
    "regularisers": dict(REGULARISERS),
    "mean_background": _pick("background_mean"),
    "mvs": _pick("init"),
    "fewview": {"preset": "fewview"},
}
"""Configuration name -> option overrides (``preset`` selects a named preset)."""


def make_config(name: str, data: Path, out: Path, train: list[int], eval_idx: list[int], args) -> CaptureFitConfig:
    overrides = dict(CONFIGS[name])
    preset = overrides.pop("preset", "plain")
    run = RunDir(out)
    resume = False
    if run.latest_checkpoint() is not None and not run.is_complete() and run.path("config.json").is_file():
        old = read_json(run.path("config.json"))  # continue only a run of these very settings
        resume = (old.get("downscale"), old.get("seed"), old.get("iterations")) == (args.downscale, args.seed, args.iterations)
    cfg = CaptureFitConfig(
        data=data,
        out=out,
        preset=preset,
        train_views=tuple(train),
        eval_indices=tuple(eval_idx),
        downscale=args.downscale,
        iterations=args.iterations,
        coarse_to_fine=0.0,  # the published grid trained at full resolution throughout
        seed=args.seed,
        resume=resume,
        overwrite=not resume,
    )
    return apply_overrides(cfg, overrides)


def contact_sheet(path: Path, args, ks: list[int], names: list[str], rows: dict, eval_idx: list[int]) -> None:
    """One row per K: the ground truth of the first evaluation view, then each configuration's render."""
    import cv2

    capture = load_capture(args.data)
    gt, _, _ = load_views(capture, [eval_idx[0]], downscale=args.downscale)
    gt_img = gt[0].numpy()
    stem = Path(capture.names[eval_idx[0]]).stem
    up = max(1, int(np.ceil(240 / gt_img.shape[1])))  # small renders are enlarged (nearest) to be readable

    def tile(img: np.ndarray, lines: tuple[str, str]) -> np.ndarray:
        img = cv2.resize(img, None, fx=up, fy=up, interpolation=cv2.INTER_NEAREST) if up > 1 else img
        band = np.ones((40, img.shape[1], 3), np.float32)
        for j, text in enumerate(lines):
            cv2.putText(band, text, (3, 16 + 18 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([band, img])

    sheet = []
    for k in ks:
        tiles = [tile(gt_img, (f"K={k}", f"ground truth {stem}"))]
        for name in names:
            row = rows.get(f"K{k}/{name}")
            render = Path(row["run"]) / "renders" / "eval" / f"{stem}.png" if row else None
            if render is not None and render.is_file():
                img = cv2.cvtColor(cv2.imread(str(render)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
                text = (name, f"{row['eval_views_psnr'].get(capture.names[eval_idx[0]], float('nan')):.2f} dB")
            else:
                img, text = np.zeros_like(gt_img), (name, "(missing)")
            tiles.append(tile(img, text))
        sheet.append(np.hstack(tiles))
    save_image(path, np.vstack(sheet))


def plot_vs_k(path: Path, rows: list[dict]) -> None:
    """Eval PSNR against K, one line per configuration run at two or more K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for name in CONFIGS:
        pts = sorted((r["K"], r["eval_psnr"]) for r in rows if r["config"] == name)
        if len(pts) < 2:
            continue
        bold = name in ("plain", "fewview")
        ax.plot(*zip(*pts), marker="o", lw=2.5 if bold else 1, alpha=1 if bold else 0.6, label=name)
    ax.set_xlabel("training views K")
    ax.set_ylabel("PSNR on 8 unseen views (dB)")
    ax.set_title("fox few-view ablation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def matrix(rows: list[dict], plain: dict[int, float]) -> list[str]:
    """Markdown table, one line per configuration and one column per K: eval PSNR (Δ vs plain)
    and eval SSIM."""
    ks = sorted({r["K"] for r in rows})
    names = [n for n in CONFIGS if any(r["config"] == n for r in rows)]
    cell = {(r["config"], r["K"]): r for r in rows}
    out = ["| configuration | " + " | ".join(f"K = {k}: PSNR (Δ) / SSIM" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for n in names:
        cells = []
        for k in ks:
            r = cell.get((n, k))
            if r is None:
                cells.append("not run")
                continue
            delta = f" ({r['eval_psnr'] - plain[k]:+.2f})" if k in plain and n != "plain" else ""
            cells.append(f"{r['eval_psnr']:.2f}{delta} / {r['eval_ssim']:.3f}")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = protocol_parser(__doc__, [3, 4, 6, 8], ROOT / "runs/ablate_fewview")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()

    console = Console()
    grid = FoxGrid(args, {"configs": CONFIGS})
    train, eval_idx, results_path = grid.train, grid.eval_idx, grid.path

    for k in args.ks:
        for name in args.configs:
            key = f"K{k}/{name}"
            if done := grid.done(key, overrides=CONFIGS[name]):
                console.print(f"{key}: done ({done['eval_psnr']:.2f} dB), skipped")
                continue
            out = args.out / f"K{k}" / name
            cfg = make_config(name, args.data, out, train[k], eval_idx, args)
            t0 = time.perf_counter()
            metrics = cfg.setup().run()
            wall = time.perf_counter() - t0
            ev, tr = metrics["eval"]["mean"], metrics["train"]["mean"]
            grid.record(key, k, out, metrics, wall, config=name, overrides=CONFIGS[name])
            console.print(f"{key}: eval PSNR {ev['psnr']:.2f}  SSIM {ev['ssim']:.4f}  train PSNR {tr['psnr']:.2f}  ({wall:.0f} s)")

    rows = read_json(results_path)["rows"] if results_path.is_file() else {}  # with any other process's rows
    shown = [r for r in rows.values() if r["K"] in args.ks and r["config"] in args.configs and grid.current(r)]
    shown.sort(key=lambda r: (r["K"], list(CONFIGS).index(r["config"])))
    plain = {r["K"]: r["eval_psnr"] for r in shown if r["config"] == "plain"}
    table = Table(title=f"fox, downscale {args.downscale:g}, {args.iterations} iterations, {len(eval_idx)} unseen views")
    header = ("K", "config", "eval PSNR", "vs plain", "eval SSIM", "train PSNR", "Gaussians", "train time (s)")
    for col in header:
        table.add_column(col, justify="left" if col == "config" else "right")
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in shown:
        delta = f"{r['eval_psnr'] - plain[r['K']]:+.2f}" if r["K"] in plain else "n/a"
        cells = (str(r["K"]), r["config"], f"{r['eval_psnr']:.2f}", delta, f"{r['eval_ssim']:.4f}",
                 f"{r['train_psnr']:.2f}", f"{r['n_gaussians']:,}", f"{r['train_time_s']:.0f}")
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    md += ["", *matrix(shown, plain)]
    atomic_write_bytes(args.out / "results.md", ("\n".join(md) + "\n").encode())
    contact_sheet(args.out / "contact_sheet.png", args, args.ks, args.configs, rows, eval_idx)
    plot_vs_k(args.out / "psnr_vs_k.png", shown)
    console.print(f"wrote {results_path}, results.md, contact_sheet.png and psnr_vs_k.png in {args.out}")


if __name__ == "__main__":
    main()
