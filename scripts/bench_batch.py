"""``recon batch`` benchmarks (issue 15, item 8): scheduling overhead per job on the local and
Ray backends, and the throughput of a batch of realistic CT scans.

overhead
    N tiny CT jobs (one simulated ``--size``^3 Shepp-Logan scan, ``--views`` views on a
    ``--size``^2 detector, ``--method fdk``: the job itself is a few hundred milliseconds of
    reconstruction and run-folder writing), each to its own run folder, through
    ``BatchConfig(...).setup().run()`` on each backend with 2 job slots (local: 2 worker
    processes x 1 thread; Ray: a local instance with 2 CPUs, 1 CPU per task). Reported: the
    batch's wall time T (worker start / Ray task dispatch included; starting the Ray instance is
    timed apart), the sum W of the jobs' own wall times (measured inside the worker around the
    job), and the overhead per job ``(slots * T - W) / N``: slot-seconds per job spent outside
    the jobs (process start, imports, queues, result handling, report).

throughput
    ``--scans`` CT volumes resampled to ``--size``^3 and simulated with ``--views`` views (256^2
    detector, physical noise; ``recon ct simulate``), reconstructed by one local batch with
    ``--method`` (default tv, 300 steps; ``--iterations`` overrides, ``--option KEY=VALUE`` adds
    any other option, e.g. ``tv.solver=fista``). Reported per job: wall, CPU, 3D PSNR; for the
    batch: wall, scans per hour.

Writes ``OUT/results.json`` and ``OUT/results.md``.

    python scripts/bench_batch.py overhead --n 200 --backends local ray --out runs/bench_batch/overhead
    python scripts/bench_batch.py throughput --scans 10 --size 128 --views 25 --method tv --out runs/bench_batch/tv
    python scripts/bench_batch.py throughput --scans 10 --method tv --option tv.solver=fista --jobs 2 --out runs/bench_batch/fista
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (shared 2-core machine)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CT_DATA = ROOT.parent / "shared" / "data" / "ct"
VOLUMES = ["lidc_idri_0001_ds2", "vtk_headsq_ct", "more/itkelastix_4dct_phase00_chest", "more/ibsi_sts_007_pelvis",
           "more/ibsi_sts_013_thigh", "more/ibsi_sts_020_thigh", "more/ibsi_sts_037_shoulder", "more/openkbp_pt_201_headneck",
           "more/openkbp_pt_242_headneck", "more/totalseg_example_ct_abdomen_pelvis"]  # fmt: skip
"""Ten shared CT volumes for the throughput batch (one scan each)."""


def _load() -> float:
    return os.getloadavg()[0]


def _machine() -> dict:
    from recon.batch.local import available_cpus, available_memory_bytes

    return {"cpus": available_cpus(), "memory_gib": round(available_memory_bytes() / 2**30, 1), "python": platform.python_version(),
            "platform": platform.platform()}  # fmt: skip


def _simulate(volume: Path, out: Path, views: int, size: int | None, detector: int, seed: int = 0) -> Path:
    from recon.pipelines.ct_simulate import CTSimulateConfig

    if not (out / "meta_data.json").exists():
        CTSimulateConfig(volume, views=views, out=out, n_test=0, size=size, detector=detector, seed=seed, overwrite=True).run()
    return out


def _tiny_volume(path: Path, size: int) -> Path:
    from recon.ct.phantoms import shepp_logan_3d

    vol = shepp_logan_3d((size, size, size)).astype(np.float32)
    np.savez(path, volume=-1000.0 + 1200.0 * vol / vol.max(), spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    return path


def _start_ray(attempts: int = 3) -> float:
    """A local Ray instance with 2 CPUs on loopback; returns the seconds it took (retried: on a
    busy machine Ray's agents can miss the raylet's 15 s start window)."""
    import ray

    from recon.batch.ray_backend import children, stop_failed_start

    t0 = time.perf_counter()
    for i in range(attempts):
        before = children()
        try:
            ray.init(address="local", num_cpus=2, num_gpus=0, _node_ip_address="127.0.0.1", include_dashboard=False,
                     object_store_memory=200 * 2**20, log_to_driver=False)  # fmt: skip
            return time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001
            print(f"ray.init attempt {i + 1} failed: {str(err).splitlines()[0]}", flush=True)
            stop_failed_start(before)
    raise SystemExit("could not start Ray")


def _run_batch(manifest: Path, out: Path, backend: str, jobs: int | None = None, cpus_per_job: float | None = None) -> tuple[float, list]:
    from recon.batch.config import BatchConfig

    batch = BatchConfig(manifest=manifest, out=str(out), backend=backend, jobs=jobs, cpus_per_job=cpus_per_job, memory_per_job_gb=0.25,
                        redo=True).setup()  # fmt: skip
    t0 = time.perf_counter()
    summary = batch.run()
    return time.perf_counter() - t0, summary.results


def overhead(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scan = _simulate(_tiny_volume(out / "tiny.npz", args.size), out / "tiny_scan", args.views, None, args.size)
    manifest = out / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"ct": {"method": "fdk"}},
                                        "jobs": [{"kind": "ct", "data": str(scan), "name": f"j{i:03d}"} for i in range(args.n)]}))  # fmt: skip
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    rows = {r["backend"]: r for r in saved.get("rows", []) if r.get("n") == args.n}
    for backend in args.backends:
        init_s = None
        if backend == "ray":
            init_s = _start_ray()
        load0 = _load()
        total, results = _run_batch(manifest, out / f"runs_{backend}", backend, jobs=2, cpus_per_job=1)
        if backend == "ray":
            import ray

            ray.shutdown()
        walls = sorted(r.wall_s or 0.0 for r in results if r.status == "complete")
        work = sum(walls)
        median = walls[len(walls) // 2] if walls else 0.0
        # the first job of each of the 2 workers also imports torch and the pipelines
        first_jobs = walls[-2:]
        rows[backend] = {"backend": backend, "n": args.n, "complete": len(walls), "slots": 2, "batch_wall_s": round(total, 1),
                         "job_wall_sum_s": round(work, 1), "job_wall_median_s": round(median, 3),
                         "first_jobs_s": [round(w, 1) for w in first_jobs],
                         "overhead_per_job_s": round((2 * total - work) / args.n, 3),
                         "overhead_incl_imports_per_job_s": round((2 * total - (work - sum(first_jobs) + 2 * median)) / args.n, 3),
                         "jobs_per_s": round(args.n / total, 2), "ray_init_s": None if init_s is None else round(init_s, 1),
                         "load_start": round(load0, 1), "load_end": round(_load(), 1)}  # fmt: skip
        print(json.dumps(rows[backend]), flush=True)
        result = {"what": "overhead", "machine": _machine(), "size": args.size, "views": args.views, "rows": list(rows.values())}
        path.write_text(json.dumps(result, indent=1))
    md = ["| backend | jobs | complete | batch wall T (s) | Σ job wall W (s) | median job (s) | first job per worker (s) | overhead / job, W counted as work (slot-s) | overhead / job, worker imports counted as overhead (slot-s) | jobs/s | Ray start (s) | load |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows.values():
        md.append(f"| {r['backend']} | {r['n']} | {r['complete']} | {r['batch_wall_s']} | {r['job_wall_sum_s']} | {r['job_wall_median_s']} | "
                  f"{' / '.join(map(str, r['first_jobs_s']))} | {r['overhead_per_job_s']} | {r['overhead_incl_imports_per_job_s']} | {r['jobs_per_s']} | "
                  f"{r['ray_init_s'] or '–'} | {r['load_start']}–{r['load_end']} |")  # fmt: skip
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def throughput(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scans = []
    t0 = time.perf_counter()
    for name in VOLUMES[: args.scans]:
        src = CT_DATA / f"{name}.npz"
        scans.append(_simulate(src, out / "scans" / Path(name).name, args.views, args.size, 256))
    sim_s = time.perf_counter() - t0
    options = {"method": args.method}
    if args.iterations is not None:
        options[f"{args.method}.iterations"] = args.iterations
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    manifest = out / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"ct": options}, "jobs": [{"kind": "ct", "data": str(s)} for s in scans]}))
    load0 = _load()
    total, results = _run_batch(manifest, out / "runs", "local", jobs=args.jobs)
    rows = [{"name": r.name, "status": r.status, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
             "psnr_3d": (r.metrics or {}).get("psnr_3d"), "ssim_3d": (r.metrics or {}).get("ssim_3d")} for r in results]  # fmt: skip
    result = {"what": "throughput", "machine": _machine(), "size": args.size, "views": args.views, "options": options, "jobs": args.jobs,
              "simulate_s": round(sim_s, 1), "batch_wall_s": round(total, 1), "scans_per_hour": round(3600 * len(results) / total, 2),
              "load_start": round(load0, 1), "load_end": round(_load(), 1), "rows": rows}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = ["| scan | status | wall (s) | CPU (s) | 3D PSNR (dB) | SSIM |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['name']} | {r['status']} | {r['wall_s']} | {r['cpu_s']} | {r['psnr_3d'] or ''} | {r['ssim_3d'] or ''} |")
    md.append(f"\nbatch: {len(rows)} scans in {total:.1f} s ({result['scans_per_hour']} scans/hour), load {load0:.1f}–{_load():.1f}")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="scheduling overhead per job, local vs Ray")
    o.add_argument("--n", type=int, default=200, help="tiny jobs")
    o.add_argument("--size", type=int, default=16, help="phantom size (voxels per side) and detector pixels per side")
    o.add_argument("--views", type=int, default=8)
    o.add_argument("--backends", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    o.add_argument("--out", default="runs/bench_batch/overhead")
    t = sub.add_parser("throughput", help="a batch of realistic CT scans on the local backend")
    t.add_argument("--scans", type=int, default=10)
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--views", type=int, default=25)
    t.add_argument("--method", default="tv")
    t.add_argument("--iterations", type=int, default=None, help="override the method's iterations (default: its default)")
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="another option of every job, by its manifest name (e.g. tv.solver=fista); repeatable")
    t.add_argument("--jobs", type=int, default=None, help="worker processes (default: recon batch's)")
    t.add_argument("--out", default="runs/bench_batch/throughput")
    args = p.parse_args()
    overhead(args) if args.what == "overhead" else throughput(args)


if __name__ == "__main__":
    main()
