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


def _median_times(fn, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


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

    fwd_first, fwd_med = _median_times(fwd, repeats)
    back_first, back_med = _median_times(back, repeats)
    return {"forward_first": fwd_first, "forward": fwd_med, "back_first": back_first, "back": back_med, "devices": str(jax.devices())}


def ours_times(repeats: int, threads: int | str | None, backend: str) -> dict:
    import numpy as np
    import torch

    from recon.ct.geometry import CTGeometry, circular_angles
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

    fwd_first, fwd_med = _median_times(fwd, repeats)
    back_first, back_med = _median_times(back, repeats)
    return {
        "forward_first": fwd_first, "forward": fwd_med, "back_first": back_first, "back": back_med,
        "threads": threads, "backend": backend, "sum": float(np.asarray(state["sino"]).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation (median reported)")
    parser.add_argument("--threads", default="auto", help="our projector's CPU threads: 'auto' (default), an int, or 'torch' (torch's setting)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "numba"), help="our projector's backend")
    parser.add_argument("--mbirjax-python", default=None, help="interpreter of a venv with mbirjax (run as a subprocess)")
    parser.add_argument("--skip-mbirjax", action="store_true", help="time only our projector")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # inside the mbirjax interpreter: no torch, no rich, no recon
        print(json.dumps(mbirjax_times(args.repeats)))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(
        f"[bold]CT projector benchmark[/]: {N_VOXEL}^3 volume, {N_VIEWS} views, {N_DET}x{N_DET} detector, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
    )
    threads = None if args.threads == "torch" else (int(args.threads) if args.threads.isdigit() else args.threads)
    ours = ours_times(args.repeats, threads, args.backend)
    other, note = None, ""
    if not args.skip_mbirjax:
        if args.mbirjax_python:
            res = subprocess.run(
                [args.mbirjax_python, os.path.abspath(__file__), "--worker", "--repeats", str(args.repeats)],
                capture_output=True, text=True,
            )
            if res.returncode != 0:
                note = f"mbirjax worker failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
            else:
                other = json.loads(res.stdout.strip().splitlines()[-1])
        else:
            try:
                other = mbirjax_times(args.repeats)
            except ImportError:
                note = (
                    "mbirjax is not installed here. It needs numpy 2, so install it into its own venv: "
                    "python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax, "
                    "then pass --mbirjax-python /tmp/mbir-venv/bin/python"
                )

    table = Table(title="median seconds (first call in brackets)")
    table.add_column("method")
    table.add_column("forward", justify="right")
    table.add_column("backprojection", justify="right")
    table.add_row(f"recon.ct Projector ({ours['backend']}, threads={ours['threads']})", f"{ours['forward']:.3f} ({ours['forward_first']:.2f})", f"{ours['back']:.3f} ({ours['back_first']:.2f})")
    if other:
        table.add_row("mbirjax ConeBeamModel", f"{other['forward']:.3f} ({other['forward_first']:.2f})", f"{other['back']:.3f} ({other['back_first']:.2f})")
        table.add_row("speed-up (mbirjax / ours)", f"{other['forward'] / ours['forward']:.1f}x", f"{other['back'] / ours['back']:.1f}x")
    console.print(table)
    if note:
        console.print(f"[yellow]{note}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
