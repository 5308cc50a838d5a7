"""Benchmark: sparse-view reconstruction of REAL projection data, with automatic centre of rotation.

Datasets (read-only, ``../shared/data/ct``; see the json beside each):

* ``savu_dls_i13_24737_parallel``: synchrotron parallel beam, 91 views over 180 deg, raw counts
  + dark + flat -> line integrals with :func:`recon.io.ct_data.counts_to_line_integrals`.
  Detector pixel size unknown: unit pixels (lengths in px, attenuation per px).
  Reconstructed rows: ``SAVU_ROWS`` (parallel-beam rows are independent 2D slices).
* ``fips_gel_phantom_fan2d_72``: lab micro-CT, fan beam (central row), 72 views over 360 deg,
  one time frame (``--gel-frame``), geometry from its json (lengths as stored, taken as mm).
* ``tomopy_tooth_aps_parallel`` (unless ``--no-tooth``): parallel beam, 181 views over 179 deg,
  raw counts + 10 darks + 10 flats; detector binned 2x (640 -> 320 columns) for speed.

For each: the centre of rotation is estimated with :func:`recon.ct.cor.estimate_cor` (mirror
registration + FBP image-quality refinement) and applied as the geometry's
``offset_detector_mm``; FBP (Hann) and SART (``--sart-iters`` iterations, one view per subset)
reconstruct the full view set and evenly spread sparse subsets. There is no ground truth, so
the table reports

* the reprojection residual ``||A x - b|| / ||b||`` on HELD-OUT views (views not used by the
  reconstruction; for the full view set, where none are held out, the residual on the views
  used, marked "fit"), and
* PSNR / SSIM of every reconstruction against the full-view SART reconstruction (a PROXY
  reference, not ground truth; so the full SART row is trivially inf / 1), inside the
  reconstruction circle (outside set to 0), data range of the reference, SSIM = mean 2D SSIM of
  the reconstructed slices (``ssim_3d(...).axial``).

For Savu and the tooth, the full and one sparse view set are also reconstructed WITHOUT the
COR correction (axis assumed at the detector centre) to show its effect.

Outputs in ``--out`` (default ``runs/bench_ct_real``): ``results.json``, ``results.md``, and
PNGs (slices shown with world +x to the right and +y up; grey window fixed per dataset from the
reference). Runs in about 3-4 minutes on 2 shared CPU cores.

    python scripts/bench_ct_real.py [--out runs/bench_ct_real] [--sart-iters 10] [--no-tooth]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from recon.ct.analytic import fbp
from recon.ct.cor import CORResult, cor_from_mirrored_projections, estimate_cor
from recon.io.ct_data import ClippedTransmissionWarning, counts_to_line_integrals
from recon.geometry.ct import CTGeometry
from recon.ct.metrics import psnr_3d, ssim_3d
from recon.ct.project import Projector
from recon.ct.sart import sart
from recon.io.images import save_image

ROOT = Path(__file__).resolve().parents[1]
CT_DATA = ROOT.parent / "shared" / "data" / "ct"
SAVU_ROWS = (50, 67, 90)  # detector rows reconstructed (67 = the json's sanity row)
SAVU_SHOW = 1  # index into SAVU_ROWS of the slice shown in the PNGs
log = logging.getLogger("bench_ct_real")


# ---------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    name: str
    projections: np.ndarray  # [V, v, u] line integrals, as used for the reconstructions
    geometry: CTGeometry  # uncalibrated: axis assumed at the detector centre
    cor_projections: np.ndarray  # [V, v', u'] what the COR is estimated from (full resolution)
    cor_geometry: CTGeometry
    subsets: tuple[int, ...]  # sparse view counts
    uncorrected_views: tuple[int, ...] = ()  # view counts also reconstructed without the COR
    uncorrected_methods: tuple[str, ...] = ("FBP", "SART")
    show: int = 0  # slice shown
    notes: list[str] = field(default_factory=list)
    cor_kwargs: dict = field(default_factory=dict)  # for estimate_cor


def _load(name: str) -> dict[str, np.ndarray]:
    path = CT_DATA / f"{name}.npz"
    if not path.exists():
        sys.exit(f"{path}: not found (the benchmark reads ../shared/data/ct beside the project)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _line_integrals(d: dict, where: str) -> tuple[np.ndarray, int]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClippedTransmissionWarning)
        li = counts_to_line_integrals(d["projections_raw"], d["dark"], d["flat"], dead_pixels="zero", where=where)
    clipped = sum(1 for w in caught if issubclass(w.category, ClippedTransmissionWarning))
    return li, clipped


def _parallel(rows: int, cols: int, pixel: float, angles: np.ndarray) -> CTGeometry:
    """Parallel beam, unit-pitch rows, ``pixel``-pitch columns (detector pixels as length unit),
    one slice per row on a cols x cols grid of detector-pitch voxels."""
    return CTGeometry(
        mode="parallel", n_detector=(rows, cols), detector_pixel_mm=(1.0, pixel), n_voxel=(rows, cols, cols),
        voxel_mm=(1.0, pixel, pixel), angles_rad=tuple(angles),
    )


def savu() -> Dataset:
    d = _load("savu_dls_i13_24737_parallel")
    li, clipped = _line_integrals(d, "savu")
    angles = np.radians(d["angles_deg"].astype(np.float64))
    nv, nu = li.shape[1:]
    full = _parallel(nv, nu, 1.0, angles)
    rows = list(SAVU_ROWS)
    geo = _parallel(len(rows), nu, 1.0, angles)
    notes = [
        "raw counts -> line integrals with counts_to_line_integrals(dead_pixels='zero'): 1 dead flat pixel at (0, 0)"
        + (f"; clipped transmissions warned {clipped}x" if clipped else ""),
        f"unit pixels; rows {rows} reconstructed as independent slices",
    ]
    return Dataset(
        "savu_dls_i13_24737 (parallel)", li[:, rows], geo, li, full, subsets=(30, 15), uncorrected_views=(91, 30), show=SAVU_SHOW, notes=notes
    )


def gel(frame: int) -> Dataset:
    d = _load("fips_gel_phantom_fan2d_72")
    meta = json.loads((CT_DATA / "fips_gel_phantom_fan2d_72.json").read_text())["geometry"]
    sino = d["sinograms"]
    if not 0 <= frame < sino.shape[0]:
        sys.exit(f"--gel-frame: expected 0..{sino.shape[0] - 1}, got {frame}")
    p = sino[frame][:, None, :].astype(np.float32)  # [72, 1, 282]
    dsd, dso, du, nu = float(meta["source_detector_dist"]), float(meta["source_origin_dist"]), float(meta["detector_pixel_size"]), int(meta["n_det"])
    # grid covering the fan's field of view circle: radius dso * sin(half fan angle)
    radius = dso * math.sin(math.atan(nu * du / 2.0 / dsd))
    n = 256
    vox = 2.0 * radius / n
    geo = CTGeometry(
        mode="fan", n_detector=(1, nu), detector_pixel_mm=(du, du), n_voxel=(1, n, n), voxel_mm=(vox, vox, vox),
        dsd_mm=dsd, dso_mm=dso, angles_rad=tuple(d["angles_rad"].astype(np.float64)),
    )
    notes = [f"frame {frame} of 17; DSO {dso:.2f}, DSD {dsd:.2f}, pixel {du} (json units, taken as mm); {n}^2 grid of {vox:.4f} mm"]
    return Dataset(f"fips_gel_phantom frame {frame} (fan)", p, geo, p, geo, subsets=(24, 18), notes=notes)


def tooth() -> Dataset:
    d = _load("tomopy_tooth_aps_parallel")
    li, clipped = _line_integrals(d, "tooth")
    angles = np.radians(d["angles_deg"].astype(np.float64))
    nv, nu = li.shape[1:]
    full = _parallel(nv, nu, 1.0, angles)
    b = 2
    binned = li[:, :1].reshape(li.shape[0], 1, nu // b, b).mean(axis=3)  # row 0 only (the two rows are adjacent)
    geo = _parallel(1, nu // b, float(b), angles)
    notes = [
        f"raw counts -> line integrals (10 darks / flats averaged); row 0, detector binned {b}x to {nu // b} columns for the "
        "reconstructions (pixel = 2 original px); COR from the unbinned data (both rows); uncorrected: FBP only (time)"
    ]
    return Dataset(
        "tomopy_tooth (parallel)", binned.astype(np.float32), geo, li, full, subsets=(60, 30), uncorrected_views=(181,),
        uncorrected_methods=("FBP",), notes=notes, cor_kwargs={"max_columns": 160},
    )


# ---------------------------------------------------------------------- metrics
def fov_mask(geo: CTGeometry) -> np.ndarray:
    """[Y, X] reconstruction circle: the largest disc around the axis that every view sees."""
    Z, Y, X = geo.n_voxel
    _, yc, xc = geo.voxel_centres_mm()
    nu, du = geo.n_detector[1], geo.detector_pixel_mm[1]
    half = nu * du / 2.0 - abs(geo.offset_detector_mm[1])
    if geo.mode == "fan":
        half_angle = math.atan(half / geo.dsd_mm)
        r = geo.dso_mm * math.sin(half_angle)
    else:
        r = half
    r = min(r, xc[-1], yc[-1])
    return (xc[None, :] ** 2 + yc[:, None] ** 2) <= r * r


def relative_residual(projector: Projector, vol: torch.Tensor, views: np.ndarray, data: torch.Tensor) -> float:
    with torch.no_grad():
        rep = projector.forward(vol, views)
    b = data[torch.as_tensor(views)]
    return float(torch.linalg.vector_norm(rep - b) / torch.linalg.vector_norm(b))


def compare(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    p, r = pred * mask, ref * mask
    rng = float(r[:, mask].max() - r[:, mask].min())
    return psnr_3d(p, r, data_range=rng), ssim_3d(p, r, data_range=rng).axial


# ---------------------------------------------------------------------- pictures
def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def panel_grid(panels: list[list[tuple[str, np.ndarray | None]]], window: tuple[float, float], title: str, scale: int = 2) -> np.ndarray:
    """Grid of labelled grey panels ([Y, X] slices, shown with +y up), one row per list."""
    lo, hi = window
    tiles = []
    for row in panels:
        imgs = []
        for label, img in row:
            if img is None:
                continue
            a = np.clip((np.flipud(img) - lo) / (hi - lo), 0, 1)
            a = np.kron(a, np.ones((scale, scale))) if scale > 1 else a
            im = Image.fromarray(np.round(a * 255).astype(np.uint8)).convert("RGB")
            canvas = Image.new("RGB", (im.width + 4, im.height + 20), (255, 255, 255))
            canvas.paste(im, (2, 18))
            ImageDraw.Draw(canvas).text((4, 2), label, fill=(0, 0, 0), font=_font())
            imgs.append(np.asarray(canvas))
        if imgs:
            tiles.append(np.concatenate(imgs, axis=1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    head = Image.new("RGB", (width, 22), (255, 255, 255))
    ImageDraw.Draw(head).text((4, 4), title, fill=(0, 0, 0), font=_font(13))
    return np.concatenate([np.asarray(head)] + tiles, axis=0)


# ---------------------------------------------------------------------- runs
def reconstruct(ds: Dataset, cor: CORResult, sart_iters: int, out: Path) -> list[dict]:
    geo_raw = ds.geometry
    if geo_raw.mode == "parallel":
        # widen the grid so that it covers every detector column once the axis is off-centre
        # (else rays at the far edge miss the box, which inflates the residuals of the corrected
        # geometry only); both geometries use the same grid
        nu, du = geo_raw.n_detector[1], geo_raw.detector_pixel_mm[1]
        n = nu + 2 * math.ceil(abs(cor.offset_detector_mm) / du) + 2
        geo_raw = geo_raw.with_volume((geo_raw.n_voxel[0], n, n), geo_raw.voxel_mm)
    # the physical offset (mm) also holds on a binned detector
    geo = dataclasses.replace(geo_raw, offset_detector_mm=(geo_raw.offset_detector_mm[0], cor.offset_detector_mm))
    data = torch.as_tensor(ds.projections, dtype=torch.float32)
    V = geo.n_views
    mask = fov_mask(geo)
    proj_full = {True: Projector(geo), False: Projector(geo_raw)}
    rows, images = [], {}
    runs = [(V, True)] + [(n, True) for n in ds.subsets] + [(n, False) for n in ds.uncorrected_views]
    for n, corrected in runs:
        g = geo if corrected else geo_raw
        idx = g.view_indices(n)
        held = np.setdiff1d(np.arange(V), idx)
        sub = g.subset(idx)
        for method in ("FBP", "SART") if corrected else ds.uncorrected_methods:
            t0 = time.perf_counter()
            if method == "FBP":
                vol = fbp(data[idx], sub, filter="hann")
            else:
                vol = sart(data[idx], sub, sart_iters)
            dt = time.perf_counter() - t0
            pj = proj_full[corrected]
            res_held = relative_residual(pj, vol, held, data) if held.size else None
            res_fit = relative_residual(pj, vol, idx, data)
            images[(method, n, corrected)] = vol.numpy()
            rows.append(dict(dataset=ds.name, method=method, n_views=int(n), cor="corrected" if corrected else "uncorrected",
                             heldout_views=int(held.size), residual_heldout=res_held, residual_fit=res_fit, time_s=dt))
            log.info("%s %s %d views (%s): held-out residual %s, %.1fs", ds.name, method, n, rows[-1]["cor"],
                     "n/a" if res_held is None else f"{res_held:.4f}", dt)
    ref = images[("SART", V, True)]
    for r in rows:
        vol = images[(r["method"], r["n_views"], r["cor"] == "corrected")]
        r["psnr_vs_full_sart"], r["ssim_vs_full_sart"] = compare(vol, ref, mask)
    _pictures(ds, geo, images, ref, mask, cor, out)
    return rows


def _pictures(ds: Dataset, geo: CTGeometry, images: dict, ref: np.ndarray, mask: np.ndarray, cor: CORResult, out: Path) -> None:
    s = ds.show
    vals = ref[s][mask]
    window = (float(np.percentile(vals, 0.5)), float(np.percentile(vals, 99.8)))
    V = ds.geometry.n_views
    counts = (V, *ds.subsets)
    slug = ds.name.split(" ")[0]
    scale = 2 if geo.n_voxel[1] <= 200 else 1
    grid = [[(f"{m} {n} views", images[(m, n, True)][s]) for n in counts] for m in ("FBP", "SART")]
    title = f"{ds.name}: COR shift {cor.shift_px:+.2f} px applied; rows FBP / SART, columns {' / '.join(map(str, counts))} views"
    save_image(out / f"{slug}_full_vs_sparse.png", panel_grid(grid, window, title, scale) / 255.0)
    if ds.uncorrected_views:
        grid = []
        for n in ds.uncorrected_views:
            grid.append([(f"{m} {n} v, {'COR corrected' if c else 'axis at centre'}", images[(m, n, c)][s])
                         for m in ("FBP", "SART") for c in (False, True) if (m, n, c) in images])
        title = f"{ds.name}: axis at the detector centre vs COR-corrected (shift {cor.shift_px:+.2f} px)"
        save_image(out / f"{slug}_cor_effect.png", panel_grid(grid, window, title, scale) / 255.0)


def write_outputs(out: Path, payload: dict) -> None:
    def atomic(path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)

    atomic(out / "results.json", json.dumps(payload, indent=2, default=float) + "\n")
    fmt = lambda v, f: "n/a" if v is None else ("inf" if v == float("inf") else format(v, f))  # noqa: E731
    lines = ["# Sparse-view reconstruction of real projection data", ""]
    lines += ["## Centre of rotation (automatic)", "",
              "| dataset | shift (px) | axis column (px) | offset_detector_mm[1] | confidence | +- (px) | registration (px) | FBP image quality (px) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in payload["cor"].items():
        reg, img = c["details"].get("registration"), c["details"].get("image")
        lines.append(f"| {name} | {c['shift_px']:+.2f} | {c['axis_column_px']:.2f} | {c['offset_detector_mm']:+.3f} | {c['confidence']:.2f} | "
                     f"{c['uncertainty_px']:.2f} | {fmt(reg and reg['shift_px'], '+.2f')} | {fmt(img and img['shift_px'], '+.2f')} |")
    lines += ["", "Shift = detector column of the rotation axis minus the detector centre (n_u - 1)/2; "
              "applied as offset_detector_mm[1] = -shift * pixel.", ""]
    lines += ["## Reconstructions", "",
              "No ground truth: residual = ||A x - b|| / ||b|| on held-out views (views the reconstruction did not use; "
              "'fit' = on the views used, for full view sets). PSNR/SSIM are against the full-view SART reconstruction "
              "(PROXY reference, COR corrected), inside the reconstruction circle.", "",
              "| dataset | method | views | COR | held-out residual | fit residual | PSNR vs full SART (dB) | SSIM vs full SART | time (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["reconstructions"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['n_views']} | {r['cor']} | {fmt(r['residual_heldout'], '.4f')} | "
                     f"{r['residual_fit']:.4f} | {fmt(r['psnr_vs_full_sart'], '.2f')} | {r['ssim_vs_full_sart']:.3f} | {r['time_s']:.1f} |")
    lines += ["", "Notes:"] + [f"- {n}" for n in payload["notes"]]
    lines += [f"- total run time {payload['total_s']:.0f} s; SART: {payload['sart_iterations']} iterations, one view per subset, "
              "non-negative, zero start; FBP: Hann-windowed ramp", ""]
    atomic(out / "results.md", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_ct_real", help="output folder")
    ap.add_argument("--sart-iters", type=int, default=10, help="SART iterations (passes over the views)")
    ap.add_argument("--gel-frame", type=int, default=8, help="time frame of the gel phantom (0..16)")
    ap.add_argument("--no-tooth", action="store_true", help="skip the tooth (about a minute)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # FBP/SART on boxes wider than the reconstruction circle log a truncation warning per call
    logging.getLogger("recon.geometry.ct").setLevel(logging.ERROR)
    logging.getLogger("recon.io.ct_data").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    datasets = [savu, lambda: gel(args.gel_frame)] + ([] if args.no_tooth else [tooth])
    payload: dict = {"cor": {}, "reconstructions": [], "notes": [], "sart_iterations": args.sart_iters}
    for make in datasets:
        ds = make()
        t0 = time.perf_counter()
        cor = estimate_cor(ds.cor_projections, ds.cor_geometry, **ds.cor_kwargs)
        t_cor = time.perf_counter() - t0
        entry = cor.to_dict()
        entry["time_s"] = t_cor
        if ds.geometry.mode == "fan":
            # handedness check: conjugate rays only pair up with the right rotation direction
            flipped = cor_from_mirrored_projections(ds.cor_projections, ds.cor_geometry.with_angles(-ds.cor_geometry.angles))
            entry["angle_direction_check"] = {
                "mismatch_as_given": cor.details["registration"]["details"]["mismatch_min"],
                "mismatch_angles_negated": None if flipped is None else flipped.details["mismatch_min"],
            }
            ds.notes.append(
                "rotation direction: conjugate-ray mismatch {:.3g} with the json's angles vs {:.3g} with negated angles".format(
                    entry["angle_direction_check"]["mismatch_as_given"], entry["angle_direction_check"]["mismatch_angles_negated"] or float("nan")
                )
            )
        payload["cor"][ds.name] = entry
        log.info(
            "%s: COR shift %+.2f px (axis column %.2f), confidence %.2f, %.1fs", ds.name, cor.shift_px, cor.axis_column_px, cor.confidence, t_cor
        )
        payload["reconstructions"] += reconstruct(ds, cor, args.sart_iters, args.out)
        payload["notes"] += [f"{ds.name}: {n}" for n in ds.notes]
        payload["total_s"] = time.perf_counter() - t_start
        write_outputs(args.out, payload)  # after every dataset: an interrupted run keeps what it has
    log.info("wrote %s (%.0f s)", args.out, payload["total_s"])


if __name__ == "__main__":
    main()
