"""Benchmark: our cone-beam projector vs mbirjax's ConeBeamModel (forward and backprojection).

Problem: 64^3 volume, 50 views over 360 deg, 96 x 96 detector (DSD 1000 mm, DSO 600 mm,
2 mm pixels, 1.8 mm voxels). Times are medians over ``--repeats`` runs after one warm-up call
(which builds our ray tables and compiles mbirjax's JAX code); the warm-up times are shown too.

mbirjax is not a dependency of this project and this script installs nothing. Either
``pip install mbirjax`` into the current environment -- it currently pulls in numpy 2, which
breaks this project's numpy<2 environment -- or, better, into its own venv and pass its
interpreter::

    python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax
    python scripts/bench_ct.py --mbirjax-python /tmp/mbir-venv/bin/python

The mbirjax timing then runs in a subprocess with that interpreter (this file, ``--worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N_VOXEL = 64
N_VIEWS = 50
N_DET = 96
DSD_MM, DSO_MM = 1000.0, 600.0
PIXEL_MM = 2.0
VOXEL_MM = 1.8


def _median_times(fn, repeats: int) -> tuple[float, float, float]:
    """(first call, median wall seconds, median process CPU seconds) of ``fn``. CPU time sums all
    of the process's threads; on a machine shared with other jobs it shows the work done, while
    wall time also counts waiting for a core."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, statistics.median(times), statistics.median(cpu)


def _volume():
    import numpy as np

    z, y, x = np.meshgrid(*(np.linspace(-1, 1, N_VOXEL),) * 3, indexing="ij")
    vol = ((x**2 + y**2 + z**2) < 0.6).astype(np.float32) * 0.02
    vol += ((x - 0.2) ** 2 + (y + 0.1) ** 2 + z**2 < 0.05).astype(np.float32) * 0.02
    return vol  # [z, y, x]


def mbirjax_times(repeats: int) -> dict:
    """Run inside an interpreter that has mbirjax; returns a JSON-able dict of seconds."""
    import warnings

    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp
    import mbirjax
    import numpy as np

    angles = np.linspace(0, 2 * np.pi, N_VIEWS, endpoint=False)
    # mbirjax lengths are in ALU = detector pixels.
    model = mbirjax.ConeBeamModel((N_VIEWS, N_DET, N_DET), angles, source_detector_dist=DSD_MM / PIXEL_MM, source_iso_dist=DSO_MM / PIXEL_MM)
    model.set_params(recon_shape=(N_VOXEL, N_VOXEL, N_VOXEL), delta_voxel=VOXEL_MM / PIXEL_MM)
    recon = jnp.asarray(np.transpose(_volume(), (1, 2, 0)))  # mbirjax recon is (rows=y, cols=x, slices=z)
    state = {}

    def fwd():
        state["sino"] = model.forward_project(recon)
        jax.block_until_ready(state["sino"])

    def back():
        jax.block_until_ready(model.back_project(state["sino"]))

    fwd_first, fwd_med, fwd_cpu = _median_times(fwd, repeats)
    back_first, back_med, back_cpu = _median_times(back, repeats)
    return {
        "forward_first": fwd_first, "forward": fwd_med, "forward_cpu": fwd_cpu,
        "back_first": back_first, "back": back_med, "back_cpu": back_cpu, "devices": str(jax.devices()),
    }


def ours_times(repeats: int, threads: int | str | None, backend: str) -> dict:
    import numpy as np
    import torch

    from recon.geometry.ct import CTGeometry, circular_angles
    from recon.ct.project import Projector

    geo = CTGeometry(
        mode="cone", dsd_mm=DSD_MM, dso_mm=DSO_MM, n_detector=(N_DET, N_DET), detector_pixel_mm=(PIXEL_MM, PIXEL_MM),
        n_voxel=(N_VOXEL,) * 3, voxel_mm=(VOXEL_MM,) * 3, angles_rad=circular_angles(N_VIEWS),
    )
    proj = Projector(geo, num_threads=threads, backend=backend)
    vol = torch.from_numpy(_volume())
    state = {}

    def fwd():
        with torch.no_grad():
            state["sino"] = proj.forward(vol)

    def back():
        with torch.no_grad():
            proj.backproject(state["sino"])

    fwd_first, fwd_med, fwd_cpu = _median_times(fwd, repeats)
    back_first, back_med, back_cpu = _median_times(back, repeats)
    return {
        "forward_first": fwd_first, "forward": fwd_med, "forward_cpu": fwd_cpu,
        "back_first": back_first, "back": back_med, "back_cpu": back_cpu,
        "threads": threads, "backend": backend, "sum": float(np.asarray(state["sino"]).sum()),
    }


def _mbirjax_round(args) -> tuple[dict | None, str]:
    """One mbirjax measurement: (times or None, note explaining why not)."""
    if args.mbirjax_python:
        res = subprocess.run(
            [args.mbirjax_python, os.path.abspath(__file__), "--worker", "--repeats", str(args.repeats)],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            return None, f"mbirjax worker failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
        return json.loads(res.stdout.strip().splitlines()[-1]), ""
    try:
        return mbirjax_times(args.repeats), ""
    except ImportError:
        return None, (
            "mbirjax is not installed here. It needs numpy 2, so install it into its own venv: "
            "python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax, "
            "then pass --mbirjax-python /tmp/mbir-venv/bin/python"
        )


def _spread(values: list[float]) -> str:
    """Median, and [min-max] when there are several rounds."""
    med = statistics.median(values)
    return f"{med:.3f}" if len(values) == 1 else f"{med:.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation (median reported)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison, ours then mbirjax, this many times (median [min-max] over rounds)")
    parser.add_argument("--threads", default="auto", help="our projector's CPU threads: 'auto' (default), an int, or 'torch' (torch's setting)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "numba"), help="our projector's backend")
    parser.add_argument("--mbirjax-python", default=None, help="interpreter of a venv with mbirjax (run as a subprocess)")
    parser.add_argument("--skip-mbirjax", action="store_true", help="time only our projector")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")

    if args.worker:  # inside the mbirjax interpreter: no torch, no rich, no recon
        print(json.dumps(mbirjax_times(args.repeats)))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    console.print(
        f"[bold]CT projector benchmark[/]: {N_VOXEL}^3 volume, {N_VIEWS} views, {N_DET}x{N_DET} detector, "
        f"{os.cpu_count()} CPUs, {args.rounds} round(s) of {args.repeats} timed runs"
    )
    threads = None if args.threads == "torch" else (int(args.threads) if args.threads.isdigit() else args.threads)
    ours_runs, other_runs, loads, note = [], [], [], ""
    for _ in range(args.rounds):  # alternate, so both see similar machine load
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        ours_runs.append(ours_times(args.repeats, threads, args.backend))
        if not args.skip_mbirjax and not note:
            other, note = _mbirjax_round(args)
            if other:
                other_runs.append(other)

    keys = ("forward", "forward_cpu", "back", "back_cpu")
    def col(runs: list[dict], k: str) -> list[float]:
        return [r[k] for r in runs]

    def first(runs: list[dict], k: str) -> str:
        return f" ({statistics.median(col(runs, k + '_first')):.2f})"

    title = "seconds, median of the timed runs" + (" (first call in brackets)" if args.rounds == 1 else "; median \\[min-max] over rounds")
    table = Table(title=title)
    table.add_column("method")
    for name in ("forward", "forward CPU", "backproject", "backproject CPU"):
        table.add_column(name, justify="right")
    ours = ours_runs[0]
    for label, runs in ((f"recon.ct ({ours['backend']}, threads={ours['threads']})", ours_runs), ("mbirjax ConeBeamModel", other_runs)):
        if runs:
            cells = [_spread(col(runs, k)) for k in keys]
            if args.rounds == 1:
                cells[0] += first(runs, "forward")
                cells[2] += first(runs, "back")
            table.add_row(label, *cells)
    if other_runs:
        ratios = [
            f"{statistics.median(col(other_runs, k)) / statistics.median(col(ours_runs, k)):.1f}x" for k in keys
        ]
        table.add_row("speed-up (mbirjax / ours)", *ratios)
    console.print(table)
    console.print(
        f"load average (1 min) at the start of each round: {', '.join(f'{x:.1f}' for x in loads)}; "
        "CPU = process CPU seconds (all threads), wall-clock otherwise"
    )
    if note:
        console.print(f"[yellow]{note}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
