"""PSNR after every pass of the OS-FISTA TV solver, for variants of its settings (tuning driver).

Runs :class:`recon.ct.tv_solver.TVSolver` directly (no run folder, no checkpoints) from the FDK
(Hann) start on an R2-Gaussian scan folder with a reference volume, and prints the 3D PSNR after
each pass over the views and the solver's CPU time. This is how the settings of
``--tv.solver fista`` were chosen on the training chest (docs/benchmarks.md, "CT: TV speed");
use it on training scans only -- a scan used to pick settings cannot report them.

Each variant is a JSON object; keys (all optional):

    lam        TV weight (default 1e-4)            subsets   view subsets per pass (default 5)
    schedule   subsets per pass, e.g. [10, 10, 5]  relax     step scale over the SART majoriser
    prox       dual iterations per step            iso       isotropic TV (true / false)
    weights    "poisson": data weights e^(-b) (normalised to mean 1) on top of 1 / (A 1)
    drop       give weight 0 to rays whose line integral is at least this fraction of the largest
               (e.g. 0.999: the rays clipped where the simulated counts hit their floor)
    huber      Huber threshold of the data loss in line-integral units (default 0: least squares;
               ``--tv.fista-huber``)
    lam0, lam_passes   continuation: lam * lam0 at the start, decaying geometrically to lam
                       over lam_passes passes
    ramp       a ramp-filter window ("hann", "ram-lak", ...): the data term becomes
               1/2 ||A x - b||_F^2 with F = C (R + eps * max R) C (C: cosine weights, R: the
               windowed ramp along detector rows), scalar metric from 6 power iterations on the
               first subset; eps (default 0.02)

    python scripts/bench_ct_sparse.py --views 25 --methods fdk-ramlak --out runs/tune   # makes the data
    python scripts/tune_ct_tv.py runs/tune/data/lidc_idri_0001_ds2_128_25v \
        '[{"lam": 5e-5, "relax": 1.3, "schedule": [10, 10, 5]}]' --passes 20

Single-threaded (torch and numba), so the CPU figures compare between variants run side by side.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for _name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recon.ct.analytic import filter_projections
from recon.ct.metrics import psnr_3d
from recon.ct.objective import checked_projections, initial_volume
from recon.ct.project import Projector
from recon.ct.tv_solver import TVSolver
from recon.io.r2gaussian import read_r2gaussian

KEYS = {"drop", "huber", "lam", "subsets", "schedule", "relax", "prox", "iso", "weights", "lam0", "lam_passes", "ramp", "eps"}


class RampSolver(TVSolver):
    """TVSolver with the ramp-filtered data term 1/2 ||A x - b||_F^2 (see the module docstring)."""

    def __init__(self, *args, window: str = "hann", eps: float = 0.02, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        geo = self.geometry
        nv, nu = geo.n_detector
        pv, pu = geo.detector_pixel_mm
        uu = (torch.arange(nu) - (nu - 1) / 2) * pu
        vv = (torch.arange(nv) - (nv - 1) / 2) * pv
        self.c = geo.dsd_mm / torch.sqrt(geo.dsd_mm**2 + uu[None, :] ** 2 + vv[:, None] ** 2)  # [v, u]
        self.window, self.eps = window, eps
        self.pixel_mm = pu * geo.dso_mm / geo.dsd_mm
        impulse = torch.zeros(1, 1, nu)
        impulse[..., nu // 2] = 1.0
        self.r_max = float(filter_projections(impulse, self.pixel_mm, window).abs().max())
        n = self.schedule[0]
        key = self.keys(n)[0]
        x = torch.rand(geo.n_voxel, generator=torch.Generator().manual_seed(0))
        for _ in range(6):  # power iteration: || n A_s^T F A_s ||
            y = n * self.projector.backproject(self.filtered(self.projector.forward(x, key)), key)
            self.lipschitz = float(y.norm() / x.norm())
            x = y / y.norm()
        self.d = torch.full(geo.n_voxel, 1.05 * self.lipschitz / self.relaxation)

    def filtered(self, r: torch.Tensor) -> torch.Tensor:  # [V, v, u]
        rc = r * self.c
        return (filter_projections(rc, self.pixel_mm, self.window) + self.eps * self.r_max * rc) * self.c

    def _data_gradient(self, z, key):
        r = self.projector.forward(z, key) - self.b[list(key)]
        fr = self.filtered(r)
        return 0.5 * float((fr * r).sum()), self.projector.backproject(fr, key)


def run_variant(v: dict, b: torch.Tensor, scale: float, geo, proj: Projector, x0: torch.Tensor, ref: np.ndarray, passes: int) -> dict:
    unknown = set(v) - KEYS
    if unknown:
        raise SystemExit(f"variant {v}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})")
    c0 = time.process_time()
    lam = float(v.get("lam", 1e-4))
    kw: dict = {"lam": lam, "n_subsets": v.get("schedule", v.get("subsets", 5)), "prox_iterations": v.get("prox", 1), "relaxation": v.get("relax", 1.0), "isotropic": bool(v.get("iso", False)), "huber": float(v.get("huber", 0.0)) / scale}
    if v.get("weights") == "poisson":
        sw = torch.exp(-b * scale)
        kw["ray_weights"] = sw / sw.mean()
    if "drop" in v:
        keep = (b < float(v["drop"]) * float(b.max())).float()
        kw["ray_weights"] = kw.get("ray_weights", torch.ones_like(b)) * keep
    solver = RampSolver(b, geo, projector=proj, window=v["ramp"], eps=v.get("eps", 0.02), **kw) if "ramp" in v else TVSolver(b, geo, projector=proj, **kw)
    solver.start(x0)
    if "lam0" in v:
        solver.lam = lam * v["lam0"]
    cpu = time.process_time() - c0
    psnrs: list[float] = []
    while len(psnrs) < passes:
        c1 = time.process_time()
        info = solver.step()
        cpu += time.process_time() - c1
        if info["pass_end"]:
            psnrs.append(round(psnr_3d((solver.x * scale).numpy(), ref), 3))
            if "lam0" in v:
                solver.lam = lam * v["lam0"] ** max(0.0, 1 - len(psnrs) / v["lam_passes"])
            print(f"  {json.dumps(v)} pass {len(psnrs)}: {psnrs[-1]:.3f} dB, {cpu:.1f} CPU-s, {solver.restarts} restarts", flush=True)
    return {"variant": v, "psnr": psnrs, "cpu_s": round(cpu, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="R2-Gaussian scan folder with vol_gt.npy")
    p.add_argument("variants", help="JSON list of variant objects")
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--json", type=Path, default=None, help="append one line per variant here")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"missing {args.data}", file=sys.stderr)
        return 2
    variants = json.loads(args.variants)
    torch.set_num_threads(1)
    data = read_r2gaussian(args.data)
    if data.volume is None:
        print(f"{args.data} has no reference volume", file=sys.stderr)
        return 2
    ref = np.asarray(data.volume, dtype=np.float32)
    b, scale = checked_projections(data.projections, data.geometry)
    proj = Projector(data.geometry, num_threads=None)
    x0 = initial_volume(b, data.geometry, init="fdk", filter="hann", projector=proj)
    for v in variants:
        result = run_variant(v, b, scale, data.geometry, proj, x0.clone(), ref, args.passes)
        print("RESULT", json.dumps(result), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
