"""Train the InDI refiner (``recon.prior.ct_indi.InDIRefiner``), choose its step counts on the
validation abdomen, and write the shipped weights with their model card.

Training data: every real CT volume of the shared data except the held-out chest
(``itkelastix_4dct_phase00_chest``, never used here) and the validation abdomen
(``totalseg_example_ct_abdomen_pelvis``, only used to choose the step counts):
``lidc_idri_0001_ds2``, ``vtk_headsq_ct`` (raw values ~HU + 1024) and the nine other volumes of
``ct/more``. Each is converted from HU to attenuation (``mu = 0.0206 / mm (1 + HU / 1000)``) and
area-resampled to 128^3 over its own extent (the grid of ``scripts/bench_ct_sparse.py``).

Pairs: ``--scans-per-volume`` simulated cone-beam scans per volume with ``recon ct simulate``'s
scanner (DSO 2.5 E, DSD 3.5 E, 256^2 detector at pitch 2 E / 256; Poisson I0 = 1e5 + Gaussian
sigma = 10 photons), a view count drawn log-uniformly in [--views-min, --views-max] (more scans at
few views), a random start angle in (1, 359) deg and a noise seed >= 1000, reconstructed with the
real ``--method tv`` solver at its defaults (OS-FISTA, ``recon.ct.tv_trainer.TVConfig``). The TV
volumes are cached under ``--cache`` (one .npy per scan; ~20 s each on 2 cores) so reruns skip
them; ``--workers`` reconstructs in parallel processes.

Training (InDI, Delbracio & Milanfar 2023): a random axial slice of a random pair with at least
5 % non-air voxels, its ``context_slices`` neighbours, in-plane rot90 / flip, a reversed slice
order and an intensity gain in [0.9, 1.1] (input and target); ``t`` = 1 with probability
``--p-t1`` (the one-step restoration), else uniform in (0, 1]; input ``x_t = (1 - t) x + t y``
(``x`` the reference, ``y`` the TV volume, context slices too); MSE against the reference's centre
slice in units of mu_water (the units PSNR is measured in, up to a constant); AdamW with warm-up
and cosine decay over the larger of the step and wall-clock fractions; gradient clipping at 1; an
exponential moving average of the weights (``--ema``; the EMA ships). ``--crop`` trains on random
square crops (CPU), 0 on whole slices. Resumable checkpoints in ``--out/checkpoints``
(``--resume``); the wall-clock cap ``--max-minutes`` stops training early and saves.

Tuning (``--out/tune.json``): the validation abdomen at 10 / 25 / 50 views (start angle 0, noise
seed 0, as ``recon ct simulate``), TV at its defaults, then InDI with 1 / 2 / 4 steps and 0 / 5 /
10 / 20 TV data-consistency steps; the default pair is the best mean PSNR over the three view
counts (``recon.prior.ct_indi.DEFAULT_STEPS`` / ``DEFAULT_DC_STEPS`` are set from it by hand).

    python scripts/train_ct_indi.py                                   # cache, train, save, tune
    python scripts/train_ct_indi.py --resume                          # continue an interrupted run
    python scripts/train_ct_indi.py --tune-only                       # tune the weights in --weights-out
    python scripts/train_ct_indi.py --card runs/bench_ct_indi/results.json   # rewrite MODEL_CARD.md
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep rather than spin on the shared machine (see bench_ct_sparse.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA_DIR = ROOT.parent / "shared" / "data" / "ct"
HELD_OUT = "itkelastix_4dct_phase00_chest"
VALIDATION = "totalseg_example_ct_abdomen_pelvis"
RAW_PLUS_1024 = {"vtk_headsq_ct"}  # stored values ~ HU + 1024 (see the data's json)
SIZE = 128
TUNE_VIEWS = (10, 25, 50)
TUNE_STEPS = (1, 2, 4)
TUNE_DC = (0, 5, 10, 20)


# =============================================================================== data
def volume_paths() -> list[Path]:
    """Every real CT volume of the shared data (held-out and validation included; callers filter)."""
    return [DATA_DIR / "lidc_idri_0001_ds2.npz", DATA_DIR / "vtk_headsq_ct.npz", *sorted((DATA_DIR / "more").glob("*.npz"))]


def training_names(cache: Path | None = None, only: list[str] | None = None) -> list[str]:
    """The training volumes: the shared data's, or (without the shared data) those whose
    reference is in ``cache``; ``only`` restricts them. Never the held-out or validation volume."""
    paths = volume_paths() if DATA_DIR.is_dir() else sorted(cache.glob("ref_*.npz")) if cache is not None else []
    names = [p.stem.removeprefix("ref_") for p in paths]
    return [n for n in names if n not in (HELD_OUT, VALIDATION) and (not only or n in only)]


def reference_mu(name: str, cache: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``name``'s attenuation (1/mm) on the SIZE^3 grid; cached as ``ref_<name>.npz`` (float16)."""
    path = cache / f"ref_{name}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["volume"].astype(np.float32), tuple(float(v) for v in f["voxel_mm"])  # type: ignore[return-value]
    from recon.ct.simulate import resample_volume
    from recon.io.formats import load_volume_file
    from recon.io.units import hu_to_mu

    src = next(p for p in volume_paths() if p.stem == name)
    raw, spacing = load_volume_file(src)
    hu = raw - 1024.0 if name in RAW_PLUS_1024 else raw
    mu, voxel = resample_volume(hu_to_mu(hu), spacing or (1.0, 1.0, 1.0), SIZE)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".ref_{name}.tmp.npz"
    np.savez_compressed(tmp, volume=mu.astype(np.float16), voxel_mm=np.asarray(voxel))
    os.replace(tmp, path)
    return mu.astype(np.float16).astype(np.float32), voxel


def scan_geometry(shape, voxel_mm, views: int, start_deg: float):
    """``recon ct simulate``'s scanner (R2-Gaussian's proportions) with ``views`` angles from ``start_deg``."""
    from recon.geometry.ct import CTGeometry, circular_angles

    extent = max(n * d for n, d in zip(shape, voxel_mm))
    pitch = 2.0 * extent / 256
    return CTGeometry(mode="cone", n_detector=(256, 256), detector_pixel_mm=(pitch, pitch), n_voxel=tuple(shape), voxel_mm=tuple(voxel_mm),
                      angles_rad=circular_angles(views, 360.0, start_deg), dso_mm=2.5 * extent, dsd_mm=3.5 * extent)  # fmt: skip


@dataclass
class Scan:
    name: str
    views: int
    start_deg: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.name}_{SIZE}_{self.views}v_a{self.start_deg:.2f}_s{self.seed}"


def training_scans(names: list[str], per_volume: int, vmin: int, vmax: int, seed: int) -> list[Scan]:
    """``per_volume`` scans of each volume, in rounds over the volumes (a cache stopped early by
    --cache-minutes still covers every volume)."""
    rng = np.random.default_rng(seed + 12345)
    scans, i = [], 0
    for _ in range(per_volume):
        for name in names:
            views = int(round(math.exp(rng.uniform(math.log(vmin), math.log(vmax)))))
            scans.append(Scan(name, views, float(rng.uniform(1.0, 359.0)), 1000 + i))
            i += 1
    return scans


def tune_scans() -> list[Scan]:
    return [Scan(VALIDATION, v, 0.0, 0) for v in TUNE_VIEWS]


def reconstruct_tv(scan: Scan, cache: Path, keep_projections: bool = False) -> float:
    """Simulate ``scan`` and reconstruct it with ``--method tv``'s defaults; cache the volume
    (and the projections when ``keep_projections``). Returns the seconds taken."""
    from recon.ct.simulate import simulate_projections
    from recon.ct.tv_trainer import TVConfig, TVTrainer

    t0 = time.perf_counter()
    mu, voxel = reference_mu(scan.name, cache)
    geo = scan_geometry(mu.shape, voxel, scan.views, scan.start_deg)
    proj = simulate_projections(mu, geo, noise=True, seed=scan.seed)
    trainer = TVTrainer(proj, geo, TVConfig(), num_threads=None)
    for _ in range(int(trainer.config.iterations)):  # type: ignore[arg-type]
        trainer.train_step()
        if trainer.converged:
            break
    vol = trainer.volume().numpy().astype(np.float32)
    tmp = cache / f".{scan.key}.tmp.npy"
    np.save(tmp, vol)
    if keep_projections:
        ptmp = cache / f".{scan.key}.proj.tmp.npy"
        np.save(ptmp, proj.numpy().astype(np.float32))
        os.replace(ptmp, cache / f"{scan.key}.proj.npy")
    os.replace(tmp, cache / f"{scan.key}.npy")
    return time.perf_counter() - t0


def _worker(job: tuple[Scan, str, bool]) -> tuple[str, float]:
    torch.set_num_threads(1)
    scan, cache, keep = job
    return scan.key, reconstruct_tv(scan, Path(cache), keep)


def build_cache(scans: list[Scan], cache: Path, workers: int, console, keep_projections: bool = False, max_minutes: float = 0.0) -> float:
    """TV volumes of every scan in ``cache`` (stopping after ``max_minutes`` when > 0: the
    scans done so far stay cached); returns the seconds spent."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in sorted({s.name for s in scans}):
        reference_mu(name, cache)
    todo = [s for s in scans if not (cache / f"{s.key}.npy").is_file() or (keep_projections and not (cache / f"{s.key}.proj.npy").is_file())]
    t0 = time.perf_counter()
    if not todo:
        return 0.0
    console.print(f"  reconstructing {len(todo)} TV volumes with {workers} worker(s) ...")
    jobs = [(s, str(cache), keep_projections) for s in todo]
    if workers > 1:
        import multiprocessing as mp

        os.environ["NUMBA_NUM_THREADS"] = "1"  # read by the spawned workers when numba loads
        with mp.get_context("spawn").Pool(workers) as pool:
            for k, (key, sec) in enumerate(pool.imap_unordered(_worker, jobs)):
                done = time.perf_counter() - t0
                console.print(f"  cached {key} ({sec:.0f} s; {k + 1}/{len(todo)}, {done:.0f} s, ETA {done / (k + 1) * (len(todo) - k - 1):.0f} s)")
                if max_minutes > 0 and done > 60 * max_minutes:
                    console.print(f"[yellow]  cache: stopping after {max_minutes} min ({k + 1} of {len(todo)} done)[/yellow]")
                    pool.terminate()
                    break
    else:
        for k, (s, c, keep) in enumerate(jobs):
            sec = reconstruct_tv(s, Path(c), keep)
            done = time.perf_counter() - t0
            console.print(f"  cached {s.key} ({sec:.0f} s; {k + 1}/{len(todo)}, {done:.0f} s, ETA {done / (k + 1) * (len(todo) - k - 1):.0f} s)")
            if max_minutes > 0 and done > 60 * max_minutes:
                console.print(f"[yellow]  cache: stopping after {max_minutes} min ({k + 1} of {len(todo)} done)[/yellow]")
                break
    return time.perf_counter() - t0


# =============================================================================== training
class SliceSampler:
    """Random augmented (x_t stack, t, clean centre slice) batches from the cached pairs."""

    def __init__(self, scans: list[Scan], cache: Path, k: int, scale: float, device: torch.device):
        tvs, refs, index = [], [], []
        ref_of: dict[str, int] = {}
        for s in scans:
            if s.name not in ref_of:
                ref_of[s.name] = len(refs)
                refs.append(torch.from_numpy(reference_mu(s.name, cache)[0] / scale))
            tvs.append(torch.from_numpy(np.load(cache / f"{s.key}.npy") / scale))
        self.tv = torch.stack(tvs).to(device)  # [N, Z, Y, X]
        self.ref = torch.stack(refs).to(device)  # [R, Z, Y, X]
        self.ref_index = torch.tensor([ref_of[s.name] for s in scans], device=device)
        for i, s in enumerate(scans):
            ref = refs[ref_of[s.name]]
            keep = torch.nonzero((ref > 0.2).float().mean(dim=(1, 2)) >= 0.05)[:, 0]
            index.append(torch.stack([torch.full_like(keep, i), keep], 1))
        self.index = torch.cat(index).to(device)  # [M, 2] (pair, z)
        self.k, self.device = k, device

    def sample(self, gen: torch.Generator, batch: int, crop: int, p_t1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev, k = self.device, self.k
        pick = self.index[torch.randint(len(self.index), (batch,), generator=gen, device="cpu").to(dev)]
        pair, z = pick[:, 0], pick[:, 1]
        nz = self.tv.shape[1]
        zz = (z[:, None] + torch.arange(-(k // 2), k // 2 + 1, device=dev)[None]).clamp(0, nz - 1)  # [B, k]
        y = self.tv[pair[:, None], zz]  # [B, k, Y, X]
        x = self.ref[self.ref_index[pair][:, None], zz]
        if crop:
            n = y.shape[-1]
            oy, ox = (int(v) for v in torch.randint(0, n - crop + 1, (2,), generator=gen))
            y, x = y[..., oy : oy + crop, ox : ox + crop], x[..., oy : oy + crop, ox : ox + crop]
        r = int(torch.randint(4, (1,), generator=gen))
        y, x = torch.rot90(y, r, (2, 3)), torch.rot90(x, r, (2, 3))
        if float(torch.rand((), generator=gen)) < 0.5:
            y, x = y.flip(-1), x.flip(-1)
        if float(torch.rand((), generator=gen)) < 0.5:
            y, x = y.flip(1), x.flip(1)
        gain = (0.9 + 0.2 * torch.rand(batch, generator=gen)).to(dev)[:, None, None, None]
        y, x = y * gain, x * gain
        t = torch.rand(batch, generator=gen).clamp_min(1e-3)
        t = torch.where(torch.rand(batch, generator=gen) < p_t1, torch.ones_like(t), t).to(dev)
        tb = t[:, None, None, None]
        x_t = (1.0 - tb) * x + tb * y
        return x_t.contiguous(), t, x[:, k // 2 : k // 2 + 1].contiguous()


def lr_at(step: int, total: int, lr: float, time_fraction: float = 0.0, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p)))


def plain_config(model) -> dict:
    return json.loads(json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}, default=list))


def train(args, console, device: torch.device) -> dict:
    from recon.io.atomic import atomic_torch_save
    from recon.prior.ct_indi import InDIRefiner

    ckpt_dir = args.out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    names = training_names(args.cache, args.names)
    scans = training_scans(names, args.scans_per_volume, args.views_min, args.views_max, args.seed)
    console.print(f"[bold]data[/bold]: {len(scans)} scans of {len(names)} volumes, views {args.views_min}-{args.views_max} (log-uniform); cache {args.cache}")
    cache_s = build_cache(scans, args.cache, args.workers, console, max_minutes=args.cache_minutes)
    missing = [s.key for s in scans if not (args.cache / f"{s.key}.npy").is_file()]
    if missing:
        console.print(f"[yellow]training on the {len(scans) - len(missing)} cached scans ({len(missing)} not reconstructed: --cache-minutes)[/yellow]")
        scans = [s for s in scans if s.key not in missing]

    torch.manual_seed(args.seed)
    model = InDIRefiner(context_slices=args.context, channels=tuple(args.channels)).to(device)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    step, elapsed, history = 0, 0.0, []
    ckpts = sorted(ckpt_dir.glob("ckpt_*.pt"))
    if args.resume and ckpts:
        state = torch.load(ckpts[-1], map_location=device, weights_only=True)
        if state["config"] != plain_config(model):
            raise SystemExit(f"{ckpts[-1]}: trained with another model config ({state['config']}); use another --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        console.print(f"resumed from {ckpts[-1]} at step {step} ({elapsed / 60:.1f} min trained)")
    elif args.resume:
        console.print(f"[yellow]--resume: no checkpoint in {ckpt_dir}; starting afresh[/yellow]")
    scale = float(model.config.value_scale_per_mm)
    sampler = SliceSampler(scans, args.cache, args.context, scale, device)
    console.print(f"  {len(sampler.index)} training slices; {sum(p.numel() for p in model.parameters()):,} parameters; device {device}")

    def save(step_now: int) -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": step_now, "elapsed_s": elapsed,
                 "history": history, "generator": gen.get_state(), "config": plain_config(model)}  # fmt: skip
        atomic_torch_save(ckpt_dir / f"ckpt_{step_now:07d}.pt", state)
        for old in sorted(ckpt_dir.glob("ckpt_*.pt"))[:-2]:
            old.unlink()

    cap_s = args.max_minutes * 60.0
    t_start = time.perf_counter() - elapsed
    last_print, run_loss, run_base, stopped = -1e9, None, None, "steps"
    model.train()
    while step < args.steps:
        lr = lr_at(step, args.steps, args.lr, elapsed / cap_s if cap_s > 0 else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        x_t, t, target = sampler.sample(gen, args.batch, args.crop, args.p_t1)
        pred = model(x_t, t).sample
        loss = (pred - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        step += 1
        elapsed = time.perf_counter() - t_start
        if step % 10 == 0 or run_loss is None:
            with torch.no_grad():
                lv = float(loss)
                base = float((x_t[:, args.context // 2 : args.context // 2 + 1] - target).square().mean())
            run_loss = lv if run_loss is None else 0.9 * run_loss + 0.1 * lv
            run_base = base if run_base is None else 0.9 * run_base + 0.1 * base
            history.append({"step": step, "loss": round(lv, 7), "input_loss": round(base, 7), "lr": lr, "time_s": round(elapsed, 2)})
        if elapsed - last_print > args.print_every or step == args.steps:
            last_print = elapsed
            rate = elapsed / step
            console.print(f"[{time.strftime('%H:%M:%S')}] step {step}/{args.steps}  loss {run_loss:.4g} (input {run_base:.4g}, ratio {run_loss / max(run_base, 1e-12):.3f})  "
                          f"lr {lr:.2g}  {rate * 1000:.0f} ms/step  {elapsed / 60:.1f} min")  # fmt: skip
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save(step)
        if cap_s > 0 and elapsed > cap_s:
            stopped = f"wall-clock cap {args.max_minutes} min"
            console.print(f"[yellow]stopping at step {step}: {stopped}[/yellow]")
            break
    save(step)
    return {"steps": step, "target_steps": args.steps, "stopped_by": stopped, "train_wall_s": round(elapsed, 1), "cache_s": round(cache_s, 1),
            "n_scans": len(scans), "n_slices": int(len(sampler.index)), "volumes": sorted({s.name for s in scans}), "scans": [s.key for s in scans],
            "device": str(device), "torch": torch.__version__, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "history": history, "model": ema.cpu()}  # fmt: skip



# =============================================================================== tuning
def tune(model, cache: Path, console, device: torch.device, steps_list=TUNE_STEPS, dc_list=TUNE_DC) -> dict:
    """PSNR / SSIM of TV and TV + InDI (steps x data-consistency steps) on the validation abdomen."""
    from recon.ct.metrics import psnr_3d, ssim_3d
    from recon.prior.ct_indi import data_consistency, indi_refine

    model = model.to(device).eval()
    results: dict = {"volume": VALIDATION, "views": {}}
    for scan in tune_scans():
        ref, voxel = reference_mu(scan.name, cache)
        tv = np.load(cache / f"{scan.key}.npy")
        proj = torch.from_numpy(np.load(cache / f"{scan.key}.proj.npy"))
        geo = scan_geometry(ref.shape, voxel, scan.views, scan.start_deg)
        row = {"tv": {"psnr_3d": round(psnr_3d(tv, ref), 3), "ssim_3d": round(ssim_3d(tv, ref).mean, 4)}}
        for n in steps_list:
            t0 = time.perf_counter()
            refined = indi_refine(tv, model, steps=n, device=device)
            t_net = time.perf_counter() - t0
            for dc in dc_list:
                t0 = time.perf_counter()
                out = data_consistency(refined, proj, geo, dc)
                row[f"indi{n}_dc{dc}"] = {"psnr_3d": round(psnr_3d(out, ref), 3), "ssim_3d": round(ssim_3d(out, ref).mean, 4),
                                         "net_s": round(t_net, 2), "dc_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
        results["views"][str(scan.views)] = row
        best = max((k for k in row if k != "tv"), key=lambda k: row[k]["psnr_3d"])
        console.print(f"  {VALIDATION} {scan.views} views: TV {row['tv']['psnr_3d']:.2f} dB; best {best} {row[best]['psnr_3d']:.2f} dB; "
                      + "  ".join(f"{k} {v['psnr_3d']:.2f}" for k, v in row.items() if k != "tv"))  # fmt: skip
    keys = [k for k in results["views"][str(TUNE_VIEWS[0])] if k != "tv"]
    mean_gain = {k: round(float(np.mean([r[k]["psnr_3d"] - r["tv"]["psnr_3d"] for r in results["views"].values()])), 3) for k in keys}
    results["mean_gain_db"] = mean_gain
    results["best"] = max(mean_gain, key=mean_gain.get)  # type: ignore[arg-type]
    console.print(f"  best on validation (mean gain over {TUNE_VIEWS} views): {results['best']} {mean_gain[results['best']]:+.2f} dB")
    return results


# =============================================================================== model card
def model_card(folder: Path, info: dict, tuned: dict | None, bench: dict | None) -> None:
    from recon.prior.ct_indi import DEFAULT_DC_STEPS, DEFAULT_STEPS, InDIRefiner

    model = InDIRefiner.from_pretrained(folder, local_files_only=True)
    c, a = model.config, info["args"]
    n_params = sum(p.numel() for p in model.parameters())
    size = (folder / "diffusion_pytorch_model.safetensors").stat().st_size
    lines = [
        "# CT InDI refiner (`recon.prior.ct_indi.InDIRefiner`)",
        "",
        "A 2.5D U-Net trained for Inversion by Direct Iteration (InDI, Delbracio & Milanfar 2023; MInDI-3D applies it to",
        "sparse-view CBCT) that restores a sparse-view TV reconstruction: `x_{t-d} = (d/t) F(x_t, t) + (1 - d/t) x_t` from",
        "t = 1 (the TV volume) to t = 0 in N steps, then a few OS-FISTA TV steps on the projections (data consistency).",
        f"Use: `recon ct fit DATA --method tv --prior indi` (defaults: {DEFAULT_STEPS} InDI step(s) + {DEFAULT_DC_STEPS} TV steps; "
        "`--indi.steps`, `--indi.dc-steps`).",
        "",
        "## Model",
        f"- input: {c.context_slices} adjacent axial slices of x_t in units of mu_water ({c.value_scale_per_mm} / mm) and t "
        f"(sinusoidal embedding, FiLM in every block); output: the centre slice (input + learned residual), clamped at 0.",
        f"- U-Net levels {list(c.channels)} (two 3x3 convs + GroupNorm + SiLU per block, average-pool down, nearest up);"
        f" {n_params:,} parameters; safetensors {size / 1e6:.2f} MB (float32, the EMA of the weights).",
        "",
        "## Training",
        f"- Data: {len(info['volumes'])} real CT volumes of the shared data ({', '.join(info['volumes'])}), HU -> mu, area-resampled to"
        f" 128^3. Never used: the held-out chest `{HELD_OUT}`; used only to choose step counts: the validation abdomen `{VALIDATION}`.",
        f"- Pairs: {info['n_scans']} simulated cone-beam scans ({a['scans_per_volume']} per volume; `recon ct simulate`'s scanner,"
        f" Poisson I0 1e5 + Gaussian 10 photons), {a['views_min']}-{a['views_max']} views (log-uniform), random start angle,"
        " own noise seed, reconstructed with `--method tv` at its defaults; target: the reference volume.",
        f"- {info['n_slices']} axial training slices (>= 5 % non-air); batch {a['batch']}"
        + (f" of {a['crop']}^2 crops" if a["crop"] else " of whole 128^2 slices")
        + f"; rot90 / flips / reversed slice order / gain 0.9-1.1; t = 1 with probability {a['p_t1']}, else uniform;"
        f" MSE in mu_water units; AdamW lr {a['lr']}, cosine decay; EMA {a['ema']}.",
        f"- {info['steps']} steps" + (f" (stopped by the {info['stopped_by']})" if info.get("stopped_by", "steps") != "steps" else "")
        + f", {info['train_wall_s'] / 60:.1f} min on {info['device']} ({info['device_name']}), plus {info['cache_s'] / 60:.1f} min of TV"
        f" reconstructions ({a['workers']} worker processes); torch {info.get('torch', torch.__version__)}.",
    ]
    if info.get("history"):
        tail = info["history"][-20:]
        lines.append(f"- Final training loss {np.mean([h['loss'] for h in tail]):.3g} vs the input's {np.mean([h['input_loss'] for h in tail]):.3g} (mean of the last {len(tail)} logged steps).")
    if tuned:
        lines += ["", f"## Validation (choosing the step counts): `{VALIDATION}` at 128^3", "",
                  "3D PSNR (dB) of TV and of TV + InDI (N steps) + K TV data-consistency steps; start angle 0, noise seed 0.", ""]  # fmt: skip
        keys = list(tuned["mean_gain_db"])
        lines.append("| views | TV | " + " | ".join(k.replace("indi", "N=").replace("_dc", ", K=") for k in keys) + " |")
        lines.append("|---:|---:|" + "---:|" * len(keys))
        for v, row in tuned["views"].items():
            lines.append(f"| {v} | {row['tv']['psnr_3d']:.2f} | " + " | ".join(f"{row[k]['psnr_3d']:.2f}" for k in keys) + " |")
        lines.append("| mean gain | | " + " | ".join(f"{tuned['mean_gain_db'][k]:+.2f}" for k in keys) + " |")
        lines.append(f"\nBest mean gain: {tuned['best']}.")
    if bench:
        lines += ["", f"## Held-out result: `{HELD_OUT}` at 128^3 (measured once, after the settings were fixed)", "",
                  "| views | method | PSNR (dB) | SSIM | vs TV (dB) | wall (s) |", "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for v, rows in bench["views"].items():
            for m, r in rows.items():
                lines.append(f"| {v} | {m} | {r['psnr_3d']:.2f} | {r['ssim_3d']:.4f} | {r['psnr_3d'] - rows['tv']['psnr_3d']:+.2f} | {'-' if r['wall_s'] is None else format(r['wall_s'], '.1f')} |")
        lines.append(f"\n(`scripts/bench_ct_indi.py`; {bench.get('machine', '')}.)")
    fails = []
    if bench and tuned:
        held = {v: rows["tv+indi"]["psnr_3d"] - rows["tv"]["psnr_3d"] for v, rows in bench["views"].items()}
        val = {v: row[tuned["best"]]["psnr_3d"] - row["tv"]["psnr_3d"] for v, row in tuned["views"].items()}
        fails.append("- The gain does not carry over evenly: on the validation abdomen it grew with the view count ("
                     + " / ".join(f"{g:+.2f}" for g in val.values()) + f" dB at {' / '.join(val)} views), on the held-out chest it did not ("
                     + " / ".join(f"{g:+.2f}" for g in held.values()) + f" dB at {' / '.join(held)} views). At many views TV is already close and the"
                     " network's errors weigh more; one held-out patient is not a distribution.")  # fmt: skip
    lines += [
        "",
        "## Where it fails",
        *fails,
        "- Trained on simulated noise with the matched projector and one scanner geometry (cone beam, DSO 2.5 E, DSD 3.5 E);",
        "  real scanner data (scatter, beam hardening, other geometries, other grids than ~128^3 over the body) is out of distribution.",
        "- 2.5D: it sees 5 axial slices, so z-structure is only as good as the TV input's; grids far from the training",
        "  voxel sizes (1.5-5 mm) change what a streak looks like to it.",
        "- It can invent or erase fine detail that the data term does not pin down; the TV data-consistency steps pull it",
        "  back to the projections, but check the slices before trusting small structures.",
        "",
        "## Reproduce",
        f"`python scripts/train_ct_indi.py --scans-per-volume {a['scans_per_volume']} --views-min {a['views_min']} --views-max {a['views_max']} "
        f"--steps {a['steps']} --max-minutes {a['max_minutes']} --batch {a['batch']} --crop {a['crop']} --lr {a['lr']} --workers {a['workers']}`"
        " (CUDA when available; `--resume` continues an interrupted run; the TV volumes are cached in `--cache`).",
        f"The shipped weights were trained this way on {info['device_name']} ({a['workers']} TV workers on its CPU cores). On a 2-core CPU",
        "the same command takes ~90 min of TV reconstructions (`--workers 2`) and trains at ~0.3 s per step of 64^2 crops",
        "(`--crop 64 --batch 8 --max-minutes 45`): far fewer steps than the shipped weights saw, so expect smaller gains.",
        "",
    ]
    tmp = folder / ".MODEL_CARD.md.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, folder / "MODEL_CARD.md")


# =============================================================================== main
def main() -> int:
    from rich.console import Console

    from recon.io.atomic import atomic_write_json
    from recon.prior.ct_indi import DEFAULT_WEIGHTS, load_indi

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ct_indi", help="checkpoints, logs, tune.json")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "recon_ct_indi_cache", help="cached references and TV volumes")
    p.add_argument("--weights-out", type=Path, default=DEFAULT_WEIGHTS, help="where save_pretrained writes the weights + MODEL_CARD.md")
    p.add_argument("--scans-per-volume", type=int, default=6)
    p.add_argument("--views-min", type=int, default=8)
    p.add_argument("--views-max", type=int, default=60)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--max-minutes", type=float, default=45.0, help="stop training (and save) after this much training wall time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=0, help="square crops of this side (0: whole slices)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--p-t1", type=float, default=0.3, help="probability of t = 1 (the one-step restoration)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 96, 128])
    p.add_argument("--workers", type=int, default=1, help="parallel TV reconstructions (processes)")
    p.add_argument("--cache-minutes", type=float, default=0.0, help="stop reconstructing after this long and train on what is cached (0: all)")
    p.add_argument("--names", nargs="+", default=None, help="train on these volumes only (debugging)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--print-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cache-only", action="store_true", help="only build the cache")
    p.add_argument("--tune-only", action="store_true", help="tune the weights in --weights-out")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--card", type=Path, nargs="?", const=Path(""), default=None, help="rewrite MODEL_CARD.md (with a bench results.json if given)")
    args = p.parse_args()
    console = Console()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    info_path = args.out / "train_info.json"
    if args.card is not None:
        info = json.loads(info_path.read_text())
        tuned = json.loads((args.out / "tune.json").read_text()) if (args.out / "tune.json").is_file() else None
        bench = json.loads(args.card.read_text()) if str(args.card) and args.card.is_file() else None
        model_card(args.weights_out, info, tuned, bench)
        console.print(f"wrote {args.weights_out / 'MODEL_CARD.md'}")
        return 0
    if args.cache_only:
        scans = training_scans(training_names(args.cache, args.names), args.scans_per_volume, args.views_min, args.views_max, args.seed)
        build_cache(tune_scans(), args.cache, args.workers, console, keep_projections=True)
        build_cache(scans, args.cache, args.workers, console, max_minutes=args.cache_minutes)
        return 0
    if args.tune_only:
        model = load_indi(args.weights_out)
    else:
        info = train(args, console, device)
        info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        model = info.pop("model").eval()
        from recon.prior.local_weights import save_local

        size = save_local(model, args.weights_out)
        atomic_write_json(args.out / "history.json", info["history"])
        atomic_write_json(info_path, info)
        console.print(f"wrote {args.weights_out} ({size / 1e6:.2f} MB safetensors)")
        model = load_indi(args.weights_out)  # tune what ships
    if args.skip_tune:
        return 0
    console.print("[bold]tuning on the validation abdomen[/bold]")
    tuned = tune(model, args.cache, console, device)
    atomic_write_json(args.out / "tune.json", tuned)
    console.print(f"wrote {args.out / 'tune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
