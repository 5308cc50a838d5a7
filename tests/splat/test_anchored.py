"""recon.splat.anchored: voxelisation, decoding, culling, gradients, pruning, checkpoints, export."""

from __future__ import annotations

import math

import pytest
import torch

from recon.io.ply import read_splat_ply, write_splat_ply
from recon.splat.anchored import (
    AnchoredConfig,
    AnchoredGaussians,
    choose_voxel_size,
    set_learning_rates,
)
from recon.splat.rasterize import rasterization

SMALL = AnchoredConfig(k=4, feature_dim=8, planes=(4, 8), layers=(1, 1), hidden=16, voxel_size=0.25)


def _points(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 2 - 1, torch.rand(n, 3, generator=g)


def _model(cfg: AnchoredConfig = SMALL, sh_degree: int = 1, **kw) -> AnchoredGaussians:
    pts, cols = _points()
    return AnchoredGaussians.from_points(pts, cols, cfg, sh_degree=sh_degree, **kw)


def test_from_points_voxelises_at_voxel_centres():
    pts, cols = _points()
    m = AnchoredGaussians.from_points(pts, cols, SMALL, sh_degree=0)
    voxels = torch.unique(torch.floor(pts / 0.25).int(), dim=0)
    assert m.num_anchors == len(voxels) and m.num_gaussians == 4 * len(voxels)
    assert torch.equal(torch.unique(m.coords, dim=0), voxels)
    torch.testing.assert_close(m.positions, (m.coords.float() + 0.5) * 0.25)
    assert m.anchors["features"].shape == (m.num_anchors, 8) and m.anchors["scales"].shape == (m.num_anchors, 6)
    # the first feature channels start at the mean colour of the voxel's points (2 rgb - 1)
    first = torch.floor(pts[0] / 0.25).int()
    row = int(((m.coords == first).all(1)).nonzero()[0, 0])
    in_voxel = (torch.floor(pts / 0.25).int() == first).all(1)
    torch.testing.assert_close(m.anchors["features"][row, :3], 2 * cols[in_voxel].mean(0) - 1)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_decode_shapes(degree):
    m = _model(sh_degree=3)
    inputs, kept = m.decode(degree)
    n_kept = int(kept.sum())
    assert kept.shape == (m.num_anchors, 4) and kept.dtype == torch.bool
    expected = {"means": (n_kept, 3), "quats": (n_kept, 4), "scales": (n_kept, 3), "opacities": (n_kept,),
                "colors": (n_kept, (degree + 1) ** 2, 3)}
    assert {k: tuple(v.shape) for k, v in inputs.items()} == expected
    torch.testing.assert_close(inputs["quats"].norm(dim=-1), torch.ones(n_kept))
    assert bool((inputs["opacities"] > SMALL.min_opacity).all() and (inputs["opacities"] < 1).all())
    assert bool((inputs["scales"] > 0).all())


def test_initial_decode_known_answer():
    """With the head's weights zeroed, every anchor decodes the bias pattern."""
    m = _model(init_opacity=0.2, init_scale=0.4, sh_degree=0)
    with torch.no_grad():
        m.head.weight.zero_()
    inputs, kept = m.decode(0)
    assert bool(kept.all())
    v = 0.25
    expected_means = (m.positions[:, None] + m.offset_pattern[None] * 0.5 * v).reshape(-1, 3)
    torch.testing.assert_close(inputs["means"], expected_means)
    torch.testing.assert_close(inputs["opacities"], torch.full_like(inputs["opacities"], 0.2))
    torch.testing.assert_close(inputs["scales"], torch.full_like(inputs["scales"], 0.4 * v))
    torch.testing.assert_close(inputs["quats"], torch.tensor([1.0, 0, 0, 0]).expand_as(inputs["quats"]))
    torch.testing.assert_close(inputs["colors"], torch.zeros_like(inputs["colors"]))  # SH 0 = grey


def test_gradients_reach_features_scales_unet_and_mlp():
    m = _model(sh_degree=1)
    inputs, _ = m.decode(1)
    K = torch.tensor([[[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0  # camera 3 units in front of the cube
    img, _, _ = rasterization(**inputs, viewmats=viewmat[None], Ks=K, width=32, height=32, sh_degree=1,
                              backgrounds=torch.zeros(1, 3))
    (img - 0.3).square().mean().backward()
    for name, p in [*m.anchors.items(), *m.trunk.named_parameters(), *m.head.named_parameters(),
                    *m.backbone.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cull_drops_transparent_gaussians_and_passes_no_gradient_to_them():
    m = _model(sh_degree=0)
    with torch.no_grad():
        bias = m.head.bias.view(4, -1)
        bias[0, 3] = -3.0  # child 0 of every anchor: tanh < 0 -> culled
    inputs, kept = m.decode(0)
    assert not bool(kept[:, 0].any()) and bool(kept[:, 1:].all())
    assert inputs["means"].shape[0] == 3 * m.num_anchors
    # the kept Gaussians are exactly the uncullled decode's rows where kept
    m.config.min_opacity = -1.0
    everything, all_kept = m.decode(0)
    assert bool(all_kept.all())
    flat = kept.reshape(-1)
    for name in inputs:
        torch.testing.assert_close(inputs[name], everything[name][flat])
    m.config.min_opacity = SMALL.min_opacity
    assert SMALL.min_opacity == 0.005  # the model holds its own copy of the config
    # the opacity logit of a culled child gets no gradient from a loss on the kept ones
    m.zero_grad()
    inputs["opacities"].sum().backward()
    assert m.head.bias.grad.view(4, -1)[0, 3] == 0 and m.head.bias.grad.view(4, -1)[1, 3] != 0


def test_eval_mode_renders_like_training():
    m = _model()
    with torch.no_grad():
        a, _ = m.decode(1)
        m.eval()
        assert m.backbone.training and not m.trunk.training
        b, _ = m.decode(1)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_export_writes_a_valid_ply(tmp_path):
    m = _model(sh_degree=1)
    g = m.to_gaussian_model()
    path = write_splat_ply(tmp_path / "splat.ply", g)
    back = read_splat_ply(path)
    assert back["means"].shape == (g.num_gaussians, 3) and back["shN"].shape == (g.num_gaussians, 3, 3)
    with torch.no_grad():
        decoded, _ = m.decode(1)
    act = type(g).from_params(back).activated(1)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(act[name], decoded[name], rtol=1e-4, atol=1e-5)


def test_prune_dead_anchors_with_adam_state():
    cfg = AnchoredConfig(**{**SMALL.__dict__, "prune_every": 2})
    m = _model(cfg, sh_degree=0)
    opts = m.make_optimizers()
    inputs, kept = m.decode(0)
    sum(v.sum() for v in inputs.values()).backward()
    for o in opts.values():
        o.step()
    n = m.num_anchors
    state = m.initialize_state()
    dead = torch.zeros(n, dtype=torch.bool)
    dead[:3] = True
    fake = kept.clone()
    fake[dead] = False
    feats_before = m.anchors["features"].detach().clone()
    moment_before = opts["features"].state[m.anchors["features"]]["exp_avg"].clone()
    assert m.step_post_backward(opts, state, 0, fake) == 0  # no check at step 0
    fake[2] = True  # anchor 2 was alive at one of the two steps: kept
    assert m.step_post_backward(opts, state, 1, fake) == 2
    assert m.num_anchors == n - 2 and state["alive"].shape == (n - 2,)
    torch.testing.assert_close(m.anchors["features"].detach(), feats_before[2:])
    p = m.anchors["features"]
    assert opts["features"].param_groups[0]["params"][0] is p
    torch.testing.assert_close(opts["features"].state[p]["exp_avg"], moment_before[2:])
    assert m.coords.shape == (n - 2, 3) and m.positions.shape == (n - 2, 3)
    inputs, kept = m.decode(0)  # the sparse tensor is rebuilt on the remaining anchors
    assert kept.shape == (n - 2, 4)
    sum(v.sum() for v in inputs.values()).backward()
    for o in opts.values():
        o.step()


def test_state_dict_loads_into_a_model_of_another_size():
    m = _model(sh_degree=0)
    m.remove_anchors(torch.arange(m.num_anchors) < 5)
    fresh = _model(sh_degree=0, seed=1)
    assert fresh.num_anchors == m.num_anchors + 5
    fresh.load_state_dict(m.state_dict())
    assert fresh.num_anchors == m.num_anchors
    with torch.no_grad():
        a, _ = m.decode(0)
        b, _ = fresh.decode(0)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_choose_voxel_size():
    h = 0.1
    grid = torch.stack(torch.meshgrid(*[torch.arange(10.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = (grid + 0.5) * h
    assert choose_voxel_size(pts, 10_000) == pytest.approx(h)
    size = choose_voxel_size(pts, 100)
    assert size > h
    from recon.sparse import sparse_quantize

    assert len(sparse_quantize(pts, quantization_size=size)) <= 100
    assert len(sparse_quantize(pts, quantization_size=size / 1.25)) > 100  # the smallest 1.25x step that fits


def test_set_learning_rates_decays_networks_only():
    m = _model()
    opts = m.make_optimizers()
    set_learning_rates(opts, 50, 100)
    assert opts["features"].param_groups[0]["lr"] == SMALL.feature_lr
    assert opts["decoder"].param_groups[0]["lr"] == pytest.approx(SMALL.decoder_lr * math.sqrt(SMALL.lr_final_ratio))
    set_learning_rates(opts, 100, 100)
    assert opts["backbone"].param_groups[0]["lr"] == pytest.approx(SMALL.backbone_lr * SMALL.lr_final_ratio)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: AnchoredGaussians.from_points(torch.zeros(5, 2), torch.zeros(5, 2), SMALL), r"points: expected \[P, 3\]"),
        (lambda: AnchoredGaussians.from_points(torch.zeros(5, 3), torch.zeros(4, 3), SMALL), "colours"),
        (lambda: AnchoredGaussians.from_points(torch.full((5, 3), math.nan), torch.zeros(5, 3), SMALL), "finite"),
        (lambda: _model(AnchoredConfig(k=0)), "--anchored.k"),
        (lambda: _model(AnchoredConfig(planes=(4, 8), layers=(1,))), "planes/layers"),
        (lambda: _model(init_scale=1.5), "init_scale"),
        (lambda: _model(sh_degree=4), "sh_degree"),
        (lambda: AnchoredGaussians.from_points(torch.tensor([[0.05] * 3, [0.3, 0.05, 0.05]]), torch.rand(2, 3), SMALL),
         "single voxel"),
        (lambda: _model(sh_degree=1).decode(2), "sh_degree_to_use"),
        (lambda: _model().remove_anchors(torch.zeros(3, dtype=torch.bool)), "mask"),
        (lambda: choose_voxel_size(torch.zeros(1, 3), 10), "P >= 2"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_config_validate_lists_problems():
    assert AnchoredConfig().validate() == []
    problems = AnchoredConfig(min_opacity=1.0, decoder_lr=0.0, lr_final_ratio=2.0, voxel_size=-1.0).validate()
    assert [p.split(":")[0] for p in problems] == [
        "--anchored.voxel-size", "--anchored.min-opacity", "--anchored.decoder-lr", "--anchored.lr-final-ratio"]
