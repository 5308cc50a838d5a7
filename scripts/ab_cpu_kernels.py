"""A/B of the CPU capture kernels of two trees in ONE process, alternated call by call.

On a shared, loaded machine two profile runs minutes apart see different loads; here the
"before" tree's ``recon`` package (a checkout given with ``--before``) is imported under another
name (``recon_before``, a copy in a temporary folder, compiled into its own numba cache) next to
this tree's, and every part runs before/after in turn on the same inputs: projection + SH +
activations forward and backward (``fused_cpu.project_and_shade_raw``), binning
(``raster_cpu.bin_gaussians``), raster forward and backward (``raster_cpu.rasterize_to_pixels``)
on ``scripts/profile_fit.py``'s synthetic scene (one 480x270 view, SH degree 3). Reported:
process CPU ms (all threads) per call, min and median over the repeats (the first dropped).

    PYTHONPATH=. python scripts/ab_cpu_kernels.py --before ../main --sizes 50000 120000 250000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _parts(F, R, P, cam, W, H, bin_in, bg):
    """{part: (setup or None, timed call)} for one tree's modules F (fused_cpu), R (raster_cpu)."""
    import torch

    keys = ("means", "quats", "scales", "opacities", "sh0", "shN")
    leaves = {k: P[k].clone().requires_grad_() for k in keys}
    vm, K = cam
    m2d, radii, depths, conics, opac, feats, tw, th = bin_in
    state = {}

    def proj():
        return F.project_and_shade_raw(*(leaves[k] for k in keys), vm, K, W, H, 3)

    def proj_keep():
        state["p"] = [o for o in proj() if o.requires_grad]

    def proj_bwd():
        outs = state.pop("p")
        torch.autograd.backward(outs, [torch.full_like(o, 0.01) for o in outs])
        for v in leaves.values():
            v.grad = None

    _, _, fids, offs = R.bin_gaussians(m2d, radii, depths, 16, tw, th)
    ins = [x.detach().clone().requires_grad_() for x in (m2d, conics, feats, opac)]
    out = R.rasterize_to_pixels(*ins, W, H, 16, offs, fids, bg)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=g) for o in out]

    def raster():
        return R.rasterize_to_pixels(*ins, W, H, 16, offs, fids, bg)

    def raster_keep():
        state["r"] = raster()

    def raster_bwd():
        torch.autograd.backward(state.pop("r"), grads)
        for x in ins:
            x.grad = None

    return {
        "projection fwd": (None, proj),
        "projection bwd": (proj_keep, proj_bwd),
        "binning": (None, lambda: R.bin_gaussians(m2d, radii, depths, 16, tw, th)),
        "raster fwd": (None, raster),
        "raster bwd": (raster_keep, raster_bwd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="checkout of the tree to compare against (holds recon/)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 120_000, 250_000])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    src = Path(args.before) / "recon"
    if not (src / "splat" / "raster_cpu.py").is_file():
        ap.error(f"--before: {args.before} has no recon/splat/raster_cpu.py")
    tmp = Path(tempfile.mkdtemp(prefix="ab_cpu_kernels_"))
    shutil.copytree(src, tmp / "recon_before", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(tmp))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import profile_fit as pf
    from recon_before.splat import fused_cpu as FA
    from recon_before.splat import raster_cpu as RA

    from recon.splat import fused_cpu as FB
    from recon.splat import raster_cpu as RB
    from recon.splat.tiles import tile_grid

    scene = pf.synthetic_scene()
    for n in args.sizes:
        prof = pf.Profiler(scene, n, "fused", 3, 1, 1.0)
        P = {k: v.detach() for k, v in prof.model.params.items()}
        vm, K, _ = prof._cam()
        W, H = prof.W, prof.H
        radii, m2d, depths, conics, opac, feats = FB.project_and_shade_raw(
            *(P[k] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")), vm, K, W, H, 3
        )
        bin_in = (m2d, radii, depths, conics, opac, feats, *tile_grid(W, H, 16))
        trees = {
            "before": _parts(FA, RA, P, (vm, K), W, H, bin_in, prof.bg),
            "after": _parts(FB, RB, P, (vm, K), W, H, bin_in, prof.bg),
        }
        cpu = {part: {t: [] for t in trees} for part in trees["before"]}
        for r in range(args.repeats):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for part in cpu:
                for t in order:
                    setup, fn = trees[t][part]
                    if setup:
                        setup()
                    c0 = time.process_time()
                    fn()
                    cpu[part][t].append(time.process_time() - c0)
        print(f"N = {n:,}, {W}x{H}: CPU ms per call (all threads), min / median of {args.repeats - 1}; "
              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
        for part, v in cpu.items():
            a, b = v["before"][1:], v["after"][1:]
            print(f"  {part:15s} before {min(a) * 1e3:7.1f} / {statistics.median(a) * 1e3:7.1f}   "
                  f"after {min(b) * 1e3:7.1f} / {statistics.median(b) * 1e3:7.1f}   before / after (min) {min(a) / min(b):.2f}")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
