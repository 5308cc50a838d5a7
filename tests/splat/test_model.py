"""GaussianModel: initialisation, activation, checkpoints with a changing N, optimisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recon.splat.model import (
    PARAM_NAMES,
    SH_C0,
    GaussianModel,
    LearningRates,
    means_lr_scheduler,
    rgb_to_sh,
    sh_to_rgb,
)


def _line_points(p: int = 6) -> torch.Tensor:
    pts = torch.zeros(p, 3)
    pts[:, 0] = torch.arange(p, dtype=torch.float32)
    return pts  # [P, 3] at x = 0, 1, 2, ...


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_from_points_shapes_and_values(degree):
    pts = torch.randn(20, 3)
    rgb = torch.rand(20, 3)
    m = GaussianModel.from_points(pts, rgb, sh_degree=degree, init_opacity=0.1)
    k = (degree + 1) ** 2
    shapes = {name: tuple(p.shape) for name, p in m.params.items()}
    assert shapes == {
        "means": (20, 3), "quats": (20, 4), "scales": (20, 3), "opacities": (20,),
        "sh0": (20, 1, 3), "shN": (20, k - 1, 3),
    }
    assert m.num_gaussians == 20 and m.sh_degree == degree
    assert all(p.dtype == torch.float32 and p.requires_grad for p in m.params.values())
    torch.testing.assert_close(m.params["means"].detach(), pts)
    torch.testing.assert_close(torch.sigmoid(m.params["opacities"]).detach(), torch.full((20,), 0.1))
    torch.testing.assert_close(m.params["quats"].detach(), torch.tensor([1.0, 0, 0, 0]).expand(20, 4))
    # degree-0 colour is the point colour
    torch.testing.assert_close(sh_to_rgb(m.params["sh0"][:, 0]).detach(), rgb, atol=1e-6, rtol=0)
    assert (m.params["shN"] == 0).all()
    # isotropic
    assert (m.params["scales"] == m.params["scales"][:, :1]).all()


def test_from_points_scale_is_rms_knn_distance():
    m = GaussianModel.from_points(_line_points(6), torch.rand(6, 3), init_scale=2.0)
    scales = torch.exp(m.params["scales"][:, 0]).detach()
    # point 0: neighbours at 1, 2, 3; point 2: at 1, 1, 2
    assert scales[0].item() == pytest.approx(2.0 * math.sqrt((1 + 4 + 9) / 3), rel=1e-6)
    assert scales[2].item() == pytest.approx(2.0 * math.sqrt((1 + 1 + 4) / 3), rel=1e-6)


def test_from_points_duplicates_and_two_points_stay_finite():
    pts = torch.zeros(5, 3)
    m = GaussianModel.from_points(pts, torch.rand(5, 3))
    assert torch.isfinite(m.params["scales"]).all()
    m2 = GaussianModel.from_points(_line_points(2), torch.rand(2, 3))
    torch.testing.assert_close(torch.exp(m2.params["scales"]).detach(), torch.ones(2, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"points": torch.zeros(5, 2)},
        {"points": torch.zeros(1, 3), "colours": torch.zeros(1, 3)},
        {"colours": torch.zeros(4, 3)},
        {"sh_degree": 4},
        {"init_opacity": 1.0},
        {"init_scale": 0.0},
        {"points": torch.full((5, 3), float("nan"))},
    ],
)
def test_from_points_bad_input(kwargs):
    args = {"points": torch.randn(5, 3), "colours": torch.rand(5, 3), **kwargs}
    with pytest.raises(ValueError):
        GaussianModel.from_points(**args)


def test_rgb_sh_roundtrip():
    rgb = torch.rand(7, 3)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    assert rgb_to_sh(torch.tensor([0.5])).item() == 0.0
    assert rgb_to_sh(torch.tensor([1.0])).item() == pytest.approx(0.5 / SH_C0)


def test_random_in_box_is_seeded_and_inside():
    box = torch.tensor([[-1.0, 0.0, 2.0], [1.0, 0.5, 3.0]])
    a = GaussianModel.random_in_box(50, box, sh_degree=1, seed=3)
    b = GaussianModel.random_in_box(50, box, sh_degree=1, seed=3)
    c = GaussianModel.random_in_box(50, box, sh_degree=1, seed=4)
    means = a.params["means"].detach()
    assert ((means >= box[0]) & (means <= box[1])).all()
    assert torch.equal(means, b.params["means"].detach())
    assert not torch.equal(means, c.params["means"].detach())
    assert a.sh_degree == 1
    with pytest.raises(ValueError):
        GaussianModel.random_in_box(10, box.flip(0))


@pytest.mark.parametrize("use", [0, 1, 2, 3])
def test_activated_shapes_values_and_gradients(use):
    m = GaussianModel.random_in_box(8, torch.tensor([[0.0] * 3, [1.0] * 3]), sh_degree=3)
    with torch.no_grad():
        m.params["quats"].mul_(3.0)
        m.params["shN"].normal_()
    out = m.activated(use)
    assert set(out) == {"means", "quats", "scales", "opacities", "colors"}
    assert out["colors"].shape == (8, (use + 1) ** 2, 3)
    torch.testing.assert_close(out["quats"].norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(out["scales"], torch.exp(m.params["scales"]))
    torch.testing.assert_close(out["opacities"], torch.sigmoid(m.params["opacities"]))
    torch.testing.assert_close(out["colors"][:, 1:], m.params["shN"][:, : (use + 1) ** 2 - 1])
    sum(v.sum() for v in out.values()).backward()
    for name in PARAM_NAMES:
        assert m.params[name].grad is not None
    # bands above `use` get no gradient
    assert (m.params["shN"].grad[:, (use + 1) ** 2 - 1 :] == 0).all()
    assert (m.params["shN"].grad[:, : (use + 1) ** 2 - 1] == 1).all()


def test_activated_rejects_degree_above_model():
    m = GaussianModel.from_points(torch.randn(4, 3), torch.rand(4, 3), sh_degree=1)
    assert m.activated()["colors"].shape == (4, 4, 3)
    with pytest.raises(ValueError, match="0..1"):
        m.activated(2)


def test_state_dict_roundtrip_with_different_n_and_degree():
    big = GaussianModel.random_in_box(30, torch.tensor([[0.0] * 3, [1.0] * 3]), sh_degree=3, seed=1)
    small = GaussianModel.random_in_box(5, torch.tensor([[0.0] * 3, [1.0] * 3]), sh_degree=1, seed=2)
    sd = big.state_dict()
    assert set(sd) == {f"params.{n}" for n in PARAM_NAMES}
    small.load_state_dict(sd)
    assert small.num_gaussians == 30 and small.sh_degree == 3
    for name in PARAM_NAMES:
        assert torch.equal(small.params[name], big.params[name])
        assert isinstance(small.params[name], nn.Parameter) and small.params[name].requires_grad
    # nested inside another module: the parent's load goes through our hook too
    outer_a, outer_b = nn.Module(), nn.Module()
    outer_a.gs, outer_b.gs = big, GaussianModel.from_points(torch.randn(3, 3), torch.rand(3, 3))
    outer_b.load_state_dict(outer_a.state_dict())
    assert outer_b.gs.num_gaussians == 30


def test_load_state_dict_rejects_inconsistent_checkpoint():
    m = GaussianModel.from_points(torch.randn(6, 3), torch.rand(6, 3), sh_degree=0)
    sd = m.state_dict()
    sd["params.opacities"] = torch.zeros(4)
    with pytest.raises(ValueError, match="opacities"):
        GaussianModel.from_points(torch.randn(6, 3), torch.rand(6, 3), sh_degree=0).load_state_dict(sd)


def test_constructor_checks_names_and_shapes():
    m = GaussianModel.from_points(torch.randn(6, 3), torch.rand(6, 3), sh_degree=2)
    params = {k: v.detach() for k, v in m.params.items()}
    assert GaussianModel.from_params(params).num_gaussians == 6
    with pytest.raises(ValueError, match="missing"):
        GaussianModel({k: v for k, v in params.items() if k != "sh0"})
    with pytest.raises(ValueError, match="shN"):
        GaussianModel({**params, "shN": torch.zeros(6, 5, 3)})


def test_make_optimizers_rates_and_one_step():
    m = GaussianModel.from_points(torch.randn(10, 3), torch.rand(10, 3), sh_degree=0)
    opts = m.make_optimizers(scene_scale=2.5)
    assert set(opts) == set(PARAM_NAMES)
    lrs = {k: o.param_groups[0]["lr"] for k, o in opts.items()}
    assert lrs == pytest.approx(
        {"means": 1.6e-4 * 2.5, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    )
    for k, o in opts.items():
        assert isinstance(o, torch.optim.Adam) and o.param_groups[0]["eps"] == 1e-15
        assert o.param_groups[0]["params"] == [m.params[k]]
    before = {k: v.detach().clone() for k, v in m.params.items()}
    out = m.activated(0)
    sum((v**2).sum() for v in out.values()).backward()
    for o in opts.values():
        o.step()
    for k in ("means", "scales", "opacities", "sh0"):
        assert not torch.equal(before[k], m.params[k]), k
    assert m.params["shN"].shape == (10, 0, 3)  # empty band trains without complaint


def test_make_optimizers_overrides():
    m = GaussianModel.from_points(torch.randn(4, 3), torch.rand(4, 3))
    opts = m.make_optimizers({"scales": 1e-2}, scene_scale=2.0, means_lr=1e-3)
    assert opts["scales"].param_groups[0]["lr"] == 1e-2
    assert opts["means"].param_groups[0]["lr"] == pytest.approx(2e-3)
    opts = m.make_optimizers(LearningRates(quats=0.5))
    assert opts["quats"].param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown"):
        m.make_optimizers({"colour": 1.0})


def test_means_lr_scheduler_decays_to_one_percent():
    m = GaussianModel.from_points(torch.randn(4, 3), torch.rand(4, 3))
    opts = m.make_optimizers(scene_scale=1.0)
    sched = means_lr_scheduler(opts, max_steps=50)
    lr0 = opts["means"].param_groups[0]["lr"]
    for _ in range(50):
        opts["means"].step()
        sched.step()
    assert opts["means"].param_groups[0]["lr"] == pytest.approx(0.01 * lr0, rel=1e-6)
    assert opts["scales"].param_groups[0]["lr"] == 5e-3
    with pytest.raises(ValueError):
        means_lr_scheduler(opts, max_steps=0)
