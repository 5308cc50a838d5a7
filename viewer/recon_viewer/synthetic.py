"""Small synthetic run folders in the ``recon-run/1`` layout, for the viewer's tests, its
benchmark (``scripts/bench_viewer.py``) and for trying the viewer without training anything.

Written with recon's own writers (``recon.io.ply.write_splat_ply``, ``recon.io.nifti.write_nifti``,
``recon.geometry.ct.CTGeometry.to_dict``), so these imports pull in torch; the server never
imports this module.

- :func:`write_capture_run`: Gaussians forming a grey ball with a red blob on +x, a green one
  on +y and a blue one on +z (so a wrong axis flip is visible at a glance), cameras on a ring
  around +z looking at the origin, and "photos" / "renders" made by splatting the Gaussians
  with numpy in the OpenCV camera model, with their PSNR.
- :func:`write_ct_run`: a chest-like HU phantom (body, two lungs, spine, a lesion) stored as
  attenuation, a noisy "reconstruction" of it, the reference, a cone-beam ``geometry.json``.

``python -m recon_viewer.synthetic OUT`` writes ``OUT/capture`` and ``OUT/ct``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["look_at_opencv", "splat_image", "write_capture_run", "write_ct_run"]

SH_C0 = 0.28209479177387814
MARKERS = {"red": ((1.0, 0.0, 0.0), (0.9, 0.1, 0.1)), "green": ((0.0, 1.0, 0.0), (0.1, 0.8, 0.1)), "blue": ((0.0, 0.0, 1.0), (0.15, 0.25, 0.95))}
"""Blob name -> (world centre, colour)."""


# ---------------------------------------------------------------------- shared writers
def _write_json(path: Path, obj) -> None:
    from recon.io.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _write_png(path: Path, rgb: np.ndarray, fmt: str = "PNG") -> None:
    from recon.io.atomic import atomic_write

    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    atomic_write(path, lambda f: img.save(f, format=fmt, quality=92) if fmt == "JPEG" else img.save(f, format=fmt))


def _run_json(kind: str, status: str, step: int, total: int, **extra) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    run = {"format": "recon-run/1", "kind": kind, "status": status, "created": now, "updated": now, "step": step, "total_steps": total}
    if status == "failed":
        run["error"] = "RuntimeError: synthetic failure for testing"
    run.update(extra)
    return run


def _write_log(out: Path, steps: int, extra: dict) -> None:
    lines = []
    for s in range(0, steps + 1, max(1, steps // 50)):
        row = {"step": s, "time_s": round(0.05 * s, 3), "loss": round(0.3 * math.exp(-s / (steps / 4)) + 0.02, 6)}
        row.update({k: v(s) for k, v in extra.items()})
        lines.append(json.dumps(row))
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- capture
def look_at_opencv(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """[4, 4] camera-to-world in the OpenCV convention (x right, y down, z forward)."""
    pos, tgt, upv = (np.asarray(v, dtype=np.float64) for v in (position, target, up))
    z = tgt - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, upv)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, pos
    return c2w


def _gaussians(n: int, sh_degree: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n_marker = n // 8
    n_ball = n - 3 * n_marker
    centres, colours = [], []
    d = rng.normal(size=(n_ball, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centres.append(d * 0.55 * rng.uniform(0.85, 1.0, size=(n_ball, 1)))
    shade = 0.55 + 0.25 * d[:, 2:3]  # lighter on top: shows which way is up
    colours.append(np.repeat(shade, 3, axis=1))
    for centre, colour in MARKERS.values():
        centres.append(np.asarray(centre) * 0.95 + rng.normal(scale=0.12, size=(n_marker, 3)))
        colours.append(np.tile(colour, (n_marker, 1)))
    means = np.concatenate(centres).astype(np.float32)
    rgb = np.concatenate(colours).astype(np.float32) + rng.normal(scale=0.02, size=(n, 3)).astype(np.float32)
    k = (sh_degree + 1) ** 2
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scale = 0.045 * (3000.0 / max(n, 1)) ** (1 / 3)
    return {
        "means": means,
        "quats": quats,
        "scales": np.log(rng.uniform(0.7, 1.3, size=(n, 3)) * scale).astype(np.float32),
        "opacities": np.full(n, 2.5, np.float32),
        "sh0": ((np.clip(rgb, 0, 1) - 0.5) / SH_C0).reshape(n, 1, 3).astype(np.float32),
        "shN": (rng.normal(scale=0.01, size=(n, k - 1, 3))).astype(np.float32),
    }


def splat_image(g: dict[str, np.ndarray], c2w: np.ndarray, fx: float, size: int, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """[size, size, 3] float image of the Gaussians as isotropic discs (alpha-composited front
    to back) in a pinhole OpenCV camera with ``fx = fy`` and the principal point at the centre."""
    w2c = np.linalg.inv(c2w)
    cam = g["means"].astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    ok = z > 0.05
    u = fx * cam[:, 0] / np.where(ok, z, 1) + size / 2
    v = fx * cam[:, 1] / np.where(ok, z, 1) + size / 2
    sigma = np.maximum(0.6, fx * np.exp(g["scales"]).mean(axis=1) / np.where(ok, z, 1))
    rgb = np.clip(0.5 + SH_C0 * g["sh0"][:, 0, :], 0, 1)
    alpha0 = 1 / (1 + np.exp(-g["opacities"]))
    img = np.zeros((size, size, 3))
    trans = np.ones((size, size))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for i in np.argsort(z):
        if not ok[i]:
            continue
        r = int(3 * sigma[i]) + 1
        x0, x1 = max(0, int(u[i]) - r), min(size, int(u[i]) + r + 1)
        y0, y1 = max(0, int(v[i]) - r), min(size, int(v[i]) + r + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        a = alpha0[i] * np.exp(-((xx[y0:y1, x0:x1] - u[i]) ** 2 + (yy[y0:y1, x0:x1] - v[i]) ** 2) / (2 * sigma[i] ** 2))
        t = trans[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += (t * a)[..., None] * rgb[i]
        trans[y0:y1, x0:x1] = t * (1 - a)
    return img + trans[..., None] * np.asarray(background)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def _ssim_global(a: np.ndarray, b: np.ndarray) -> float:
    """Single-window SSIM (enough for a fixture's numbers)."""
    c1, c2 = 0.01**2, 0.03**2
    ma, mb = a.mean(), b.mean()
    va, vb, cov = a.var(), b.var(), ((a - ma) * (b - mb)).mean()
    return float(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))


def write_capture_run(
    out: str | Path,
    n_gaussians: int = 3000,
    n_train: int = 6,
    n_eval: int = 2,
    image_size: int = 64,
    sh_degree: int = 1,
    status: str = "complete",
    cameras: bool = True,
    images: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic capture run folder (see the module docstring) and return it.

    Args:
        n_gaussians: number of Gaussians in ``splat.ply``.
        n_train, n_eval: cameras on a ring of radius 3.2 at height 1.2 (eval ones in between).
        image_size: square photos / renders, ``fx = fy = 1.1 * image_size``.
        status: ``run.json`` status; ``running`` leaves out ``metrics.json``.
        cameras: write ``cameras.json`` (``False`` imitates a run by an older recon).
        images: write ``photos/``, ``renders/`` and ``compare/`` (slow for large models).
    """
    from recon.io.ply import write_splat_ply

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    g = _gaussians(n_gaussians, sh_degree, rng)
    iterations = 500
    config = {"data": "synthetic", "iterations": iterations, "sh_degree": sh_degree, "background": [0.0, 0.0, 0.0], "background_mean": False, "preset": "synthetic"}
    _write_json(out / "run.json", _run_json("capture", "running", 0, iterations, train_views=n_train, eval_views=n_eval, resolution=[image_size, image_size], device="cpu", init="synthetic"))
    _write_json(out / "config.json", config)
    write_splat_ply(out / "splat.ply", g)
    fx = 1.1 * image_size
    views = []
    for split, count, offset in (("train", n_train, 0.0), ("eval", n_eval, 0.5)):
        for k in range(count):
            angle = 2 * math.pi * (k + offset) / max(count, 1) + (0.3 if split == "eval" else 0.0)
            pos = (3.2 * math.cos(angle), 3.2 * math.sin(angle), 1.2)
            name = f"{split}_{k:03d}.jpg"
            views.append({"name": name, "split": split, "width": image_size, "height": image_size, "fx": fx, "fy": fx, "cx": image_size / 2, "cy": image_size / 2, "c2w": look_at_opencv(pos).tolist()})
    if cameras:
        _write_json(out / "cameras.json", {"convention": "opencv", "views": views})
    scores = {"train": {}, "eval": {}}
    if images:
        for view in views:
            c2w = np.asarray(view["c2w"])
            photo = splat_image(g, c2w, fx, image_size)
            noise = rng.normal(scale=0.03 if view["split"] == "train" else 0.06, size=photo.shape)
            render = np.clip(photo + noise, 0, 1)
            stem = Path(view["name"]).stem
            _write_png(out / "photos" / view["split"] / f"{stem}.jpg", photo, "JPEG")
            _write_png(out / "renders" / view["split"] / f"{stem}.png", render)
            _write_png(out / "compare" / view["split"] / f"{stem}.png", np.concatenate([render, photo, np.abs(render - photo)], axis=1))
            scores[view["split"]][view["name"]] = {"psnr": round(_psnr(render, photo), 3), "ssim": round(_ssim_global(render, photo), 4)}
    _write_log(out, iterations, {"n_gaussians": lambda s: int(n_gaussians * (0.3 + 0.7 * s / iterations))})
    if status == "running":
        _write_json(out / "run.json", _run_json("capture", "running", iterations // 2, iterations, train_views=n_train, eval_views=n_eval, resolution=[image_size, image_size], device="cpu", init="synthetic"))
        return out

    def split_metrics(split: str) -> dict:
        s = scores[split]
        mean = {"psnr": float(np.mean([v["psnr"] for v in s.values()])) if s else None, "ssim": float(np.mean([v["ssim"] for v in s.values()])) if s else None, "n_views": len(s)}
        return {"views": s, "mean": mean, "lpips": "unavailable: synthetic run"}

    metrics = {"train": split_metrics("train"), "eval": split_metrics("eval"), "n_gaussians": n_gaussians, "train_time_s": 12.5, "iterations": iterations, "resolution": [image_size, image_size], "device": "cpu"}
    if status != "failed":
        _write_json(out / "metrics.json", metrics)
    _write_json(out / "run.json", _run_json("capture", status, iterations, iterations, train_views=n_train, eval_views=n_eval, resolution=[image_size, image_size], device="cpu", init="synthetic"))
    return out


# ---------------------------------------------------------------------- CT
def chest_phantom_hu(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """[Z, Y, X] float32 HU: air, an elliptic body (40), two lungs (-850), a spine (900) at
    -y, a heart (60) and a small lesion (120) in the right lung."""
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full(shape_zyx, -1000.0, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.62) ** 2 <= 1
    hu[body] = 40
    for cx in (-0.38, 0.38):
        hu[((x - cx) / 0.28) ** 2 + ((y - 0.05) / 0.4) ** 2 + (z / 0.85) ** 2 <= 1] = -850
    hu[((x - 0.05) / 0.2) ** 2 + ((y + 0.05) / 0.18) ** 2 + ((z - 0.1) / 0.4) ** 2 <= 1] = 60
    hu[(x / 0.11) ** 2 + ((y + 0.45) / 0.11) ** 2 <= 1] = 900
    hu[((x + 0.42) / 0.07) ** 2 + ((y - 0.15) / 0.07) ** 2 + ((z - 0.3) / 0.1) ** 2 <= 1] = 120
    return hu


def write_ct_run(
    out: str | Path,
    shape_zyx: tuple[int, int, int] = (32, 48, 48),
    fov_mm: float = 320.0,
    n_views: int = 25,
    status: str = "complete",
    reference: bool = True,
    geometry: bool = True,
    noise_hu: float = 40.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic CT run folder (see the module docstring) and return it.

    Args:
        shape_zyx: volume size in voxels; the in-plane field of view is ``fov_mm``.
        n_views: cone-beam views in ``geometry.json``.
        status: ``run.json`` status; ``running`` leaves out ``metrics.json``.
        reference, geometry: write ``reference.nii.gz`` / ``geometry.json``.
        noise_hu: noise of the "reconstruction" around the phantom.
    """
    from recon.io.units import MU_WATER_PER_MM, hu_to_mu
    from recon.io.nifti import write_nifti
    from recon.geometry.ct import CTGeometry, circular_angles

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    voxel = fov_mm / shape_zyx[2]
    voxel_mm = (voxel, voxel, voxel)
    geo = CTGeometry(
        mode="cone", n_detector=(max(shape_zyx[0], 16) * 2, shape_zyx[2] * 2), detector_pixel_mm=(voxel * 0.75, voxel * 0.75),
        n_voxel=shape_zyx, voxel_mm=voxel_mm, angles_rad=tuple(circular_angles(n_views)), dsd_mm=1500.0, dso_mm=1000.0,
    )
    zc, yc, xc = geo.voxel_centres_mm()
    origin = (float(zc[0]), float(yc[0]), float(xc[0]))
    truth = chest_phantom_hu(shape_zyx)
    recon_hu = truth + rng.normal(scale=noise_hu, size=truth.shape).astype(np.float32)
    mu = hu_to_mu(recon_hu)
    _write_json(out / "run.json", _run_json("ct", "running", 0, 300, method="synthetic", n_views=n_views, data="synthetic"))
    _write_json(out / "config.json", {"data": "synthetic", "method": "synthetic", "views": n_views, "noise_hu": noise_hu})
    if geometry:
        _write_json(out / "geometry.json", geo.to_dict())
    write_nifti(out / "volume.nii.gz", mu, voxel_mm, origin_mm=origin)
    np.save(out / "volume.npy", mu)
    if reference:
        write_nifti(out / "reference.nii.gz", hu_to_mu(truth), voxel_mm, origin_mm=origin)
    _write_log(out, 300, {"residual_rms": lambda s: round(0.1 * math.exp(-s / 80), 6)})
    if status == "running":
        _write_json(out / "run.json", _run_json("ct", "running", 150, 300, method="synthetic", n_views=n_views, data="synthetic"))
        return out
    metrics = {
        "method": "synthetic", "n_views": n_views, "volume_shape": list(shape_zyx), "voxel_mm": list(voxel_mm),
        "wall_time_s": 1.0, "cpu_time_s": 2.0, "units": "attenuation_per_mm", "mu_water_per_mm": MU_WATER_PER_MM,
    }
    if reference:
        ref_mu = hu_to_mu(truth)
        mse = float(np.mean((mu - ref_mu) ** 2))
        metrics["psnr_3d"] = round(10 * math.log10(float(ref_mu.max()) ** 2 / mse), 3)
        metrics["ssim_3d"] = round(_ssim_global(mu, ref_mu), 4)
    if status != "failed":
        _write_json(out / "metrics.json", metrics)
    _write_json(out / "run.json", _run_json("ct", status, 300, 300, method="synthetic", n_views=n_views, data="synthetic"))
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
    print(write_capture_run(root / "capture"))
    print(write_ct_run(root / "ct"))
