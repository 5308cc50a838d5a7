"""recon.splat.fused_cpu (numba projection + SH + activations) against its torch twins:
``rasterize.project_and_shade_torch``, ``rasterize.activate_params`` and
``DensifyStrategy``'s statistics; ``rasterize_params`` against ``rasterization``."""

from __future__ import annotations

import pytest
import torch

from recon.splat.fused_cpu import (
    accumulate_grad2d,
    project_and_shade,
    project_and_shade_raw,
)
from recon.splat.model import GaussianModel
from recon.splat.rasterize import (
    activate_params,
    project_and_shade_torch,
    rasterization,
    rasterize_params,
)
from recon.splat.strategy import DensifyStrategy

W, H = 24, 20
OUT_NAMES = ("means2d", "depths", "conics", "opacities", "colors")
IN_NAMES = ("means", "quats", "scales", "opacities", "colors")


def _scene(scene, dtype, n_cameras, seed=3):
    s = scene(n=40, n_cameras=n_cameras, width=W, height=H, dtype=dtype, seed=seed)
    s["means"][0, 2] = -1.0  # behind the camera
    s["means"][1, 2] = 0.005  # in front of the near plane
    s["means"][2, :2] = torch.tensor([40.0, 0.0])  # far outside the image
    s["means"][3, 0] = 4.0  # outside the FoV clamp of the Jacobian, still visible
    s["scales"][3] *= 30
    s["colors"] = torch.randn(40, 16, 3, dtype=dtype) * 0.3
    return s


def _run(fn, s, leaves, sh_degree, aa, weights):
    outs = fn(*leaves[:4], leaves[4] if sh_degree is not None else None, s["viewmats"], s["Ks"], W, H,
              sh_degree=sh_degree, calc_compensations=aa)  # fmt: skip
    loss = sum((o * w).sum() for o, w in zip(outs[1:], weights) if o is not None)
    return outs, torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("n_cameras", [1, 2])
@pytest.mark.parametrize("sh_degree, aa", [(None, False), (0, False), (1, True), (3, False), (3, True)])
def test_project_and_shade_matches_torch_twin(scene, dtype, rtol, n_cameras, sh_degree, aa):
    s = _scene(scene, dtype, n_cameras)
    leaves = [s[k].clone().requires_grad_() for k in IN_NAMES]
    twin_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    g = torch.Generator().manual_seed(0)
    shapes = [(n_cameras, 40, 2), (n_cameras, 40), (n_cameras, 40, 3), (n_cameras, 40), (n_cameras, 40, 3)]
    weights = [torch.randn(sh, generator=g, dtype=dtype) for sh in shapes]
    ours, g_ours = _run(project_and_shade, s, leaves, sh_degree, aa, weights)
    ref, g_ref = _run(project_and_shade_torch, s, twin_leaves, sh_degree, aa, weights)
    assert torch.equal(ours[0], ref[0]), "radii"
    assert 0 < int((ours[0] > 0).sum()) < 40 * n_cameras and not (ours[0][:, :3] > 0).any()
    for name, a, b in zip(OUT_NAMES, ours[1:], ref[1:]):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol, msg=name)
    for name, a, b in zip(IN_NAMES, g_ours, g_ref):
        if b is None:
            assert a is None or not a.abs().any(), name
            continue
        scale = b.abs().max().clamp(min=1e-6)
        assert (a - b).abs().max() <= rtol * 10 * scale, f"d/d {name}: {(a - b).abs().max():.3g} vs {scale:.3g}"


@pytest.mark.parametrize("sh_degree", [0, 2, 3])
def test_raw_parameters_match_activations_then_twin(scene, sh_degree):
    s = _scene(scene, torch.float64, 2)
    model = GaussianModel({
        "means": s["means"], "quats": s["quats"], "scales": torch.log(s["scales"]),
        "opacities": torch.logit(s["opacities"]), "sh0": s["colors"][:, :1], "shN": s["colors"][:, 1:],
    })  # fmt: skip
    raw = {k: v.detach().double().clone().requires_grad_() for k, v in model.params.items()}
    raw2 = {k: v.detach().clone().requires_grad_() for k, v in raw.items()}
    ours = project_and_shade_raw(
        raw["means"], raw["quats"], raw["scales"], raw["opacities"], raw["sh0"], raw["shN"],
        s["viewmats"], s["Ks"], W, H, sh_degree, calc_compensations=True,
    )  # fmt: skip
    act = activate_params(raw2, sh_degree)
    ref = project_and_shade_torch(act["means"], act["quats"], act["scales"], act["opacities"], act["colors"],
                                  s["viewmats"], s["Ks"], W, H, sh_degree=sh_degree, calc_compensations=True)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in ref[1:]]
    sum((o * w).sum() for o, w in zip(ours[1:], weights)).backward()
    sum((o * w).sum() for o, w in zip(ref[1:], weights)).backward()
    for a, b in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for k, p in raw.items():
        torch.testing.assert_close(p.grad, raw2[k].grad, rtol=1e-8, atol=1e-10, msg=k)
    # bands above the degree in use get exactly zero gradient
    assert not raw["shN"].grad[:, (sh_degree + 1) ** 2 - 1 :].any()
    # activation twin == GaussianModel.activated (one convention, stated in two places)
    for k, v in model.activated(sh_degree).items():
        torch.testing.assert_close(activate_params(model.params, sh_degree)[k], v)


def test_rasterize_params_matches_rasterization(scene):
    s = _scene(scene, torch.float32, 2, seed=5)
    params = {"means": s["means"], "quats": s["quats"], "scales": torch.log(s["scales"]),
              "opacities": torch.logit(s["opacities"].clamp(0.05, 0.95)), "sh0": s["colors"][:, :1],
              "shN": s["colors"][:, 1:]}  # fmt: skip
    bg = torch.rand(2, 3)
    grads = []
    for fused in (True, False):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        if fused:
            img, alpha, meta = rasterize_params(leaves, s["viewmats"], s["Ks"], W, H, 2, backgrounds=bg, tile_size=8)
        else:
            img, alpha, meta = rasterization(**activate_params(leaves, 2), viewmats=s["viewmats"], Ks=s["Ks"],
                                             width=W, height=H, sh_degree=2, backgrounds=bg, tile_size=8,
                                             backend="torch")  # fmt: skip
        meta["means2d"].retain_grad()
        w = torch.rand(img.shape, generator=torch.Generator().manual_seed(2))
        ((img * w).sum() + alpha.sum()).backward()
        grads.append(({k: v.grad for k, v in leaves.items()}, img.detach(), meta["means2d"].grad))
    (g_f, img_f, m_f), (g_t, img_t, m_t) = grads
    torch.testing.assert_close(img_f, img_t, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(m_f, m_t, atol=1e-5, rtol=2e-4)
    for k in params:
        scale = g_t[k].abs().max().clamp(min=1e-6)
        assert (g_f[k] - g_t[k]).abs().max() <= 2e-4 * scale, k


def test_rasterize_params_falls_back_when_viewmats_need_gradients(scene):
    s = _scene(scene, torch.float32, 1)
    params = {"means": s["means"], "quats": s["quats"], "scales": torch.log(s["scales"]),
              "opacities": torch.logit(s["opacities"]), "sh0": s["colors"][:, :1], "shN": s["colors"][:, 1:]}  # fmt: skip
    vm = s["viewmats"].clone().requires_grad_()
    img, _, _ = rasterize_params(params, vm, s["Ks"], W, H, 1)
    img.sum().backward()
    assert vm.grad is not None and vm.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"params\['shN'\]"):
        rasterize_params(dict(params, shN=params["shN"][:, :2]), s["viewmats"], s["Ks"], W, H, 2)
    with pytest.raises(ValueError, match="missing"):
        rasterize_params({"means": params["means"]}, s["viewmats"], s["Ks"], W, H, 0)


def test_accumulate_grad2d_matches_strategy(scene):
    g = torch.Generator().manual_seed(0)
    C, N = 2, 50
    radii = (torch.rand(C, N, generator=g) > 0.3).to(torch.int32) * 3
    grads = torch.randn(C, N, 2, generator=g)
    strat = DensifyStrategy(start_iter=10**6, stop_iter=10**6, reset_every=10**6)
    state = strat.initialize_state(1.0)
    params = {"means": torch.nn.Parameter(torch.zeros(N, 3))}
    m2d = torch.zeros(C, N, 2, requires_grad=True)
    m2d.grad = grads
    info = {"width": W, "height": H, "n_cameras": C, "radii": radii, "means2d": m2d}
    grad2d, count = torch.zeros(N), torch.zeros(N)
    for _ in range(2):
        strat._accumulate(params, state, info, packed=False)
        accumulate_grad2d(grad2d, count, grads, radii, W, H)
    torch.testing.assert_close(grad2d, state["grad2d"], rtol=1e-6, atol=1e-7)
    assert torch.equal(count, state["count"])
    with pytest.raises(ValueError, match="grads"):
        accumulate_grad2d(grad2d, count, grads[:1], radii, W, H)


def test_bad_input():
    x = torch.zeros(3, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="means must be a float32/float64 CPU tensor"):
        project_and_shade(x, torch.zeros(3, 4), torch.zeros(3, 3), torch.zeros(3), None,
                          torch.eye(4)[None], torch.eye(3)[None], 8, 8)  # fmt: skip


def test_gradients_do_not_depend_on_reused_buffers(scene, monkeypatch):
    # The backward pass writes its gradients into recon.splat.buffers: with every request
    # pooled, a second pass gets the first one's buffers back, dirty (every SH band set), and
    # must give exactly what fresh arrays give, zero bands above the degree in use included.
    from recon.splat import buffers

    s = _scene(scene, torch.float32, 2)
    raw0 = {"means": s["means"], "quats": s["quats"], "scales": torch.log(s["scales"]),
            "opacities": torch.logit(s["opacities"]), "sh0": s["colors"][:, :1], "shN": s["colors"][:, 1:]}  # fmt: skip

    def grads(sh_degree, seed):
        raw = {k: v.detach().clone().requires_grad_() for k, v in raw0.items()}
        out = project_and_shade_raw(*raw.values(), s["viewmats"], s["Ks"], W, H, sh_degree)
        g = torch.Generator().manual_seed(seed)
        sum((o * torch.randn(o.shape, generator=g)).sum() for o in out[1:]).backward()
        return {k: v.grad.clone() for k, v in raw.items()}

    fresh = grads(1, 2)
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    buffers.release_idle()
    try:
        dirty = grads(3, 1)
        assert dirty["shN"][:, 3:].abs().sum() > 0  # the buffers now hold degree-3 bands
        assert buffers.idle_bytes() > 0
        again = grads(1, 2)
    finally:
        buffers.release_idle()
    for k in fresh:
        assert torch.equal(again[k], fresh[k]), k
    assert not again["shN"][:, 3:].any()
