"""Chamfer distance of TSDF meshes (``recon export --format mesh``) against references.

``sphere``: a sphere of flat, nearly opaque Gaussians (:func:`recon.splat.phantoms.sphere_gaussians`)
seen by cameras all around it; the mesh fused at each ``--resolutions`` is compared with the
exact sphere (dense Fibonacci samples of its surface) and its radial error is reported.

``fox``: the real fox (``../shared/data/object/fox``, 42 views). A ``recon fit`` with the K = 8
views of ``scripts/bench_fox.py``'s protocol (resumed when OUT/K8 is complete), its TSDF mesh,
and as reference the points triangulated from SIFT matches between every pair of all 42 posed
views (:func:`recon.splat.triangulate.triangulate_views`: SfM points with the capture's known
poses, so in the same world frame as the fit). The reference covers the table and background
too; both sets are also cropped to the box of the reference's points near the object
(``--crop`` quantiles around the look-at centre) so that completeness measures the object.

Distances are in the scene's units (the sphere: radius 1; the fox: transforms.json units) and as
a fraction of the reference box's diagonal; precision / recall / F-score at ``--thresholds``
(fractions of that diagonal): the share of mesh samples within the threshold of a reference
point, of reference points within it of a mesh sample, and their harmonic mean. ``--tsdf`` picks
the Open3D TSDF that fuses (``recon export --tsdf``; every one given is measured, the fox's fit is
shared). Each row records the Open3D version and the load average. Results go to
OUT/results.json.

    python scripts/bench_mesh.py sphere --resolutions 64 128 256 --tsdf scalable voxel-block-grid
    python scripts/bench_mesh.py fox --preset fewview --iterations 600 --downscale 8 --out runs/bench_mesh
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from recon.geometry.mesh import boundary_edges, is_watertight, sample_surface
from recon.io.atomic import atomic_write_bytes
from recon.metrics import chamfer_distance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fox import machine_line, protocol_views

console = Console()


def _save(out: Path, key: str, rows: list[dict], settings: dict) -> None:
    import open3d

    path = out / "results.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[f"{key}_open3d{open3d.__version__}"] = {"machine": machine_line(), "open3d": open3d.__version__, "settings": settings, "rows": rows}
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``uptime``), e.g. ``"3.1 2.8 2.5"``."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def precision_recall(samples: np.ndarray, reference: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Share of ``samples`` within ``threshold`` of a ``reference`` point (precision), of
    ``reference`` points within it of a sample (recall), and their harmonic mean (F-score)."""
    from scipy.spatial import cKDTree

    precision = float((cKDTree(reference).query(samples, workers=-1)[0] <= threshold).mean())
    recall = float((cKDTree(samples).query(reference, workers=-1)[0] <= threshold).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def _scores(samples: np.ndarray, reference: np.ndarray, diagonal: float, thresholds: list[float]) -> dict:
    """Accuracy, completeness, Chamfer (scene units and / diagonal) and P/R/F at each threshold."""
    ch = chamfer_distance(samples, reference)
    row = {"accuracy": ch.accuracy, "completeness": ch.completeness, "chamfer": ch.chamfer, "chamfer_over_diagonal": ch.chamfer / diagonal}
    for t in thresholds:
        p, r, f = precision_recall(samples, reference, t * diagonal)
        row[f"at_{t:g}"] = {"threshold": t * diagonal, "precision": p, "recall": r, "f_score": f}
    return row


def _prf(row: dict, t: float) -> str:
    x = row[f"at_{t:g}"]
    return f"{x['precision']:.2f} / {x['recall']:.2f} / {x['f_score']:.2f}"


def depth_bias(model, cameras, radius: float) -> tuple[float, float]:
    """Mean signed error of the rendered expected depth (what the TSDF fuses) against the exact
    sphere along each pixel's ray, camera z, over pixels that see the sphere: (all of them,
    those whose ray passes within 0.7 radius of the centre, away from the rim)."""
    from recon.splat.mesh import render_rgbd

    _, depth = render_rgbd(model, cameras, torch.zeros(3))
    errs, inner = [], []
    for v in range(len(cameras)):
        k = cameras.intrinsics[v]
        j, i = torch.meshgrid(torch.arange(k.height) + 0.5, torch.arange(k.width) + 0.5, indexing="ij")
        rays = torch.stack([(i - k.cx) / k.fx, (j - k.cy) / k.fy, torch.ones_like(i)], -1).double()
        unit = rays / rays.norm(dim=-1, keepdim=True)
        centre = cameras.w2c[v, :3, 3].double()  # the sphere's centre (the origin) in camera coordinates
        b = (unit * centre).sum(-1)
        disc = b * b - (centre @ centre - radius * radius)
        z = (b - disc.clamp(min=0).sqrt()) * unit[..., 2]
        d = depth[v].double()
        seen = (disc > 0) & (d > 0)
        errs.append((d - z)[seen])
        inner.append((d - z)[seen & (disc > (0.7 * radius) ** 2)])
    return float(torch.cat(errs).mean()), float(torch.cat(inner).mean())


def bench_sphere(args: argparse.Namespace) -> None:
    from recon.splat.mesh import MeshConfig, splat_mesh
    from recon.splat.phantoms import fibonacci_sphere, sphere_cameras, sphere_gaussians

    radius = 1.0
    model = sphere_gaussians(radius, args.gaussians)
    cameras = sphere_cameras(args.views, 3.0, size=(args.size, args.size))
    reference = fibonacci_sphere(args.samples) * radius
    bias, bias_inner = depth_bias(model, cameras, radius)
    console.print(f"rendered depth - exact depth: mean {bias:+.4f} over the sphere's pixels, {bias_inner:+.4f} away from the rim")
    diagonal = 2.0 * radius * np.sqrt(3.0)  # the sphere's bounding box
    rows = []
    t0 = args.thresholds[0]
    table = Table(title=f"TSDF mesh of a sphere of {args.gaussians} Gaussians (radius 1), {args.views} views {args.size}²")
    for col in ("TSDF", "resolution", "voxel", "faces", "watertight", "boundary edges", "accuracy", "completeness", "Chamfer",
                "radial |err|", f"P / R / F at {t0:g} diag", "holes filled", "time (s)", "CPU (s)", "load"):  # fmt: skip
        table.add_column(col, justify="right")
    for backend in args.tsdf:
        for res in args.resolutions:
            start, cpu = time.perf_counter(), time.process_time()
            mesh, info = splat_mesh(model, cameras, torch.zeros(3), MeshConfig(resolution=res, ring_views=0, target_faces=None, tsdf=backend))
            seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            samples = sample_surface(mesh, args.samples)
            radial_err = np.linalg.norm(samples, axis=1) - radius
            radial = float(np.abs(radial_err).mean())
            row = {"tsdf": info["tsdf"], "resolution": res, "voxel": info["voxel_size"], "faces": mesh.n_faces,
                   "watertight": is_watertight(mesh), "boundary_edges": boundary_edges(mesh), **_scores(samples, reference, diagonal, args.thresholds),
                   "radial_abs_error": radial, "radial_mean_error": float(radial_err.mean()), "holes_filled": info["holes_filled"], "seconds": seconds, "cpu_s": cpu_s,
                   "load": load_average()}  # fmt: skip
            rows.append(row)
            table.add_row(info["tsdf"], str(res), f"{row['voxel']:.4f}", f"{mesh.n_faces:,}", str(row["watertight"]), str(row["boundary_edges"]),
                          f"{row['accuracy']:.4f}", f"{row['completeness']:.4f}", f"{row['chamfer']:.4f}", f"{radial:.4f}", _prf(row, t0),
                          str(info["holes_filled"]), f"{seconds:.1f}", f"{cpu_s:.1f}", row["load"])  # fmt: skip
    console.print(table)
    _save(args.out, f"sphere_{args.gaussians}", rows, {"gaussians": args.gaussians, "views": args.views, "size": args.size,
                                                        "samples": args.samples, "depth_bias": bias, "depth_bias_inner": bias_inner,
                                                        "box_diagonal": diagonal})  # fmt: skip


def _reference_points(data: Path, downscale: float) -> np.ndarray:
    from recon.io.formats import load_capture
    from recon.io.views import load_views
    from recon.splat.triangulate import triangulate_views

    capture = load_capture(data)
    images, _, cams = load_views(capture, list(range(len(capture))), downscale=downscale)
    tri = triangulate_views(cams, images)
    return tri.points.double().numpy()


def bench_fox(args: argparse.Namespace) -> None:
    from recon.io.formats import load_capture
    from recon.io.mesh import read_mesh
    from recon.io.run import RunDir
    from recon.pipelines.capture import CaptureFitConfig
    from recon.pipelines.export import ExportConfig
    from recon.splat.points import look_at_centre

    train, eval_idx = protocol_views(args.data, [args.k], 8)
    run_dir = args.out / f"K{args.k}"
    t0 = time.perf_counter()
    run = RunDir(run_dir)
    interrupted = run.root.is_dir() and run.status().get("status") == "interrupted"
    fit_load = load_average()
    if run.problems() and not (interrupted and args.use_checkpoint):
        CaptureFitConfig(data=args.data, out=run_dir, train_views=tuple(train[args.k]), eval_indices=tuple(eval_idx),
                         downscale=args.downscale, iterations=args.iterations, coarse_to_fine=0.0, preset=args.preset, init_points=args.init_points,
                         overwrite=True).run()  # fmt: skip
        fit_load += f" -> {load_average()}"
    fit_s = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    eval_psnr = metrics["eval"]["mean"]["psnr"] if "eval" in metrics else None
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in log]
    ckpts = [int(c.stem.split("_")[-1]) for c in (run_dir / "checkpoints").glob("ckpt_*.pt")] if eval_psnr is None else []
    steps_done = max(ckpts + steps + [0])  # an interrupted fit's newest checkpoint can be past the log's last record
    fit_wall_s = max([float(r.get("time_s", 0.0)) for r in log] + [0.0])  # the fit's own wall time (log.jsonl), also when reused
    ref_path = args.out / f"reference_sfm_ds{args.ref_downscale:g}.npy"
    if not ref_path.is_file():
        t0 = time.perf_counter()
        np.save(ref_path, _reference_points(args.data, args.ref_downscale))
        console.print(f"reference: {time.perf_counter() - t0:.0f} s")
    reference = np.load(ref_path)
    capture = load_capture(args.data)
    centre = look_at_centre(capture.cameras.w2c).double().numpy()
    # the object: reference points closer to the look-at centre than the --crop quantile of distances
    dist = np.linalg.norm(reference - centre, axis=1)
    near = reference[dist <= np.quantile(dist, args.crop)]
    lo, hi = near.min(0), near.max(0)

    def inside(p: np.ndarray) -> np.ndarray:
        return p[np.all((p >= lo) & (p <= hi), axis=1)]

    diag = float(np.linalg.norm(hi - lo))
    t_first = args.thresholds[0]
    table = Table(title=f"fox K={args.k} TSDF mesh vs SfM points of all 42 views (box diagonal {diag:.3f})")
    for col in ("TSDF", "crop", "mesh samples", "reference", "accuracy", "completeness", "Chamfer", "Chamfer / diagonal",
                f"P / R / F at {t_first:g} diag"):  # fmt: skip
        table.add_column(col, justify="right")
    rows, meshes = [], {}
    for backend in args.tsdf:
        mesh_load = load_average()
        t0, cpu = time.perf_counter(), time.process_time()
        result = ExportConfig(run_dir, format="mesh", out=args.out / f"K{args.k}_mesh_{backend}.ply", resolution=args.resolution,
                              tsdf=backend).run()  # fmt: skip
        mesh_s, mesh_cpu_s = time.perf_counter() - t0, time.process_time() - cpu
        mesh = read_mesh(result.path)
        samples = sample_surface(mesh, args.samples)
        used = result.info["tsdf"]
        meshes[used] = {"faces": mesh.n_faces, "vertices": mesh.n_vertices, "watertight": is_watertight(mesh),
                        "boundary_edges": boundary_edges(mesh), "holes_filled": result.info["holes_filled"], "mesh_s": mesh_s,
                        "mesh_cpu_s": mesh_cpu_s, "load": f"{mesh_load} -> {load_average()}"}  # fmt: skip
        for name, a, b in (("all", samples, reference), ("object box", inside(samples), inside(reference))):
            row = {"tsdf": used, "crop": name, "mesh_samples": len(a), "reference_points": len(b), **_scores(a, b, diag, args.thresholds)}
            rows.append(row)
            table.add_row(used, name, f"{len(a):,}", f"{len(b):,}", f"{row['accuracy']:.4f}", f"{row['completeness']:.4f}",
                          f"{row['chamfer']:.4f}", f"{row['chamfer_over_diagonal']:.4f}", _prf(row, t_first))  # fmt: skip
    console.print(table)
    psnr = "n/a (interrupted fit)" if eval_psnr is None else f"{eval_psnr:.2f}"
    console.print(f"fit {fit_s:.0f} s in this call (0 when reused), {fit_wall_s:.0f} s in log.jsonl, {steps_done} steps, "
                  f"eval PSNR {psnr}, load {fit_load}")  # fmt: skip
    for used, m in meshes.items():
        console.print(f"{used}: mesh {m['mesh_s']:.0f} s (CPU {m['mesh_cpu_s']:.0f} s), {m['faces']:,} faces, watertight "
                      f"{m['watertight']} ({m['boundary_edges']} boundary edges, {m['holes_filled']} holes filled), load {m['load']}")  # fmt: skip
    settings = {"k": args.k, "train": train[args.k], "downscale": args.downscale, "iterations": args.iterations, "preset": args.preset,
                "init_points": args.init_points, "resolution": args.resolution, "ref_downscale": args.ref_downscale, "crop": args.crop,
                "steps_done": steps_done, "eval_psnr": eval_psnr, "box_diagonal": diag, "fit_s": fit_s, "fit_wall_s": fit_wall_s,
                "fit_load": fit_load, "meshes": meshes}  # fmt: skip
    _save(args.out, f"fox_K{args.k}", rows, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scene", required=True)
    sp = sub.add_parser("sphere", help="synthetic sphere of Gaussians against the exact sphere")
    sp.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    sp.add_argument("--gaussians", type=int, default=6000)
    sp.add_argument("--views", type=int, default=24)
    sp.add_argument("--size", type=int, default=128, help="image width = height (pixels)")
    fx = sub.add_parser("fox", help="the fox, K training views, against SfM points of all 42 views")
    fx.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "object" / "fox")
    fx.add_argument("--k", type=int, default=8)
    fx.add_argument("--downscale", type=float, default=8.0)
    fx.add_argument("--iterations", type=int, default=500)
    fx.add_argument("--preset", default="plain", help="recon fit preset (bench_fox.py pins plain)")
    fx.add_argument("--init-points", type=int, default=20_000)
    fx.add_argument("--use-checkpoint", action="store_true",
                    help="score an interrupted fit in OUT/K<k> at its newest checkpoint instead of fitting again")
    fx.add_argument("--resolution", type=int, default=256, help="TSDF voxels across the scene")
    fx.add_argument("--ref-downscale", type=float, default=4.0, help="image downscale for the reference's SIFT")
    fx.add_argument("--crop", type=float, default=0.5, help="quantile of reference distances to the look-at centre kept as the object")
    for p in (sp, fx):
        p.add_argument("--tsdf", nargs="+", default=["auto"], choices=["auto", "scalable", "voxel-block-grid"],
                       help="Open3D TSDF(s) to fuse into (recon export --tsdf); each is measured")
        p.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.05],
                       help="precision / recall thresholds, fractions of the reference box's diagonal")
        p.add_argument("--samples", type=int, default=100_000, help="points sampled on each surface")
        p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_mesh")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import open3d

    console.print(f"{machine_line()}, Open3D {open3d.__version__}, load {load_average()}")
    (bench_sphere if args.scene == "sphere" else bench_fox)(args)


if __name__ == "__main__":
    main()
