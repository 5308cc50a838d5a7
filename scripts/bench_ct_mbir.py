"""Benchmark: ``recon ct fit --method tv`` against mbirjax's MBIR on the same sparse-view scans.

For each scan (default: the tuning chest ``lidc_idri_0001_ds2`` and the held-out chest
``itkelastix_4dct_phase00_chest``), 128^3, 25 cone-beam views, seed 0, simulated as
``recon ct simulate VOLUME --views 25 --size 128 --n-test 0 --seed 0`` does (the scans of
docs/benchmarks.md "CT: TV speed"):

1. **geometry check**: the reference volume forward-projected by mbirjax's ``ConeBeamModel``
   (through :mod:`recon.geometry.mbirjax`, region-of-reconstruction mask off) and by our
   projector; their relative L2 difference is printed beside the simulated noise's (measured /
   noise-free projections), so a geometry mismatch cannot pass for a quality gap;
2. **ours**: the real command, ``python -m recon.cli ct fit DATA --method tv --out RUN``, as a
   subprocess: wall time, and CPU time (user + sys) from ``resource.getrusage(RUSAGE_CHILDREN)``;
   the whole command (imports, reading, fit, metrics, writing the run folder);
3. **MBIR**: ``mbirjax.ConeBeamModel(...).recon(projections)`` with mbirjax's defaults (qGGMRF
   prior, automatic regularisation, sharpness 0, at most 15 iterations) in a subprocess of the
   mbirjax interpreter, timed the same way (its imports, JAX compilation, the recon and saving
   the volume); the recon call's own time is printed too;
4. 3D PSNR / SSIM of both volumes against the reference (:func:`recon.ct.metrics.volume_metrics`),
   and the ratios: ours / MBIR time, PSNR and SSIM differences.

mbirjax needs numpy 2, so it lives in its own venv (as for ``scripts/bench_ct.py``)::

    python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax
    PYTHONPATH=. python scripts/bench_ct_mbir.py --mbirjax-python /tmp/mbir-venv/bin/python --out runs/bench_ct_mbir

Writes ``--out/results.json`` and ``--out/results.md``; the data under ``--out/data/``, our run
folders under ``--out/runs/``, mbirjax's inputs and outputs under ``--out/mbir/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ct"
SCANS = {
    "tuning chest": SHARED / "lidc_idri_0001_ds2.npz",
    "held-out chest": SHARED / "more" / "itkelastix_4dct_phase00_chest.npz",
}


# ------------------------------------------------------------------------------ mbirjax side
def worker(mode: str, folder: Path, max_iterations: int, seed: int) -> None:
    """Inside the mbirjax interpreter (numpy 2, no torch): ``forward`` projects ``reference.npy``;
    ``recon`` reconstructs ``projections.npy``. Reads ``geometry.json``; writes ``.npy`` files in
    our layout and units, and ``recon_times.json``."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np

    from recon.geometry.ct import CTGeometry
    from recon.geometry.mbirjax import (
        MbirjaxCone,
        volume_from_mbirjax,
        volume_to_mbirjax,
    )

    cone = MbirjaxCone.from_geometry(CTGeometry.from_json(folder / "geometry.json"))
    if mode == "forward":
        x = volume_to_mbirjax(np.load(folder / "reference.npy"), cone.alu_mm)
        np.save(folder / "forward.npy", np.asarray(cone.model(ror_mask=False).forward_project(x), dtype=np.float32))
        return
    t0 = time.perf_counter()
    model = cone.model()
    sino = np.load(folder / "projections.npy")  # [views, rows, channels]: our [V, v, u] as it is
    np.random.seed(seed)  # mbirjax draws its voxel partitions from numpy's global generator
    t1, c1 = time.perf_counter(), time.process_time()
    recon, info = model.recon(sino, max_iterations=max_iterations, print_logs=False, logfile_path=None)
    t2, c2 = time.perf_counter(), time.process_time()
    np.save(folder / "volume.npy", volume_from_mbirjax(np.asarray(recon), cone.alu_mm))
    params = info["recon_params"]
    times = {"setup_s": t1 - t0, "recon_wall_s": t2 - t1, "recon_cpu_s": c2 - c1, "iterations": int(params["num_iterations"]),
             "regularization": {k: float(v) for k, v in dict(params.get("regularization_params") or {}).items()}}  # fmt: skip
    (folder / "recon_times.json").write_text(json.dumps(times, indent=1))


# ------------------------------------------------------------------------------ our side
def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; (result, wall seconds, CPU seconds user + sys of the child and its children)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return res, wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def check(res: subprocess.CompletedProcess, what: str) -> None:
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {res.returncode}):\n{tail}")


def load() -> float:
    return os.getloadavg()[0]


def bench_scan(label: str, volume: Path, args, env: dict[str, str], mbir_env: dict[str, str] | None) -> dict:
    import numpy as np
    import torch

    from recon.ct.metrics import volume_metrics
    from recon.ct.project import Projector
    from recon.io.formats import load_ct_data

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_ct_sparse import (
        simulate,  # the same scans as the TV tables (cached under OUT/data)
    )

    data = simulate(volume, args.views, args.size, args.out, args.seed)
    scan = load_ct_data(data)
    ref = np.ascontiguousarray(scan.volume, dtype=np.float32)
    row: dict = {"scan": label, "volume": volume.stem, "data": str(data), "views": scan.geometry.n_views, "shape": list(ref.shape)}

    # ours: the real command
    run_dir = args.out / "runs" / f"{volume.stem}_tv"
    l0 = load()
    res, wall, cpu = timed([sys.executable, "-m", "recon.cli", "ct", "fit", str(data), "--method", "tv", "--out", str(run_dir), "--overwrite"], env)
    check(res, "recon ct fit --method tv")
    fit = json.loads((run_dir / "metrics.json").read_text())
    ours = volume_metrics(np.load(run_dir / "volume.npy"), ref)
    row["tv"] = {**ours, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": [round(l0, 2), round(load(), 2)],
                 "fit_wall_s": fit["wall_time_s"], "fit_cpu_s": fit["cpu_time_s"], "psnr_3d_run": fit.get("psnr_3d")}  # fmt: skip
    print(f"{label}: tv {ours['psnr_3d']:.2f} dB / {ours['ssim_3d']:.4f}, {wall:.1f} s wall, {cpu:.1f} CPU-s (load {l0:.1f})", flush=True)
    if mbir_env is None:
        return row

    folder = args.out / "mbir" / volume.stem
    folder.mkdir(parents=True, exist_ok=True)
    scan.geometry.to_json(folder / "geometry.json")
    np.save(folder / "projections.npy", np.ascontiguousarray(scan.projections, dtype=np.float32))
    np.save(folder / "reference.npy", ref)
    me = [args.mbirjax_python, os.path.abspath(__file__), "--worker"]

    # geometry check (not timed)
    res, _, _ = timed([*me, "forward", str(folder)], mbir_env)
    check(res, "mbirjax forward projection")
    with torch.no_grad():
        ours_fwd = Projector(scan.geometry).forward(torch.from_numpy(ref)).numpy()
    theirs_fwd = np.load(folder / "forward.npy")
    norm = float(np.linalg.norm(ours_fwd))
    row["geometry_check"] = {
        "mbirjax_vs_ours_rel_l2": round(float(np.linalg.norm(theirs_fwd - ours_fwd)) / norm, 5),
        "noise_rel_l2": round(float(np.linalg.norm(np.asarray(scan.projections) - ours_fwd)) / norm, 5),
    }
    g = row["geometry_check"]
    print(f"{label}: projections of the reference, mbirjax vs ours {g['mbirjax_vs_ours_rel_l2']:.4f} (noise {g['noise_rel_l2']:.4f})", flush=True)

    # MBIR
    l0 = load()
    res, wall, cpu = timed([*me, "recon", str(folder), "--max-iterations", str(args.max_iterations), "--seed", str(args.seed)], mbir_env)
    check(res, "mbirjax recon")
    inner = json.loads((folder / "recon_times.json").read_text())
    mbir = volume_metrics(np.load(folder / "volume.npy"), ref)
    row["mbir"] = {**mbir, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": [round(l0, 2), round(load(), 2)],
                   **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in inner.items()}}  # fmt: skip
    print(f"{label}: mbir {mbir['psnr_3d']:.2f} dB / {mbir['ssim_3d']:.4f}, {wall:.1f} s wall, {cpu:.1f} CPU-s (load {l0:.1f}; "
          f"recon() {inner['recon_wall_s']:.1f} s wall, {inner['recon_cpu_s']:.1f} CPU-s, {inner['iterations']} iterations)", flush=True)  # fmt: skip
    t, m = row["tv"], row["mbir"]
    row["ratios"] = {"wall_tv_over_mbir": round(t["wall_s"] / m["wall_s"], 3), "cpu_tv_over_mbir": round(t["cpu_s"] / m["cpu_s"], 3),
                     "psnr_tv_minus_mbir_db": round(t["psnr_3d"] - m["psnr_3d"], 2), "ssim_tv_minus_mbir": round(t["ssim_3d"] - m["ssim_3d"], 4)}  # fmt: skip
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"`recon ct fit --method tv` vs mbirjax {meta.get('mbirjax_version', '?')} MBIR, {meta['views']} views, {meta['size']}^3, "
        f"seed {meta['seed']}; {meta['machine']}; {meta['date']}",
        "",
        "| scan | method | 3D PSNR (dB) | SSIM | wall (s) | CPU (s) | load | geometry check (mbirjax vs ours / noise) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        g = r.get("geometry_check")
        geo = f"{g['mbirjax_vs_ours_rel_l2']:.4f} / {g['noise_rel_l2']:.4f}" if g else ""
        for key, name in (("tv", "ours, TV (whole command)"), ("mbir", "mbirjax MBIR (whole process)")):
            if key in r:
                m = r[key]
                lines.append(f"| {r['scan']} | {name} | {m['psnr_3d']:.2f} | {m['ssim_3d']:.4f} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | "
                             f"{m['load'][0]:.1f}-{m['load'][1]:.1f} | {geo if key == 'tv' else ''} |")  # fmt: skip
        if "ratios" in r:
            q = r["ratios"]
            lines.append(f"| {r['scan']} | **ours / MBIR** | **{q['psnr_tv_minus_mbir_db']:+.2f}** | {q['ssim_tv_minus_mbir']:+.4f} | "
                         f"{q['wall_tv_over_mbir']:.2f}x | **{q['cpu_tv_over_mbir']:.2f}x** | | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ct_mbir"))
    parser.add_argument("--scans", nargs="+", default=list(SCANS), choices=list(SCANS), help="which scans (default: both chests)")
    parser.add_argument("--views", type=int, default=25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="simulation noise seed, and mbirjax's partition seed")
    parser.add_argument("--max-iterations", type=int, default=15, help="mbirjax recon iterations at most (its default: 15)")
    parser.add_argument("--mbirjax-python", default="/tmp/mbir-venv/bin/python", help="interpreter of a venv with mbirjax")
    parser.add_argument("--skip-mbirjax", action="store_true", help="run only ours")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # inside the mbirjax interpreter
        worker(args.worker[0], Path(args.worker[1]), args.max_iterations, args.seed)
        return 0

    args.out = args.out.resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    mbir_env, version = None, None
    if not args.skip_mbirjax:
        probe = subprocess.run([args.mbirjax_python, "-c", "import importlib.metadata as m, mbirjax; print(m.version('mbirjax'))"], capture_output=True, text=True) \
            if Path(args.mbirjax_python).is_file() else None  # fmt: skip
        if probe is None or probe.returncode != 0:
            print(f"no mbirjax at {args.mbirjax_python}: python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax "
                  "(or --skip-mbirjax); running ours only", flush=True)  # fmt: skip
        else:
            version = probe.stdout.strip()
            mbir_env = {**env, "JAX_PLATFORMS": "cpu"}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "views": args.views, "size": args.size, "seed": args.seed,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "mbirjax_version": version, "max_iterations": args.max_iterations,
    }  # fmt: skip
    rows = [bench_scan(label, SCANS[label], args, env, mbir_env) for label in args.scans]
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(rows, meta)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
