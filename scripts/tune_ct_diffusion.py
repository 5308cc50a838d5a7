"""Tune the DDS sampler of ``recon ct fit --method diffusion`` on a TRAINING volume (never the
held-out chest): one simulated scan, one TV start (cached; OS-FISTA, or with ``--start tv`` the
default Adam solver of ``recon ct fit --method tv``), then each sampler setting from that start;
prints and writes 3D PSNR / SSIM and time per setting.

Default volume: ``lidc_idri_0001_ds2`` (a training patient of the slice prior), 128^3, 25 views,
the benchmark's scanner and noise (``recon ct simulate`` defaults, seed 0).

    python scripts/tune_ct_diffusion.py --set steps=10,t_start=100 --set steps=10,t_start=200,tv_z=0.01
    python scripts/tune_ct_diffusion.py --checkpoint runs/ct_prior/checkpoints/ckpt_000600.pt --set ...

Each ``--set`` is comma-separated ``DiffusionConfig`` fields; results go to ``--out/results.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ct" / "lidc_idri_0001_ds2.npz"

from recon.ct.metrics import psnr_3d, ssim_3d
from recon.io.atomic import atomic_save_npy, atomic_write_json
from recon.prior.ct_diffusion import SliceDiffusion, load_slice_diffusion
from recon.prior.dds import DiffusionConfig, dds_reconstruct


def parse_setting(text: str) -> dict:
    types = {f.name: f.type for f in fields(DiffusionConfig)}
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types or key in ("weights", "init"):
            raise SystemExit(f"--set: unknown or unsupported field {key!r}")
        out[key] = float(value) if key in ("cg_damping", "tv_z", "eta") else int(value)
    return out


def load_model(args) -> SliceDiffusion:
    if args.checkpoint is None:
        return load_slice_diffusion(args.weights)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = SliceDiffusion(**state["config"])
    model.load_state_dict(state["ema"])
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--volume", type=Path, default=DATA)
    p.add_argument("--views", type=int, default=25)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("runs/tune_ct_diffusion"))
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped ones)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a train_ct_prior.py checkpoint (its EMA weights) instead of --weights")
    p.add_argument("--set", dest="settings", action="append", default=[], help="comma-separated DiffusionConfig fields, e.g. steps=10,t_start=100")
    p.add_argument("--start", choices=("tv-fista", "tv"), default="tv-fista",
                   help="starting volume: OS-FISTA TV, or tv = the default solver of `recon ct fit --method tv` (Adam)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if "itkelastix" in args.volume.name:
        raise SystemExit("the held-out chest is for the benchmark only; tune on a training volume")
    torch.set_num_threads(args.threads)
    from recon.ct.tv_trainer import TVConfig
    from recon.io.r2gaussian import read_r2gaussian
    from recon.pipelines.ct import CTFitConfig
    from recon.pipelines.ct_simulate import CTSimulateConfig

    data = args.out / "data" / f"{args.volume.stem}_{args.size}_{args.views}v"
    if not (data / "meta_data.json").is_file():
        CTSimulateConfig(args.volume, views=args.views, out=data, n_test=0, size=args.size, seed=0, overwrite=True).run()
    scan = read_r2gaussian(data)
    ref = scan.volume
    solver = "fista" if args.start == "tv-fista" else "adam"
    tv_dir = args.out / ("tv" if solver == "fista" else "tv-adam") / f"{args.views}v"
    if not (tv_dir / "volume.npy").is_file():
        m = CTFitConfig(data, method="tv", tv=TVConfig(solver=solver), out=tv_dir, overwrite=True).run()
        print(f"TV ({solver}) start: {m['psnr_3d']:.2f} dB / {m['ssim_3d']:.4f}, {m['cpu_time_s']:.0f} s CPU", flush=True)
    init = np.load(tv_dir / "volume.npy")
    model = load_model(args)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    base = {"setting": "tv start", "psnr_3d": round(psnr_3d(init, ref), 3), "ssim_3d": round(ssim_3d(init, ref).mean, 4)}
    print(f"start: {base['psnr_3d']:.2f} dB / {base['ssim_3d']:.4f}", flush=True)
    for text in args.settings:
        cfg = DiffusionConfig(**parse_setting(text))
        t0, c0 = time.perf_counter(), time.process_time()
        vol = dds_reconstruct(scan.projections, scan.geometry, model, init, cfg).numpy()
        r = {"setting": text, "start": args.start, "views": args.views, "volume": args.volume.stem, "model": str(args.checkpoint or args.weights or "shipped"),
             "psnr_3d": round(psnr_3d(vol, ref), 3), "ssim_3d": round(ssim_3d(vol, ref).mean, 4), "start_psnr_3d": base["psnr_3d"],
             "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1), "load": round(os.getloadavg()[0], 1)}  # fmt: skip
        print(f"{text}: {r['psnr_3d']:.2f} dB / {r['ssim_3d']:.4f} ({r['psnr_3d'] - base['psnr_3d']:+.2f} dB vs start)  {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, load {r['load']}", flush=True)
        results.append(r)
        atomic_write_json(results_path, results)
        atomic_save_npy(args.out / f"volume_{len(results):02d}.npy", vol.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
