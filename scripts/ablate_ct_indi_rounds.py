#!/usr/bin/env python
"""Repeat the CT InDI refinement: is a second or third round of (InDI steps + TV data
consistency) worth it, at 10 / 25 / 50 views? Validation abdomen only (the held-out chest is never
used to choose settings), the scans and cache of ``scripts/train_ct_indi.py --tune-only``.

    python scripts/ablate_ct_indi_rounds.py --out runs/ablate_ct_indi_rounds

Rows: TV; R rounds of (1 InDI step + 10 TV steps) for R = 1 (the default), 2, 3; 2 rounds of
(2 InDI steps + 10 TV steps). Each round starts the network at t = 1 from the previous round's
volume. Prints 3D PSNR and the gain over TV per view count; writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

ROWS = {"rounds1": (1, 1), "rounds2": (2, 1), "rounds3": (3, 1), "2steps_rounds2": (2, 2)}
"""name -> (rounds, InDI steps per round); every round ends with 10 TV steps."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablate_ct_indi_rounds")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "recon_ct_indi_cache")
    ap.add_argument("--dc-steps", type=int, default=10)
    args = ap.parse_args()
    import train_ct_indi as tci
    from rich.console import Console

    from recon.ct.metrics import psnr_3d
    from recon.prior.ct_indi import data_consistency, indi_refine, load_indi

    console = Console()
    tci.build_cache(tci.tune_scans(), args.cache, 1, console, keep_projections=True)
    model = load_indi()
    results: dict = {"volume": tci.VALIDATION, "dc_steps": args.dc_steps, "views": {}}
    for scan in tci.tune_scans():
        ref, voxel = tci.reference_mu(scan.name, args.cache)
        tv = np.load(args.cache / f"{scan.key}.npy")
        proj = torch.from_numpy(np.load(args.cache / f"{scan.key}.proj.npy"))
        geo = tci.scan_geometry(ref.shape, voxel, scan.views, scan.start_deg)
        row = {"tv": round(psnr_3d(tv, ref), 3)}
        for name, (rounds, steps) in ROWS.items():
            x = tv
            for _ in range(rounds):
                x = data_consistency(indi_refine(x, model, steps=steps), proj, geo, args.dc_steps)
            row[name] = round(psnr_3d(x, ref), 3)
        results["views"][str(scan.views)] = row
        console.print(f"{scan.views} views: TV {row['tv']:.2f} dB; "
                      + "  ".join(f"{k} {v:.2f} ({v - row['tv']:+.2f})" for k, v in row.items() if k != "tv"))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
