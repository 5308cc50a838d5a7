"""gsplat's CUDA rasteriser against our CPU rasteriser on the same scenes (issue 17, item 6).

For a machine with a CUDA GPU and gsplat 1.4.0 (``scripts/device_check_plugins.sh`` runs it there).
Each scene of ``scripts/bench_raster.py`` (one camera, N random Gaussians, loss = sum(render *
fixed weights)) is rendered forward + backward by ``rasterization(backend="gsplat")`` on the GPU
and by ``rasterization(backend="cpu")`` on the CPU; medians of ``--repeats`` timed runs after one
warm-up (GPU timings synchronised). Printed and written to ``--json``: times, the CPU / CUDA time
ratio, and the largest image and gradient differences between the two paths.

    python scripts/bench_raster_gsplat.py [--scenes 50000x256 50000x480x270] [--repeats 5] [--json OUT.json]
    python scripts/bench_raster_gsplat.py --cpu-only --scenes 2000x64   # no GPU: our half only (a smoke run)

A scene is ``NxS`` (S×S image) or ``NxWxH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_raster import make_scene  # noqa: E402

from recon.splat.rasterize import rasterization  # noqa: E402

console = Console()


def parse_scene(text: str) -> tuple[int, int, int]:
    """``"50000x256"`` -> (50000, 256, 256); ``"50000x480x270"`` -> (50000, 480, 270)."""
    parts = text.lower().split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SystemExit(f"--scenes: {text!r} is not NxS or NxWxH") from None
    if len(nums) == 2:
        return nums[0], nums[1], nums[1]
    if len(nums) == 3:
        return nums[0], nums[1], nums[2]
    raise SystemExit(f"--scenes: {text!r} is not NxS or NxWxH")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_path(params, viewmats, Ks, weights, width, height, device: torch.device, backend: str, repeats: int):
    """Forward + backward through ``rasterization`` on ``device``; returns median fwd / bwd seconds,
    the image (H, W, 3) and the gradients of every parameter, all on the CPU."""
    moved = [p.to(device) for p in params]
    vm, K, w = viewmats.to(device), Ks.to(device), weights.to(device)
    fwd, bwd = [], []
    for i in range(repeats + 1):  # the first run warms up (kernel load / JIT) and is not timed
        leaves = [p.detach().clone().requires_grad_() for p in moved]
        _sync(device)
        t0 = time.perf_counter()
        out, _alphas, _meta = rasterization(*leaves, vm, K, width, height, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        (out * w).sum().backward()
        _sync(device)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    grads = [leaf.grad.detach().cpu() for leaf in leaves]
    return statistics.median(fwd), statistics.median(bwd), out.detach()[0].cpu(), grads


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["50000x256", "50000x480x270", "120000x480x270"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-only", action="store_true", help="time our CPU path alone (no GPU needed)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.cpu_only and not torch.cuda.is_available():
        raise SystemExit("bench_raster_gsplat: torch sees no CUDA device (use --cpu-only for our half alone)")
    cuda = torch.device("cuda")
    cpu = torch.device("cpu")
    gpu_name = torch.cuda.get_device_name(0) if not args.cpu_only else None
    console.print(f"torch {torch.__version__}, GPU {gpu_name}, CPU threads {torch.get_num_threads()}")
    rows = []
    for text in args.scenes:
        n, width, height = parse_scene(text)
        params, viewmats, Ks, weights = make_scene(n, width, height)
        c_fwd, c_bwd, c_img, c_grads = time_path(params, viewmats, Ks, weights, width, height, cpu, "cpu", args.repeats)
        row = {"gaussians": n, "width": width, "height": height, "cpu_fwd_s": c_fwd, "cpu_bwd_s": c_bwd}
        if not args.cpu_only:
            g_fwd, g_bwd, g_img, g_grads = time_path(params, viewmats, Ks, weights, width, height, cuda, "gsplat", args.repeats)
            row.update(
                gsplat_fwd_s=g_fwd, gsplat_bwd_s=g_bwd,
                cpu_over_gsplat=(c_fwd + c_bwd) / (g_fwd + g_bwd),
                max_abs_dimg=float((c_img - g_img).abs().max()),
                rel_dgrad_means=rel_diff(c_grads[0], g_grads[0]),
                rel_dgrad_opacities=rel_diff(c_grads[3], g_grads[3]),
            )  # fmt: skip
        rows.append(row)
    table = Table(title="rasterization fwd + bwd, median seconds: gsplat (CUDA) vs recon (CPU)")
    for col in ("N", "image", "gsplat fwd", "gsplat bwd", "cpu fwd", "cpu bwd", "cpu / gsplat", "max|Δimg|", "Δ∂means rel"):
        table.add_column(col, justify="right")
    for r in rows:
        g = (lambda k, f="{:.4f}": f.format(r[k]) if k in r else "—")
        table.add_row(
            f"{r['gaussians']:,}", f"{r['width']}x{r['height']}", g("gsplat_fwd_s"), g("gsplat_bwd_s"),
            f"{r['cpu_fwd_s']:.4f}", f"{r['cpu_bwd_s']:.4f}", g("cpu_over_gsplat", "{:.1f}x"),
            g("max_abs_dimg", "{:.1e}"), g("rel_dgrad_means", "{:.1e}"),
        )  # fmt: skip
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"torch": torch.__version__, "gpu": gpu_name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
