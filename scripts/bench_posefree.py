"""Benchmark pose-free few-view registration against calibrated poses (the fox capture).

For each K the views are those of ``scripts/bench_poses.py`` (farthest-point sampling on the
calibrated centres). ``recon.poses.sparse_registration.register_views`` registers the photos
alone (affine DSP-SIFT at ``--max-size``, focal length from the triplet search, self-checks);
the registered cameras are aligned to the calibrated ones by Sim(3) on the centres (Umeyama)
and rotation / centre / focal errors are scored. Centre errors are % of the scene scale.

    python scripts/bench_posefree.py [--k 3 4 6] [--max-size 1000] [--threads 1]
                                     [--out runs/bench_posefree]

Writes ``results.json`` and ``results.md`` to ``--out``, and each K's transforms.json,
sparse_pc.ply and report.json under ``--out/k<K>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from pathlib import Path

from recon.io.atomic import atomic_write_json, atomic_write_text
from recon.io.formats import load_capture
from recon.geometry.view_selection import farthest_point_views
from recon.poses.align import align_sim3, pose_errors
from recon.poses.sparse_registration import register_views

COLUMNS = [
    ("K", "k", "{}"),
    ("registered", "registered", "{}"),
    ("checks", "checks", "{}"),
    ("rot median (deg)", "rot_deg_median", "{:.2f}"),
    ("rot max (deg)", "rot_deg_max", "{:.2f}"),
    ("centre mean (%)", "centre_pct_mean", "{:.2f}"),
    ("centre max (%)", "centre_pct_max", "{:.2f}"),
    ("focal err (%)", "focal_err_pct", "{:+.1f}"),
    ("reproj (px)", "reproj_px", "{:.2f}"),
    ("points", "n_points", "{}"),
    ("time (s)", "seconds", "{:.0f}"),
]


def bench_one(capture, k: int, max_size: int, threads: int, out: Path) -> dict:
    idx = farthest_point_views(capture.cameras.centres(), k)
    sub = capture.subset(sorted(idx))
    row: dict = {"k": k, "images": [p.name for p in sub.image_paths]}
    rep = register_views(sub.image_paths, out / f"k{k}" / "transforms.json", max_image_size=max_size,
                         allow_partial=True, num_threads=threads, work_dir=out / f"k{k}" / "colmap")
    atomic_write_json(out / f"k{k}" / "report.json", rep.to_dict())
    row.update(registered=f"{rep.n_registered}/{k}", checks="pass" if rep.ok else "FAIL",
               summary=rep.summary(), reproj_px=rep.mean_reproj_error_px, n_points=rep.n_points,
               seconds=rep.seconds, method=rep.method, focal_source=rep.focal_source,
               focal_px=rep.focal_px, views=[v.to_dict() for v in rep.views])
    row["focal_err_pct"] = 100.0 * (rep.focal_px / sub.cameras.intrinsics[0].fx - 1.0)
    if rep.cameras is None or len(rep.image_paths) < 3:
        return row
    by_name = {p.name: i for i, p in enumerate(sub.image_paths)}
    ref = sub.cameras.subset([by_name[p.name] for p in rep.image_paths])
    err = pose_errors(rep.cameras.w2c, ref.w2c, align_sim3(rep.cameras.centres(), ref.centres()))
    row.update(
        rot_deg_median=statistics.median(err["rot_deg"]), rot_deg_max=err["rot_deg_max"],
        centre_pct_mean=100.0 * err["centre_err_mean"], centre_pct_max=100.0 * err["centre_err_max"],
        per_view={p.name: {"rot_deg": r, "centre_pct": 100.0 * c}
                  for p, r, c in zip(rep.image_paths, err["rot_deg"], err["centre_err"])},
    )
    return row


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, default=here.parent / "shared/data/object/fox")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 4, 6])
    ap.add_argument("--max-size", type=int, default=1000, help="longest image side for SIFT, px")
    ap.add_argument("--threads", type=int, default=1, help="pycolmap threads")
    ap.add_argument("--out", type=Path, default=here.parent / "runs" / "bench_posefree")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    capture = load_capture(args.capture)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in args.k:
        rows.append(bench_one(capture, k, args.max_size, args.threads, args.out))
        print(json.dumps({c: rows[-1].get(c) for _, c, _ in COLUMNS}), rows[-1]["summary"], flush=True)
    title = (f"Pose-free registration vs calibration: {args.capture.name}, affine DSP-SIFT at "
             f"{args.max_size} px, CPU, {args.threads} thread(s)")
    md = [f"### {title}", "", "| " + " | ".join(n for n, _, _ in COLUMNS) + " |",
          "|" + "---:|" * len(COLUMNS)]
    md += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in rows]
    md += [""] + [f"- K={r['k']} ({', '.join(r['images'])}): {r['summary']}; focal from "
                  f"{r['focal_source']}, {r['method']} mapping" for r in rows]
    atomic_write_json(args.out / "results.json", {"capture": str(args.capture), "max_image_size":
                      args.max_size, "rows": rows})
    atomic_write_text(args.out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
