"""Sparse-view CT benchmark (R2-Gaussian's protocol on real data): FDK vs SART vs TV vs radiative Gaussians.

Data: ``lidc_idri_0001_ds2`` (real chest CT, HU, 133 x 256 x 256 at 2.5 x 1.406 x 1.406 mm)
from the shared data, converted to attenuation (``mu = 0.0206 / mm * (1 + HU / 1000)``, clipped
at 0) and resampled to 128^3 by area averaging (``torch.nn.functional.interpolate(mode="area")``,
adaptive average pooling; same physical extent: 2.598 x 2.8125 x 2.8125 mm voxels).

Scan: R2-Gaussian's cone-beam proportions scaled to the volume's largest extent E = 360 mm:
DSO = 2.5 E = 900 mm, DSD = 3.5 E = 1260 mm, detector 256 x 256 with pitch 2 E / 256 =
2.8125 mm; 25 / 50 / 75 views over 360 deg; Poisson (I0 = 1e5) + Gaussian (sigma = 10 photons)
noise ("physical" protocol of ``recon.ct.simulate``). The same matched projector simulates and
reconstructs (as in the R2-Gaussian benchmark), for every method.

Methods, all through ``recon.pipelines.ct.CTFit``: FDK (Ram-Lak and Hann), SART (20 iterations,
one view per update), TV-regularised voxels (``tv``: the Adam solver, ``TVConfig``'s default:
the Gaussian method's loss with the voxels as parameters; ``tv-fista``: OS-FISTA on least
squares + TV from FDK, with its ``TVConfig`` settings), the Gaussian method with its defaults
(``GaussianFitConfig``) and ``diffusion``: the learned slice diffusion prior sampled DDS-style
from the OS-FISTA TV result (``recon.prior.dds``, ``--diffusion-*`` options; its time includes
the TV start) and ``diffusion-tv``: the same sampler from this ``--out``'s ``tv`` volume (the
default ``recon ct fit --method tv``; run ``tv`` first; its time is added). tv and Gaussians
start from FDK + a few OS-SART iterations; every start is counted in the time. The table
gives each method's PSNR difference to SART and to FDK (Ram-Lak) at the same view count. Metrics: 3D PSNR over
the reference's range and SSIM averaged over axial / coronal / sagittal slices (R2-Gaussian's
definitions), wall-clock and CPU time of the whole ``CTFit.run`` (I/O included).

Writes to ``--out``: ``results.json``, ``results.md`` (table), ``slices_<views>.png`` (axial /
coronal / sagittal: reference, FDK, SART, TV, Gaussians), and every run folder under ``runs/``.

    python scripts/bench_ct_sparse.py --out runs/bench_ct_sparse              # 25 views
    python scripts/bench_ct_sparse.py --views 25 50 75 --out runs/bench_ct_sparse
    python scripts/bench_ct_sparse.py --volume ../shared/data/ct/more/itkelastix_4dct_phase00_chest.npz --out runs/bench_ct_heldout
    python scripts/bench_ct_sparse.py --views 10 25 50 --methods fdk-ramlak sart tv-fista diffusion \
        --volume ../shared/data/ct/more/itkelastix_4dct_phase00_chest.npz --out runs/bench_ct_diffusion
    python scripts/bench_ct_sparse.py --views 25 --methods tv diffusion-tv \
        --volume ../shared/data/ct/more/itkelastix_4dct_phase00_chest.npz --out runs/bench_ct_diffusion

Runs add to ``--out/results.json``; the slice figure of a view count shows every method run there so far.
"""

from __future__ import annotations

import os

# Idle OpenMP threads (torch's and numba's) must sleep rather than spin: on the shared 2-core
# machine spinning threads made the projector and voxeliser 3-5x slower. Read by libgomp when
# it loads, so it has to be set before torch / numba are imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct" / "lidc_idri_0001_ds2.npz"


def simulate(volume: Path, views: int, size: int, out: Path, seed: int) -> Path:
    from recon.pipelines.ct_simulate import CTSimulateConfig

    folder = out / "data" / f"{volume.stem}_{size}_{views}v"
    stamp = folder / "simulation.json"
    if stamp.is_file():
        s = json.loads(stamp.read_text())
        if s["n_views"] == views and s["volume_shape"] == [size] * 3:
            return folder
    CTSimulateConfig(volume, views=views, out=folder, n_test=0, size=size, seed=seed, overwrite=True).run()
    return folder


def run_method(name: str, data: Path, out: Path, args) -> dict:
    from recon.ct.gaussian_trainer import GaussianFitConfig
    from recon.pipelines.ct import CTFitConfig

    kw: dict = {"out": out, "overwrite": True, "seed": args.seed}
    if name == "fdk-ramlak":
        cmd = CTFitConfig(data, method="fdk", filter="ram-lak", **kw)
    elif name == "fdk-hann":
        cmd = CTFitConfig(data, method="fdk", filter="hann", **kw)
    elif name == "sart":
        cmd = CTFitConfig(data, method="sart", iterations=args.sart_iterations, **kw)
    elif name in ("tv", "tv-fista"):
        from recon.ct.tv_trainer import TVConfig

        t = TVConfig(solver="fista" if name == "tv-fista" else "adam", iterations=args.tv_iterations, fista_full_batch_after=args.tv_full_batch_after)
        cmd = CTFitConfig(data, method="tv", tv=t, **kw)
    elif name in DIFFUSION_STARTS:
        from recon.ct.tv_trainer import TVConfig
        from recon.prior.dds import DiffusionConfig

        given = {"weights": args.diffusion_weights, "steps": args.diffusion_steps, "t_start": args.diffusion_t_start,
                 "cg_iterations": args.diffusion_cg_iterations, "tv_z": args.diffusion_tv_z, "eta": args.diffusion_eta}  # fmt: skip
        start = starting_run(name, args)
        if start is not None:
            tv_run = out.parent / start
            if not (tv_run / "metrics.json").is_file():
                raise SystemExit(f"{name}: no finished {start} run in {tv_run} (run --methods {start} first, with the same --out)")
            given["init_volume"] = tv_run / "volume.npy"
        d = DiffusionConfig(**{k: v for k, v in given.items() if v is not None})
        cmd = CTFitConfig(data, method="diffusion", diffusion=d, tv=TVConfig(solver="fista", iterations=args.tv_iterations, fista_full_batch_after=args.tv_full_batch_after), **kw)
    elif name == "gaussian":
        g = GaussianFitConfig() if args.gaussian_iterations is None else GaussianFitConfig(iterations=args.gaussian_iterations)
        cmd = CTFitConfig(data, method="gaussian", gaussian=g, **kw)
    else:
        raise SystemExit(f"unknown method {name}")
    t0 = time.perf_counter()
    c0 = time.process_time()
    last = [0.0]

    def progress(step: int, total: int, info: dict) -> None:
        now = time.perf_counter() - t0
        if now - last[0] > 30 or step == total:
            last[0] = now
            print(f"    {name}: {step}/{total}  {now:.0f} s  " + "  ".join(f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, float)), flush=True)

    m = cmd.run(progress=progress)
    m["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    m["bench_cpu_s"] = round(time.process_time() - c0, 2)
    start = starting_run(name, args) if name in DIFFUSION_STARTS else None
    if start is not None:  # the start's cost is the diffusion method's too
        tv = json.loads((out.parent / start / "metrics.json").read_text())
        bench_tv = json.loads((out.parents[2] / "results.json").read_text())["runs"][f"{out.parent.name[:-1]}/{start}"]
        m["start_run"] = {"method": start, "psnr_3d": tv["psnr_3d"], "ssim_3d": tv["ssim_3d"], "bench_wall_s": bench_tv["bench_wall_s"], "bench_cpu_s": bench_tv["bench_cpu_s"]}
        m["sampling_bench_wall_s"], m["sampling_bench_cpu_s"] = m["bench_wall_s"], m["bench_cpu_s"]
        m["bench_wall_s"] = round(m["bench_wall_s"] + bench_tv["bench_wall_s"], 2)
        m["bench_cpu_s"] = round(m["bench_cpu_s"] + bench_tv["bench_cpu_s"], 2)
    return m


DIFFUSION_STARTS = {"diffusion": "tv-fista", "diffusion-tv": "tv"}
"""Diffusion rows and the bench run whose volume they start from: ``diffusion`` from tv-fista
(only with --diffusion-start-from-tv-run; otherwise CTFit runs its own OS-FISTA start),
``diffusion-tv`` always from the ``tv`` run (the default solver of ``recon ct fit --method tv``)."""


def starting_run(name: str, args) -> str | None:
    """The method whose run volume (in the same --out) the diffusion row ``name`` starts from."""
    if name == "diffusion-tv" or args.diffusion_start_from_tv_run:
        return DIFFUSION_STARTS[name]
    return None


def comparison_png(path: Path, runs: dict[str, Path], reference: np.ndarray) -> None:
    """Rows: axial / coronal / sagittal central slices; columns: reference then each method."""
    from recon.io.figures import central_slices
    from recon.io.images import save_image

    lo, hi = float(reference.min()), float(reference.max())
    cols = [("reference", reference)] + [(k, np.load(p / "volume.npy")) for k, p in runs.items()]
    rows = []
    for plane in ("axial", "coronal", "sagittal"):
        tiles = [central_slices(vol)[plane] for _name, vol in cols]
        sep = np.full((tiles[0].shape[0], 2), hi)
        rows.append(np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1])), constant_values=hi) for r in rows]
    img = (np.concatenate(rows, axis=0)[:-2] - lo) / (hi - lo)
    save_image(path, np.clip(img, 0, 1).astype(np.float32))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_ct_sparse"))
    p.add_argument("--views", type=int, nargs="+", default=[25])
    p.add_argument("--methods", nargs="+", default=["fdk-ramlak", "fdk-hann", "sart", "tv", "gaussian"], help="also: tv-fista (the OS-FISTA TV solver), diffusion (the learned slice prior from an OS-FISTA TV start), diffusion-tv (the prior from this --out's tv run: the default --method tv)")
    p.add_argument("--size", type=int, default=128, help="volume edge after resampling (voxels)")
    p.add_argument("--sart-iterations", type=int, default=20)
    p.add_argument("--tv-iterations", type=int, default=None, help="default: the TV solver's (TVConfig.resolved())")
    p.add_argument("--tv-full-batch-after", type=int, default=0, help="tv-fista and the diffusion start: --tv.fista-full-batch-after (0: subsets throughout)")
    p.add_argument("--gaussian-iterations", type=int, default=None, help="default: GaussianFitConfig.iterations")
    p.add_argument("--diffusion-weights", type=Path, default=None, help="slice diffusion weights folder (default: the shipped ones)")
    p.add_argument("--diffusion-steps", type=int, default=None, help="default: DiffusionConfig.steps")
    p.add_argument("--diffusion-t-start", type=int, default=None, help="default: DiffusionConfig.t_start")
    p.add_argument("--diffusion-cg-iterations", type=int, default=None, help="default: DiffusionConfig.cg_iterations")
    p.add_argument("--diffusion-tv-z", type=float, default=None, help="default: DiffusionConfig.tv_z")
    p.add_argument("--diffusion-eta", type=float, default=None, help="default: DiffusionConfig.eta")
    p.add_argument("--diffusion-start-from-tv-run", action="store_true",
                   help="diffusion starts from this --out's tv-fista volume (same TV settings as its own start) and its wall/CPU time adds that run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--volume", type=Path, default=DATA, help="the real CT volume to simulate scans of (.npz with volume + spacing_mm_zyx, HU)")
    args = p.parse_args()
    if not args.volume.is_file():
        print(f"missing {args.volume} (the shared data folder beside the project)", file=sys.stderr)
        return 2
    logging_setup()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.setdefault("runs", {})
    results["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    for views in args.views:
        data = simulate(args.volume, views, args.size, args.out, args.seed)
        from recon.io.r2gaussian import read_r2gaussian

        reference = read_r2gaussian(data).volume
        for method in args.methods:
            out = args.out / "runs" / f"{views}v" / method
            print(f"[{views} views] {method} (load {os.getloadavg()[0]:.1f})", flush=True)
            m = run_method(method, data, out, args)
            m["load_average_after"] = os.getloadavg()[0]
            if results_path.is_file():  # other invocations may have written to this --out meanwhile
                results["runs"] = {**json.loads(results_path.read_text()).get("runs", {}), **results["runs"]}
            results["runs"][f"{views}/{method}"] = m
            print(f"    -> PSNR {m['psnr_3d']:.2f} dB  SSIM {m['ssim_3d']:.4f}  wall {m['bench_wall_s']:.0f} s  cpu {m['bench_cpu_s']:.0f} s", flush=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
        done = [k.split("/")[1] for k in results["runs"] if k.split("/")[0] == str(views)]
        run_dirs = {mth: args.out / "runs" / f"{views}v" / mth for mth in sorted(done, key=method_rank) if (args.out / "runs" / f"{views}v" / mth / "volume.npy").is_file()}
        comparison_png(args.out / f"slices_{views}v.png", run_dirs, reference)
    write_table(args.out / "results.md", results)
    print((args.out / "results.md").read_text())
    return 0


def logging_setup() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")


METHOD_ORDER = ["fdk-ramlak", "fdk-hann", "sart", "tv", "tv-fista", "gaussian", "diffusion", "diffusion-tv"]


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def write_table(path: Path, results: dict) -> None:
    lines = [
        "| views | method | PSNR (dB) | SSIM | vs SART (dB) | vs FDK Ram-Lak (dB) | wall (s) | CPU (s) | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    runs = results["runs"]

    def delta(views: str, m: dict, anchor: str) -> str:
        ref = runs.get(f"{views}/{anchor}")
        return f"{m['psnr_3d'] - ref['psnr_3d']:+.2f}" if ref else "—"

    def rank(key: str) -> tuple[int, int, str]:
        views, method = key.split("/")
        return int(views), method_rank(method), method

    for key, m in sorted(results["runs"].items(), key=lambda kv: rank(kv[0])):
        views, method = key.split("/")
        notes = ""
        if method == "gaussian":
            notes = f"{m.get('n_gaussians', '?')} Gaussians, {m.get('iterations')} steps, init {m.get('init')}"
        elif method == "sart":
            notes = f"{m.get('iterations')} iterations"
        elif method in DIFFUSION_STARTS:
            notes = (f"{m.get('diffusion_steps')} DDIM steps from t = {m.get('diffusion_t_start')}, CG {m.get('diffusion_cg_iterations')}, "
                     f"z-TV {m.get('diffusion_tv_z')}, eta {m.get('diffusion_eta')}; start {m.get('init')}: {m.get('psnr_3d_init', float('nan')):.2f} dB "
                     f"(start {m.get('init_time_s', 0):.0f} s + sampling {m.get('sampling_time_s', 0):.0f} s wall)")  # fmt: skip
            if m.get("start_run"):
                notes += f"; started from the {m['start_run'].get('method', 'tv-fista')} run's volume ({m['start_run']['psnr_3d']:.2f} dB), whose time is included"
        elif method in ("tv", "tv-fista"):
            notes = f"{m.get('tv_solver')}, {m.get('iterations')} steps, TV weight {m.get('lambda_tv')}, init {m.get('init')}"
        cells = [views, method, f"{m['psnr_3d']:.2f}", f"{m['ssim_3d']:.4f}", delta(views, m, "sart"), delta(views, m, "fdk-ramlak")]
        lines.append("| " + " | ".join(cells + [f"{m['bench_wall_s']:.0f}", f"{m['bench_cpu_s']:.0f}", notes]) + " |")
    lines.append("")
    lines.append(f"Machine: {results['machine']['cpus']} CPUs shared with other jobs (load average at start {results['machine']['load_average_at_start']}); OMP_WAIT_POLICY={results['machine']['OMP_WAIT_POLICY']}.")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
