"""recon.splat.projection against gsplat's PyTorch reference ``_fully_fused_projection``."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from recon.splat.projection import fully_fused_projection, quat_scale_to_covar, quat_to_rotmat


def _reference(s, calc_compensations=False, **kw):
    covars, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    return _fully_fused_projection(
        s["means"], covars, s["viewmats"], s["Ks"], s["width"], s["height"],
        calc_compensations=calc_compensations, **kw,
    )  # fmt: skip


def _ours(s, **kw):
    return fully_fused_projection(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], s["width"], s["height"], **kw
    )


def test_rotation_and_covariance(scene):
    s = scene(n=30, dtype=torch.float64)
    R = quat_to_rotmat(s["quats"])
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(30, 3, 3))
    ref, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    torch.testing.assert_close(quat_scale_to_covar(s["quats"], s["scales"]), ref)


@pytest.mark.parametrize("antialiased", [False, True])
def test_matches_gsplat(scene, antialiased):
    s = scene(n=60, n_cameras=2, dtype=torch.float64, seed=3)
    s["means"][0, 2] = -1.0  # behind the camera
    s["means"][1, 2] = 0.005  # in front of the near plane
    s["means"][2, :2] = torch.tensor([40.0, 0.0])  # far outside the image
    leaves = [s[k].requires_grad_() for k in ("means", "quats", "scales")]
    radii, m2d, depths, conics, comp = _ours(s, calc_compensations=antialiased)
    r_radii, r_m2d, r_depths, r_conics, r_comp = _reference(s, calc_compensations=antialiased)
    assert radii.dtype == torch.int32 and radii.shape == (2, 60)
    assert torch.equal(radii, r_radii)
    valid = radii > 0
    assert 30 < valid.sum() < 120 and not valid[0, :3].any()
    for ours, ref in ((m2d, r_m2d), (depths, r_depths), (conics, r_conics)) + (((comp, r_comp),) if antialiased else ()):
        torch.testing.assert_close(ours[valid], ref[valid], rtol=1e-10, atol=1e-10)
    # culled entries are zeroed, not garbage
    assert torch.all(m2d[~valid] == 0) and torch.all(conics[~valid] == 0)
    # gradients of a loss on the valid entries
    w = [torch.randn_like(x) for x in (m2d, depths, conics)]

    def loss(outs):
        L = sum((o * wi)[valid].sum() for o, wi in zip(outs, w))
        return L + ((outs[3] ** 2)[valid].sum() if antialiased else 0)

    g = torch.autograd.grad(loss((m2d, depths, conics, comp)), leaves)
    g_ref = torch.autograd.grad(loss((r_m2d, r_depths, r_conics, r_comp)), leaves)
    for a, b in zip(g, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_culled_gaussians_get_finite_zero_gradients(scene):
    s = scene(n=4)
    s["means"][0, 2] = 0.0  # exactly on the camera plane: 1/z would be inf
    s["means"][1, 2] = -3.0
    leaves = [s[k].requires_grad_() for k in ("means", "quats", "scales")]
    radii, m2d, depths, conics, _ = _ours(s)
    assert radii[0, 0] == 0 and radii[0, 1] == 0
    (m2d.sum() + depths.sum() + conics.sum()).backward()
    for x in leaves:
        assert torch.isfinite(x.grad).all()
        assert torch.all(x.grad[:2] == 0)


def test_radius_clip_and_far_plane(scene):
    s = scene(n=50, seed=1)
    radii, *_ = _ours(s)
    r_clip, *_ = _ours(s, radius_clip=6.0)
    assert torch.equal(r_clip, torch.where(radii > 6, radii, torch.zeros_like(radii)))
    r_far, _, depths, *_ = _ours(s, far_plane=3.5)
    assert torch.all(r_far[depths >= 3.5] == 0) and torch.all(r_far[:, s["means"][:, 2] < 3.4] == radii[:, s["means"][:, 2] < 3.4])


def test_gradcheck(scene):
    s = scene(n=3, n_cameras=2, dtype=torch.float64, seed=5)
    valid = _ours(s)[0] > 0

    def f(means, quats, scales, viewmats):
        _, m2d, depths, conics, comp = fully_fused_projection(
            means, quats, scales, viewmats, s["Ks"], s["width"], s["height"], calc_compensations=True
        )
        return m2d[valid], depths[valid], conics[valid], comp[valid]

    inputs = [s[k].clone().requires_grad_() for k in ("means", "quats", "scales", "viewmats")]
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("means", torch.zeros(3, 2), r"means: expected shape \[N, 3\], given \[3, 2\]"),
        ("quats", torch.zeros(2, 4), r"quats: expected shape \[3, 4\], given \[2, 4\]"),
        ("Ks", torch.zeros(2, 3, 3), r"Ks: expected shape \[1, 3, 3\], given \[2, 3, 3\]"),
        ("viewmats", torch.zeros(1, 3, 4), r"viewmats: expected shape \[C, 4, 4\]"),
    ],
)
def test_bad_shapes(scene, key, value, match):
    s = scene(n=3)
    s[key] = value
    with pytest.raises(ValueError, match=match):
        _ours(s)
