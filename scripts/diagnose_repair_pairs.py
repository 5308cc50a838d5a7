#!/usr/bin/env python
"""Does the per-scene repair model (``recon fit --prior repair``) learn its own training pairs?

Reads the pairs a run saved (``RUN/prior/pairs/``: ``degraded_NNN.png``, ``target_NNN.png``,
``pairs.json`` with their kinds), trains :func:`recon.prior.scene_repair.train_repair_model` on
all of them or on one kind, applies it to every whole pair image (noise seeded per image, as a
refresh does) and prints the mean L1 to the photo per kind (leave-out, under-fitted, perturbed)
before and after, with the crop loss of the first and last 50 steps. A model that learns a repair
lowers the full-image L1 of the kind it was trained on.

    python scripts/diagnose_repair_pairs.py runs/bench_prior_seed1/K4/repair \\
        --setting all:800:1e-3 --setting under-fitted:800:1e-3 --setting all:2000:3e-4

``--setting KIND:STEPS:LR[:noinit]`` (repeatable): the pairs to train on (``all`` or a kind), Adam
steps, learning rate; ``noinit`` keeps the UNet's random output layer instead of the identity start.
Writes ``diagnosis.json`` into ``--out`` (default: the run's ``prior/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_pairs(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(degraded [N, H, W, 3], target [N, H, W, 3], kinds)`` in [0, 1] from a pairs folder."""
    meta_path = folder / "pairs.json"
    if not meta_path.is_file():
        raise SystemExit(f"{meta_path}: missing (run recon fit --prior repair first; it saves its pairs there)")
    kinds = json.loads(meta_path.read_text())["kinds"]

    def read(path: Path) -> torch.Tensor:
        if not path.is_file():
            raise SystemExit(f"{path}: missing ({len(kinds)} pairs listed in pairs.json)")
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)

    degraded = torch.stack([read(folder / f"degraded_{i:03d}.png") for i in range(len(kinds))])
    target = torch.stack([read(folder / f"target_{i:03d}.png") for i in range(len(kinds))])
    return degraded, target, kinds


def l1_per_kind(images: torch.Tensor, target: torch.Tensor, kinds: list[str]) -> dict[str, float]:
    """Mean L1 to the target per pair kind (the first word of each kind)."""
    l1 = (images - target).abs().mean(dim=(1, 2, 3))
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        groups.setdefault(k.split()[0], []).append(i)
    return {g: round(float(l1[idx].mean()), 4) for g, idx in groups.items()}


def apply_model(model, images: torch.Tensor) -> torch.Tensor:  # [N, H, W, 3] -> [N, H, W, 3]
    """The model on each whole image (cropped to its size multiple; the rest kept), seeded noise."""
    out = images.clone()
    h, w = images.shape[1:3]
    H, W = h - h % model.multiple, w - w % model.multiple
    with torch.no_grad():
        for i in range(images.shape[0]):
            x = images[i : i + 1, :H, :W].permute(0, 3, 1, 2)
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
            out[i, :H, :W] = model(x, noise).permute(0, 2, 3, 1)[0].clamp(0, 1)
    return out


def parse_setting(text: str) -> tuple[str, int, float, bool]:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "noinit"):
        raise SystemExit(f"--setting {text!r}: expected KIND:STEPS:LR[:noinit]")
    return parts[0], int(parts[1]), float(parts[2]), len(parts) == 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a recon fit --prior repair run folder")
    ap.add_argument("--setting", action="append", default=None, help="KIND:STEPS:LR[:noinit] (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from recon.prior.scene_repair import SceneRepairConfig, train_repair_model

    degraded, target, kinds = load_pairs(args.run / "prior" / "pairs")
    settings = [parse_setting(s) for s in (args.setting or ["all:800:1e-3"])]
    result = {"run": str(args.run), "n_pairs": len(kinds), "size": list(degraded.shape[1:3]),
              "before": l1_per_kind(degraded, target, kinds), "after": []}  # fmt: skip
    print(f"{len(kinds)} pairs {tuple(degraded.shape[1:3])}; L1 per kind before: {result['before']}", flush=True)
    for kind, steps, lr, noinit in settings:
        idx = [i for i, k in enumerate(kinds) if kind == "all" or k.split()[0] == kind]
        if not idx:
            print(f"--setting {kind}: no pairs of that kind ({sorted({k.split()[0] for k in kinds})})", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        cfg = SceneRepairConfig(train_steps=steps, lr=lr, zero_init=not noinit)
        model, losses = train_repair_model(degraded[idx], target[idx], cfg, seed=args.seed)
        row = {"trained_on": kind, "steps": steps, "lr": lr, "zero_init": not noinit, "seconds": round(time.perf_counter() - t0, 1),
               "crop_loss_first_50": round(float(np.mean(losses[:50])), 4), "crop_loss_last_50": round(float(np.mean(losses[-50:])), 4),
               "l1": l1_per_kind(apply_model(model, degraded), target, kinds)}  # fmt: skip
        result["after"].append(row)
        print(f"trained on {kind}, {steps} steps, lr {lr}{', random output layer' if noinit else ''} ({row['seconds']:.0f} s): "
              f"crop loss {row['crop_loss_first_50']:.4f} -> {row['crop_loss_last_50']:.4f}; L1 per kind after: {row['l1']}", flush=True)  # fmt: skip
    out = args.out or args.run / "prior"
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'diagnosis.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
