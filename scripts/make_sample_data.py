"""Derive the small samples in ``data/`` from the full-size real data in ``../shared/data``.

    python scripts/make_sample_data.py [--shared ../shared/data] [--out data]

Writes:

- ``data/fox/``: 16 of the 42 fox photos (instant-ngp), area-downscaled 4x to 270x480 JPEG, with
  a ``transforms.json`` whose intrinsics are scaled to match (distortion coefficients are
  normalised and unchanged). The 16 are the 8 training views that farthest-point sampling picks
  at K = 8 on the full capture and the 8 evaluation views of the benchmarks
  (``docs/benchmarks.md``), so ``recon fit data/fox --train-views 8 --eval-views 8`` trains on
  and scores the same views as the benchmarks.
- ``data/ct/chest.npz``: the LIDC-IDRI-0001 chest CT (shared ``lidc_idri_0001_ds2``),
  area-resampled to 96^3 voxels over the same physical extent, Hounsfield units as int16, with
  ``spacing_mm_zyx``.

Both keep their source's licence; ``data/README.md`` gives provenance and licences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FOX_VIEWS = [  # K = 8 training views (farthest-point on the 42 centres), then the 8 evaluation views
    "0008.jpg", "0019.jpg", "0029.jpg", "0044.jpg", "0054.jpg", "0072.jpg", "0094.jpg", "0108.jpg",
    "0002.jpg", "0021.jpg", "0031.jpg", "0042.jpg", "0049.jpg", "0073.jpg", "0097.jpg", "0110.jpg",
]  # fmt: skip
FOX_DOWNSCALE = 4
CT_SIZE = 96


def make_fox(src: Path, dst: Path) -> None:
    meta = json.loads((src / "transforms.json").read_text())
    frames = {Path(f["file_path"]).name: f for f in meta["frames"]}
    (dst / "images").mkdir(parents=True, exist_ok=True)
    w, h = int(meta["w"]) // FOX_DOWNSCALE, int(meta["h"]) // FOX_DOWNSCALE
    out_frames = []
    for name in FOX_VIEWS:
        im = Image.open(src / frames[name]["file_path"]).convert("RGB")
        im.resize((w, h), Image.Resampling.BOX).save(dst / "images" / name, quality=92, optimize=True)
        out_frames.append({"file_path": f"images/{name}", "transform_matrix": frames[name]["transform_matrix"]})
    s = 1.0 / FOX_DOWNSCALE
    out = {k: v for k, v in meta.items() if k != "frames"}
    # pixel centres at +0.5: c' = (c + 0.5) * s - 0.5
    out.update(fl_x=meta["fl_x"] * s, fl_y=meta["fl_y"] * s, cx=(meta["cx"] + 0.5) * s - 0.5, cy=(meta["cy"] + 0.5) * s - 0.5, w=w, h=h)
    out["frames"] = out_frames
    (dst / "transforms.json").write_text(json.dumps(out, indent=1) + "\n")


def make_ct(src: Path, dst: Path) -> None:
    with np.load(src) as z:
        hu, spacing = z["volume"].astype(np.float32), [float(v) for v in z["spacing_mm_zyx"]]
    vol = torch.from_numpy(hu)[None, None]
    small = torch.nn.functional.interpolate(vol, size=(CT_SIZE,) * 3, mode="area")[0, 0].numpy()
    extent = [n * d for n, d in zip(hu.shape, spacing)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        dst,
        volume=np.clip(np.rint(small), -1024, 3071).astype(np.int16),
        spacing_mm_zyx=np.array([e / CT_SIZE for e in extent], np.float32),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "data")
    args = ap.parse_args()
    make_fox(args.shared / "object" / "fox", args.out / "fox")
    make_ct(args.shared / "ct" / "lidc_idri_0001_ds2.npz", args.out / "ct" / "chest.npz")
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(args.out)}  {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
