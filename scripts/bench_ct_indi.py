"""Held-out benchmark of the InDI refiner (``recon ct fit --method tv --prior indi``; issue 18, item 3).

Data: the held-out chest ``itkelastix_4dct_phase00_chest`` (never used in training or to choose
settings), HU -> mu, area-resampled to 128^3, simulated with ``recon ct simulate`` (cone beam,
R2-Gaussian's proportions, Poisson I0 1e5 + Gaussian 10 photons, start angle 0, noise seed 0) at
10 / 25 / 50 views. Methods, all through ``recon.pipelines.ct.CTFitConfig``: FDK (Ram-Lak), SART
(20 iterations), TV (``--method tv`` defaults) and TV + InDI (``--prior indi`` defaults: the
same TV run, then the InDI steps and the TV data-consistency steps; its time is the TV time plus
the prior's). ``TV + InDI (network only)`` is the network's output before the data-consistency
steps (same weights and InDI steps), for information. Metrics: 3D PSNR over the reference's
range and SSIM (``recon.ct.metrics``), wall-clock seconds of the reconstruction (+ prior).

Writes ``--out/results.json``, ``results.md`` (table with each method's difference to TV) and
``slices_<views>.png`` (axial and coronal: reference, FDK, SART, TV, TV + InDI).

    python scripts/bench_ct_indi.py --out runs/bench_ct_indi
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELD_OUT = ROOT.parent / "shared" / "data" / "ct" / "more" / "itkelastix_4dct_phase00_chest.npz"


def simulate(volume: Path, views: int, out: Path) -> Path:
    from recon.pipelines.ct_simulate import CTSimulateConfig

    folder = out / "data" / f"{volume.stem}_128_{views}v"
    if not (folder / "simulation.json").is_file():
        CTSimulateConfig(volume, views=views, out=folder, n_test=0, size=128, seed=0, overwrite=True).run()
    return folder


def slices_png(path: Path, vols: dict[str, np.ndarray]) -> None:
    from recon.io.figures import central_slices
    from recon.io.images import save_image

    ref = vols["reference"]
    lo, hi = float(ref.min()), float(ref.max())
    rows = []
    for view in ("axial", "coronal"):
        tiles = [central_slices(v)[view] for v in vols.values()]
        rows.append(np.concatenate([np.pad(t, ((0, 0), (0, 2)), constant_values=hi) for t in tiles], 1))
    img = np.clip((np.concatenate([np.pad(r, ((0, 2), (0, 0)), constant_values=hi) for r in rows], 0) - lo) / (hi - lo), 0, 1)
    save_image(path, np.repeat(img[..., None], 3, axis=2).astype(np.float32))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_ct_indi")
    p.add_argument("--views", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--volume", type=Path, default=HELD_OUT)
    p.add_argument("--sart-iterations", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="keep the FDK / SART / TV / TV + InDI rows already in --out/results.json (recompute the rest)")
    args = p.parse_args()
    if not args.volume.is_file():
        print(f"missing {args.volume} (the shared data folder beside the project)", file=sys.stderr)
        return 2
    import torch

    from recon.ct.metrics import volume_metrics
    from recon.io.formats import load_ct_data
    from recon.pipelines.ct import CTFitConfig, InDIConfig
    from recon.prior.ct_indi import indi_refine, load_indi

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"volume": args.volume.stem, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
               "indi": {"steps": InDIConfig().steps, "dc_steps": InDIConfig().dc_steps}, "views": {}}  # fmt: skip
    previous = json.loads((args.out / "results.json").read_text())["views"] if args.reuse and (args.out / "results.json").is_file() else {}
    lines = []
    for views in args.views:
        data = simulate(args.volume, views, args.out)
        runs = args.out / "runs" / f"{views}v"
        rows: dict = {}
        vols: dict = {}
        if str(views) in previous:
            rows = {k: previous[str(views)][k] for k in ("fdk", "sart", "tv", "tv+indi")}
            vols = {k: np.load(runs / k / "volume.npy") for k in ("fdk", "sart")}
        for name, kw in () if rows else (("fdk", {"method": "fdk"}), ("sart", {"method": "sart", "iterations": args.sart_iterations})):
            t0 = time.perf_counter()
            m = CTFitConfig(data, out=runs / name, overwrite=True, **kw).run()
            rows[name] = {"psnr_3d": m["psnr_3d"], "ssim_3d": m["ssim_3d"], "wall_s": round(time.perf_counter() - t0, 1)}
            vols[name] = np.load(runs / name / "volume.npy")
            print(f"{views} views {name}: {m['psnr_3d']:.2f} dB / {m['ssim_3d']:.4f}", flush=True)
        if "tv" not in rows:
            t0 = time.perf_counter()
            m = CTFitConfig(data, method="tv", out=runs / "tv_indi", overwrite=True, prior="indi").run()
            total = time.perf_counter() - t0
            rows["tv"] = {"psnr_3d": m["psnr_3d_before_prior"], "ssim_3d": m["ssim_3d_before_prior"], "wall_s": round(total - m["prior_time_s"], 1)}
            rows["tv+indi"] = {"psnr_3d": m["psnr_3d"], "ssim_3d": m["ssim_3d"], "wall_s": round(total, 1), "prior_s": m["prior_time_s"]}
        tv = np.load(runs / "tv_indi" / "volume_before_prior.npy")
        vols["tv"], vols["tv+indi"] = tv, np.load(runs / "tv_indi" / "volume.npy")
        ref = load_ct_data(data).volume  # the reference CTFit scores against ([z, y, x])
        net = indi_refine(tv, load_indi(), steps=InDIConfig().steps)
        nm = volume_metrics(net, ref)
        rows["tv+indi (network only)"] = {"psnr_3d": nm["psnr_3d"], "ssim_3d": nm["ssim_3d"], "wall_s": None}
        results["views"][str(views)] = rows
        for k in ("tv", "tv+indi", "tv+indi (network only)"):
            print(f"{views} views {k}: {rows[k]['psnr_3d']:.2f} dB / {rows[k]['ssim_3d']:.4f}", flush=True)
        slices_png(args.out / f"slices_{views}.png", {"reference": ref, **{k: vols[k] for k in ("fdk", "sart", "tv", "tv+indi")}})
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines += ["| views | method | 3D PSNR (dB) | SSIM | PSNR vs TV (dB) | SSIM vs TV | wall (s) |", "|---:|---|---:|---:|---:|---:|---:|"]
    for views, rows in results["views"].items():
        tv = rows["tv"]
        for k, r in rows.items():
            wall = f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "-"
            lines.append(f"| {views} | {k} | {r['psnr_3d']:.2f} | {r['ssim_3d']:.4f} | {r['psnr_3d'] - tv['psnr_3d']:+.2f} | {r['ssim_3d'] - tv['ssim_3d']:+.4f} | {wall} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
