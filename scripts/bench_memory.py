"""Estimated vs measured peak memory of ``recon ct fit`` and ``recon fit`` (the memory guard of
:mod:`recon.pipelines.memory`), at three sizes each.

Each measured run is the real command in a fresh subprocess; its peak RSS is the kernel's
``ru_maxrss`` of that child. The estimate is what ``setup()`` computes before any work.

    python scripts/bench_memory.py --work /tmp/mem            # CT tv 64^3, 128^3, 192^3 + fox at 1/16, 1/8, 1/4
    python scripts/bench_memory.py --work /tmp/mem --skip-capture

Prints a markdown table (docs/benchmarks.md holds the last one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOX = ROOT.parent / "shared" / "data" / "object" / "fox"


def peak_rss_of(argv: list[str]) -> int:
    """Peak RSS (bytes) of ``python -m recon.cli argv`` run in a fresh wrapper process."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "viewer")])}
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "recon.cli", *argv],
                         capture_output=True, text=True, cwd=ROOT, env=env, check=False)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"recon {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def ct_rows(work: Path, sizes: list[int], views: int, iterations: int, method: str) -> list[dict]:
    import numpy as np

    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct import CTFitConfig

    rows = []
    for n in sizes:
        sim = work / f"sim{n}"
        if not (sim / "meta_data.json").is_file():
            np.save(work / f"vol{n}.npy", (shepp_logan_3d((n, n, n), supersample=1) * 0.02).astype(np.float32))
            subprocess.run([sys.executable, "-m", "recon.cli", "ct", "simulate", str(work / f"vol{n}.npy"), "--views", str(views), "--n-test", "2",
                            "--detector", str(n), "--units", "mu", "--voxel-mm", "1", "1", "1", "--out", str(sim)], check=True, cwd=ROOT,
                           capture_output=True)  # fmt: skip
        args = ["ct", "fit", str(sim), "--method", method, "--iterations", str(iterations), "--out", str(work / f"fit{n}"), "--overwrite"]
        est = CTFitConfig(data=sim, out=work / f"fit{n}", method=method, iterations=iterations, overwrite=True).setup().memory
        rows.append({"job": f"ct fit --method {method}, {n}^3, {views} views of {n}^2", "estimate": est.total, "parts": est.describe(),
                     "peak": peak_rss_of(args), "command": "recon " + " ".join(args)})  # fmt: skip
    return rows


def capture_rows(work: Path, downscales: list[float], points: list[int], iterations: int) -> list[dict]:
    from recon.pipelines.capture import CaptureFitConfig

    rows = []
    for d, k in zip(downscales, points):
        out = work / f"cap{d:g}"
        flags = ["--downscale", f"{d:g}", "--iterations", str(iterations), "--init", "random", "--init-points", str(k),
                 "--train-views", "8", "--eval-views", "4", "--overwrite"]  # fmt: skip
        args = ["fit", str(FOX), "--out", str(out), *flags]
        cfg = CaptureFitConfig(data=FOX, out=out, downscale=d, iterations=iterations, init="random", init_points=k, train_views=(8,), eval_views=4, overwrite=True)
        est = cfg.setup().memory
        rows.append({"job": f"fit fox 1/{d:g}, 12 views, {k:,} Gaussians", "estimate": est.total, "parts": est.describe(),
                     "peak": peak_rss_of(args), "command": "recon " + " ".join(args)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--method", default="tv")
    ap.add_argument("--ct-iterations", type=int, default=10)
    ap.add_argument("--downscales", type=float, nargs="+", default=[16, 8, 4])
    ap.add_argument("--points", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    ap.add_argument("--capture-iterations", type=int, default=20)
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--skip-capture", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_ct:
        rows += ct_rows(args.work, args.sizes, args.views, args.ct_iterations, args.method)
    if not args.skip_capture:
        rows += capture_rows(args.work, args.downscales, args.points, args.capture_iterations)
    (args.work / "memory.json").write_text(json.dumps(rows, indent=1))
    print("| job | estimate (MiB) | measured peak RSS (MiB) | error |")
    print("|---|---:|---:|---:|")
    for r in rows:
        err = (r["estimate"] - r["peak"]) / r["peak"]
        print(f"| {r['job']} | {r['estimate'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | {err:+.0%} |")
    for r in rows:
        print(f"- `{r['command']}`: {r['parts']}")


if __name__ == "__main__":
    main()
