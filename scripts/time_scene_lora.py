#!/usr/bin/env python
"""Cost of per-scene LoRA fine-tuning (``--prior.lora-steps``) per step, on the tiny randomly
initialised Stable Diffusion image-to-image pipeline the tests build (tests/prior/tiny_diffusion.py):
function and time only. Without real weights nothing can be said about quality.

    OMP_NUM_THREADS=1 python scripts/time_scene_lora.py --size 68 120 --pairs 4 --steps 20

Prints the CPU and wall seconds per fine-tuning step and per repair call (one image) with and
without the adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.prior.repair import PretrainedImg2Img
from recon.prior.scene_lora import finetune_lora
from tests.prior.tiny_diffusion import save_tiny_pipeline


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=[68, 120], help="H W of the pairs (the tests' fox views)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    h, w = args.size
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_pipeline(Path(tmp) / "tiny")
        rep = PretrainedImg2Img(folder, strength=0.5, steps=4)
        g = torch.Generator().manual_seed(0)
        target = torch.rand(args.pairs, h, w, 3, generator=g)
        degraded = (0.5 * target + 0.25).contiguous()
        size = rep._size(h, w)
        _, rw0, rc0 = timed(lambda: rep(degraded[:1], seed=0))
        losses, wall, cpu = timed(lambda: finetune_lora(rep.pipe, degraded, target, size=size, steps=args.steps, rank=args.rank,
                                                        batch=args.batch, strength=0.5, lr=1e-3))  # fmt: skip
        _, rw1, rc1 = timed(lambda: rep(degraded[:1], seed=0))
        n_lora = sum(p.numel() for n, p in rep.pipe.unet.named_parameters() if "lora" in n)
        n_unet = sum(p.numel() for n, p in rep.pipe.unet.named_parameters() if "lora" not in n)
    print(json.dumps({
        "size": [h, w], "latent": [size[0] // 2, size[1] // 2], "pairs": args.pairs, "batch": args.batch, "rank": args.rank,
        "unet_params": n_unet, "lora_params": n_lora, "steps": args.steps,
        "finetune_s_per_step": {"wall": round(wall / args.steps, 4), "cpu": round(cpu / args.steps, 4)},
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "repair_one_image_s": {"without_lora": {"wall": round(rw0, 4), "cpu": round(rc0, 4)},
                               "with_lora": {"wall": round(rw1, 4), "cpu": round(rc1, 4)}},
        "threads": torch.get_num_threads(), "load": [round(x, 1) for x in os.getloadavg()],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
