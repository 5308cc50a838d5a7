#!/usr/bin/env python
"""MinkUNet forward + backward on ~50k voxels: recon's torch backend vs MinkowskiEngine (issue #6, item 6).

The input is a hollow sphere shell of about ``--voxels`` voxels (one batch item, ``--in-channels``
random features). Each repeat builds the sparse tensor from its coordinates (hashing and kernel
maps included, as in real use), runs the network and backpropagates the mean squared output.
Both backends get the same weights (the state dict is the same for every backend), so the
output difference is printed too. Without MinkowskiEngine the torch timing is printed alone.

    python scripts/bench_sparse.py                      # 50k voxels, 5 repeats
    python scripts/bench_sparse.py --rounds 3 --repeats 3   # backends alternated, wall and CPU time
    python scripts/bench_sparse.py --voxels 20000 --planes 16 32 --layers 1 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from recon.sparse import SparseTensor
from recon.sparse.backends import available_backends
from recon.sparse.nets import MinkUNet


def sphere_shell(n_voxels: int, thickness: float = 2.0) -> torch.Tensor:  # [N, 1 + 3] int32
    """Integer coordinates (batch 0 first) of a spherical shell ``thickness`` voxels thick with
    about ``n_voxels`` voxels (radius from 4 pi r^2 thickness = n_voxels)."""
    r = math.sqrt(n_voxels / (4 * math.pi * thickness))
    ax = torch.arange(-math.ceil(r + thickness), math.ceil(r + thickness) + 1)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    dist = (grid.float() + 0.5).norm(dim=1)
    shell = grid[(dist >= r - thickness / 2) & (dist < r + thickness / 2)]
    return torch.cat([torch.zeros(len(shell), 1, dtype=shell.dtype), shell], 1).int()


def time_backend(net: MinkUNet, coords: torch.Tensor, feats: torch.Tensor, repeats: int, device: torch.device,
                 warmup: bool = True):
    """Forward + backward ``repeats`` times (after one warm-up call when ``warmup``): wall seconds
    ``[repeats]``, CPU seconds of this process ``[repeats]``, and the last output."""
    times, cpu = [], []
    out = None
    for i in range(repeats + int(warmup)):
        x_feats = feats.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        y = net(SparseTensor(x_feats, coords))
        y.F.square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= int(warmup):
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out = y.F.detach()
        net.zero_grad(set_to_none=True)
    return times, cpu, out


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=50_000)
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--out-channels", type=int, default=8)
    ap.add_argument("--planes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 1, 1])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per backend (per round)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the backends this many times (fairer on a machine with other load)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    coords = sphere_shell(args.voxels).to(device)
    feats = torch.randn(len(coords), args.in_channels, device=device)
    status = available_backends(device)
    print(f"{len(coords):,} voxels (sphere shell), {args.in_channels} -> {args.out_channels} channels, "
          f"MinkUNet planes {tuple(args.planes)} layers {tuple(args.layers)}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}")

    torch_net = MinkUNet(args.in_channels, args.out_channels, planes=args.planes, layers=args.layers,
                         backend="torch").to(device)
    results: dict = {"voxels": len(coords), "planes": args.planes, "layers": args.layers, "device": str(device),
                     "threads": torch.get_num_threads(), "repeats": args.repeats}
    me_net = None
    if status["minkowski"] is None:
        me_net = MinkUNet(args.in_channels, args.out_channels, planes=args.planes, layers=args.layers,
                          backend="minkowski").to(device)
        me_net.load_state_dict(torch_net.state_dict())
    wall: dict[str, list[float]] = {"torch": [], "minkowski": []}
    cpu: dict[str, list[float]] = {"torch": [], "minkowski": []}
    outs = {}
    for r in range(args.rounds):
        for name, net in (("torch", torch_net), ("minkowski", me_net)):
            if net is None:
                continue
            w, c, outs[name] = time_backend(net, coords, feats, args.repeats, device, warmup=r == 0)
            wall[name] += w
            cpu[name] += c
    t_torch, c_torch = statistics.median(wall["torch"]), statistics.median(cpu["torch"])
    results.update(rounds=args.rounds, torch_s=round(t_torch, 4), torch_cpu_s=round(c_torch, 4))
    print(f"torch backend:     wall {_spread(wall['torch'])} s, CPU {_spread(cpu['torch'])} s  forward+backward")
    if me_net is not None:
        t_me, c_me = statistics.median(wall["minkowski"]), statistics.median(cpu["minkowski"])
        results.update(minkowski_s=round(t_me, 4), minkowski_cpu_s=round(c_me, 4),
                       torch_over_minkowski=round(t_torch / t_me, 3), torch_over_minkowski_cpu=round(c_torch / c_me, 3),
                       max_abs_output_diff=float((outs["torch"] - outs["minkowski"]).abs().max()))
        print(f"MinkowskiEngine:   wall {_spread(wall['minkowski'])} s, CPU {_spread(cpu['minkowski'])} s  forward+backward")
        print(f"ratio torch / MinkowskiEngine = {t_torch / t_me:.2f}x wall, {c_torch / c_me:.2f}x CPU time  "
              f"(max |output difference| {results['max_abs_output_diff']:.2e})")
    else:
        results["minkowski"] = f"not installed: {status['minkowski']}"
        print(f"MinkowskiEngine is not installed ({status['minkowski']}); no ratio. "
              "Build it with `bash scripts/install_minkowski.sh` to compare.")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
