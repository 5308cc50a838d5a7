"""``recon eval``: render and score any cameras given in a run's world frame, at its resolution."""

from __future__ import annotations

from pathlib import Path

import torch

from recon.errors import InputError
from recon.io.formats import load_capture
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir, atomic_write_json, read_json
from recon.io.views import load_split
from recon.metrics import score_images
from recon.pipelines.capture import write_view_images
from recon.splat.model import GaussianModel
from recon.splat.render import render_all

__all__ = ["eval_cameras"]


def eval_cameras(run_dir: Path, cameras_file: Path, out: Path | None = None, *, allow_outside_paths: bool = False) -> dict:
    """Render and score the cameras of ``cameras_file`` (any capture recon reads, with its
    images) with the run's model, at the run's downscale and background.

    Writes one render per camera named after its image file (``<out>/renders``), photos and
    comparisons, and ``<out>/metrics.json``. ``out`` defaults to ``RUN/eval_<cameras file stem>``.
    """
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
    model = GaussianModel.from_params(read_splat_ply(run.path("splat.ply")))
    capture = load_capture(Path(cameras_file), allow_outside_paths=allow_outside_paths)
    views = load_split(capture, list(range(len(capture))), downscale)
    preds = render_all(model, views.cameras, views.width, views.height, model.sh_degree, background)
    target = RunDir(out if out is not None else run.path(f"eval_{Path(cameras_file).stem}"))
    write_view_images(target, ".", views.names, preds, views.images)
    scores = score_images(preds, views.images, views.names)
    scores["cameras"] = str(cameras_file)
    atomic_write_json(target.path("metrics.json"), scores)
    return scores
