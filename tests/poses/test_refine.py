"""Tests for recon.poses.refine: se(3) exponential, the per-view refiner, perturbations."""

from __future__ import annotations

import pytest
import torch

from recon.geometry.cameras import camera_centres
from recon.poses.refine import (
    PoseRefineConfig,
    PoseRefiner,
    exp_se3,
    exp_so3,
    hat_so3,
    perturb_poses,
    twist_matrix,
)

BATCH_DIMS = [(), (2,), (1, 2)]


def random_twists(batch, scale, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, 6, generator=g, dtype=torch.float64) * scale).to(dtype)


def rot_angle_deg(rot):  # [..., 3, 3] -> [...]
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def look_at_w2c(centres, target=(0.0, 0.0, 0.0)):  # [V, 3] -> [V, 4, 4], OpenCV
    target = torch.tensor(target, dtype=centres.dtype)
    w2c = []
    for c in centres:
        z = target - c
        z = z / z.norm()
        up = torch.tensor([0.0, 0.0, 1.0], dtype=c.dtype)
        x = torch.linalg.cross(z, up)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        rot = torch.stack([x, y, z])  # rows: camera axes in world
        m = torch.eye(4, dtype=c.dtype)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ c
        w2c.append(m)
    return torch.stack(w2c)


# ------------------------------------------------------------------------------ Lie helpers


@pytest.mark.parametrize("batch", BATCH_DIMS)
@pytest.mark.parametrize("scale", [0.0, 1e-7, 1e-3, 0.05, 0.5, 2.0])
def test_exp_se3_matches_matrix_exp(batch, scale):
    xi = random_twists(batch, scale)
    got = exp_se3(xi)
    want = torch.linalg.matrix_exp(twist_matrix(xi))
    assert got.shape == (*batch, 4, 4)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 0.05, 0.09, 0.11, 0.5, 2.0])
def test_exp_se3_float32_near_switch(scale):
    xi = random_twists((8,), scale)
    got = exp_se3(xi.float()).double()
    want = torch.linalg.matrix_exp(twist_matrix(xi))
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("batch", BATCH_DIMS)
def test_exp_so3_matches_matrix_exp_and_is_a_rotation(batch):
    w = random_twists(batch, 1.0)[..., :3]
    rot = exp_so3(w)
    torch.testing.assert_close(rot, torch.linalg.matrix_exp(hat_so3(w)), atol=1e-12, rtol=0)
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(rot_angle_deg(rot), torch.rad2deg(w.norm(dim=-1)))


def test_hat_is_cross_product():
    w, u = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close((hat_so3(w) @ u[..., None])[..., 0], torch.linalg.cross(w, u))


def test_zero_twist_is_identity_with_finite_gradient():
    xi = torch.zeros(3, 6, dtype=torch.float64, requires_grad=True)
    out = exp_se3(xi)
    assert torch.equal(out.detach(), torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    (out * torch.randn(3, 4, 4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [0.0, 1e-3, 0.5])
def test_exp_se3_gradcheck(scale):
    xi = random_twists((2,), scale).requires_grad_(True)
    assert torch.autograd.gradcheck(exp_se3, (xi,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(2, 3), [0.0] * 6])
def test_exp_se3_bad_input(bad):
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        exp_se3(bad)


# ------------------------------------------------------------------------------ PoseRefiner


def test_refiner_starts_at_identity():
    w2c = look_at_w2c(torch.tensor([[4.0, 0, 0], [0, 4.0, 1], [-4.0, 0, 0.5]]))
    ref = PoseRefiner(5)
    assert ref.pose_adjustment.shape == (5, 6) and not ref.pose_adjustment.any()
    out = ref.apply(w2c, [4, 0, 2])
    torch.testing.assert_close(out, w2c, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["SE3", "SO3xR3"])
def test_gradient_reaches_only_the_used_views(mode):
    w2c = look_at_w2c(torch.tensor([[4.0, 0, 0], [0, 4.0, 1]]))
    ref = PoseRefiner(4, mode=mode)
    pts = torch.randn(10, 4)
    pts[:, 3] = 1
    loss = (ref.apply(w2c, torch.tensor([1, 3])) @ pts.T).square().sum()
    loss.backward()
    grad = ref.pose_adjustment.grad
    assert torch.isfinite(grad).all()
    assert grad[[1, 3]].abs().sum(-1).min() > 0
    assert not grad[[0, 2]].any()


def test_modes_differ_only_in_translation():
    xi = random_twists((3,), 0.3).float()
    se3, so3xr3 = PoseRefiner(3, "SE3"), PoseRefiner(3, "SO3xR3")
    with torch.no_grad():
        se3.pose_adjustment.copy_(xi)
        so3xr3.pose_adjustment.copy_(xi)
    a, b = se3([0, 1, 2]), so3xr3([0, 1, 2])
    torch.testing.assert_close(a[:, :3, :3], b[:, :3, :3])
    torch.testing.assert_close(b[:, :3, 3], xi[:, :3])
    torch.testing.assert_close(a, exp_se3(xi))


def test_off_mode_is_a_no_op():
    ref = PoseRefineConfig(mode="off").setup(3)
    w2c = torch.eye(4).repeat(2, 1, 1)
    assert ref.apply(w2c, [0, 1]) is w2c
    assert ref.param_groups() == [] and ref.make_optimizer(10) == (None, None)


def test_param_groups_and_lr_decay():
    cfg = PoseRefineConfig(lr=1e-3, lr_final=1e-5, weight_decay=1e-6)
    ref = cfg.setup(4)
    (group,) = ref.param_groups()
    assert group["params"] == [ref.pose_adjustment]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 1e-6
    opt, sched = ref.make_optimizer(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(n_views=0), ValueError),
        (dict(n_views=2.0), ValueError),
        (dict(n_views=2, mode="se3"), ValueError),
    ],
)
def test_refiner_bad_construction(kwargs, exc):
    with pytest.raises(exc):
        PoseRefiner(**kwargs)


def test_refiner_bad_apply():
    ref = PoseRefiner(2)
    with pytest.raises(IndexError, match="0..1"):
        ref.apply(torch.eye(4)[None], [2])
    with pytest.raises(ValueError, match="indices has 2"):
        ref.apply(torch.eye(4)[None], [0, 1])
    with pytest.raises(ValueError, match=r"\[V, 4, 4\]"):
        ref.apply(torch.eye(4), [0])


def test_refinement_recovers_a_known_perturbation():
    """Known points seen by 4 cameras; start from poses 3 deg / 5 % off and minimise the
    reprojection error through ``apply``: pose and pixel errors must drop by > 10x.

    The loss is the mean pixel distance: with the squared error, Adam creeps along the
    rotation / lateral-translation valley (both shift the image alike) and after 500 steps the
    pixel error is down 20x but the rotation error only ~2x; the distance gets 100x on both."""
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(150, 3, generator=g) * 2 - 1  # [P, 3] in a 2-unit cube
    ang = torch.tensor([0.0, 1.6, 3.1, 4.7])
    centres = torch.stack([4 * ang.cos(), 4 * ang.sin(), 0.8 * ang.sin()], -1)
    true = look_at_w2c(centres)  # [4, 4, 4]
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])

    def project(w2c):  # -> [V, P, 2] pixels
        cam = pts @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        uv = cam @ K.T
        return uv[..., :2] / uv[..., 2:]

    obs = project(true)
    noisy = perturb_poses(true, rot_deg=3.0, trans_frac=0.05, seed=1)
    idx = torch.arange(4)
    ref = PoseRefineConfig(lr=1e-2, lr_final=1e-4).setup(4)
    opt, sched = ref.make_optimizer(500)

    def errors():
        with torch.no_grad():
            w2c = ref.apply(noisy, idx)
            px = (project(w2c) - obs).norm(dim=-1).mean()
            rot = rot_angle_deg(w2c[:, :3, :3] @ true[:, :3, :3].transpose(1, 2)).max()
            ctr = (camera_centres(w2c) - centres).norm(dim=-1).max()
        return px.item(), rot.item(), ctr.item()

    px0, rot0, ctr0 = errors()
    assert rot0 == pytest.approx(3.0, abs=1e-3)
    for _ in range(500):
        loss = (project(ref.apply(noisy, idx)) - obs).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    px1, rot1, ctr1 = errors()
    assert px1 < px0 / 10, (px0, px1)
    assert rot1 < rot0 / 10, (rot0, rot1)
    assert ctr1 < ctr0 / 10, (ctr0, ctr1)


# ------------------------------------------------------------------------------ perturb_poses


@pytest.mark.parametrize("rot_deg,trans_frac", [(0.0, 0.0), (2.0, 0.0), (0.0, 0.1), (5.0, 0.03)])
def test_perturb_poses_has_exactly_the_asked_error(rot_deg, trans_frac):
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 1], [-4.0, 0, 0.5], [0, -4.0, 0]])
    w2c = look_at_w2c(centres.double())
    out = perturb_poses(w2c, rot_deg, trans_frac, seed=3)
    assert out.dtype == w2c.dtype and out.shape == w2c.shape
    rel = out[:, :3, :3] @ w2c[:, :3, :3].transpose(1, 2)
    torch.testing.assert_close(
        rot_angle_deg(rel), torch.full((4,), rot_deg, dtype=torch.float64), atol=1e-5, rtol=0
    )
    scale = (centres - centres.mean(0)).norm(dim=-1).mean().double()
    moved = (camera_centres(out) - centres.double()).norm(dim=-1)
    want = torch.full((4,), trans_frac * scale.item(), dtype=torch.float64)
    torch.testing.assert_close(moved, want)
    torch.testing.assert_close(out, perturb_poses(w2c, rot_deg, trans_frac, seed=3), atol=0, rtol=0)
    if rot_deg:
        assert not torch.equal(out, perturb_poses(w2c, rot_deg, trans_frac, seed=4))


@pytest.mark.parametrize("args", [(-1.0, 0.0), (0.0, float("nan"))])
def test_perturb_poses_bad_input(args):
    with pytest.raises(ValueError, match=">= 0"):
        perturb_poses(torch.eye(4)[None], *args)
    with pytest.raises(ValueError, match=r"\[V, 4, 4\]"):
        perturb_poses(torch.eye(4), 1.0, 0.0)
