"""Benchmark pose-free few-view registration against calibrated poses (the fox capture).

For each K the views are those of ``scripts/bench_poses.py`` (farthest-point sampling on the
calibrated centres). ``recon.poses.sparse_registration.register_views`` registers the photos
alone (affine DSP-SIFT at ``--max-size``, focal length from the triplet search, self-checks);
the registered cameras are aligned to the calibrated ones by Sim(3) on the centres (Umeyama)
and rotation / centre / focal errors are scored. Centre errors are % of the scene scale.

    python scripts/bench_posefree.py [--k 3 4 6] [--max-size 1000] [--threads 1]
                                     [--out runs/bench_posefree]

Writes ``results.json`` and ``results.md`` to ``--out``, and each K's transforms.json,
sparse_pc.ply and report.json under ``--out/k<K>/``.

``--fit`` adds the image quality that item 4 of issue 19 asks for: for each K two fits with the
same settings (``--preset``, ``--iterations``, ``--downscale``, seed 0), one on the calibrated
poses (``fit_calibrated``) and one on the registered ones (``fit_estimated``, every registered
view trains), both scored by ``recon eval`` on one cameras file (``eval_cameras.json``: the K
training views and the 8 evaluation views of ``scripts/bench_fox.py``, none trained on, with
calibrated poses). The calibrated run takes the cameras as they are; the estimated run aligns
them by the Sim(3) of the K shared training views (``--align sim3``), and with
``--refine-steps N`` both are scored once more after N steps of test-time pose optimisation per
evaluation camera. A registration already in ``--out/k<K>`` is reused (``--reuse``).

    python scripts/bench_posefree.py --k 3 4 --reuse --fit --iterations 1000 --downscale 8

``--pose-rounds N`` adds a third arm per K, ``estimated+rounds``: the estimated run again with N
photometric registration rounds of the training cameras and their focal length
(``recon fit --pose-rounds N``, :mod:`recon.splat.photometric_poses`); its training-pose errors
before / after and its held-out scores go in the table. ``--probe`` asks why the rounds move
the poses so little, with the two finished fits: (a) the calibrated training cameras, put into the
estimated run's frame by Sim(3), registered against the estimated-pose model (do they drift to
the estimated poses, i.e. did the model absorb the pose error?), and (b) the estimated cameras,
put into the calibrated run's frame, registered against the calibrated-pose model (is there a
photometric signal toward the right poses when the model was not fitted to the wrong ones?).
The registration rows also carry centre-free rotation errors
(``recon.poses.align.rotation_errors_without_centres``: after the best common rotation, and of
the pairs' relative rotations), since the Sim(3) of 3-4 centres passes centre errors on to every
rotation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from recon.geometry.view_selection import farthest_point_views
from recon.io.atomic import atomic_write_json, atomic_write_text
from recon.io.formats import load_capture
from recon.poses.align import align_sim3, pose_errors, rotation_errors_without_centres
from recon.poses.sparse_registration import register_views

COLUMNS = [
    ("K", "k", "{}"),
    ("registered", "registered", "{}"),
    ("checks", "checks", "{}"),
    ("rot median (deg)", "rot_deg_median", "{:.2f}"),
    ("rot max (deg)", "rot_deg_max", "{:.2f}"),
    ("centre mean (%)", "centre_pct_mean", "{:.2f}"),
    ("centre max (%)", "centre_pct_max", "{:.2f}"),
    ("rot, common rotation only: median (deg)", "rot_free_median", "{:.2f}"),
    ("pair rel. rot median (deg)", "pair_deg_median", "{:.2f}"),
    ("focal err (%)", "focal_err_pct", "{:+.1f}"),
    ("reproj (px)", "reproj_px", "{:.2f}"),
    ("points", "n_points", "{}"),
    ("time (s)", "seconds", "{:.0f}"),
]


def bench_one(capture, k: int, max_size: int, threads: int, out: Path) -> dict:
    idx = farthest_point_views(capture.cameras.centres(), k)
    sub = capture.subset(sorted(idx))
    row: dict = {"k": k, "images": [p.name for p in sub.image_paths]}
    rep = register_views(sub.image_paths, out / f"k{k}" / "transforms.json", max_image_size=max_size,
                         allow_partial=True, num_threads=threads, work_dir=out / f"k{k}" / "colmap")
    atomic_write_json(out / f"k{k}" / "report.json", rep.to_dict())
    row.update(registered=f"{rep.n_registered}/{k}", checks="pass" if rep.ok else "FAIL",
               summary=rep.summary(), reproj_px=rep.mean_reproj_error_px, n_points=rep.n_points,
               seconds=rep.seconds, method=rep.method, focal_source=rep.focal_source,
               focal_px=rep.focal_px, views=[v.to_dict() for v in rep.views])
    row["focal_err_pct"] = 100.0 * (rep.focal_px / sub.cameras.intrinsics[0].fx - 1.0)
    if rep.cameras is None or len(rep.image_paths) < 3:
        return row
    by_name = {p.name: i for i, p in enumerate(sub.image_paths)}
    ref = sub.cameras.subset([by_name[p.name] for p in rep.image_paths])
    err = pose_errors(rep.cameras.w2c, ref.w2c, align_sim3(rep.cameras.centres(), ref.centres()))
    free = rotation_errors_without_centres(rep.cameras.w2c, ref.w2c)
    row.update(
        rot_free_median=statistics.median(free["rot_deg"]), pair_deg_median=statistics.median(free["pair_deg"]),
        rot_deg_median=statistics.median(err["rot_deg"]), rot_deg_max=err["rot_deg_max"],
        centre_pct_mean=100.0 * err["centre_err_mean"], centre_pct_max=100.0 * err["centre_err_max"],
        per_view={p.name: {"rot_deg": r, "centre_pct": 100.0 * c}
                  for p, r, c in zip(rep.image_paths, err["rot_deg"], err["centre_err"])},
    )
    return row


FIT_COLUMNS = [
    ("K", "k", "{}"),
    ("arm", "arm", "{}"),
    ("alignment", "alignment", "{}"),
    ("eval PSNR", "psnr", "{:.2f}"),
    ("eval SSIM", "ssim", "{:.3f}"),
    ("Δ PSNR vs calibrated", "delta_psnr", "{:+.2f}"),
    ("train rot median before → after (deg)", "rot_change", "{}"),
    ("focal err before → after (%)", "focal_change", "{}"),
    ("train PSNR", "train_psnr", "{:.2f}"),
    ("train (s)", "fit_s", "{:.0f}"),
    ("eval (s)", "eval_s", "{:.0f}"),
]


def write_eval_cameras(capture_dir: Path, names: list[str], path: Path) -> None:
    """The calibrated frames of ``names`` as a transforms.json with absolute image paths."""
    meta = json.loads((capture_dir / "transforms.json").read_text(encoding="utf-8"))
    frames = {Path(f["file_path"]).name: f for f in meta["frames"]}
    meta["frames"] = [{**frames[n], "file_path": str((capture_dir / frames[n]["file_path"]).resolve())} for n in names]
    atomic_write_json(path, meta)


def train_pose_errors(run: Path, capture, downscale: float) -> dict:
    """Training cameras of a run (cameras.json) against the calibrated ones: rotation median after
    Sim(3) of the centres, centre-free rotation median, focal error (%)."""
    from recon.io.run import RunDir

    names, cams = RunDir(run).read_cameras()["train"]
    ref = capture.cameras.subset([capture.names.index(n) for n in names])
    err = pose_errors(cams.w2c.double(), ref.w2c.double(), align_sim3(cams.centres().double(), ref.centres().double()))
    free = rotation_errors_without_centres(cams.w2c.double(), ref.w2c.double())
    return {"rot_deg_median": statistics.median(err["rot_deg"]), "rot_free_median": statistics.median(free["rot_deg"]),
            "focal_err_pct": 100.0 * (cams.intrinsics[0].fx / ref.intrinsics[0].scaled(downscale).fx - 1.0)}  # fmt: skip


def probe_absorption(capture, capture_dir: Path, k: int, train_idx: list[int], args) -> dict:
    """Register each run's training cameras from the *other* run's poses against its frozen model
    (module docstring, ``--probe``); rotation errors before / after against both pose sets."""
    from recon.io.ply import read_splat_ply
    from recon.io.run import RunDir, read_json
    from recon.io.views import load_split
    from recon.pipelines.evaluate import align_to_run
    from recon.splat.model import GaussianModel
    from recon.splat.photometric_poses import register_to_model

    root = args.out / f"k{k}"
    runs = {"calibrated": root / "fit_calibrated", "estimated": root / "fit_estimated"}
    cams = {arm: RunDir(r).read_cameras()["train"] for arm, r in runs.items()}
    est_capture = load_capture(root / "transforms.json", allow_outside_paths=True)
    views = {"calibrated": load_split(capture, train_idx, args.downscale),
             "estimated": load_split(est_capture, list(range(len(est_capture))), args.downscale)}  # fmt: skip
    out = {}
    for model_arm, other in (("estimated", "calibrated"), ("calibrated", "estimated")):
        names, own = cams[model_arm]
        o_names, o_cams = cams[other]
        start, _ = align_to_run(o_names, o_cams.w2c.double(), names, own.w2c.double(), "probe")
        order = [o_names.index(n) for n in names]
        start = start[order].float()
        v = views[model_arm]
        images = v.images[[v.names.index(n) for n in names]]
        model = GaussianModel.from_params(read_splat_ply(runs[model_arm] / "splat.ply"))
        bg = torch.tensor(read_json(runs[model_arm] / "config.json")["background"], dtype=torch.float32)
        t0 = time.perf_counter()
        new, scale, rec = register_to_model(model, start, own.Ks(), images, bg, steps=args.pose_round_steps,
                                            lr=args.pose_round_lr, focal=True, levels=args.pose_round_levels)  # fmt: skip

        def med(a, b):
            return statistics.median(pose_errors(a.double(), b.double(), (1.0, torch.eye(3, dtype=torch.float64),
                                                                          torch.zeros(3, dtype=torch.float64)))["rot_deg"])  # fmt: skip

        out[f"{other}_poses_vs_{model_arm}_model"] = {
            f"rot_to_{model_arm}_before": med(start, own.w2c),
            f"rot_to_{model_arm}_after": med(new, own.w2c), f"rot_to_{other}_after": med(new, start),
            "focal_scale": scale, "l1_before": rec.l1_before, "l1_after": rec.l1_after, "accepted": rec.extra["accepted"],
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        print(json.dumps({"k": k, **out}), flush=True)
    return out


def probe_leave_one_out(capture, k: int, args) -> dict:
    """``--loo-steps N``: for each registered view, a fit of the other K-1 views (N steps, same
    preset and resolution), then that view alone registered against it (pose only). Its
    rotation relative to each other view (no frame alignment needed) is compared with the
    calibration before and after: a signal the model fitted to all K views cannot give."""
    from recon.io.ply import read_splat_ply
    from recon.io.run import read_json
    from recon.io.views import load_split
    from recon.pipelines.capture import CaptureFitConfig
    from recon.splat.model import GaussianModel
    from recon.splat.photometric_poses import register_to_model

    root = args.out / f"k{k}"
    est = load_capture(root / "transforms.json", allow_outside_paths=True)
    views = load_split(est, list(range(len(est))), args.downscale)
    ref = capture.cameras.subset([capture.names.index(n) for n in views.names]).w2c.double()

    def pair_errors(w2c, i: int) -> list[float]:
        free = rotation_errors_without_centres(w2c.double(), ref)
        pairs = [(a, b) for a in range(len(est)) for b in range(a + 1, len(est))]
        return [e for (a, b), e in zip(pairs, free["pair_deg"]) if i in (a, b)]

    rows = []
    for i, name in enumerate(views.names):
        keep = tuple(j for j in range(len(est)) if j != i)
        run = root / f"loo_{Path(name).stem}"
        t0 = time.perf_counter()
        metrics = CaptureFitConfig(data=root / "transforms.json", train_views=keep, eval_views=0, eval_indices=(i,),
                                   allow_outside_paths=True, out=run, preset=args.preset, iterations=args.loo_steps,
                                   downscale=args.downscale, seed=0, overwrite=True).run()  # fmt: skip
        model = GaussianModel.from_params(read_splat_ply(run / "splat.ply"))
        bg = torch.tensor(read_json(run / "config.json")["background"], dtype=torch.float32)
        cams = views.cameras
        new, _, rec = register_to_model(model, cams.w2c[i : i + 1], cams.Ks()[i : i + 1], views.images[i : i + 1], bg,
                                        steps=args.pose_round_steps, lr=args.pose_round_lr, focal=False,
                                        levels=args.pose_round_levels)  # fmt: skip
        w2c = cams.w2c.clone()
        w2c[i] = new[0]
        before, after = pair_errors(cams.w2c, i), pair_errors(w2c, i)
        rows.append({"view": name, "heldout_psnr": metrics["eval"]["mean"]["psnr"], "pair_deg_before": before,
                     "pair_deg_after": after, "rot_change_deg": rec.rot_deg[0], "accepted": rec.extra["accepted"],
                     "l1_before": rec.l1_before, "l1_after": rec.l1_after, "seconds": time.perf_counter() - t0})  # fmt: skip
        print(json.dumps({"k": k, **rows[-1]}), flush=True)
    return {"steps": args.loo_steps, "views": rows}


def fit_one(capture, capture_dir: Path, k: int, train_idx: list[int], eval_idx: list[int], args) -> list[dict]:
    """Calibrated vs estimated poses at one K: two fits, each scored on the same held-out views."""
    from recon.io.run import RunDir, read_json
    from recon.pipelines.capture import CaptureFitConfig
    from recon.pipelines.evaluate import eval_cameras

    root = args.out / f"k{k}"
    train_names = [capture.names[i] for i in train_idx]
    eval_names = [capture.names[i] for i in eval_idx]
    cams = root / "eval_cameras.json"
    write_eval_cameras(capture_dir, train_names + eval_names, cams)
    common = {"preset": args.preset, "iterations": args.iterations, "downscale": args.downscale, "seed": 0, "overwrite": True,
              "coarse_to_fine": 0.0}  # the published rows trained at full resolution throughout
    arms = {
        "calibrated": ({"data": capture_dir, "train_views": tuple(train_idx), "eval_indices": tuple(eval_idx)}, "none"),
        "estimated": ({"data": root / "transforms.json", "train_views": tuple(range(k)), "eval_views": 0,
                       "allow_outside_paths": True}, "sim3"),
    }  # fmt: skip
    if args.pose_rounds:
        arms["estimated+rounds"] = ({**arms["estimated"][0], "pose_rounds": args.pose_rounds, "pose_round_steps": args.pose_round_steps,
                                     "pose_round_lr": args.pose_round_lr, "pose_round_levels": args.pose_round_levels}, "sim3")  # fmt: skip
    rows = []
    for arm, (data_kw, align) in arms.items():
        run = root / f"fit_{arm}"
        load0 = os.getloadavg()[0]
        if args.reuse and RunDir(run).is_complete() and all(read_json(run / "config.json").get(key) == v for key, v in
                                                             (("preset", args.preset), ("iterations", args.iterations),
                                                              ("downscale", args.downscale), ("seed", 0),
                                                              ("pose_rounds", data_kw.get("pose_rounds", 0)))):  # fmt: skip
            metrics = read_json(run / "metrics.json")  # a finished fit with these settings
        else:
            metrics = CaptureFitConfig(**data_kw, out=run, **common).run()
        if arm.startswith("estimated") and not (run / "registration.json").exists():
            shutil.copyfile(root / "report.json", run / "registration.json")  # as recon fit PHOTOS_DIR leaves it
        poses_after = train_pose_errors(run, capture, args.downscale)
        poses_before = poses_after if arm != "estimated+rounds" else train_pose_errors(root / "fit_estimated", capture, args.downscale)
        for steps in sorted({0, args.refine_steps}):
            t1 = time.perf_counter()
            sc = eval_cameras(run, cams, run / f"eval_heldout_r{steps}", allow_outside_paths=True, align=align,
                              refine_steps=steps)  # fmt: skip
            a = sc["alignment"]
            label = "none" if a["method"] == "none" else f"Sim(3), {len(a['shared_views'])} shared views"
            if steps:
                label += f" + {steps} steps test-time pose opt."
            rows.append({
                "k": k, "arm": arm, "alignment": label, "refine_steps": steps, "psnr": sc["unseen"]["psnr"],
                "ssim": sc["unseen"]["ssim"], "n_eval": sc["unseen"]["n_views"], "train_psnr": metrics["train"]["mean"]["psnr"],
                "fit_s": metrics["train_time_s"], "eval_s": time.perf_counter() - t1, "load_1min": [load0, os.getloadavg()[0]],
                "align_record": {key: v for key, v in a.items() if key not in ("rotation", "translation")},
                "in_fit_eval_psnr": metrics.get("eval", {}).get("mean", {}).get("psnr"), "run": str(run),
                "views_psnr": {n: sc["views"][n]["psnr"] for n in eval_names},
                "train_poses_before": poses_before, "train_poses_after": poses_after, "pose_rounds": metrics.get("pose_rounds", []),
                "rot_change": f"{poses_before['rot_deg_median']:.2f} → {poses_after['rot_deg_median']:.2f}",
                "focal_change": f"{poses_before['focal_err_pct']:+.2f} → {poses_after['focal_err_pct']:+.2f}",
            })  # fmt: skip
            print(json.dumps({c: rows[-1].get(c) for _, c, _ in FIT_COLUMNS}), flush=True)
    base = {r["refine_steps"]: r["psnr"] for r in rows if r["arm"] == "calibrated"}
    for r in rows:
        r["delta_psnr"] = r["psnr"] - base[r["refine_steps"]]
    return rows


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, default=here.parent / "shared/data/object/fox")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 4, 6])
    ap.add_argument("--max-size", type=int, default=1000, help="longest image side for SIFT, px")
    ap.add_argument("--threads", type=int, default=1, help="pycolmap threads")
    ap.add_argument("--out", type=Path, default=here.parent / "runs" / "bench_posefree")
    ap.add_argument("--reuse", action="store_true", help="keep the registration rows of --out/results.json and "
                    "complete fits with the same settings")
    ap.add_argument("--fit", action="store_true", help="also fit on calibrated vs estimated poses and score held-out views")
    ap.add_argument("--preset", default="fewview", choices=["fewview", "plain"])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--downscale", type=float, default=8.0)
    ap.add_argument("--refine-steps", type=int, default=0, help="test-time pose optimisation steps (0: off)")
    ap.add_argument("--pose-rounds", type=int, default=0, help="--fit: add the estimated+rounds arm with this many rounds")
    ap.add_argument("--pose-round-steps", type=int, default=40)
    ap.add_argument("--pose-round-lr", type=float, default=3e-3)
    ap.add_argument("--pose-round-levels", type=int, default=1)
    ap.add_argument("--probe", action="store_true", help="--fit: register each fit's cameras from the other's poses")
    ap.add_argument("--loo-steps", type=int, default=0, help="leave-one-out probe: fit K-1 views for this many steps, "
                    "register the held-out view against it (0: off)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    capture = load_capture(args.capture)
    args.out.mkdir(parents=True, exist_ok=True)
    old = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").is_file() else {}
    stored = {r["k"]: r for r in old.get("rows", [])}
    rows, fit_rows = [], [r for r in old.get("fit_rows", []) if r["k"] not in args.k] if args.fit else old.get("fit_rows", [])
    for k in args.k:
        if args.reuse and k in stored and (args.out / f"k{k}" / "transforms.json").is_file():
            rows.append(stored[k])
        else:
            rows.append(bench_one(capture, k, args.max_size, args.threads, args.out))
        print(json.dumps({c: rows[-1].get(c) for _, c, _ in COLUMNS}), rows[-1]["summary"], flush=True)
    rows += [r for kk, r in stored.items() if kk not in args.k]
    rows.sort(key=lambda r: r["k"])
    probes = old.get("probes", {})
    loo = old.get("leave_one_out", {})
    if args.loo_steps:
        for k in args.k:
            loo[str(k)] = probe_leave_one_out(capture, k, args)
    if args.fit:
        from bench_fox import protocol_views

        train, eval_idx = protocol_views(args.capture, sorted(set(args.k) | {8}), 8)
        for k in args.k:
            row = next(r for r in rows if r["k"] == k)
            if row["registered"] != f"{k}/{k}" or [capture.names[i] for i in train[k]] != row["images"]:
                raise SystemExit(f"K={k}: registration {row['registered']} of {row['images']} does not match the "
                                 f"protocol's training views {[capture.names[i] for i in train[k]]}")
            fit_rows += fit_one(capture, args.capture, k, train[k], eval_idx, args)
            if args.probe:
                try:
                    probes[str(k)] = probe_absorption(capture, args.capture, k, train[k], args)
                except Exception as err:  # a failed probe must not lose the fits' rows
                    logging.getLogger("bench_posefree").exception("probe K=%d failed", k)
                    probes[str(k)] = {"error": f"{type(err).__name__}: {err}"}
        fit_rows.sort(key=lambda r: (r["k"], r["refine_steps"], ["calibrated", "estimated", "estimated+rounds"].index(r["arm"])))
    title = (f"Pose-free registration vs calibration: {args.capture.name}, affine DSP-SIFT at "
             f"{args.max_size} px, CPU, {args.threads} thread(s)")
    md = [f"### {title}", "", "| " + " | ".join(n for n, _, _ in COLUMNS) + " |",
          "|" + "---:|" * len(COLUMNS)]
    md += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in rows]
    md += [""] + [f"- K={r['k']} ({', '.join(r['images'])}): {r['summary']}; focal from "
                  f"{r['focal_source']}, {r['method']} mapping" for r in rows]
    fit_settings = old.get("fit_settings")
    if args.fit:
        fit_settings = {"preset": args.preset, "iterations": args.iterations, "downscale": args.downscale, "seed": 0,
                        "eval_views": [capture.names[i] for i in eval_idx]}  # fmt: skip
    if fit_rows:
        md += ["", f"### Held-out views, calibrated vs estimated poses: {json.dumps(fit_settings)}", "",
               "| " + " | ".join(n for n, _, _ in FIT_COLUMNS) + " |", "|" + "---:|" * len(FIT_COLUMNS)]
        md += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in FIT_COLUMNS) + " |" for r in fit_rows]
    for k, pr in sorted(probes.items()):
        for what, v in pr.items():
            if what == "error":
                md += ["", f"- probe K={k} failed: {v}"]
                continue
            model_arm = what.split("_vs_")[1].removesuffix("_model")
            moved = next(x for key, x in v.items() if key.endswith("_after") and model_arm not in key)
            md += ["", (f"- probe K={k}, {what}: rotation to the {model_arm} poses median {v[f'rot_to_{model_arm}_before']:.2f} -> "
                        f"{v[f'rot_to_{model_arm}_after']:.2f} deg, moved {moved:.2f} deg; "
                        f"focal x{v['focal_scale']:.4f}; L1 {v['l1_before']:.4f} -> {v['l1_after']:.4f}")]
    for k, pr in sorted(loo.items()):
        for r in pr["views"]:
            md += ["", (f"- leave-one-out K={k} ({pr['steps']} steps), {r['view']}: held-out PSNR {r['heldout_psnr']:.2f}; "
                        f"its pair rotation errors {', '.join(f'{x:.2f}' for x in r['pair_deg_before'])} -> "
                        f"{', '.join(f'{x:.2f}' for x in r['pair_deg_after'])} deg (moved {r['rot_change_deg']:.2f}, "
                        f"{'accepted' if r['accepted'] else 'rejected'}; L1 {r['l1_before']:.4f} -> {r['l1_after']:.4f})")]
    atomic_write_json(args.out / "results.json", {"capture": str(args.capture), "max_image_size":
                      args.max_size, "rows": rows, "fit_settings": fit_settings, "fit_rows": fit_rows,
                      "probes": probes, "leave_one_out": loo})
    atomic_write_text(args.out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
