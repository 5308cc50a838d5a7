"""Benchmark pose estimation from few photos against calibrated poses (the fox capture).

For each K, K views are picked by farthest-point sampling on the calibrated camera centres
(``recon.geometry.view_selection.farthest_point_views``, nested: the K=4 views are the first 4 of K=6 ...),
their poses are estimated from the photos alone with ``recon.poses.estimate_poses`` (SIFT on
images downscaled to ``--max-size``), the registered cameras are aligned to the calibrated
ones by a Sim(3) fit of the centres (Umeyama), and rotation / centre / focal errors are scored.
Centre errors are in % of the scene scale (mean distance of the K calibrated centres from
their centroid).

    python scripts/bench_poses.py [--capture ../shared/data/object/fox] [--k 4 6 8 16]
                                  [--max-size 1000] [--out runs/bench_poses]

Writes ``results.json`` and ``results.md`` to ``--out`` (and each K's transforms.json and
sparse_pc.ply under ``--out/k<K>/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from recon.errors import InputError
from recon.io.formats import load_capture
from recon.geometry.view_selection import farthest_point_views
from recon.poses.align import align_sim3, pose_errors
from recon.poses.colmap import estimate_poses

COLUMNS = [
    ("K", "k", "{}"),
    ("registered", "registered", "{}"),
    ("rot mean (deg)", "rot_deg_mean", "{:.2f}"),
    ("rot max (deg)", "rot_deg_max", "{:.2f}"),
    ("centre mean (%)", "centre_pct_mean", "{:.2f}"),
    ("centre max (%)", "centre_pct_max", "{:.2f}"),
    ("focal err (%)", "focal_err_pct", "{:+.1f}"),
    ("reproj (px)", "reproj_px", "{:.2f}"),
    ("points", "n_points", "{}"),
    ("time (s)", "seconds", "{:.1f}"),
]


def bench_one(capture, k: int, max_size: int, out: Path) -> dict:
    """Estimate, align and score the poses of the K farthest-point views."""
    idx = farthest_point_views(capture.cameras.centres(), k)
    sub = capture.subset(sorted(idx))
    row: dict = {"k": k, "images": [p.name for p in sub.image_paths]}
    try:
        rep = estimate_poses(
            sub.image_paths, out / f"k{k}" / "transforms.json", max_image_size=max_size
        )
    except InputError as err:
        row.update(registered=f"0/{k}", error=str(err))
        return row
    row.update(
        registered=f"{rep.n_registered}/{k}",
        unregistered=rep.unregistered,
        reproj_px=rep.mean_reproj_error_px,
        n_points=rep.n_points,
        seconds=rep.seconds,
        n_models=rep.n_models,
    )
    by_name = {p.name: i for i, p in enumerate(sub.image_paths)}
    ref = sub.cameras.subset([by_name[p.name] for p in rep.image_paths])
    ref_fx = ref.intrinsics[0].fx
    row["focal_err_pct"] = 100.0 * (rep.cameras.intrinsics[0].fx / ref_fx - 1.0)
    if rep.n_registered < 3:
        row["error"] = "fewer than 3 cameras registered: no Sim(3) alignment"
        return row
    err = pose_errors(rep.cameras.w2c, ref.w2c, align_sim3(rep.cameras.centres(), ref.centres()))
    row.update(
        rot_deg_mean=err["rot_deg_mean"],
        rot_deg_max=err["rot_deg_max"],
        centre_pct_mean=100.0 * err["centre_err_mean"],
        centre_pct_max=100.0 * err["centre_err_max"],
        per_view={
            p.name: {"rot_deg": r, "centre_pct": 100.0 * c}
            for p, r, c in zip(rep.image_paths, err["rot_deg"], err["centre_err"])
        },
    )
    return row


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--capture", type=Path, default=here.parent / "shared/data/object/fox")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 6, 8, 16])
    ap.add_argument("--max-size", type=int, default=1000, help="longest image side for SIFT, px")
    ap.add_argument("--out", type=Path, default=here.parent / "runs" / "bench_poses")
    args = ap.parse_args()

    console = Console()
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
    )
    capture = load_capture(args.capture)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in args.k:
        console.rule(f"K = {k}")
        rows.append(bench_one(capture, k, args.max_size, args.out))

    title = f"Pose estimation vs calibration: {args.capture.name}, SIFT at {args.max_size} px, CPU"
    table = Table(title=title)
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(cell(row, key, fmt) for _, key, fmt in COLUMNS))
    console.print(table)
    notes = [f"K={r['k']}: {r['error']}" for r in rows if "error" in r]
    notes += [
        f"K={r['k']}: not registered: {', '.join(r['unregistered'])}"
        for r in rows
        if r.get("unregistered")
    ]
    for note in notes:
        console.print(note)

    meta = {"capture": str(args.capture), "max_image_size": args.max_size, "rows": rows}
    write_atomic(args.out / "results.json", json.dumps(meta, indent=2) + "\n")
    md = [f"### {title}", "", "| " + " | ".join(n for n, _, _ in COLUMNS) + " |"]
    md.append("|" + "---:|" * len(COLUMNS))
    md += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in rows]
    md += [""] + [f"- {n}" for n in notes]
    write_atomic(args.out / "results.md", "\n".join(md) + "\n")
    console.print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
