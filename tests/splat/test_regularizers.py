"""Few-view regularisers: known answers, gradients, dropout expectation, pseudo-view geometry."""

from __future__ import annotations

import math

import pytest
import torch

from recon.geometry.cameras import camera_centres
from recon.poses.refine import exp_so3
from recon.splat.regularizers import (
    PseudoViewSampler,
    RegularizerConfig,
    coreg_loss,
    edge_aware_depth_tv,
    gaussian_dropout,
    opacity_loss,
    scale_loss,
    scale_ratio_loss,
    slerp_rotation,
)


def _angle_deg(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    rel = r0.transpose(-1, -2) @ r1
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


# ------------------------------------------------------------------------- opacity / scale
@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_opacity_loss_known_answer_and_grad(batch):
    o = torch.tensor([0.2, 0.4, 0.9, 0.5]).expand(*batch, 4).clone().requires_grad_(True)
    loss = opacity_loss(o)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.allclose(o.grad, torch.full_like(o, 1.0 / o.numel()))


def test_scale_losses_known_answers_and_grad():
    s = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 20.0], [1.0, 2.0, 40.0]], requires_grad=True)
    assert scale_loss(s, scene_scale=2.0).item() == pytest.approx((3 + 22 + 43) / 9 / 2)
    ratio = scale_ratio_loss(s, max_ratio=10.0)
    assert ratio.item() == pytest.approx((0 + 10 + 30) / 3)
    ratio.backward()
    assert torch.all(s.grad[0] == 0)  # ratio 1 <= 10: no penalty, no gradient
    assert s.grad[1, 2] == pytest.approx(1 / 3)  # d(max/min)/d(max) / N
    assert s.grad[2, 0] < 0  # growing the smallest axis lowers the penalty


def test_scale_losses_bad_input():
    with pytest.raises(ValueError, match=r"\[..., N, 3\]"):
        scale_loss(torch.ones(4, 2))
    with pytest.raises(ValueError, match="max_ratio"):
        scale_ratio_loss(torch.ones(4, 3), max_ratio=0.5)
    with pytest.raises(ValueError, match="scene_scale"):
        scale_loss(torch.ones(4, 3), scene_scale=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        opacity_loss(torch.ones(0))


# ------------------------------------------------------------------------- depth smoothness
@pytest.mark.parametrize("b", [1, 2])
def test_depth_tv_ramp_known_answer(b):
    h, w = 4, 8
    x = torch.arange(w, dtype=torch.float32)
    depth = (1.0 + 0.1 * x).expand(b, h, w)[..., None].clone()
    image = torch.full((b, h, w, 3), 0.5)
    assert edge_aware_depth_tv(depth, image, gamma=10.0, normalize=False).item() == pytest.approx(0.1, rel=1e-5)
    # normalisation by the mean depth makes the loss independent of the depth unit
    a = edge_aware_depth_tv(depth, image, normalize=True)
    assert edge_aware_depth_tv(depth * 5.0, image, normalize=True).item() == pytest.approx(a.item(), rel=1e-5)
    assert a.item() == pytest.approx(0.1 / float(depth.mean()), rel=1e-5)


def test_depth_tv_is_edge_aware():
    h, w = 4, 8
    depth = torch.ones(1, h, w, 1)
    depth[:, :, 4:] = 2.0  # one step between columns 3 and 4
    flat = torch.zeros(1, h, w, 3)
    edge = torch.zeros(1, h, w, 3)
    edge[:, :, 4:] = 1.0  # the image has an edge in the same place
    plain = edge_aware_depth_tv(depth, flat, gamma=10.0, normalize=False)
    aware = edge_aware_depth_tv(depth, edge, gamma=10.0, normalize=False)
    assert plain.item() == pytest.approx(1.0 / 7.0, rel=1e-5)
    assert aware.item() == pytest.approx(math.exp(-10.0) / 7.0, rel=1e-4)
    zero_w = edge_aware_depth_tv(depth, flat, weight=torch.zeros_like(depth), normalize=False)
    assert zero_w.item() == 0.0


def test_depth_tv_gradient_reaches_depth_not_image():
    depth = torch.rand(1, 6, 7, 1, requires_grad=True)
    image = torch.rand(1, 6, 7, 3, requires_grad=True)
    edge_aware_depth_tv(depth, image).backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0
    assert image.grad is None


def test_depth_tv_bad_shapes():
    with pytest.raises(ValueError, match=r"depth: expected shape \[B, H, W, 1\]"):
        edge_aware_depth_tv(torch.ones(1, 4, 4), torch.ones(1, 4, 4, 3))
    with pytest.raises(ValueError, match="image"):
        edge_aware_depth_tv(torch.ones(1, 4, 4, 1), torch.ones(1, 5, 4, 3))


# ------------------------------------------------------------------------- dropout
def test_dropout_keeps_expectation_and_rescales():
    p = 0.3
    o = torch.full((200_000,), 0.4, requires_grad=True)
    out = gaussian_dropout(o, p, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    assert float((~kept).float().mean()) == pytest.approx(p, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 0.4 / (1 - p)))
    assert float(out.detach().mean()) == pytest.approx(0.4, rel=0.01)  # expectation kept
    out.sum().backward()
    assert torch.allclose(o.grad[kept], torch.full_like(o.grad[kept], 1 / (1 - p)))
    assert torch.all(o.grad[~kept] == 0)


def test_dropout_off_at_eval_and_reproducible():
    o = torch.rand(1000)
    assert gaussian_dropout(o, 0.5, training=False) is o
    assert gaussian_dropout(o, 0.0) is o
    a = gaussian_dropout(o, 0.5, generator=torch.Generator().manual_seed(3))
    b = gaussian_dropout(o, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        gaussian_dropout(o, 1.0)
    with pytest.raises(ValueError, match=r"\[N\]"):
        gaussian_dropout(o[None], 0.1)


# ------------------------------------------------------------------------- co-regularisation
def test_coreg_loss_known_answer_and_grad_to_both():
    a = torch.full((1, 16, 16, 3), 0.5, requires_grad=True)
    b = torch.full((1, 16, 16, 3), 0.6, requires_grad=True)
    assert coreg_loss(a, a.detach().clone(), 0.2).item() == pytest.approx(0.0, abs=1e-6)
    loss = coreg_loss(a, b, ssim_lambda=0.0)
    assert loss.item() == pytest.approx(0.1, rel=1e-5)
    loss.backward()
    assert torch.all(a.grad < 0) and torch.all(b.grad > 0)  # pulled towards each other
    with pytest.raises(ValueError, match="one shape"):
        coreg_loss(a, b[:, :8])


# ------------------------------------------------------------------------- pseudo views
def _ring_cameras(n: int = 6, radius: float = 3.0) -> torch.Tensor:
    """Cameras on a circle in the z=0 plane looking at the origin, OpenCV w2c [n, 4, 4]."""
    w2c = []
    for i in range(n):
        a = 2 * math.pi * i / n
        c = torch.tensor([radius * math.cos(a), radius * math.sin(a), 0.0])
        fwd = -c / c.norm()
        down = torch.tensor([0.0, 0.0, -1.0])
        right = torch.linalg.cross(down, fwd)
        rot = torch.stack([right, down, fwd])  # rows: camera axes in world
        m = torch.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ c
        w2c.append(m)
    return torch.stack(w2c)


def test_slerp_rotation_known_answer():
    r0 = torch.eye(3)
    r1 = exp_so3(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert torch.allclose(slerp_rotation(r0, r1, torch.tensor(0.0)), r0, atol=1e-6)
    assert torch.allclose(slerp_rotation(r0, r1, torch.tensor(1.0)), r1, atol=1e-6)
    half = slerp_rotation(r0, r1, torch.tensor(0.5))
    assert torch.allclose(half, exp_so3(torch.tensor([0.0, 0.0, math.pi / 4])), atol=1e-6)


def test_pseudo_views_lie_between_neighbouring_training_cameras():
    w2c = _ring_cameras(6)
    sampler = PseudoViewSampler(noise=0.0, neighbours=2)
    state = sampler.initialize_state(w2c)
    assert len(state["pairs"]) == 6  # each camera with its two ring neighbours, undirected
    g = torch.Generator().manual_seed(0)
    poses = sampler.sample(state, 64, generator=g)
    assert poses.shape == (64, 4, 4)
    rot = poses[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64), atol=1e-5)
    pairs, t = state["last"]["pairs"], state["last"]["t"].float()
    ci, cj = camera_centres(w2c[pairs[:, 0]]), camera_centres(w2c[pairs[:, 1]])
    c = camera_centres(poses)
    expected = (1 - t[:, None]) * ci + t[:, None] * cj
    assert torch.allclose(c, expected, atol=1e-5)  # on the segment between the two cameras
    gap = (ci - cj).norm(dim=-1)
    assert torch.allclose(gap, torch.full_like(gap, 3.0), atol=1e-4)  # ring neighbours only (60 deg apart)
    # rotation t of the way from R_i to R_j
    ri, rj = w2c[pairs[:, 0], :3, :3], w2c[pairs[:, 1], :3, :3]
    assert torch.allclose(_angle_deg(ri, rot), t * 60.0, atol=1e-2)
    assert torch.allclose(_angle_deg(rot, rj), (1 - t) * 60.0, atol=1e-2)


def test_pseudo_view_noise_and_bad_input():
    w2c = _ring_cameras(4)
    sampler = PseudoViewSampler(noise=0.05)
    state = sampler.initialize_state(w2c)
    poses = sampler.sample(state, 200, generator=torch.Generator().manual_seed(1))
    pairs, t = state["last"]["pairs"], state["last"]["t"].float()
    ci, cj = camera_centres(w2c[pairs[:, 0]]), camera_centres(w2c[pairs[:, 1]])
    off = (camera_centres(poses) - ((1 - t[:, None]) * ci + t[:, None] * cj)).norm(dim=-1)
    gap = (ci - cj).norm(dim=-1)
    assert float(off.max()) < 5 * 0.05 * float(gap.max()) and float(off.mean()) > 0
    with pytest.raises(ValueError, match="at least 2"):
        sampler.initialize_state(w2c[:1])
    with pytest.raises(ValueError, match=r"\[V, 4, 4\]"):
        sampler.initialize_state(w2c[:, :3])


def test_regularizer_config_validation():
    assert RegularizerConfig().validate() == []
    assert not RegularizerConfig().any_active
    assert RegularizerConfig(dropout=0.1).any_active
    problems = RegularizerConfig(coreg=1.0).validate()
    assert problems and "pseudo-every" in problems[0]
    assert any("dropout" in p for p in RegularizerConfig(dropout=1.0).validate())
    assert any("opacity-reg" in p for p in RegularizerConfig(opacity_reg=-1.0).validate())
