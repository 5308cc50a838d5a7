"""`recon fit --prior pretrained --prior.pretrained DIR` end to end, on a tiny randomly initialised
Stable Diffusion image-to-image pipeline saved to a temporary folder: the run folder's prior/,
metrics, exact resume, and one-line errors for bad options."""

from __future__ import annotations

import json

import pytest
import torch

from recon.cli import main
from recon.io.images import load_image
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig
from tests._floors import untrained_capture_scores
from tests.pipelines.test_resume import _interrupt_after_checkpoint
from tests.prior.tiny_diffusion import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "plain", "--train-views", "3", "--eval-views", "1", "--downscale", "16", "--init-points", "500",
        "--checkpoint-every", "0", "--seed", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny_img2img")


def _prior(folder, start=5, every=10) -> list[str]:
    return ["--prior", "pretrained", "--prior.pretrained", str(folder), "--prior.start", str(start), "--prior.every", str(every),
            "--prior.view-every", "1", "--prior.steps", "2", "--prior.strength", "0.5", "--prior.between", "1"]  # fmt: skip


def test_fit_with_a_pretrained_pipeline(small_fox, tmp_path, tiny_pipeline, capsys):
    out = tmp_path / "run"
    args = ["fit", str(small_fox), "--out", str(out), "--iterations", "30", *TINY, *_prior(tiny_pipeline)]
    untrained = untrained_capture_scores(CaptureFitConfig(data=small_fox, out=tmp_path / "probe", preset="plain", train_views=(3,),
                                                          eval_views=1, downscale=16.0, init_points=500, seed=1).setup())  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    run = RunDir(out)
    assert run.is_complete()
    views = json.loads(run.prior_path("pseudo_views.json").read_text())["views"]
    assert len(views) >= 3 and all(0 < v["weight"] <= 1 for v in views)
    assert run.prior_refreshes() == [5, 15, 25]
    for step in (5, 15, 25):
        folder = run.prior_refresh_dir(step)
        for v in views:
            render = load_image(folder / "renders" / f"{v['name']}.png")
            repaired = load_image(folder / "repaired" / f"{v['name']}.png")
            assert render.shape == repaired.shape == (v["height"], v["width"], 3)
        # the random pipeline changes what it is given
        assert json.loads((folder / "refresh.json").read_text())["render_change_l1"] > 0.02
    metrics = json.loads((out / "metrics.json").read_text())
    prior = metrics["prior"]
    assert prior["kind"] == "pretrained" and prior["n_pseudo_views"] == len(views)
    assert [r["step"] for r in prior["refreshes"]] == [5, 15, 25] and prior["repair_time_s"] > 0
    log = run.read_log()
    assert all("prior" in r for r in log if r["step"] > 5) and not any("prior" in r for r in log if r["step"] <= 5)
    config = json.loads((out / "config.json").read_text())
    assert config["prior"] == "pretrained" and config["prior_options"]["pretrained"] == str(tiny_pipeline)
    # the real views are still fitted (untrained: 6.5-9 dB on the training views; 30 steps: +3.5-5 dB)
    assert metrics["train"]["mean"]["psnr"] > untrained["train"]["psnr"] + 2.0, (metrics["train"]["mean"], untrained)


REPAIR = ["--prior", "repair", "--prior.start", "5", "--prior.every", "10", "--prior.view-every", "1", "--prior.between", "1",
          "--prior.loo-steps", "6", "--prior.model-steps", "20", "--prior.crop", "16"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["pretrained", "repair"])
def test_resume_with_a_prior_is_exact(small_fox, tmp_path, tiny_pipeline, prior):
    """Interrupted after its checkpoint at step 10 (refreshes at 5, 15, 25, ...), resumed: the
    refresh of step 5 (and the repair model trained then) is reloaded from prior/, the later
    ones repaired again, bit-identical."""
    chosen = _prior(tiny_pipeline) if prior == "pretrained" else REPAIR
    common = [*TINY[:-4], "--iterations", "40", "--checkpoint-every", "10", "--seed", "3", *chosen]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["fit", str(small_fox), "--out", str(whole), *common]) == 0
    _interrupt_after_checkpoint(["fit", str(small_fox), "--out", str(cut), *common], cut, 10)
    assert main(["fit", str(small_fox), "--out", str(cut), *common, "--resume"]) == 0
    a, b = read_splat_ply(whole / "splat.ply"), read_splat_ply(cut / "splat.ply")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume: max |diff| {float((a[key] - b[key]).abs().max())}"
    assert RunDir(cut).prior_refreshes() == [5, 15, 25, 35]
    refreshes = json.loads((cut / "metrics.json").read_text())["prior"]["refreshes"]
    assert [r["step"] for r in refreshes] == [5, 15, 25, 35]  # 5 reloaded, the rest repaired after the resume


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--prior.pretrained", "{pipe}"], "--prior.pretrained: is an option of --prior pretrained, but --prior is none"),
        (["--prior", "pretrained"], "--prior pretrained: needs --prior.pretrained DIR"),
        (["--prior", "pretrained", "--prior.pretrained", "{missing}"], "{missing}: no such folder"),
        (["--prior", "pretrained", "--prior.pretrained", "{pipe}", "--model", "anchored"], "--prior: is not supported with --model anchored"),
        (["--prior", "pretrained", "--prior.pretrained", "{pipe}", "--prior.strength", "0.01"], "--prior.steps: steps x strength"),
    ],
)
def test_bad_prior_options_are_one_line_and_write_nothing(small_fox, tmp_path, tiny_pipeline, capsys, extra, match):
    out = tmp_path / "run"
    subs = {"pipe": str(tiny_pipeline), "missing": str(tmp_path / "no_such_pipeline")}
    args = ["fit", str(small_fox), "--out", str(out), "--iterations", "5", *TINY, *[e.format(**subs) for e in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match.format(**subs) in err and "Traceback" not in err, err
    assert not out.exists()
