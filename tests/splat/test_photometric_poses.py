"""Tests for recon.splat.photometric_poses: focal scaling through the viewmats, registration of
perturbed cameras and focal length against a frozen model, refusal of a round that does not help."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.poses.refine import perturb_poses
from recon.splat.model import GaussianModel
from recon.splat.photometric_poses import focal_scaled_viewmats, register_to_model
from recon.splat.render import rasterize_views
from tests.splat._plane_scene import cameras_at

W, H = 96, 72
BG = torch.tensor([0.2, 0.3, 0.4])


def _scene(n: int = 3000) -> GaussianModel:
    """Small opaque Gaussians with random colours filling a slab around the origin (textured)."""
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 0.6]) - torch.tensor([1.0, 1.0, 0.3])
    rgb = torch.rand(n, 3, generator=g)
    return GaussianModel.from_points(pts, rgb, sh_degree=0, init_opacity=0.9, init_scale=0.7)


def _cameras(n_views: int = 3):
    centres = [[3.0 * math.sin(a), 0.4, -3.0 * math.cos(a)] for a in np.linspace(-0.5, 0.5, n_views)]
    cams = cameras_at(centres).scaled(320 / W)  # 96x72, focal 90 px
    return cams.w2c.float(), cams.Ks()


def _render(model, w2c, Ks):
    out, _, _ = rasterize_views(model.activated(0), w2c, Ks, W, H, 0, BG)
    return out[..., :3].detach()


def _rot_err_deg(a, b):  # [C, 4, 4] x2 -> [C]
    rel = a[:, :3, :3] @ b[:, :3, :3].transpose(1, 2)
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def test_focal_scaled_viewmats_render_as_scaled_focal():
    model = _scene(800)
    w2c, Ks = _cameras(2)
    scaled_K = Ks.clone()
    scaled_K[:, 0, 0] *= 1.07
    scaled_K[:, 1, 1] *= 1.07
    a = _render(model, focal_scaled_viewmats(w2c, torch.tensor(math.log(1.07))), Ks)
    b = _render(model, w2c, scaled_K)
    assert (b - _render(model, w2c, Ks)).abs().mean() > 1e-2  # the focal change is visible
    torch.testing.assert_close(a, b, atol=2e-4, rtol=0)  # float32 rounding of the two forms


def test_focal_scaled_viewmats_gradient_matches_finite_difference():
    model = _scene(300)
    w2c, Ks = _cameras(1)
    target = _render(model, w2c, Ks)
    a = torch.tensor(0.02, dtype=torch.float32, requires_grad=True)
    out, _, _ = rasterize_views(model.activated(0), focal_scaled_viewmats(w2c, a), Ks, W, H, 0, BG)
    loss = ((out[..., :3] - target) ** 2).mean()
    loss.backward()
    eps = 2e-3

    def f(v):
        with torch.no_grad():
            o, _, _ = rasterize_views(model.activated(0), focal_scaled_viewmats(w2c, torch.tensor(v)), Ks, W, H, 0, BG)
            return float(((o[..., :3] - target) ** 2).mean())

    fd = (f(0.02 + eps) - f(0.02 - eps)) / (2 * eps)
    assert float(a.grad) > 0 and fd > 0  # moving away from the truth costs
    assert float(a.grad) == pytest.approx(fd, rel=0.15)


def test_register_to_model_recovers_poses_and_focal():
    model = _scene()
    w2c, Ks = _cameras(3)
    photos = _render(model, w2c, Ks)
    start = perturb_poses(w2c.double(), rot_deg=1.5, trans_frac=0.02, seed=3).float()
    wrong_K = Ks.clone()
    wrong_K[:, :2, :2] *= 0.97  # fx, fy 3 % short (fx = fy here)
    new, scale, rec = register_to_model(model, start, wrong_K, photos, BG, steps=80, lr=3e-3, focal=True, levels=2)
    before, after = _rot_err_deg(start, w2c), _rot_err_deg(new, w2c)
    assert float(before.min()) > 1.4
    assert float(after.max()) < 0.5, after
    # a 3 % focal error at least halved: with a shallow scene a zoom is nearly a dolly, which
    # the per-view translations can also make, so the focal length converges more slowly
    assert abs(0.97 * scale - 1.0) < 0.015, scale
    assert rec.l1_after < 0.5 * rec.l1_before
    assert rec.extra["accepted"] and len(rec.rot_deg) == 3 and all(r > 0.5 for r in rec.rot_deg)
    d = rec.to_dict()
    assert d["focal_scale"] == pytest.approx(scale, abs=1e-6) and d["step"] == 0


def test_register_to_model_without_focal_keeps_it():
    model = _scene(1500)
    w2c, Ks = _cameras(2)
    photos = _render(model, w2c, Ks)
    start = perturb_poses(w2c.double(), rot_deg=1.0, trans_frac=0.0, seed=1).float()
    _, scale, rec = register_to_model(model, start, Ks, photos, BG, steps=30, focal=False)
    assert scale == 1.0 and rec.l1_after < rec.l1_before


def test_a_round_that_does_not_help_keeps_the_cameras():
    model = _scene(1500)
    w2c, Ks = _cameras(2)
    photos = _render(model, w2c, Ks)  # the cameras are exact: no step can lower the loss
    new, scale, rec = register_to_model(model, w2c, Ks, photos, BG, steps=5, lr=1e-2)
    assert torch.equal(new, w2c) and scale == 1.0
    assert rec.extra["accepted"] is False and rec.rot_deg == [0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"levels": 0}, "levels"),
        ({"lr": 0.0}, "lr"),
        ({"w2c": torch.eye(4)}, r"w2c must be a Tensor \[C, 4, 4\]"),
        ({"Ks": torch.eye(3)[None]}, r"Ks must be \[C=2, 3, 3\]"),
        ({"images": torch.zeros(1, H, W, 3)}, r"images must be \[C=2"),
    ],
)
def test_register_to_model_bad_input(kwargs, match):
    model = _scene(50)
    w2c, Ks = _cameras(2)
    args = {"w2c": w2c, "Ks": Ks, "images": torch.zeros(2, H, W, 3)}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=match):
        register_to_model(model, args["w2c"], args["Ks"], args["images"], BG, **kwargs)
    with pytest.raises(ValueError, match="scalar"):
        focal_scaled_viewmats(w2c, torch.zeros(2))
