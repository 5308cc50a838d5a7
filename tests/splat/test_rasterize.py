"""recon.splat.rasterization: numba (cpu) and torch backends vs a brute-force compositor,
gradients of the numba path vs the torch twin, gradcheck of the twin, options and errors."""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.cuda._torch_impl import (
    _fully_fused_projection,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
)

from recon.splat.rasterize import rasterization

W, H, TS = 24, 20, 8  # several tiles, partial ones on the right and bottom
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def render(s, backend, **kw):
    kw.setdefault("tile_size", TS)
    return rasterization(*(s[k] for k in PARAMS), s["viewmats"], s["Ks"], s["width"], s["height"], backend=backend, **kw)


def brute_force(meta, colors, width, height, tile_size, backgrounds=None, compositing="alpha", stats=None):
    """Per pixel, every Gaussian whose radius square touches the pixel's tile, in depth order
    (stable), composited with gsplat's rules (or summed, additive). Vectorised over pixels;
    float64. ``stats``
    (a dict) receives the fraction of pixels stopped by the transmittance rule."""
    radii, m2d, conics = meta["radii"], meta["means2d"].detach().double(), meta["conics"].detach().double()
    opac, depths = meta["opacities"].detach().double(), meta["depths"].detach()
    colors = colors.detach().double()
    C, _N = radii.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    px, py = xs.double() + 0.5, ys.double() + 0.5
    tx, ty = xs // tile_size, ys // tile_size
    imgs, alphas = [], []
    for c in range(C):
        T = torch.ones(xs.shape[0], dtype=torch.float64)
        wsum = torch.zeros_like(T)
        done = torch.zeros_like(T, dtype=torch.bool)
        acc = torch.zeros(xs.shape[0], colors.shape[-1], dtype=torch.float64)
        for g in torch.argsort(depths[c], stable=True).tolist():
            r = int(radii[c, g])
            if r <= 0:
                continue
            mx, my = meta["means2d"][c, g].detach().float().tolist()
            x_lo, x_hi = math.floor(mx / tile_size - r / tile_size), math.ceil(mx / tile_size + r / tile_size)
            y_lo, y_hi = math.floor(my / tile_size - r / tile_size), math.ceil(my / tile_size + r / tile_size)
            member = (tx >= x_lo) & (tx < x_hi) & (ty >= y_lo) & (ty < y_hi)
            dx, dy = m2d[c, g, 0] - px, m2d[c, g, 1] - py
            a, b, cc = conics[c, g]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            if compositing == "additive":
                ok = member & (sigma >= 0) & (sigma <= 18.0)
                w = torch.where(ok, opac[c, g] * torch.exp(-sigma), torch.zeros_like(sigma))
                acc += w[:, None] * colors[c, g]
                wsum += w
                continue
            alpha = torch.clamp_max(opac[c, g] * torch.exp(-sigma), 0.999)
            ok = member & (sigma >= 0) & (alpha >= 1 / 255) & ~done
            next_t = T * (1 - alpha)
            stop = ok & (next_t <= 1e-4)
            contrib = ok & ~stop
            acc += torch.where(contrib, alpha * T, torch.zeros_like(T))[:, None] * colors[c, g]
            T = torch.where(contrib, next_t, T)
            done |= stop
        if compositing == "additive":
            alphas.append(wsum)
        else:
            if backgrounds is not None:
                acc += T[:, None] * backgrounds[c].detach().double()
            alphas.append(1 - T)
            if stats is not None:
                stats["stopped"] = stats.get("stopped", 0.0) + done.double().mean().item() / C
        imgs.append(acc)
    return (
        torch.stack(imgs).reshape(C, height, width, -1),
        torch.stack(alphas).reshape(C, height, width, 1),
    )


def _feats(s, C):
    col = s["colors"]
    return col.expand(C, *col.shape) if col.dim() == 2 else col


def _assert_grads_close(g, g_ref, rtol=2e-4, what=""):
    scale = g_ref.abs().max().clamp(min=1e-6)
    err = (g - g_ref).abs().max()
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"


# ------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("n_cameras, per_view_colors, with_bg", [(1, False, False), (2, False, True), (2, True, True)])
def test_alpha_matches_brute_force(scene, backend, n_cameras, per_view_colors, with_bg):
    s = scene(n=20, n_cameras=n_cameras, width=W, height=H, seed=11)
    if per_view_colors:
        s["colors"] = torch.rand(n_cameras, 20, 4)  # [C, N, D], D != 3
    D = s["colors"].shape[-1]
    bg = torch.rand(n_cameras, D) if with_bg else None
    img, alpha, meta = render(s, backend, backgrounds=bg)
    assert img.shape == (n_cameras, H, W, D) and alpha.shape == (n_cameras, H, W, 1)
    assert meta["backend"] == backend and meta["flatten_ids"].shape[0] > 20
    ref_img, ref_alpha = brute_force(meta, _feats(s, n_cameras), W, H, TS, bg)
    assert 0.2 < ref_alpha.mean() < 0.99  # a scene with overlaps and gaps
    torch.testing.assert_close(img.double(), ref_img, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_saturation_rule_matches_brute_force(scene, backend):
    # Many opaque Gaussians: most pixels reach T <= 1e-4 and stop (gsplat's exclusive rule).
    s = scene(n=60, width=W, height=H, seed=4, opacity_range=(0.8, 1.0), sigma_px=(3.0, 8.0))
    img, alpha, meta = render(s, backend)
    stats = {}
    ref_img, ref_alpha = brute_force(meta, _feats(s, 1), W, H, TS, stats=stats)
    assert stats["stopped"] > 0.5
    torch.testing.assert_close(img.double(), ref_img, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=2e-6, rtol=1e-5)


def brute_force_additive(s, colors):
    """X-ray image from first principles: gsplat's torch projection of every Gaussian in front
    of the camera (no culling, no tiles), then sum_i opacity_i exp(-sigma) colour_i over the
    terms with sigma <= 18. float64."""
    d = {k: (v.detach().double() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    covars, _ = _quat_scale_to_covar_preci(d["quats"], d["scales"], compute_preci=False)
    _, m2d, depths, conics, _ = _fully_fused_projection(d["means"], covars, d["viewmats"], d["Ks"], d["width"], d["height"])
    ys, xs = torch.meshgrid(torch.arange(d["height"]), torch.arange(d["width"]), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2).double() + 0.5  # [P, 1, 2]
    imgs, wsums = [], []
    for c in range(m2d.shape[0]):
        delta = m2d[c][None] - pix  # [P, N, 2]
        a, b, cc = conics[c].unbind(-1)
        sigma = 0.5 * (a * delta[..., 0] ** 2 + cc * delta[..., 1] ** 2) + b * delta[..., 0] * delta[..., 1]
        keep = (depths[c] > 0.01) & (sigma >= 0) & (sigma <= 18.0)
        w = torch.where(keep, d["opacities"] * torch.exp(-sigma), torch.zeros_like(sigma))  # [P, N]
        imgs.append(w @ colors[c].double())
        wsums.append(w.sum(-1, keepdim=True))
    shape = (m2d.shape[0], d["height"], d["width"], -1)
    return torch.stack(imgs).reshape(shape), torch.stack(wsums).reshape(shape)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_additive_matches_brute_force(scene, backend):
    s = scene(n=20, n_cameras=2, width=W, height=H, seed=12)
    s["colors"] = torch.rand(20, 1) * 2  # e.g. integrated density factors
    # just outside the left edge: its 3-sigma square misses the image, its tail does not
    f, z = s["Ks"][0, 0, 0].item(), 3.0
    s["means"][0] = torch.tensor([(-9.0 - W / 2) * z / f, 0.0, z])
    s["scales"][0] = 2.5 * z / f
    s["opacities"][0] = 1.0
    img, wsum, meta = render(s, backend, compositing="additive")
    ref_img, ref_w = brute_force_additive(s, _feats(s, 2))
    assert ref_w.max() > 1.0  # no saturation / clamp in additive mode
    s0 = dict(s, opacities=torch.cat([torch.zeros(1), s["opacities"][1:]]))
    assert (ref_w - brute_force_additive(s0, _feats(s, 2))[1])[0, :, 0].max() > 1e-3  # it reaches column 0
    assert meta["radii"][0, 0] > 0  # hence not culled (a 3-sigma radius would cull it)
    torch.testing.assert_close(img.double(), ref_img, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(wsum.double(), ref_w, atol=2e-6, rtol=1e-5)


def test_additive_does_not_depend_on_tiles(scene):
    s = scene(n=30, n_cameras=1, width=W, height=H, seed=16, sigma_px=(1.0, 6.0))
    imgs = [render(s, "cpu", compositing="additive", tile_size=ts)[0] for ts in (4, 8, 16)]
    torch.testing.assert_close(imgs[0], imgs[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(imgs[0], imgs[2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_sh_colors(scene, backend):
    s = scene(n=20, n_cameras=2, width=W, height=H, seed=13)
    s["colors"] = torch.randn(20, 16, 3) * 0.3
    img, _alpha, meta = render(s, backend, sh_degree=2)
    campos = torch.inverse(s["viewmats"])[:, :3, 3]
    dirs = s["means"][None] - campos[:, None]
    rgb = torch.clamp_min(_spherical_harmonics(2, dirs, s["colors"].expand(2, 20, 16, 3)) + 0.5, 0.0)
    ref_img, _ = brute_force(meta, rgb, W, H, TS)
    torch.testing.assert_close(img.double(), ref_img, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_render_modes(scene, backend, mode):
    s = scene(n=20, n_cameras=2, width=W, height=H, seed=14)
    bg = torch.rand(2, 3)
    img, _alpha, meta = render(s, backend, render_mode=mode, backgrounds=bg)
    assert img.shape[-1] == (1 if mode in ("D", "ED") else 4)
    d_ref, a_ref = brute_force(meta, meta["depths"][..., None], W, H, TS)
    if mode.endswith("ED"):
        d_ref = d_ref / a_ref.clamp(min=1e-10)
    torch.testing.assert_close(img[..., -1:].double(), d_ref, atol=5e-6, rtol=1e-5)
    if mode.startswith("RGB"):
        rgb_ref, _ = brute_force(meta, _feats(s, 2), W, H, TS, bg)
        torch.testing.assert_close(img[..., :3].double(), rgb_ref, atol=2e-6, rtol=1e-5)


def test_antialiased_and_radius_clip(scene):
    s = scene(n=20, width=W, height=H, seed=15)
    a_img, _, a_meta = render(s, "cpu", rasterize_mode="antialiased", radius_clip=2.0)
    t_img, _, _t_meta = render(s, "torch", rasterize_mode="antialiased", radius_clip=2.0)
    c_img, _, c_meta = render(s, "cpu")
    assert torch.all(a_meta["opacities"] <= c_meta["opacities"]) and not torch.equal(a_img, c_img)
    assert torch.all((a_meta["radii"] == 0) | (a_meta["radii"] > 2))
    torch.testing.assert_close(a_img, t_img, atol=2e-6, rtol=1e-5)
    ref_img, _ = brute_force(a_meta, _feats(s, 1), W, H, TS)
    torch.testing.assert_close(a_img.double(), ref_img, atol=2e-6, rtol=1e-5)


def test_covars_instead_of_quats_and_scales(scene):
    from recon.splat.projection import quat_scale_to_covar

    s = scene(n=20, n_cameras=2, width=W, height=H, seed=17)
    img, _alpha, _ = render(s, "cpu")
    covars = quat_scale_to_covar(s["quats"], s["scales"])
    img_c, _alpha_c, _ = rasterization(
        s["means"], None, None, s["opacities"], s["colors"], s["viewmats"], s["Ks"], W, H,
        tile_size=TS, covars=covars, backend="cpu",
    )  # fmt: skip
    torch.testing.assert_close(img_c, img, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"covars: expected shape \[N=20, 3, 3\]"):
        rasterization(s["means"], None, None, s["opacities"], s["colors"], s["viewmats"], s["Ks"], W, H, covars=covars[:, :2])


def test_meta_and_auto_backend(scene):
    s = scene(n=20, n_cameras=2, width=W, height=H)
    _, _, meta = render(s, "auto")
    assert meta["backend"] == "cpu" and meta["compositing"] == "alpha"
    for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids", "depths", "conics",
                "opacities", "tile_width", "tile_height", "tile_size", "camera_ids", "isect_offsets", "flatten_ids"):  # fmt: skip
        assert key in meta
    assert meta["radii"].dtype == torch.int32 and meta["radii"].shape == (2, 20)
    assert meta["means2d"].shape == (2, 20, 2) and meta["gaussian_ids"] is None
    assert (meta["width"], meta["height"], meta["n_cameras"], meta["tile_size"]) == (W, H, 2, TS)
    assert (meta["tile_width"], meta["tile_height"]) == (3, 3)


def test_empty_scenes(scene):
    s = scene(n=5, width=W, height=H)
    s["means"][:, 2] = -2.0  # all behind the camera
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    for backend in ("cpu", "torch"):
        img, alpha, meta = render(s, backend, backgrounds=bg)
        assert meta["flatten_ids"].numel() == 0
        assert torch.all(alpha == 0) and torch.allclose(img, bg.expand(1, H, W, 3)[..., :])
        s0 = {k: (v[:0] if k in PARAMS else v) for k, v in s.items()}
        img, alpha, _ = render(s0, backend)
        assert img.shape == (1, H, W, 3) and torch.all(img == 0)


# ------------------------------------------------------------------------------- gradients


def _grads(s, backend, bg=None, absgrad=False, **kw):
    leaves = {k: s[k].detach().clone().requires_grad_() for k in PARAMS}
    bg = bg.detach().clone().requires_grad_() if bg is not None else None
    kw.setdefault("tile_size", TS)
    img, alpha, meta = rasterization(
        *leaves.values(), s["viewmats"], s["Ks"], s["width"], s["height"],
        backgrounds=bg, backend=backend, absgrad=absgrad, **kw,
    )  # fmt: skip
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(7)
    w_img = torch.rand(img.shape, generator=g) - 0.3
    w_alpha = torch.rand(alpha.shape, generator=g) - 0.5
    ((img * w_img).sum() + (alpha * w_alpha).sum()).backward()
    out = {k: v.grad for k, v in leaves.items()}
    if bg is not None:
        out["backgrounds"] = bg.grad
    out["means2d"] = meta["means2d"].grad
    if absgrad:
        out["absgrad"] = meta["means2d"].absgrad
    return out


@pytest.mark.parametrize(
    "case",
    [
        {"n_cameras": 1},
        {"n_cameras": 2, "bg": True},
        {"n_cameras": 2, "bg": True, "per_view": True},
        {"n_cameras": 2, "sh": True},
        {"n_cameras": 2, "render_mode": "RGB+ED", "bg": True},
        {"n_cameras": 2, "rasterize_mode": "antialiased"},
        {"n_cameras": 2, "compositing": "additive"},
        {"n_cameras": 1, "saturated": True},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_cpu_gradients_match_torch_twin(scene, case):
    case = dict(case)
    C = case.pop("n_cameras")
    sat = case.pop("saturated", False)
    s = scene(n=20, n_cameras=C, width=W, height=H, seed=21,
              **({"opacity_range": (0.8, 1.0), "sigma_px": (3.0, 8.0)} if sat else {}))  # fmt: skip
    if case.pop("per_view", False):
        s["colors"] = torch.rand(C, 20, 3)
    if case.pop("sh", False):
        s["colors"] = torch.randn(20, 9, 3) * 0.3
        case["sh_degree"] = 2
    bg = torch.rand(C, 3) if case.pop("bg", False) else None
    g_cpu = _grads(s, "cpu", bg, absgrad=True, **case)
    g_ref = _grads(s, "torch", bg, absgrad=True, **case)
    assert set(g_cpu) == set(g_ref)
    for k in g_ref:
        assert g_ref[k] is not None and torch.isfinite(g_cpu[k]).all(), k
        _assert_grads_close(g_cpu[k], g_ref[k], what=k)
    assert g_ref["means2d"].abs().sum() > 0 and g_ref["absgrad"].abs().sum() > 0
    # absgrad is a sum of absolute per-pixel terms: it bounds |grad| from above
    assert torch.all(g_cpu["absgrad"] >= g_cpu["means2d"].abs() - 1e-6)


def test_means2d_grad_is_the_screen_space_gradient(scene):
    # Densification reads meta["means2d"].grad: it must be d loss / d means2d (pixels).
    s = scene(n=20, width=W, height=H, seed=22)
    _, _, meta = render(s, "cpu")
    m2d = meta["means2d"].detach().requires_grad_()
    from recon.splat import raster_cpu

    img, _ = raster_cpu.rasterize_to_pixels(
        m2d, meta["conics"].detach(), s["colors"].expand(1, 20, 3), meta["opacities"].detach(),
        W, H, TS, meta["isect_offsets"], meta["flatten_ids"],
    )  # fmt: skip
    img.sum().backward()
    leaves = {k: s[k].clone().requires_grad_() for k in PARAMS}
    img2, _, meta2 = rasterization(*leaves.values(), s["viewmats"], s["Ks"], W, H, tile_size=TS, backend="cpu")
    meta2["means2d"].retain_grad()
    img2.sum().backward()
    torch.testing.assert_close(meta2["means2d"].grad, m2d.grad)


def test_gradcheck_torch_twin(scene):
    s = scene(n=5, n_cameras=2, width=12, height=10, dtype=torch.float64, seed=31, opacity_range=(0.2, 0.7))
    bg = torch.rand(2, 3, dtype=torch.float64)
    inputs = [s[k].clone().requires_grad_() for k in PARAMS] + [bg.requires_grad_()]

    def f(means, quats, scales, opacities, colors, backgrounds):
        img, alpha, _ = rasterization(
            means, quats, scales, opacities, colors, s["viewmats"], s["Ks"], 12, 10,
            tile_size=4, backgrounds=backgrounds, backend="torch",
        )  # fmt: skip
        return img, alpha

    assert f(*inputs)[1].max() > 0.3
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_gradcheck_torch_twin_additive(scene):
    s = scene(n=5, n_cameras=1, width=12, height=10, dtype=torch.float64, seed=32)
    inputs = [s[k].clone().requires_grad_() for k in PARAMS]

    def f(*args):
        img, wsum, _ = rasterization(*args, s["viewmats"], s["Ks"], 12, 10, tile_size=4,
                                     compositing="additive", backend="torch")  # fmt: skip
        return img, wsum

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_cpu_is_deterministic(scene):
    s = scene(n=40, n_cameras=2, width=W, height=H, seed=40)
    g1, g2 = _grads(s, "cpu"), _grads(s, "cpu")
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, match",
    [
        ({"means": torch.zeros(20, 2)}, r"means: expected shape \[N, 3\], given \[20, 2\]"),
        ({"quats": torch.zeros(19, 4)}, r"quats: expected shape \[N=20, 4\], given \[19, 4\]"),
        ({"scales": torch.zeros(20, 3, 1)}, r"scales: expected shape"),
        ({"opacities": torch.zeros(20, 1)}, r"opacities: expected shape \[N=20\]"),
        ({"colors": torch.zeros(3, 20, 3)}, r"colors: expected shape \[N=20, D\] or \[C=1"),
        ({"viewmats": torch.zeros(1, 3, 4)}, r"viewmats: expected shape \[C, 4, 4\]"),
        ({"Ks": torch.zeros(2, 3, 3)}, r"Ks: expected shape \[C=1, 3, 3\], given \[2, 3, 3\]"),
        ({"backgrounds": torch.zeros(1, 4)}, r"backgrounds: expected shape \[C=1, D=3\]"),
        ({"sh_degree": 2}, r"colors: expected SH coefficients"),
        ({"colors": torch.zeros(20, 4, 3), "sh_degree": 2}, r"needs K >= 9"),
        ({"colors": torch.zeros(20, 25, 3), "sh_degree": 4}, r"sh_degree"),
        ({"render_mode": "RGBD"}, r"render_mode"),
        ({"rasterize_mode": "aa"}, r"rasterize_mode"),
        ({"compositing": "max"}, r"compositing"),
        ({"backend": "cuda"}, r"backend"),
        ({"packed": True}, r"packed: backend='cpu' supports only False"),
        ({"sparse_grad": True}, r"sparse_grad"),
        ({"distributed": True}, r"distributed"),
        ({"camera_model": "fisheye"}, r"camera_model"),
        ({"compositing": "additive", "backgrounds": torch.zeros(1, 3)}, r"backgrounds: not supported"),
        ({"tile_size": 0}, r"tile_size: expected a positive int"),
        ({"width": 10.5}, r"width: expected a positive int"),
        ({"backend": "gsplat"}, r"expected CUDA tensors"),
    ],
)
def test_bad_input(scene, change, match):
    s = scene(n=20, width=W, height=H)
    kw = {k: change.pop(k) for k in list(change) if k not in PARAMS + ("viewmats", "Ks", "width", "height")}
    s.update(change)
    with pytest.raises(ValueError, match=match):
        rasterization(*(s[k] for k in PARAMS), s["viewmats"], s["Ks"], s["width"], s["height"], **kw)


def test_cpu_backend_rejects_float64(scene):
    s = scene(n=5, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 CPU tensors.*backend='torch'"):
        render(s, "cpu")
    s["opacities"] = s["opacities"].float()
    with pytest.raises(ValueError, match="opacities: expected floating dtype torch.float64"):
        render(s, "torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
def test_auto_uses_gsplat_on_cuda_and_matches_cpu(scene):
    s = scene(n=20, n_cameras=2, width=W, height=H)
    img_cpu, _alpha_cpu, _ = render(s, "cpu", tile_size=16)
    s_cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    img, _alpha, meta = render(s_cuda, "auto", tile_size=16)
    assert meta["backend"] == "gsplat"
    torch.testing.assert_close(img.cpu(), img_cpu, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="additive"):
        render(s_cuda, "auto", compositing="additive")


@pytest.mark.parametrize("module", ["raster_cpu", "raster_torch"])
def test_rasterize_to_pixels_bad_input(scene, module):
    import importlib

    fn = importlib.import_module(f"recon.splat.{module}").rasterize_to_pixels
    s = scene(n=20, width=W, height=H)
    _, _, meta = render(s, "cpu")
    args = [meta["means2d"], meta["conics"], s["colors"][None], meta["opacities"], W, H, TS, meta["isect_offsets"], meta["flatten_ids"]]
    fn(*args)  # fine as is
    bad = list(args)
    bad[1] = meta["conics"][..., :2]
    with pytest.raises(ValueError, match=r"conics: expected shape \[1, 20, 3\], given \[1, 20, 2\]"):
        fn(*bad)
    bad = list(args)
    bad[7] = meta["isect_offsets"][:, :2]
    with pytest.raises(ValueError, match=r"isect_offsets: expected shape \[1, 3, 3\]"):
        fn(*bad)
    with pytest.raises(ValueError, match=r"backgrounds: expected shape \[1, 3\]"):
        fn(*args, backgrounds=torch.zeros(2, 3))


# ------------------------------------------------------------------------------- numba kernel details


def test_vectorised_exp_accuracy():
    import numpy as np
    from numba import njit

    from recon.splat.raster_cpu import exp_neg

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = exp_neg(x[i])

    x = np.linspace(0.0, 43.0, 200_001).astype(np.float32)
    out = np.empty_like(x)
    run(x, out)
    ref = np.exp(-x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) < 1e-7  # ~1.2 ulp of float32
    run(np.array([-1.0, 50.0], np.float32), out[:2])
    assert out[0] == 1.0 and 0 < out[1] < 1e-18  # clamped to [0, 43]


@pytest.mark.parametrize("tile_size", [4, 48])
def test_cpu_matches_torch_twin_other_tile_sizes(scene, tile_size):
    # tile_size 4: a chunk wider than the tile; 48: tiles composited in 32 x 32 blocks
    s = scene(n=30, n_cameras=1, width=56, height=40, seed=33, sigma_px=(0.7, 6.0))
    g_cpu = _grads(s, "cpu", tile_size=tile_size)
    g_ref = _grads(s, "torch", tile_size=tile_size)
    img_cpu = render(s, "cpu", tile_size=tile_size)[0]
    img_ref = render(s, "torch", tile_size=tile_size)[0]
    torch.testing.assert_close(img_cpu, img_ref, atol=2e-6, rtol=1e-5)
    for k in g_ref:
        _assert_grads_close(g_cpu[k], g_ref[k], what=k)


@pytest.mark.parametrize("tile_size", [8, 48])
def test_cpu_gradients_match_torch_twin_saturated_tiles(scene, tile_size):
    # Opaque Gaussians: most pixels stop, so tiles end before their last intersections (the
    # backward starts at a tile's last used one and the slot reduction skips the rest);
    # 48: 32 x 32 blocks of one tile with different last intersections.
    s = scene(n=120, width=48, height=40, seed=4, opacity_range=(0.8, 1.0), sigma_px=(3.0, 8.0))
    _, _, meta = render(s, "cpu", tile_size=tile_size)
    stats = {}
    brute_force(meta, _feats(s, 1), 48, 40, tile_size, stats=stats)
    assert stats["stopped"] > 0.7
    g_cpu = _grads(s, "cpu", absgrad=True, tile_size=tile_size)
    g_ref = _grads(s, "torch", absgrad=True, tile_size=tile_size)
    for k in g_ref:
        _assert_grads_close(g_cpu[k], g_ref[k], what=k)
    g_plain = _grads(s, "cpu", tile_size=tile_size)  # the lane loop without |v_xy| slots
    for k in g_plain:
        assert torch.equal(g_plain[k], g_cpu[k]), k


@pytest.mark.parametrize("tile_size", [8, 16])
def test_cpu_matches_torch_twin_odd_sizes_and_empty_tiles(scene, tile_size):
    # an image that is not a multiple of the tile size (partial tiles and 8-pixel chunks),
    # every Gaussian in the left half (empty tiles on the right), wide ones straddling tiles
    s = scene(n=40, n_cameras=2, width=37, height=29, seed=34, sigma_px=(0.6, 3.0))
    s["means"][:, 0] = -s["means"][:, 0].abs() - 0.2 * s["means"][:, 2]  # x < ~10 px
    bg = torch.rand(2, 3)
    img_cpu, alpha_cpu, meta = render(s, "cpu", tile_size=tile_size, backgrounds=bg)
    img_ref, alpha_ref, _ = render(s, "torch", tile_size=tile_size, backgrounds=bg)
    offs = meta["isect_offsets"].reshape(-1)
    counts = torch.diff(torch.cat([offs, torch.tensor([meta["flatten_ids"].shape[0]])]))
    assert (counts == 0).any() and (meta["tiles_per_gauss"] > 1).any()
    torch.testing.assert_close(img_cpu, img_ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(alpha_cpu, alpha_ref, atol=2e-6, rtol=1e-5)
    g_cpu = _grads(s, "cpu", bg, absgrad=True, tile_size=tile_size)
    g_ref = _grads(s, "torch", bg, absgrad=True, tile_size=tile_size)
    for k in g_ref:
        _assert_grads_close(g_cpu[k], g_ref[k], what=k)


def test_cpu_gradients_do_not_depend_on_reused_buffers(scene, monkeypatch):
    # raster_cpu's binning, per-Gaussian rows and gradient slots come from recon.splat.buffers:
    # with every request pooled, later passes get earlier (dirty) buffers back
    from recon.splat import buffers

    s = scene(n=30, n_cameras=2, width=W, height=H, seed=41)
    bg = torch.rand(2, 3)
    fresh = _grads(s, "cpu", bg, absgrad=True)
    img_fresh = render(s, "cpu", backgrounds=bg)[0]
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    buffers.release_idle()
    try:
        other = scene(n=30, n_cameras=2, width=W, height=H, seed=42)
        _grads(other, "cpu", bg, absgrad=False)  # fills the pool with another scene's data
        assert buffers.idle_bytes() > 0
        again = _grads(s, "cpu", bg, absgrad=True)
        img_again = render(s, "cpu", backgrounds=bg)[0]
    finally:
        buffers.release_idle()
    assert torch.equal(img_again, img_fresh)
    for k in fresh:
        assert torch.equal(again[k], fresh[k]), k


def test_strip_rows_bound_every_pixel_inside_the_ellipse():
    # raster_cpu bounds the rows of each 8-column chunk by the ellipse's extent over the chunk's
    # columns: every pixel centre with sigma <= cut (cut = log(opacity / threshold)) must lie
    # in those rows. Random conics: round, elongated, rotated; strips anywhere across them.
    import numpy as np

    from recon.splat.raster_cpu import _cut_for, _ellipse, _strip_rows

    rng = np.random.default_rng(0)
    n_checked = 0
    for _ in range(300):
        sx, sy = np.exp(rng.uniform(np.log(0.3), np.log(12.0), 2))
        th = rng.uniform(0, np.pi)
        Rm = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        conic = np.linalg.inv(Rm @ np.diag([sx**2, sy**2]) @ Rm.T).astype(np.float32)
        a, b, c = conic[0, 0], conic[0, 1], conic[1, 1]
        mx, my = np.float32(rng.uniform(0, 64)), np.float32(rng.uniform(0, 64))
        op = float(rng.uniform(0.01, 1.0))
        cut = _cut_for(op, False)
        usable, det, k2c, u_top, inv_c = _ellipse(a, b, c, np.float32(cut))
        assert usable
        ys = np.arange(-64, 128)
        for cx in range(-64, 128, 8):
            xs = np.arange(cx, cx + 8)
            X, Y = np.meshgrid(xs + 0.5, ys + 0.5)
            dx, dy = float(mx) - X, float(my) - Y
            sigma = 0.5 * (float(a) * dx * dx + float(c) * dy * dy) + float(b) * dx * dy
            inside = sigma <= np.log(op * 255.0)
            r0, r1 = _strip_rows(cx, cx + 7, mx, my, b, det, k2c, u_top, inv_c)
            rows = ys[inside.any(axis=1)]
            if rows.size:
                assert r0 <= rows.min() and rows.max() <= r1, (a, b, c, mx, my, op, cx)
                n_checked += rows.size
    assert n_checked > 10_000
