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

TINY = SceneRepairConfig(loo_steps=6, perturbed=1, channels=(8, 16), train_steps=20, crop=16, batch=4, checkpoints=(0.5,))


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
    assert set(rep.movement) == {"means", "scales", "quats", "opacities", "sh0"} and rep.movement["means"] > 0
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
    # leave-one-out fits of 6 steps render at steps 2, 3, 4 (1/4, 1/2, 3/4) and 6: 3 x 4 left-out,
    # 3 x 2 x 3 under-fitted, 2 x 3 perturbed
    assert prior["kind"] == "repair" and prior["repair_model"]["n_pairs"] == 12 + 18 + 6
    assert set(prior["repair_model"]["perturb_std"]) == {"means", "scales", "quats", "opacities", "sh0"}
    assert prior["refreshes"][0]["seconds"] > prior["refreshes"][1]["seconds"]  # the first one trains the model
    # options of the other prior are refused, not ignored
    assert main([*args[:-14], "--prior", "repair", "--prior.strength", "0.5"]) == 2
    assert "--prior.strength: is an option of --prior pretrained, but --prior is repair" in capsys.readouterr().err


def _gaussians(n: int = 400, seed: int = 0):
    from recon.splat.model import GaussianModel

    g = torch.Generator().manual_seed(seed)
    return GaussianModel.from_points(torch.rand(n, 3, generator=g) * 2 - 1, torch.rand(n, 3, generator=g), sh_degree=1)


def _shifted(model, shifts: dict[str, float], seed: int):
    """``model`` with N(0, shifts[attr]^2) added to each attribute (means: a tiny shift, far below
    the points' spacing, so nearest centres still pair each Gaussian with its original)."""
    from recon.splat.model import GaussianModel

    g = torch.Generator().manual_seed(seed)
    p = {k: v.detach().clone() for k, v in model.params.items()}
    for k, s in shifts.items():
        p[k] = p[k] + s * torch.randn(p[k].shape, generator=g)
    return GaussianModel.from_params(p)


def test_attribute_movement_measures_the_leave_one_out_changes():
    from recon.prior.scene_repair import ATTRIBUTES, attribute_movement

    ref = _gaussians()
    shifts = {"means": 1e-3, "scales": 0.3, "opacities": 0.8, "sh0": 0.05}
    others = [_shifted(ref, shifts, seed) for seed in (1, 2, 3)]
    std = attribute_movement(ref, others, keep=1.0)
    assert set(std) == set(ATTRIBUTES)
    for k, s in shifts.items():
        assert std[k] == pytest.approx(s, rel=0.1), (k, std[k], s)
    assert std["quats"] == pytest.approx(0.0, abs=1e-6)  # not moved
    assert attribute_movement(ref, [ref])["scales"] == 0.0
    # a model that moved more measures more, attribute by attribute
    more = attribute_movement(ref, [_shifted(ref, {"opacities": 2.0}, 4)], keep=1.0)
    assert more["opacities"] > 2 * std["opacities"] and more["sh0"] == pytest.approx(0.0, abs=1e-6)
    # Gaussians with no counterpart are the farthest and are left out with keep < 1
    p = {k: v.detach().clone() for k, v in others[0].params.items()}
    p["means"][:20] += 10.0
    from recon.splat.model import GaussianModel

    outliers = GaussianModel.from_params(p)
    assert attribute_movement(ref, [outliers], keep=0.9)["means"] < 2e-3 < attribute_movement(ref, [outliers], keep=1.0)["means"]
    with pytest.raises(ValueError, match="no leave-one-out fits"):
        attribute_movement(ref, [])


def test_perturbed_gaussians_render_differently_and_repeatably(small_fox, tmp_path):
    from recon.prior.scene_repair import perturb_gaussians
    from recon.splat.render import render_all

    job = _job(small_fox, tmp_path / "run")
    model = job.trainer.export_model()
    std = {"means": 0.01, "scales": 0.2, "quats": 0.05, "opacities": 0.5, "sh0": 0.1}
    cams, w, h, bg = job.train.cameras, job.train.width, job.train.height, job.background

    def render(m):
        return render_all(m, cams, w, h, 0, bg)

    a = perturb_gaussians(model, std, torch.Generator().manual_seed(5))
    b = perturb_gaussians(model, std, torch.Generator().manual_seed(5))
    c = perturb_gaussians(model, std, torch.Generator().manual_seed(6))
    for k in ("means", "opacities"):
        assert float((a.params[k] - model.params[k]).std()) == pytest.approx(std[k], rel=0.15)
    with torch.no_grad():
        ra, rb, rc, r0 = render(a), render(b), render(c), render(model)
    assert torch.equal(ra, rb)  # same seed, same render
    assert float((ra - r0).abs().mean()) > 0.005 and float((ra - rc).abs().mean()) > 0.005
    zero = perturb_gaussians(model, dict.fromkeys(std, 0.0), torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(render(zero), r0)


def test_zero_init_starts_as_the_identity():
    from dataclasses import replace

    x = _smooth_images(2, 16, 24)
    model, _ = train_repair_model(x, x, replace(TINY, train_steps=1, lr=0.0), seed=0)
    with torch.no_grad():
        y = model(x.permute(0, 3, 1, 2), torch.randn(2, 3, 16, 24)).permute(0, 2, 3, 1)
    assert torch.allclose(y, x, atol=1e-6)
    random, _ = train_repair_model(x, x, replace(TINY, train_steps=1, lr=0.0, zero_init=False), seed=0)
    with torch.no_grad():
        assert not torch.allclose(random(x.permute(0, 3, 1, 2), torch.randn(2, 3, 16, 24)).permute(0, 2, 3, 1), x, atol=1e-3)
