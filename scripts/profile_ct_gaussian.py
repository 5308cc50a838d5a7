"""Where a radiative-Gaussian CT training step's time goes (``recon ct fit --method gaussian``).

Builds a :class:`recon.ct.gaussian_trainer.GaussianTrainer` with its defaults on a simulated
scan (the ``bench_ct_sparse.py`` data folder: 128^3, 25 views), runs ``--warmup`` steps, then
times ``--steps`` real training steps with each part wrapped by a timer (wall and process CPU
time; the parts run inside the real step, so nothing is re-run in isolation):

    voxelise fwd     precision matrices + numba scatter of every Gaussian onto the grid + thread sum
    voxelise bwd     numba gather of the volume gradient per Gaussian + precision-matrix gradient
    project fwd      matched Joseph projector, the step's batch of views
    project bwd      its adjoint (backprojection of the loss gradient)
    loss             L1 + D-SSIM forward (the backward is inside "other backward")
    TV               3D TV forward on the whole volume
    optimiser        FusedAdam steps of the four parameter groups
    densification    density control (every ``densify_every`` steps in its window)
    other            full step - the parts (activation, autograd of SSIM / TV / activations, Python)

It also times the set-up (FDK + OS-SART start, sampling, the initial fit to the volume).

    python scripts/bench_ct_sparse.py --views 25 --methods fdk-ramlak --out runs/bench_ct_sparse   # makes the data
    python scripts/profile_ct_gaussian.py --data runs/bench_ct_sparse/data/lidc_idri_0001_ds2_128_25v --steps 30

OMP_WAIT_POLICY defaults to PASSIVE (set before torch loads), as in the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PARTS = ("voxelise fwd", "voxelise bwd", "project fwd", "project bwd", "loss", "TV", "optimiser", "densification")


class Timers:
    """Accumulated wall and CPU seconds per part while ``active``."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.active = False

    def wrap(self, owner, name: str, part: str, static: bool = False) -> None:
        fn = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            if not timers.active:
                return fn(*args, **kwargs)
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.wall[part] += time.perf_counter() - w
                timers.cpu[part] += time.process_time() - c

        setattr(owner, name, staticmethod(timed) if static else timed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="an R2-Gaussian-format scan folder (bench_ct_sparse.py writes one)")
    p.add_argument("--steps", type=int, default=30, help="steps timed")
    p.add_argument("--warmup", type=int, default=3, help="steps run before timing (numba compilation, caches)")
    p.add_argument("--start-step", type=int, default=0, help="pretend the run is at this step (densification window, learning rates)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"missing {args.data} (run scripts/bench_ct_sparse.py first)", file=sys.stderr)
        return 2

    import recon.ct.gaussian_trainer as gt
    from recon.ct import project, voxelize
    from recon.ct.project import torch_threads
    from recon.io.r2gaussian import read_r2gaussian

    timers = Timers()
    timers.wrap(voxelize._VoxelizeNumba, "forward", "voxelise fwd", static=True)
    timers.wrap(voxelize._VoxelizeNumba, "backward", "voxelise bwd", static=True)
    timers.wrap(project._ForwardProject, "forward", "project fwd", static=True)
    timers.wrap(project._BackProject, "forward", "project bwd", static=True)
    timers.wrap(gt, "projection_loss", "loss")
    timers.wrap(gt, "tv_3d", "TV")
    timers.wrap(gt.FusedAdam, "step", "optimiser")  # the trainer's optimiser (a torch.optim.Adam)
    timers.wrap(gt.GaussianTrainer, "density_control", "densification")

    data = read_r2gaussian(args.data)
    w, c = time.perf_counter(), time.process_time()
    trainer = gt.GaussianTrainer(data.projections, data.geometry, gt.GaussianFitConfig())
    setup = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c, "n_gaussians": trainer.model.num_gaussians}
    print(f"set-up: {setup['wall_s']:.1f} s wall, {setup['cpu_s']:.1f} s CPU, {setup['n_gaussians']} Gaussians", flush=True)
    trainer.step = args.start_step
    with torch_threads(trainer.num_threads):
        for _ in range(args.warmup):
            trainer.train_step()
        timers.active = True
        w, c = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            trainer.train_step()
        total_wall, total_cpu = time.perf_counter() - w, time.process_time() - c
        timers.active = False
    n = args.steps
    rows = []
    for part in PARTS:
        rows.append((part, timers.wall[part] / n, timers.cpu[part] / n))
    rows.append(("other", total_wall / n - sum(r[1] for r in rows), total_cpu / n - sum(r[2] for r in rows)))
    rows.append(("full step", total_wall / n, total_cpu / n))
    load = os.getloadavg()[0]
    print(f"\n{n} steps from step {args.start_step}, {trainer.model.num_gaussians} Gaussians, load average {load:.1f}\n")
    print("| part | wall (ms/step) | CPU (ms/step) | share of CPU |")
    print("|---|---:|---:|---:|")
    for part, wl, cp in rows:
        print(f"| {part} | {1e3 * wl:.0f} | {1e3 * cp:.0f} | {100 * cp / (total_cpu / n):.0f} % |")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "steps": n, "load": load, "parts": {r[0]: {"wall_s": r[1], "cpu_s": r[2]} for r in rows}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
