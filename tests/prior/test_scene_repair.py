"""The per-scene repair model: the one-step UNet, that it learns a known degradation, training
pairs from the scene, saving and reloading, and `recon fit --prior repair` end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from recon.cli import main
from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig
from recon.prior.guidance import PriorConfig, build_repairer
from recon.prior.scene_repair import (
    RepairUNet,
    SceneRepairConfig,
    SceneRepairer,
    train_repair_model,
)

TINY = SceneRepairConfig(loo_steps=6, perturbed=1, channels=(8, 16), train_steps=20, crop=16, batch=4)


def _smooth_images(n: int, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 8, w // 8, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).contiguous()


def test_unet_shapes_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = RepairUNet(channels=(8, 16, 16), timestep=50).eval()
    assert model.multiple == 4
    x = torch.rand(2, 3, 12, 20)
    noise = torch.randn(2, 3, 12, 20)
    y = model(x, noise)
    assert y.shape == x.shape and torch.isfinite(y).all()
    model.save_pretrained(tmp_path / "m")
    again = RepairUNet.from_pretrained(tmp_path / "m").eval()
    assert again.config.timestep == 50 and tuple(again.config.channels) == (8, 16, 16)
    assert torch.equal(again(x, noise), y)
    assert not torch.allclose(model(x, torch.randn(2, 3, 12, 20)), y)  # the noise enters


def test_learns_a_known_degradation():
    """Degradation: contrast halved towards grey. Trained on 6 images, scored on 4 others."""
    clean = _smooth_images(10)
    degraded = 0.5 * clean + 0.25
    cfg = SceneRepairConfig(channels=(16, 32), train_steps=150, crop=24, batch=8, lr=3e-3)
    model, losses = train_repair_model(degraded[:6], clean[:6], cfg, seed=0)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    with torch.no_grad():
        out = model(degraded[6:].permute(0, 3, 1, 2), torch.zeros(4, 3, 40, 56)).permute(0, 2, 3, 1)
    before = float((degraded[6:] - clean[6:]).abs().mean())
    after = float((out - clean[6:]).abs().mean())
    # measured: 0.11 before, 0.03 after
    assert after < 0.5 * before, (before, after)


def test_train_repair_model_checks_shapes():
    with pytest.raises(ValueError, match="target: expected shape"):
        train_repair_model(torch.rand(2, 16, 16, 3), torch.rand(2, 16, 17, 3), TINY)


def _job(data, out, **kw):
    base = dict(data=data, out=out, preset="plain", train_views=(3,), eval_views=1, downscale=16.0, iterations=20,
                init_points=500, checkpoint_every=0)  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base).setup()


def test_pairs_save_and_reload(small_fox, tmp_path):
    job = _job(small_fox, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    rep = SceneRepairer(TINY, job.train, job.subset_trainer, job.background, run=run, seed=2)
    degraded, target, kinds = rep.pairs(job.trainer)
    k = 3
    assert len(kinds) == degraded.shape[0] == target.shape[0] == 2 * k + k * (k - 1) + 1 * k
    assert degraded.shape[1:] == (job.train.height, job.train.width, 3)
    assert sum(s.startswith("leave-out") for s in kinds) == 2 * k
    leave_out = [i for i, s in enumerate(kinds) if s.startswith("leave-out")]
    # a left-out view is scored against its own photo, and its render is not that photo
    assert torch.equal(target[leave_out[0]], job.train.images[0])
    assert float((degraded[leave_out[0]] - target[leave_out[0]]).abs().mean()) > 0.05
    rep.prepare(job.trainer)
    assert rep.report["n_pairs"] == len(kinds)
    assert (run.prior_path("repair_model") / "config.json").is_file()
    assert len(json.loads(run.prior_path("pairs", "pairs.json").read_text())["kinds"]) == len(kinds)
    x = torch.rand(2, job.train.height, job.train.width, 3)
    y = rep(x, seed=4)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    again = SceneRepairer(TINY, job.train, job.subset_trainer, job.background, run=run, seed=2)
    assert again.model is not None and "loaded" in again.report  # --resume: no second training
    assert torch.equal(again(x, seed=4), y)


def test_needs_three_training_views(small_fox, tmp_path):
    job = _job(small_fox, tmp_path / "run", train_views=(2,))
    from recon.errors import InputError

    with pytest.raises(InputError, match="leave-one-out fits need >= 3 training views"):
        build_repairer("repair", PriorConfig(), torch.device("cpu"), train=job.train, make_trainer=job.subset_trainer,
                       background=job.background)  # fmt: skip


def test_fit_with_the_scene_repair_prior(small_fox, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", str(small_fox), "--out", str(out), "--preset", "plain", "--train-views", "3", "--eval-views", "1",
            "--downscale", "16", "--init-points", "500", "--iterations", "25", "--checkpoint-every", "0",
            "--prior", "repair", "--prior.start", "10", "--prior.every", "10", "--prior.loo-steps", "6",
            "--prior.model-steps", "20", "--prior.crop", "16", "--prior.view-every", "1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    run = RunDir(out)
    assert run.is_complete() and run.prior_refreshes() == [10, 20]
    prior = json.loads((out / "metrics.json").read_text())["prior"]
    assert prior["kind"] == "repair" and prior["repair_model"]["n_pairs"] == 6 + 6 + 6
    assert prior["refreshes"][0]["seconds"] > prior["refreshes"][1]["seconds"]  # the first one trains the model
    # options of the other prior are refused, not ignored
    assert main([*args[:-14], "--prior", "repair", "--prior.strength", "0.5"]) == 2
    assert "--prior.strength: is an option of --prior pretrained, but --prior is repair" in capsys.readouterr().err
