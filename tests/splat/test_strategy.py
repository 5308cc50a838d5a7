"""DensifyStrategy: grow / split / prune / reset decisions, Adam state, cap, gsplat parity."""

from __future__ import annotations

import copy
import math
import re

import gsplat.strategy as gsplat_strategy
import pytest
import torch
from torch import nn

from recon.splat.model import GaussianModel
from recon.splat.strategy import DensifyStrategy, duplicate_rows, remove_rows, _reset_opacities, split_rows

W = H = 100  # grads scale by W/2 * C = 50 with one camera
HIGH, LOW = 1e-3, 1e-7  # -> normalised 0.05 and 5e-6 against grow_grad2d = 2e-4


def _params(n: int, scales=None, opacities=None, degree: int = 1) -> nn.ParameterDict:
    k = (degree + 1) ** 2
    scales = torch.full((n,), 0.005) if scales is None else torch.as_tensor(scales, dtype=torch.float32)
    opa = torch.full((n,), 0.3) if opacities is None else torch.as_tensor(opacities, dtype=torch.float32)
    return nn.ParameterDict(
        {
            "means": nn.Parameter(torch.randn(n, 3)),
            "quats": nn.Parameter(torch.randn(n, 4)),
            "scales": nn.Parameter(torch.log(scales)[:, None].repeat(1, 3) + 0.01 * torch.rand(n, 3)),
            "opacities": nn.Parameter(torch.logit(opa)),
            "sh0": nn.Parameter(torch.randn(n, 1, 3)),
            "shN": nn.Parameter(torch.randn(n, k - 1, 3)),
        }
    )


def _adam(params) -> dict[str, torch.optim.Adam]:
    return {k: torch.optim.Adam([{"params": [p], "lr": 1e-2, "name": k}], eps=1e-15) for k, p in params.items()}


def _train_step(params, optimizers) -> None:
    """One Adam step on a loss touching every row (so moments are non-zero)."""
    loss = sum((p * torch.linspace(1, 2, p.numel()).reshape(p.shape)).pow(2).sum() for p in params.values())
    for opt in optimizers.values():
        opt.zero_grad()
    loss.backward()
    for opt in optimizers.values():
        opt.step()


def _info(grads, radii=None) -> dict:
    """Rasteriser meta for C cameras, with ``grads`` [C, N, 2] as means2d.grad."""
    grads = torch.as_tensor(grads, dtype=torch.float32)
    c, n, _ = grads.shape
    means2d = torch.zeros(c, n, 2, requires_grad=True)
    means2d.grad = grads.clone()
    radii = torch.full((c, n), 3, dtype=torch.int32) if radii is None else torch.as_tensor(radii, dtype=torch.int32)
    return {"means2d": means2d, "radii": radii, "width": W, "height": H, "n_cameras": c, "gaussian_ids": None}


def _grad_rows(values) -> torch.Tensor:
    g = torch.zeros(1, len(values), 2)
    g[0, :, 0] = torch.tensor(values)
    return g


# Hand-built scene: 0, 1 small + high grad -> duplicate; 2 large + high grad -> split;
# 3 small, low grad -> keep; 4 transparent -> prune; 5 high grad but never visible -> keep;
# 6 large, low grad -> keep (too-big pruning starts only after the first reset).
SCALES = [0.005, 0.005, 0.05, 0.005, 0.005, 0.005, 0.5]
OPACITIES = [0.3, 0.3, 0.3, 0.3, 0.001, 0.3, 0.3]
GRADS = [HIGH, HIGH, HIGH, LOW, LOW, HIGH, LOW]
RADII = [[3, 3, 3, 3, 3, 0, 3]]


def _hand_built():
    params = _params(7, SCALES, OPACITIES)
    opts = _adam(params)
    _train_step(params, opts)
    return params, opts, _info(_grad_rows(GRADS), RADII)


def test_accumulates_normalised_grads_over_visible():
    s = DensifyStrategy()
    params = _params(3)
    state = s.initialize_state()
    g = torch.tensor([[[3e-4, 4e-4], [1.0, 1.0], [0.0, 1e-3]], [[3e-4, 4e-4], [0.0, 0.0], [0.0, 0.0]]])
    info = _info(g, radii=[[1, 0, 2], [5, 4, 0]])
    info["width"] = 200
    s.step_post_backward(params, _adam(params), state, step=10, info=info)
    # x scaled by 200/2*2, y by 100/2*2
    expected = torch.tensor([2 * math.hypot(3e-4 * 200, 4e-4 * 100), 0.0, 1e-3 * 100])
    torch.testing.assert_close(state["grad2d"], expected)
    torch.testing.assert_close(state["count"], torch.tensor([2.0, 1.0, 1.0]))


def test_packed_and_per_axis_radii_match_unpacked():
    g = torch.rand(2, 5, 2) * 1e-3
    radii = torch.tensor([[1, 0, 2, 3, 0], [0, 4, 4, 0, 0]], dtype=torch.int32)
    s = DensifyStrategy(scale2d_stop_iter=1000)
    ref = s.initialize_state()
    s.step_post_backward(_params(5), {}, ref, 1, _info(g, radii))
    # packed: only visible (camera, gaussian) pairs
    cam, gid = torch.nonzero(radii > 0, as_tuple=True)
    packed = _info(g, radii)
    packed["means2d"] = torch.zeros(len(gid), 2, requires_grad=True)
    packed["means2d"].grad = g[cam, gid]
    packed.update(radii=radii[cam, gid], gaussian_ids=gid)
    st = s.initialize_state()
    s.step_post_backward(_params(5), {}, st, 1, packed, packed=True)
    # gsplat >= 1.5: radii [C, N, 2]
    per_axis = s.initialize_state()
    axes = _info(g, radii)
    axes["radii"] = torch.stack([radii, (radii + 1) // 2], dim=-1)  # [C, N, 2], max = radii
    s.step_post_backward(_params(5), {}, per_axis, 1, axes)
    for key in ("grad2d", "count"):
        torch.testing.assert_close(st[key], ref[key])
        torch.testing.assert_close(per_axis[key], ref[key])
    torch.testing.assert_close(ref["radii"], torch.tensor([1, 4, 4, 3, 0]) / 100.0)


def test_grow_split_prune_counts_on_hand_built_state():
    params, opts, info = _hand_built()
    s = DensifyStrategy()
    state = s.initialize_state(scene_scale=1.0)
    out = s.step_post_backward(params, opts, state, step=600, info=info)
    assert (out["duplicated"], out["split"], out["pruned"], out["reset"]) == (2, 1, 1, False)
    assert params["means"].shape[0] == 7 + 2 + 1 - 1
    assert all(p.shape[0] == 9 for p in params.values())
    assert (state["grad2d"] == 0).all() and (state["count"] == 0).all() and state["grad2d"].shape == (9,)


def test_no_refinement_outside_window():
    s = DensifyStrategy()
    for step in (500, 550, 15_000):  # refine_start is exclusive, 550 not a multiple, stop exclusive
        params, opts, info = _hand_built()
        out = s.step_post_backward(params, opts, s.initialize_state(), step=step, info=info)
        assert (out["duplicated"], out["split"], out["pruned"]) == (0, 0, 0) and params["means"].shape[0] == 7


def test_adam_rows_follow_params():
    params, opts, info = _hand_built()
    old = {k: p.detach().clone() for k, p in params.items()}
    old_moments = {k: {m: opts[k].state[params[k]][m].clone() for m in ("exp_avg", "exp_avg_sq")} for k in params}
    old_step = {k: opts[k].state[params[k]]["step"].clone() for k in params}
    s = DensifyStrategy()
    s.step_post_backward(params, opts, s.initialize_state(), step=600, info=info)
    # layout: kept [0, 1, 3, 5, 6], copies of [0, 1], two halves of 2 (row 4 pruned)
    kept, copies = [0, 1, 3, 5, 6], [0, 1]
    for k, p in params.items():
        opt = opts[k]
        assert opt.param_groups[0]["params"][0] is p and len(opt.state) == 1
        st = opt.state[p]
        assert torch.equal(st["step"], old_step[k])
        assert torch.equal(p[:5].detach(), old[k][kept])
        assert torch.equal(p[5:7].detach(), old[k][copies])
        for m in ("exp_avg", "exp_avg_sq"):
            assert st[m].shape == p.shape
            assert torch.equal(st[m][:5], old_moments[k][m][kept])
            assert (st[m][5:] == 0).all()
            assert (old_moments[k][m][kept] != 0).any()
    # split halves: scales / 1.6, other attributes copied, means displaced
    torch.testing.assert_close(params["scales"][7:].detach(), (old["scales"][2] - math.log(1.6)).expand(2, 3))
    assert torch.equal(params["sh0"][7:].detach(), old["sh0"][[2, 2]])
    assert not torch.equal(params["means"][7].detach(), old["means"][2])


def test_revised_opacity_split():
    params, opts, info = _hand_built()
    opa = torch.sigmoid(params["opacities"][2]).item()
    s = DensifyStrategy(revised_opacity=True)
    s.step_post_backward(params, opts, s.initialize_state(), step=600, info=info)
    torch.testing.assert_close(torch.sigmoid(params["opacities"][7:]).detach(), torch.full((2,), 1 - math.sqrt(1 - opa)))


@pytest.mark.parametrize(
    "op",
    [
        lambda p, o, st: duplicate_rows(p, o, st, torch.tensor([True, False, True, False, False])),
        lambda p, o, st: split_rows(p, o, st, torch.tensor([False, True, True, False, False]), False),
        lambda p, o, st: remove_rows(p, o, st, torch.tensor([True, False, False, False, True])),
        lambda p, o, st: _reset_opacities(p, o, 0.01),
    ],
    ids=["duplicate", "split", "remove", "reset"],
)
def test_still_trains_after_each_op(op):
    params = _params(5)
    opts = _adam(params)
    _train_step(params, opts)
    state = {"grad2d": torch.rand(5), "count": torch.rand(5), "scene_scale": 1.0}
    op(params, opts, state)
    n = params["means"].shape[0]
    assert state["grad2d"].shape == (n,) and state["count"].shape == (n,)
    before = {k: p.detach().clone() for k, p in params.items()}
    _train_step(params, opts)
    for k, p in params.items():
        assert p.requires_grad and p.grad is not None and p.grad.shape == p.shape
        assert not torch.equal(p.detach(), before[k]), k


def test_opacity_reset_at_reset_every_not_at_zero():
    s = DensifyStrategy(reset_every=200, start_iter=10_000)
    for step, resets in [(0, False), (1, False), (200, True), (400, True), (401, False)]:
        params = _params(4)
        opts = _adam(params)
        _train_step(params, opts)
        before = params["opacities"].detach().clone()
        out = s.step_post_backward(params, opts, s.initialize_state(), step, _info(torch.zeros(1, 4, 2)))
        assert out["reset"] is resets, step
        opa = torch.sigmoid(params["opacities"]).detach()
        if resets:
            torch.testing.assert_close(opa, torch.full((4,), 0.01))
            assert (opts["opacities"].state[params["opacities"]]["exp_avg"] == 0).all()
        else:
            assert torch.equal(params["opacities"].detach(), before) and (torch.sigmoid(before) > 0.2).all()
    # past stop_iter: nothing at all
    s2 = DensifyStrategy(reset_every=200, stop_iter=300)
    params = _params(4)
    assert not s2.step_post_backward(params, _adam(params), s2.initialize_state(), 400, _info(torch.zeros(1, 4, 2)))["reset"]


def test_gsplat_140_resets_at_step_zero_and_we_do_not():
    params = _params(4, opacities=[0.1] * 4)
    theirs = copy.deepcopy(params)
    gs = gsplat_strategy.DefaultStrategy(reset_every=200)
    gs.step_post_backward(theirs, _adam(theirs), gs.initialize_state(), 0, _info(torch.zeros(1, 4, 2)))
    ours = DensifyStrategy(reset_every=200)
    ours.step_post_backward(params, _adam(params), ours.initialize_state(), 0, _info(torch.zeros(1, 4, 2)))
    torch.testing.assert_close(torch.sigmoid(theirs["opacities"]).detach(), torch.full((4,), 0.01))
    torch.testing.assert_close(torch.sigmoid(params["opacities"]).detach(), torch.full((4,), 0.1))


def test_max_gaussians_caps_growth_keeping_highest_grads():
    params, opts, _ = _hand_built()
    grads = [2 * HIGH, HIGH, 3 * HIGH, LOW, LOW, LOW, LOW]  # candidates 0 (dup), 1 (dup), 2 (split)
    s = DensifyStrategy(max_gaussians=9)
    out = s.step_post_backward(params, opts, s.initialize_state(), 600, _info(_grad_rows(grads)))
    assert (out["duplicated"], out["split"], out["pruned"]) == (1, 1, 1)  # 2 and 0 win, 1 loses
    assert params["means"].shape[0] == 8
    # already above the cap: no growth, pruning still happens
    params, opts, info = _hand_built()
    s = DensifyStrategy(max_gaussians=3)
    out = s.step_post_backward(params, opts, s.initialize_state(), 600, info)
    assert (out["duplicated"], out["split"], out["pruned"]) == (0, 0, 1)


def test_bad_inputs():
    s = DensifyStrategy()
    params = _params(3)
    opts = _adam(params)
    s.check_sanity(params, opts)
    with pytest.raises(ValueError, match="same keys"):
        s.check_sanity(params, {k: v for k, v in opts.items() if k != "shN"})
    with pytest.raises(ValueError, match="different tensor"):
        s.check_sanity(params, _adam(copy.deepcopy(params)))
    with pytest.raises(ValueError, match="means2d"):
        s.step_pre_backward(params, opts, s.initialize_state(), 0, {})
    info = _info(torch.zeros(1, 3, 2))
    info["means2d"].grad = None
    with pytest.raises(ValueError, match="step_pre_backward"):
        s.step_post_backward(params, opts, s.initialize_state(), 1, info)
    with pytest.raises(ValueError, match="absgrad"):
        DensifyStrategy(absgrad=True).step_post_backward(params, opts, {"grad2d": None, "count": None}, 1, _info(torch.zeros(1, 3, 2)))
    with pytest.raises(ValueError, match="missing"):
        s.step_post_backward(params, opts, s.initialize_state(), 1, {"means2d": info["means2d"]})
    with pytest.raises(ValueError):
        DensifyStrategy(max_gaussians=0)


def test_pre_backward_retains_grad_and_model_integration():
    model = GaussianModel.random_in_box(6, torch.tensor([[0.0] * 3, [1.0] * 3]), sh_degree=1)
    opts = model.make_optimizers()
    s = DensifyStrategy()
    s.check_sanity(model.params, opts)
    means2d = model.activated()["means"][None, :, :2] * 1.0  # non-leaf stand-in [1, N, 2]
    info = {"means2d": means2d, "radii": torch.ones(1, 6, dtype=torch.int32), "width": W, "height": H, "n_cameras": 1}
    s.step_pre_backward(model.params, opts, (state := s.initialize_state()), 600, info)
    (means2d.sum() * 1e-3).backward()
    assert means2d.grad is not None
    s.step_post_backward(model.params, opts, state, 600, info)
    assert model.num_gaussians > 6  # grads of 0.05 normalised: every small one duplicated
    s.check_sanity(model.params, opts)  # model.params and optimisers still agree


@pytest.mark.parametrize("step,reset_every", [(600, 10**9), (3100, 3000)], ids=["no-reset", "after-reset"])
def test_same_decisions_as_gsplat_140(step, reset_every, capsys):
    n, c = 300, 2
    gen = torch.Generator().manual_seed(1)
    scales = torch.exp(torch.empty(n).uniform_(math.log(1e-3), math.log(0.5), generator=gen))
    opa = torch.empty(n).uniform_(0.0005, 0.05, generator=gen)
    params = _params(n, scales, opa, degree=2)
    grads = torch.randn(c, n, 2, generator=gen) * torch.exp(torch.empty(c, n, 1).uniform_(-14, -4, generator=gen))
    radii = torch.randint(0, 3, (c, n), generator=gen)
    theirs = copy.deepcopy(params)
    opts_ours, opts_theirs = _adam(params), _adam(theirs)
    _train_step(params, opts_ours)
    _train_step(theirs, opts_theirs)

    kw = dict(reset_every=reset_every, verbose=True)
    gs = gsplat_strategy.DefaultStrategy(**kw)
    gs_state = gs.initialize_state(scene_scale=2.0)
    torch.manual_seed(7)
    gs.step_post_backward(theirs, opts_theirs, gs_state, step, _info(grads, radii))
    printed = capsys.readouterr().out
    g_dup, g_split = map(int, re.search(r"(\d+) GSs duplicated, (\d+) GSs split", printed).groups())
    g_prune = int(re.search(r"(\d+) GSs pruned", printed).group(1))

    ours = DensifyStrategy(**kw)
    torch.manual_seed(7)
    out = ours.step_post_backward(params, opts_ours, ours.initialize_state(scene_scale=2.0), step, _info(grads, radii))
    assert (out["duplicated"], out["split"], out["pruned"]) == (g_dup, g_split, g_prune)
    assert min(g_dup, g_split, g_prune) > 0  # the scene exercises every branch
    # same RNG draw, same row order: same result
    for k in params:
        torch.testing.assert_close(params[k], theirs[k], atol=1e-6, rtol=1e-6)
        for m in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opts_ours[k].state[params[k]][m], opts_theirs[k].state[theirs[k]][m])


def test_within_caps_the_refine_window():
    s = DensifyStrategy(start_iter=300, stop_iter=2500)
    assert s.within(500).stop_iter == 400
    assert s.within(500).start_iter == 300
    assert s.within(10_000) is s  # already stops early enough
    assert s.within(1000, fraction=0.5).stop_iter == 500
