"""Parity: ``ns-train recon-splat`` vs ``recon fit`` on the fox protocol (same pixels, views, steps, seed).

Both runs read one prepared capture so that they see identical pixels: every fox view undistorted
and downscaled by recon's loader (``recon.io.views.load_views``, area averaging) and saved as PNG,
with the scaled pinhole intrinsics and the original poses in ``transforms.json``. Views follow
``scripts/bench_fox.py`` (K training views by farthest-point sampling, 8 shared evaluation views
never trained on); nerfstudio gets them by file name (``recon-fewview --train-names/--eval-names``).

    python scripts/bench_plugin_parity.py --iterations 1000 --out runs/bench_plugin_parity

Then: ``recon fit`` scores the evaluation views (``metrics.json``); ``ns-eval`` scores the same views
from the nerfstudio checkpoint. Prints both PSNR/SSIM, the difference and both wall times; writes
``results.json`` and ``results.md`` in ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_fox import protocol_parser, protocol_views

from recon.io.formats import load_capture
from recon.io.images import save_image
from recon.io.views import load_views


def prepare_capture(data: Path, out: Path, downscale: float) -> Path:
    """``out/transforms.json`` + ``out/images/*.png``: recon's processed pixels, pinhole intrinsics."""
    if (out / "transforms.json").is_file():
        return out
    capture = load_capture(data)
    meta = json.loads((data / "transforms.json").read_text())
    images, _masks, cams = load_views(capture, list(range(len(capture))), downscale=downscale)
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, frame in enumerate(meta["frames"]):
        name = Path(frame["file_path"]).stem + ".png"
        save_image(out / "images" / name, images[i].numpy())
        frames.append({"file_path": f"images/{name}", "transform_matrix": frame["transform_matrix"]})
    intr = cams.intrinsics[0]  # all fox views share one camera
    new = {"fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy, "w": intr.width, "h": intr.height, "frames": frames}
    (out / "transforms.json").write_text(json.dumps(new, indent=1))
    return out


def run_recon(capture: Path, out: Path, train: list[int], evals: list[int], iterations: int, seed: int, device: str = "auto") -> dict:
    from recon.pipelines.capture import CaptureFitConfig

    if (out / "metrics.json").is_file() and json.loads((out / "run.json").read_text()).get("status") == "complete":
        metrics = json.loads((out / "metrics.json").read_text())
        if (out / "bench_wall.json").is_file():
            metrics["wall_s"] = json.loads((out / "bench_wall.json").read_text())["wall_s"]
        return metrics
    cfg = CaptureFitConfig(
        data=capture, out=out, preset="plain", train_views=tuple(train), eval_indices=tuple(evals), downscale=1.0,
        iterations=iterations, seed=seed, overwrite=True, device=device,
    )  # fmt: skip
    t0 = time.perf_counter()
    metrics = cfg.setup().run()
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "bench_wall.json").write_text(json.dumps({"wall_s": metrics["wall_s"]}))
    return metrics


def run_nerfstudio(capture: Path, out: Path, train_names: list[str], eval_names: list[str], iterations: int, seed: int, device: str = "auto") -> dict:
    bin_dir = Path(sys.executable).parent
    run_dir = out / "fox" / "recon-splat" / "run"
    result = out / "eval.json"
    if not result.is_file():
        cmd = [
            str(bin_dir / "ns-train"), "recon-splat", "--output-dir", str(out), "--experiment-name", "fox",
            "--timestamp", "run", "--max-num-iterations", str(iterations), "--machine.seed", str(seed),
            "--pipeline.datamanager.init-seed", str(seed),
            *([] if device == "auto" else ["--machine.device-type", device]),
            "--vis", "tensorboard", "--steps-per-eval-image", str(10 * iterations),
            "--steps-per-eval-all-images", str(10 * iterations), "--steps-per-save", str(iterations),
            "recon-fewview", "--data", str(capture), "--downscale-factor", "1",
            "--train-names", *train_names, "--eval-names", *eval_names,
        ]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        subprocess.run([str(bin_dir / "ns-eval"), "--load-config", str(run_dir / "config.yml"), "--output-path", str(result)], check=True)
        data = json.loads(result.read_text())
        data["wall_s"] = round(wall, 1)
        result.write_text(json.dumps(data, indent=2))
    return json.loads(result.read_text())


def main() -> int:
    ap = protocol_parser(__doc__.split("\n")[0], [8], ROOT / "runs/bench_plugin_parity")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="both runs on this device (auto: CUDA with gsplat when available, else our CPU rasteriser)")
    ap.set_defaults(iterations=1000)
    args = ap.parse_args()
    if len(args.ks) != 1:
        print("--ks: give one K", file=sys.stderr)
        return 2
    args.k = args.ks[0]
    if not (args.data / "transforms.json").is_file():
        print(f"missing {args.data / 'transforms.json'} (the shared data folder beside the project)", file=sys.stderr)
        return 2
    train_by_k, evals = protocol_views(args.data, [args.k], args.n_eval)
    train = train_by_k[args.k]
    capture = prepare_capture(args.data, args.out / "capture", args.downscale)
    names = [Path(f["file_path"]).name for f in json.loads((capture / "transforms.json").read_text())["frames"]]
    print(f"K={args.k} train {[names[i] for i in train]}\neval {[names[i] for i in evals]}", flush=True)
    rec = run_recon(capture, args.out / "recon_fit", train, evals, args.iterations, args.seed, args.device)
    ns = run_nerfstudio(capture, args.out / "ns", [names[i] for i in train], [names[i] for i in evals], args.iterations, args.seed, args.device)
    r_psnr, r_ssim = rec["eval"]["mean"]["psnr"], rec["eval"]["mean"]["ssim"]
    n_psnr, n_ssim = ns["results"]["psnr"], ns["results"]["ssim"]
    rows = {
        "protocol": {"k": args.k, "train": [names[i] for i in train], "eval": [names[i] for i in evals],
                     "iterations": args.iterations, "downscale": args.downscale, "seed": args.seed},
        "recon_fit": {"psnr": r_psnr, "ssim": r_ssim, "wall_s": rec.get("wall_s")},
        "ns_train": {"psnr": n_psnr, "ssim": n_ssim, "wall_s": ns.get("wall_s")},
        "psnr_difference_db": round(n_psnr - r_psnr, 3),
        "load_average": list(os.getloadavg()),
        "device": args.device,
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = [
        "| run | eval PSNR (dB) | eval SSIM | wall (s) |",
        "|---|---:|---:|---:|",
        f"| recon fit | {r_psnr:.2f} | {r_ssim:.4f} | {rec.get('wall_s', float('nan'))} |",
        f"| ns-train recon-splat + ns-eval | {n_psnr:.2f} | {n_ssim:.4f} | {ns.get('wall_s', float('nan'))} |",
        "",
        f"Difference (nerfstudio - recon): {n_psnr - r_psnr:+.2f} dB (target |difference| <= 0.5 dB).",
    ]
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if np.isfinite(n_psnr - r_psnr) else 1


if __name__ == "__main__":
    sys.exit(main())
