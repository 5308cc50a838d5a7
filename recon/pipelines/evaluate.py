"""``recon eval``: render and score cameras with a run's model, at its resolution.

The cameras are taken as given in the run's world frame (``align="none"``), or, for a run whose
poses were estimated (``recon fit PHOTOS_DIR`` writes ``registration.json``), put into it first
(``align="sim3"``): the similarity that maps the cameras file's centres of the views it shares by
name with the run onto the run's centres of the same views (Umeyama, :func:`recon.poses.align.
align_sim3`) moves every camera of the file (:func:`recon.poses.align.sim3_transform_w2c`).
``refine_steps > 0`` then optimises each camera's pose alone against the frozen model
(test-time pose optimisation, :class:`recon.poses.refine.PoseRefiner`, L1 to its own photo):
it fits on the images it scores, so the metrics say so (``alignment.refine_steps``).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, camera_centres
from recon.io.formats import load_capture
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir, atomic_write_json, read_json
from recon.io.views import load_split
from recon.metrics import score_images
from recon.pipelines.capture import write_view_images
from recon.poses.align import align_sim3, pose_errors, sim3_transform_w2c
from recon.poses.refine import PoseRefineConfig
from recon.splat.model import GaussianModel
from recon.splat.render import rasterize_views, render_all

logger = logging.getLogger(__name__)

__all__ = ["ALIGN_MODES", "align_to_run", "eval_cameras", "refine_eval_poses"]

ALIGN_MODES = ("auto", "sim3", "none")
"""``auto``: ``sim3`` when the run has ``registration.json`` (estimated poses), else ``none``."""

MIN_SHARED_VIEWS = 3


def align_to_run(
    names: list[str],
    w2c: Tensor,  # [N, 4, 4]
    run_names: list[str],
    run_w2c: Tensor,  # [M, 4, 4]
    where: str | Path,
) -> tuple[Tensor, dict[str, Any]]:  # [N, 4, 4], record
    """Put cameras given in another world frame into the run's, by the Sim(3) of the views
    both name.

    Args:
        names: N view names of the cameras to move.
        w2c: Tensor [N, 4, 4], their OpenCV world-to-camera poses in their own frame.
        run_names: M view names of the run's cameras.
        run_w2c: Tensor [M, 4, 4], the run's poses of them (its world frame).
        where: the cameras file, for error messages.

    Returns:
        ``(w2c in the run's frame [N, 4, 4], record)``; the record has the method, the shared
        views, ``scale`` / ``rotation`` / ``translation`` and the shared views' residuals after
        alignment (rotation in degrees, centre distance in % of their spread).

    Raises:
        InputError: fewer than 3 shared names, or shared centres that do not fix a rotation.
    """
    if w2c.shape != (len(names), 4, 4) or run_w2c.shape != (len(run_names), 4, 4):
        raise ValueError(f"w2c {tuple(w2c.shape)} / run_w2c {tuple(run_w2c.shape)} do not match "
                         f"{len(names)} / {len(run_names)} names (expected [N, 4, 4])")  # fmt: skip
    run_index = {n: i for i, n in enumerate(run_names)}
    shared = [n for n in names if n in run_index]
    if len(shared) < MIN_SHARED_VIEWS:
        raise InputError(where, f"shares {len(shared)} view name(s) with the run ({', '.join(shared) or 'none'}); "
                                f"aligning by Sim(3) needs at least {MIN_SHARED_VIEWS} views named in both "
                                "(or pass --align none for cameras already in the run's frame)")  # fmt: skip
    index = {n: i for i, n in enumerate(names)}
    src = w2c[[index[n] for n in shared]].double()
    dst = run_w2c[[run_index[n] for n in shared]].double()
    try:
        sim3 = align_sim3(camera_centres(src), camera_centres(dst))
    except ValueError as err:
        raise InputError(where, f"the {len(shared)} shared views do not fix a Sim(3) ({err})") from None
    err = pose_errors(sim3_transform_w2c(src, sim3), dst, (1.0, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)))
    s, rot, t = sim3
    record = {
        "method": "sim3", "shared_views": shared, "scale": s, "rotation": rot.tolist(), "translation": t.tolist(),
        "shared_rot_deg_median": statistics.median(err["rot_deg"]), "shared_rot_deg_max": err["rot_deg_max"],
        "shared_centre_pct_mean": 100.0 * err["centre_err_mean"], "shared_centre_pct_max": 100.0 * err["centre_err_max"],
    }  # fmt: skip
    return sim3_transform_w2c(w2c, sim3), record


def refine_eval_poses(
    model: GaussianModel,
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    background: Tensor,  # [3]
    steps: int,
    lr: float = 1e-3,
) -> tuple[Tensor, list[float]]:  # [V, 4, 4], per-view final L1
    """Test-time pose optimisation: each camera's SE(3) correction alone fitted by Adam to the
    L1 between its render and its photo, the model frozen.

    Args:
        model: the run's Gaussians (not modified).
        cameras: V cameras at the images' resolution.
        images: Tensor [V, H, W, 3] in [0, 1].
        background: Tensor [3].
        steps: optimisation steps per camera (>= 1).
        lr: initial Adam learning rate of the twists (decays 100x over ``steps``).

    Returns:
        ``(w2c [V, 4, 4] refined, per-view L1 at the last step)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if images.ndim != 4 or images.shape[0] != len(cameras) or images.shape[-1] != 3:
        raise ValueError(f"images must be [V, H, W, 3] with V = {len(cameras)}, got {tuple(images.shape)}")
    h, w = int(images.shape[1]), int(images.shape[2])
    with torch.no_grad():
        act = {k: v.detach() for k, v in model.activated(model.sh_degree).items()}
    Ks = cameras.Ks()
    out, losses = [], []
    for i in range(len(cameras)):
        refiner = PoseRefineConfig(lr=lr, lr_final=lr / 100, weight_decay=0.0).setup(1)
        opt, sched = refiner.make_optimizer(steps)
        w2c = cameras.w2c[i : i + 1]
        gt = images[i : i + 1]
        for _ in range(steps):
            colours, _, _ = rasterize_views(act, refiner.apply(w2c, [0]), Ks[i : i + 1], w, h, model.sh_degree, background)
            loss = (colours[..., :3] - gt).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            out.append(refiner.apply(w2c, [0])[0].detach())
    return torch.stack(out), losses


def eval_cameras(
    run_dir: Path,
    cameras_file: Path,
    out: Path | None = None,
    *,
    allow_outside_paths: bool = False,
    align: Literal["auto", "sim3", "none"] = "auto",
    refine_steps: int = 0,
    refine_lr: float = 1e-3,
) -> dict:
    """Render and score the cameras of ``cameras_file`` (any capture recon reads, with its
    images) with the run's model, at the run's downscale and background.

    ``align`` says how the cameras get into the run's world frame (module docstring; ``auto`` =
    ``sim3`` for a run with ``registration.json``); ``refine_steps`` adds test-time pose
    optimisation of each camera. Writes one render per camera named after its image file
    (``<out>/renders``), photos and comparisons, and ``<out>/metrics.json`` with the scores of
    every view, ``unseen`` (the views the run did not train on) and ``alignment`` (what was done).
    ``out`` defaults to ``RUN/eval_<cameras file stem>``.
    """
    if align not in ALIGN_MODES:
        raise InputError("--align", f"{align!r} (expected one of {', '.join(ALIGN_MODES)})")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise InputError("--refine-steps", f"{refine_steps!r} (expected an integer >= 0)")
    if not refine_lr > 0:
        raise InputError("--refine-lr", f"{refine_lr!r} (expected > 0)")
    run = RunDir(run_dir)
    if not run.is_complete():
        raise InputError(run_dir, "not a complete run folder (run.json does not say 'complete')")
    if run.status().get("kind", "capture") != "capture":
        raise InputError(run_dir, "is a CT run; recon eval scores photo captures (a CT run's scores are in metrics.json)")
    cfg = read_json(run.path("config.json"))
    try:
        downscale = float(cfg["downscale"])
        background = torch.tensor(cfg["background"], dtype=torch.float32).reshape(3)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(run.path("config.json"), f"not the config of a 'recon fit' run ({type(err).__name__}: {err}; "
                                                  "expected 'downscale' and a 3-number 'background')") from None  # fmt: skip
    splits = run.read_cameras()
    run_names = [n for names, _ in splits.values() for n in names]
    train_names = set(splits["train"][0]) if "train" in splits else set()
    method = ("sim3" if run.path("registration.json").exists() else "none") if align == "auto" else align
    capture = load_capture(Path(cameras_file), allow_outside_paths=allow_outside_paths)
    record: dict[str, Any] = {"method": "none"}
    if method == "sim3":
        run_w2c = torch.cat([cams.w2c.double() for _, cams in splits.values()])
        w2c, record = align_to_run(capture.names, capture.cameras.w2c.double(), run_names, run_w2c, cameras_file)
        capture.cameras = CameraSet(w2c.float(), capture.cameras.intrinsics)
    model = GaussianModel.from_params(read_splat_ply(run.path("splat.ply")))
    views = load_split(capture, list(range(len(capture))), downscale)
    record["refine_steps"] = refine_steps
    if refine_steps > 0:
        record["refine_lr"] = refine_lr
        w2c, _ = refine_eval_poses(model, views.cameras, views.images, background, refine_steps, refine_lr)
        views.cameras = CameraSet(w2c, views.cameras.intrinsics)
    logger.info("alignment: %s%s", record["method"], f" + {refine_steps} steps of test-time pose optimisation" if refine_steps else "")
    preds = render_all(model, views.cameras, views.width, views.height, model.sh_degree, background)
    target = RunDir(out if out is not None else run.path(f"eval_{Path(cameras_file).stem}"))
    write_view_images(target, ".", views.names, preds, views.images)
    scores = score_images(preds, views.images, views.names)
    unseen = [n for n in views.names if n not in train_names]
    if unseen:
        keys = ("psnr", "ssim", "lpips")
        scores["unseen"] = {k: statistics.fmean(scores["views"][n][k] for n in unseen) for k in keys if k in scores["mean"]}
        scores["unseen"]["n_views"] = len(unseen)
    scores["cameras"] = str(cameras_file)
    scores["alignment"] = record
    atomic_write_json(target.path("metrics.json"), scores)
    return scores
