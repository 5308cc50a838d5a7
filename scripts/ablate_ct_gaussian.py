"""Why the radiative Gaussians stop ~1 dB below TV-regularised voxels on the sparse-view chest.

Same data as ``scripts/bench_ct_sparse.py`` (it must have run first: it simulates the scans):
the 128^3 chest at ``--views`` views. Rows, all with the same loss (L1 + 0.25 D-SSIM + TV):

* ``tv``: :class:`recon.ct.tv_trainer.TVTrainer`, defaults (voxels as the parameters);
* ``gaussian``: :class:`recon.ct.gaussians.GaussianTrainer`, defaults;
* ``gaussian, TV weight 0.1``: the voxel method's TV weight;
* ``gaussian, all views per step``: ``batch_views = V`` (no view sampling noise);
* ``gaussian from the TV volume``: initialised from the ``tv`` row's result instead of
  FDK + OS-SART (the fit to the initial volume, then training);
* ``Gaussians fitted to the reference``: representation capacity, no projections (the
  initial-volume fit to the ground truth, ``init_fit_steps`` Adam steps);
* ``gaussian, 600 steps``: three times the default schedule (density control then runs at
  steps 100-400 instead of 100-150);
* ``gaussian:KEY=VALUE,...``: any other :class:`GaussianFitConfig` overrides, e.g.
  ``gaussian:lambda_tv=0.05,iterations=400``.

For each: 3D PSNR / SSIM against the reference, PSNR right after the initialisation, and
wall time. Writes ``results.json`` and ``results.md`` to ``--out``.

    python scripts/ablate_ct_gaussian.py --out runs/ablate_ct_gaussian
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_ct_sparse.py

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="R2-Gaussian folder; default: bench_ct_sparse's 128^3 chest at --views")
    p.add_argument("--views", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path("runs/ablate_ct_gaussian"))
    p.add_argument("--rows", nargs="+", default=["tv", "gaussian", "gaussian-tv0.1", "gaussian-allviews", "gaussian-from-tv", "capacity", "gaussian-600"])
    args = p.parse_args()
    data_dir = args.data or ROOT / "runs" / "bench_ct_sparse" / "data" / f"lidc_128_{args.views}v"
    if not (data_dir / "meta_data.json").is_file():
        print(f"missing {data_dir}: run scripts/bench_ct_sparse.py --views {args.views} first (it simulates the scan)", file=sys.stderr)
        return 2

    import torch

    from recon.io.r2gaussian import read_r2gaussian
    from recon.ct.gaussian_trainer import GaussianFitConfig, GaussianTrainer
    from recon.ct.metrics import psnr_3d, ssim_3d
    from recon.ct.tv_trainer import TVConfig, TVTrainer

    torch.manual_seed(0)
    data = read_r2gaussian(data_dir)
    ref = data.volume
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    volumes: dict[str, np.ndarray] = {}

    def record(name: str, volume: np.ndarray, after_init: float | None, t0: float, note: str) -> None:
        results[name] = {
            "psnr_3d": round(float(psnr_3d(volume, ref)), 3),
            "ssim_3d": round(float(ssim_3d(volume, ref)), 4),
            "psnr_after_init": None if after_init is None else round(after_init, 3),
            "wall_s": round(time.perf_counter() - t0, 1),
            "note": note,
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {results[name]}", flush=True)

    def gaussian(name: str, cfg: GaussianFitConfig, init_volume=None, note: str = "") -> None:
        t0 = time.perf_counter()
        tr = GaussianTrainer(data.projections, data.geometry, cfg, init_volume=init_volume)
        after = float(psnr_3d(tr.volume().numpy(), ref))
        if cfg.iterations:
            tr.fit()
        record(name, tr.volume().numpy(), after, t0, note)

    base = GaussianFitConfig()
    for row in args.rows:
        print(f"== {row}", flush=True)
        if row == "tv":
            t0 = time.perf_counter()
            tr = TVTrainer(data.projections, data.geometry, TVConfig())
            after = float(psnr_3d(tr.volume().numpy(), ref))
            volumes["tv"] = tr.fit().numpy()
            np.save(args.out / "tv_volume.npy", volumes["tv"])
            record(row, volumes["tv"], after, t0, "TVConfig defaults")
        elif row == "gaussian":
            gaussian(row, base, note="GaussianFitConfig defaults")
        elif row == "gaussian-tv0.1":
            gaussian(row, dataclasses.replace(base, lambda_tv=0.1), note="lambda_tv 0.1")
        elif row == "gaussian-allviews":
            gaussian(row, dataclasses.replace(base, batch_views=data.geometry.n_views), note=f"batch_views {data.geometry.n_views}")
        elif row == "gaussian-from-tv":
            tv_path = args.out / "tv_volume.npy"
            if "tv" not in volumes and not tv_path.is_file():
                print("gaussian-from-tv needs the tv row first", file=sys.stderr)
                return 2
            vol = volumes.get("tv", np.load(tv_path) if tv_path.is_file() else None)
            gaussian(row, dataclasses.replace(base, lambda_tv=0.1), init_volume=vol, note="initialised from the tv row's volume, lambda_tv 0.1")
        elif row == "gaussian-600":
            gaussian(row, dataclasses.replace(base, iterations=600), note="600 steps")
        elif row.startswith("gaussian:"):
            fields = {f.name: f.type for f in dataclasses.fields(GaussianFitConfig)}
            over = {}
            for item in row.split(":", 1)[1].split(","):
                key, _, value = item.partition("=")
                if key not in fields:
                    print(f"unknown GaussianFitConfig field {key!r} in row {row}", file=sys.stderr)
                    return 2
                over[key] = type(getattr(base, key))(value)
            gaussian(row, dataclasses.replace(base, **over), note=", ".join(f"{k} {v}" for k, v in over.items()))
        elif row == "capacity":
            gaussian(row, dataclasses.replace(base, iterations=0, init_fit_steps=60), init_volume=ref, note="fit to the reference, no projections")
        else:
            print(f"unknown row {row}", file=sys.stderr)
            return 2

    lines = ["| row | 3D PSNR (dB) | SSIM | PSNR after init (dB) | wall (s) | note |", "|---|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        init = "—" if r["psnr_after_init"] is None else f"{r['psnr_after_init']:.2f}"
        lines.append(f"| {name} | {r['psnr_3d']:.2f} | {r['ssim_3d']:.4f} | {init} | {r['wall_s']:.0f} | {r['note']} |")
    lines.append("")
    lines.append(f"Data: {data_dir} ({data.geometry.n_views} views); machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
