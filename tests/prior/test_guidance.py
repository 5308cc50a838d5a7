"""Prior guidance: the schedule, that repaired pseudo views pull the fit towards them (and the
fused and reference CPU steps agree with them), saving and exact reloading, option checks."""

from __future__ import annotations

import json

import pytest
import torch

from recon.errors import InputError
from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig
from recon.prior.guidance import GuidedTrainer, PriorConfig, PriorGuidance, quantise
from recon.prior.pseudo_views import PseudoViewConfig, make_pseudo_views
from recon.splat.render import render
from recon.splat.trainer import ExtraTargets
from recon.train import train

RED = torch.tensor([0.9, 0.1, 0.1])


class Paint:
    """A repairer that paints every pseudo view one colour (and counts its calls)."""

    def __init__(self, colour: torch.Tensor = RED):
        self.colour, self.calls = colour, []

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        self.calls.append(seed)
        return self.colour.expand_as(images).clone()


def _job(data, out, **kw):
    base = dict(data=data, out=out, preset="plain", train_views=(3,), eval_views=1, downscale=16.0, iterations=60,
                init_points=500, checkpoint_every=0)  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base).setup()


@torch.no_grad()
def _pseudo_error(job, views, covered: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Mean |render - RED| over the pixels of the pseudo views in ``covered`` (default: those the
    Gaussians cover now, alpha > 0.5; the black background elsewhere cannot turn red) and that mask."""
    colours, alphas, _ = render(job.trainer.export_model(), views.cameras, job.train.width, job.train.height, 0, job.background)
    covered = alphas[..., 0] > 0.5 if covered is None else covered
    return float((colours[..., :3].clamp(0, 1) - RED).abs()[covered].mean()), covered


def test_schedule():
    g = PriorGuidance(PriorConfig(start=10, every=5), None, Paint(), 8, 8, torch.zeros(3))  # type: ignore[arg-type]
    assert [s for s in range(30) if g.due(s)] == [10, 15, 20, 25]
    g.last_refresh = 15  # restored from the run folder: not repaired again at that step
    assert not g.due(15) and g.due(20)


def test_repaired_views_pull_the_fit_towards_them(small_fox, tmp_path):
    base = _job(small_fox, tmp_path / "a")
    views = make_pseudo_views(base.train.cameras, PseudoViewConfig(between=1, near=1))
    before, covered = _pseudo_error(base, views)
    train(base.trainer, 60)
    without, _ = _pseudo_error(base, views, covered)
    guided = _job(small_fox, tmp_path / "b")
    paint = Paint()
    g = PriorGuidance(PriorConfig(start=0, every=20, weight=4.0, view_every=1), views, paint,
                      guided.train.width, guided.train.height, guided.background, seed=5)  # fmt: skip
    runner = GuidedTrainer(guided.trainer, g)
    train(runner, 60)
    with_prior, _ = _pseudo_error(guided, views, covered)
    assert paint.calls == [5, 25, 45]  # refreshes at steps 0, 20, 40, seeded seed + step
    assert [r["step"] for r in g.refreshes] == [0, 20, 40]
    assert all("prior" in r for r in guided.trainer.history)  # a pseudo term every step
    assert guided.trainer.extra_cursor == 60
    # measured on the covered pixels: 0.300 before, 0.349 after 60 steps without the prior (the
    # fox is not red), 0.282 with it (colours move at most ~0.0025 per step in SH units)
    assert with_prior < without - 0.04 and with_prior < before - 0.01, (before, without, with_prior)


def test_fused_and_reference_steps_agree_with_extra_targets(small_fox, tmp_path):
    jobs = [_job(small_fox, tmp_path / k, cpu_kernels=k) for k in ("fused", "reference")]
    views = make_pseudo_views(jobs[0].train.cameras, PseudoViewConfig(between=1, near=0))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(len(views), jobs[0].train.height, jobs[0].train.width, 3, generator=g)
    for job in jobs:
        job.trainer.set_extra_targets(ExtraTargets(views.cameras.w2c, views.cameras.Ks(), images, views.weights * 3.0))
        torch.manual_seed(0)
        stats = [job.trainer.train_step() for _ in range(2)]
        assert all(s["prior"] > 0 for s in stats)
    a, b = (j.trainer.model.params for j in jobs)
    for key in ("means", "scales", "opacities", "sh0"):
        assert torch.allclose(a[key], b[key], atol=2e-5, rtol=1e-4), (key, float((a[key] - b[key]).abs().max()))
    # and the extra term changed the step: without it the parameters differ
    plain = _job(small_fox, tmp_path / "plain", cpu_kernels="reference")
    torch.manual_seed(0)
    for _ in range(2):
        plain.trainer.train_step()
    assert not torch.allclose(plain.trainer.model.params["sh0"], b["sh0"], atol=1e-6)


def test_saved_refresh_reloads_exactly(small_fox, tmp_path):
    job = _job(small_fox, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    views = make_pseudo_views(job.train.cameras, PseudoViewConfig(between=1, near=1))
    def repair(images, seed):
        return (images * 0.7 + 0.1 + 0.01 * torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)

    g = PriorGuidance(PriorConfig(start=0, every=4), views, repair, job.train.width, job.train.height, job.background, run=run)
    assert g.write_views() is not None
    saved = json.loads(run.prior_path("pseudo_views.json").read_text())
    assert [v["name"] for v in saved["views"]] == views.names()
    assert [v["weight"] for v in saved["views"]] == pytest.approx(views.weights.tolist(), abs=1e-6)
    g.refresh(job.trainer)
    job.trainer.train_step()
    job.trainer.train_step()
    in_memory = job.trainer.extra.images.clone()
    assert torch.equal(in_memory, quantise(in_memory))  # on the 8-bit grid
    assert run.prior_refreshes() == [0]
    assert sorted(p.name for p in run.prior_refresh_dir(0).iterdir()) == ["refresh.json", "renders", "repaired"]
    other = _job(small_fox, tmp_path / "other")
    other.trainer.step = 3
    g2 = PriorGuidance(PriorConfig(start=0, every=4), views, Paint(), job.train.width, job.train.height, job.background, run=run)
    assert g2.restore(other.trainer) == 0
    assert torch.equal(other.trainer.extra.images, in_memory)
    assert torch.equal(other.trainer.extra.weights, views.weights * 0.5)
    assert not g2.due(0) and g2.due(4)
    # an incomplete refresh (no refresh.json) is ignored
    (run.prior_refresh_dir(0) / "refresh.json").unlink()
    assert run.prior_refreshes() == []
    assert g2.restore(other.trainer) is None


def test_extra_targets_are_checked(small_fox, tmp_path):
    job = _job(small_fox, tmp_path / "run")
    w, h = job.train.width, job.train.height
    eye = torch.eye(4)[None]
    K = job.train.cameras.Ks()[:1]
    with pytest.raises(ValueError, match=r"images \[P, %d, %d, 3\]" % (h, w)):
        job.trainer.set_extra_targets(ExtraTargets(eye, K, torch.zeros(1, h + 1, w, 3), torch.ones(1)))
    with pytest.raises(ValueError, match="weights >= 0"):
        job.trainer.set_extra_targets(ExtraTargets(eye, K, torch.zeros(1, h, w, 3), -torch.ones(1)))
    job.trainer.set_extra_targets(None)
    assert job.trainer.extra is None


@pytest.mark.parametrize(
    ("prior", "options", "match"),
    [
        ("none", {"pretrained": "x"}, "--prior.pretrained: is an option of --prior pretrained, but --prior is none"),
        ("none", {"weight": 2.0}, "--prior.weight: is an option"),
        ("pretrained", {}, "needs --prior.pretrained DIR"),
        ("pretrained", {"pretrained": "x", "every": 0}, "--prior.every: must be >= 1"),
        ("pretrained", {"pretrained": "x", "weight": 0.0}, "--prior.weight: must be > 0"),
        ("pretrained", {"pretrained": "x", "between": 0, "near": 0}, "--prior.between: at least one"),
        ("pretrained", {"pretrained": "x", "rot_scale_deg": -1.0}, "--prior.rot-scale-deg: must be > 0"),
        ("diffusion", {}, "unknown prior 'diffusion'"),
    ],
)
def test_prior_options_are_checked(prior, options, match):
    with pytest.raises(InputError, match=match):
        PriorConfig(**options).validate(prior)
