"""``recon fit --model anchored`` end to end on a small subset of the real fox capture."""

from __future__ import annotations

import copy

import json

import pytest
import torch

from recon.cli import main
from recon.errors import InputError
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from recon.train import read_checkpoint
from recon.pipelines.capture import CaptureFitConfig
from recon.splat.config import apply_overrides
from recon.splat.anchored import AnchoredConfig, AnchoredGaussians
from tests._floors import blank_floor, run_images

TINY = ["--downscale", "16", "--init-points", "2000", "--eval-views", "2", "--train-views", "3",
        "--anchored.max-anchors", "400", "--anchored.planes", "8", "16"]


def _cfg(data, out, **kw) -> CaptureFitConfig:
    base = {"data": data, "out": out, "model": "anchored", "train_views": (3,), "eval_views": 2, "downscale": 16.0,
            "iterations": 20, "init_points": 2000, "checkpoint_every": 10,
            "anchored": AnchoredConfig(max_anchors=400, planes=(8, 16))}
    base.update(kw)
    return CaptureFitConfig(**base)


@pytest.mark.slow  # ~25 s: 40 anchored steps
def test_cli_fit_anchored_writes_complete_run(small_fox, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", str(small_fox), "--out", str(out), "--model", "anchored", "--iterations", "40", *TINY])
    err = capsys.readouterr().err
    assert code == 0, err
    assert RunDir(out).is_complete()
    for name in ("config.json", "metrics.json", "splat.ply", "loss.png", "log.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["n_anchors"] <= 400
    assert 0 < metrics["n_gaussians"] <= 8 * metrics["n_anchors"]
    assert len(list((out / "renders" / "eval").glob("*.png"))) == 2
    # training did something: the untrained model renders a grey fog (11.7 dB, below the blank
    # render: the mean training colour as background scores 12.0, SSIM 0.22); 40 steps reach 14.9 dB, 0.28
    images, background = run_images(out, "train")
    blank = blank_floor(images, background)
    assert metrics["train"]["mean"]["psnr"] > blank["psnr"] + 1.5, (metrics["train"]["mean"], blank)
    assert metrics["train"]["mean"]["ssim"] > blank["ssim"] + 0.03, (metrics["train"]["mean"], blank)
    params = read_splat_ply(out / "splat.ply")
    assert params["means"].shape[0] == metrics["n_gaussians"] and torch.isfinite(params["means"]).all()
    assert params["shN"].shape[1] == 15  # SH degree 3 decoded
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "anchored" and config["anchored"]["max_anchors"] == 400
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40 and log[-1]["n_anchors"] == metrics["n_anchors"]


def test_resume_continues_from_checkpoint(small_fox, tmp_path):
    out = tmp_path / "run"
    _cfg(small_fox, out, iterations=10, checkpoint_every=5).setup().run()
    job = _cfg(small_fox, out, iterations=16, checkpoint_every=5, resume=True).setup()
    assert isinstance(job.trainer.model, AnchoredGaussians)
    seen = []
    job.run(progress=lambda s, t, st: seen.append(s))
    assert seen[0] == 11 and seen[-1] == 16
    assert RunDir(out).is_complete()
    latest = read_checkpoint(RunDir(out))
    assert latest["trainer"]["model_kind"] == "anchored" and latest["step"] == 16


def test_checkpoint_restores_the_training_state(small_fox, tmp_path):
    """A trainer loaded from a checkpoint takes the same next step as the one that wrote it
    (anchors, networks, Adam moments, pruning state), also after anchors were removed."""
    cfg = {"anchored": AnchoredConfig(max_anchors=400, planes=(8, 16), prune_every=4)}
    job_a = _cfg(small_fox, tmp_path / "a", iterations=9, checkpoint_every=0, **cfg).setup()
    job_a.run()
    a = job_a.trainer
    a.model.remove_anchors(torch.arange(a.model.num_anchors) % 7 == 0, a.optimizers)
    a.fields[0].state = a.model.initialize_state()
    b = _cfg(small_fox, tmp_path / "b", iterations=9, **cfg).setup().trainer
    assert b.model.num_anchors > a.model.num_anchors
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.step == 9 and b.model.num_anchors == a.model.num_anchors
    for _ in (9, 10, 11):  # step 11 is a pruning check
        assert a.train_step() == b.train_step()
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)


def test_gaussians_checkpoint_is_not_resumed_as_anchored(small_fox, tmp_path):
    out = tmp_path / "run"
    _cfg(small_fox, out, model="gaussians", iterations=4, anchored=AnchoredConfig()).setup().run()
    with pytest.raises(InputError, match="--model gaussians fit"):
        _cfg(small_fox, out, iterations=8, resume=True).setup().run()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"reg.dropout": 0.1}, "--reg.dropout"),
        ({"refine_poses": True}, "pose refinement"),
        ({"prune_outliers": True}, "--outlier-every 0"),
        ({"means_lr": 1e-3}, "--means-lr"),
        ({"init_scale": 1.0}, "--init-scale"),
    ],
)
def test_unsupported_options_are_refused(small_fox, tmp_path, overrides, match):
    overrides = dict(overrides)
    preset = overrides.pop("preset", "plain")
    cfg = apply_overrides(_cfg(small_fox, tmp_path / "run", preset=preset), overrides)
    with pytest.raises(InputError, match=match):
        cfg.setup()
    assert not (tmp_path / "run").exists()


def test_initial_outlier_pruning_is_allowed(small_fox, tmp_path):
    cfg = _cfg(small_fox, tmp_path / "run", prune_outliers=True, outlier_every=0)
    trainer = cfg.setup().trainer
    assert "outliers removed" in trainer.init_description and "anchors" in trainer.init_description


def test_cli_bad_anchored_option_is_one_line(small_fox, tmp_path, capsys):
    code = main(["fit", str(small_fox), "--out", str(tmp_path / "run"), "--model", "anchored", "--refine-poses", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "pose refinement" in err
