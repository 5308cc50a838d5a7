"""Trivial baselines for quality floors: what a blank, constant or untrained result scores.

An end-to-end test that asserts a score asserts a margin above one of these (computed in the
test, on the same targets), so it fails when training does nothing. Image scores are the means
over views of per-view PSNR / SSIM, as :func:`recon.metrics.score_images` reports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from recon.metrics import psnr, ssim


def image_scores(preds: Tensor, targets: Tensor) -> dict[str, float]:  # [V, H, W, 3] each
    """Mean PSNR and SSIM over views of ``preds`` against ``targets`` (both ``[V, H, W, 3]``)."""
    preds = preds.clamp(0, 1)
    return {"psnr": float(psnr(preds, targets).mean()), "ssim": float(ssim(preds, targets).mean())}


def constant_image_scores(targets: Tensor, colour: Sequence[float] | Tensor | None = None) -> dict[str, float]:
    """Scores of a constant image against every target (``[V, H, W, 3]``): ``colour`` (RGB),
    or, when None, each view's own mean colour (the constant with the least squared error:
    the best any blank render can do)."""
    if colour is None:
        blank = targets.mean(dim=(1, 2), keepdim=True).expand_as(targets)
    else:
        blank = torch.as_tensor(colour, dtype=targets.dtype).expand_as(targets)
    return image_scores(blank, targets)


def blank_floor(targets: Tensor, background: Sequence[float] | Tensor) -> dict[str, float]:
    """Per metric, the best of: the background colour alone (a render with no Gaussians), black,
    and each view's mean colour."""
    trials = [constant_image_scores(targets, background), constant_image_scores(targets, (0.0, 0.0, 0.0)),
              constant_image_scores(targets)]  # fmt: skip
    return {k: max(t[k] for t in trials) for k in ("psnr", "ssim")}


@torch.no_grad()
def untrained_capture_scores(job) -> dict[str, dict[str, float]]:
    """Scores of a :class:`recon.pipelines.capture.CaptureFit` job's current model (call it
    before ``run``: the untrained model), per split, rendered as the job's outputs are."""
    from recon.splat.render import render_all

    model = job.trainer.export_model()
    out = {}
    for split, views in (("train", job.train), ("eval", job.eval)):
        if views is not None:
            preds = render_all(model, views.cameras, views.width, views.height, job.config.sh_degree, job.background)
            out[split] = image_scores(preds, views.images)
    return out


def run_images(run_dir: Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """The ``split`` images of a finished ``recon fit`` run at its resolution, ``[V, H, W, 3]``,
    and the background colour it used (from ``config.json`` / ``run.json``)."""
    from recon.io.formats import load_capture
    from recon.io.views import load_split

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    names = json.loads((run_dir / "run.json").read_text())[f"{split}_views"]
    capture = load_capture(Path(config["data"]))
    indices = [capture.names.index(n) for n in names]
    return load_split(capture, indices, float(config["downscale"])).images, torch.tensor(config["background"])


def constant_volume_scores(reference: np.ndarray) -> dict[str, float]:
    """Per metric, the better of an all-zero volume and one filled with the reference's mean
    (the best constant), against ``reference``: ``psnr_3d`` and ``ssim_3d`` as
    :func:`recon.pipelines.ct.volume_metrics` computes them for ``metrics.json``."""
    from recon.ct.metrics import psnr_3d, ssim_3d

    ref = np.asarray(reference, dtype=np.float64)
    trials = [np.zeros_like(ref), np.full_like(ref, ref.mean())]
    return {"psnr_3d": max(psnr_3d(t, ref) for t in trials), "ssim_3d": max(ssim_3d(t, ref).mean for t in trials)}


def assert_loss_falls(losses: Sequence[float], k: int = 10, ratio: float = 0.8) -> None:
    """The mean of the last ``k`` losses is below ``ratio`` x the mean of the first ``k``."""
    assert len(losses) >= 2 * k, f"need >= {2 * k} losses, got {len(losses)}"
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    assert last < ratio * first, f"loss did not fall enough: first {k} mean {first:.4g}, last {k} mean {last:.4g} (want < {ratio} x)"
