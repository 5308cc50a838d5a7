"""Where a capture training step's time goes on the CPU, part by part, against this machine's limits.

Parts (each timed in isolation on the same inputs, median of ``--repeats``; backward parts with
random upstream gradients of the right shape, which cost the same as real ones):

    activation      exp / sigmoid / normalize / SH concatenation (GaussianModel.activated)
    projection      EWA projection (projection.fully_fused_projection)
    SH              view-dependent colours (sh.spherical_harmonics, +0.5, clamp)
    binning         tile intersections (raster_cpu.bin_gaussians)
    raster          tile compositing (raster_cpu.rasterize_to_pixels)
    loss            0.8 L1 + 0.2 D-SSIM (recon.metrics.ssim)
    optimiser       one Adam step per parameter tensor (+ zero_grad)
    densify stats   DensifyStrategy's gradient statistics (no refinement)
    overhead        full step - sum of the parts (Python, autograd bookkeeping, small torch ops)

With the fused CPU pieces of this branch present (``--impl fused``, the default when they can be
imported) the step is the one they make: ``rasterize_params`` (activation + projection + SH in
one numba pass), ``ssim_cpu.photometric_loss``, ``adam.FusedAdam`` (``active_columns`` for the
SH bands in use), as ``SplatTrainer`` runs it with ``--cpu-kernels fused``; the full step keeps
the strategy's densification statistics as the trainer does, the parts table times
``fused_cpu.accumulate_grad2d``. ``--impl reference`` times the plain-torch step
(``SplatTrainer`` with ``--cpu-kernels reference``, no regularisers) with any tree, so the same
script measures a checkout of main: ``PYTHONPATH=/path/to/main python ...``.
``--steps-only`` skips the parts and the machine limits (full steps only).

Lower bounds: each part's bytes moved (inputs read once, outputs written once) and arithmetic
(float ops of the useful work; for compositing, the (pixel, Gaussian) pairs that contribute,
counted exactly) against this machine's measured memory bandwidth (STREAM triad, all threads)
and float32 rate (vectorised multiply-add chains, all threads). ``bound = max(bytes / BW,
flops / rate)``; the table shows measured / bound.

Scenes: ``--scene PATH`` is a torch file with ``params`` (GaussianModel.params), ``w2c`` [V, 4,
4], ``Ks`` [V, 3, 3] and ``images`` [V, H, W, 3]; ``--make-scene CKPT --data CAPTURE --scene
PATH`` writes one from a ``recon fit`` checkpoint (training views, as the fit chose them).
Without ``--scene`` a synthetic scene is used. ``--sizes`` resamples the scene's Gaussians: a
random subset below its size, 3DGS splits (two samples, scale / 1.6) of random Gaussians above.

    python scripts/profile_fit.py --scene runs/fox_scene.pt --sizes 50000 120000 250000 --json after.json
    PYTHONPATH=../main python scripts/profile_fit.py --impl reference ... --json before.json
    python scripts/profile_fit.py --compare before.json after.json

OMP_WAIT_POLICY defaults to PASSIVE here (set before torch loads): torch's and numba's OpenMP
pools otherwise spin against each other on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba
import numpy as np
import torch
from numba import njit, prange

PARTS = ("activation", "projection", "SH", "binning", "raster", "loss", "optimiser", "densify stats")


# ------------------------------------------------------------------------------------ machine
@njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(parallel=True, cache=True)
def _flops(x, n_iter, out):
    """8 independent float32 multiply-add chains per element, L1-resident: 2 flops each."""
    n_tasks = out.shape[0]
    for t in prange(n_tasks):
        a0 = x.copy()
        a1 = x.copy() + np.float32(0.1)
        a2 = x.copy() + np.float32(0.2)
        a3 = x.copy() + np.float32(0.3)
        m = np.float32(0.999)
        c = np.float32(0.001)
        for _ in range(n_iter):
            for i in range(x.shape[0]):
                a0[i] = a0[i] * m + c
                a1[i] = a1[i] * m + c
                a2[i] = a2[i] * m + c
                a3[i] = a3[i] * m + c
        out[t] = a0[0] + a1[1] + a2[2] + a3[3]


def machine_limits(repeats: int = 5) -> dict:
    """Measured memory bandwidth (GB/s, triad, bytes read + written) and float32 rate (GFLOP/s)."""
    n = 16_000_000
    a, b, c = np.zeros(n, np.float32), np.random.rand(n).astype(np.float32), np.random.rand(n).astype(np.float32)
    _triad(a, b, c, np.float32(2.0))
    best = min(_timed(lambda: _triad(a, b, c, np.float32(2.0))) for _ in range(repeats))
    bw = 3 * 4 * n / best / 1e9
    x = np.random.rand(1024).astype(np.float32)
    threads = numba.get_num_threads()
    out = np.zeros(threads * 4, np.float32)
    _flops(x, 10, out)
    n_iter = 2000
    best = min(_timed(lambda: _flops(x, n_iter, out)) for _ in range(repeats))
    rate = out.shape[0] * n_iter * x.shape[0] * 4 * 2 / best / 1e9
    return {"bandwidth_GBs": bw, "gflops": rate, "threads": threads}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ scenes
def synthetic_scene(n: int = 100_000, width: int = 480, height: int = 270, views: int = 8, seed: int = 0) -> dict:
    """Gaussians in a box seen by ``views`` cameras on an arc (no real data needed)."""
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2.0
    nn_dist = 2.0 / n ** (1 / 3)
    w2c = []
    for v in range(views):
        ang = 2 * math.pi * v / views
        c = torch.tensor([3.5 * math.sin(ang), 0.3, -3.5 * math.cos(ang)])
        fwd = -c / c.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), fwd)
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        R = torch.stack([right, down, fwd])
        m = torch.eye(4)
        m[:3, :3] = R
        m[:3, 3] = -R @ c
        w2c.append(m)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    params = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.log(torch.full((n, 3), nn_dist * 0.5) * (torch.rand(n, 3, generator=g) + 0.5)),
        "opacities": torch.logit(torch.rand(n, generator=g) * 0.8 + 0.1),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
        "shN": torch.randn(n, 15, 3, generator=g) * 0.05,
    }
    return {"params": params, "w2c": torch.stack(w2c), "Ks": K[None].repeat(views, 1, 1),
            "images": torch.rand(views, height, width, 3, generator=g), "source": f"synthetic {n}"}  # fmt: skip


def make_scene(checkpoint: str, data: str, out: str, downscale: float = 4.0, k: int = 8) -> None:
    """A profile scene from a ``recon fit`` checkpoint: its Gaussians and its training views."""
    from recon.io.formats import load_capture
    from recon.io.views import load_views

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    trainer = ckpt["trainer"]
    capture = load_capture(data)
    idx = [int(i) for i in trainer["train_indices"]]
    images, _, cams = load_views(capture, idx, downscale=downscale)
    model = trainer["fields"][0]["model"]
    params = {key.split(".", 1)[1]: v for key, v in model.items() if key.startswith("params.")}
    torch.save({"params": params, "w2c": cams.w2c, "Ks": cams.Ks(), "images": images,
                "source": f"{checkpoint} (step {trainer.get('step')}), {data} views {idx}"}, out)  # fmt: skip
    print(f"wrote {out}: {params['means'].shape[0]} Gaussians, {len(idx)} views {tuple(images.shape[1:3])}")


def resample(params: dict, n: int, seed: int = 0) -> dict:
    """``n`` Gaussians: a random subset, or 3DGS splits of random Gaussians (2 samples each,
    scales / 1.6) until there are ``n``."""
    g = torch.Generator().manual_seed(seed)
    cur = params["means"].shape[0]
    if n <= cur:
        keep = torch.randperm(cur, generator=g)[:n].sort().values
        return {k: v[keep].clone() for k, v in params.items()}
    out = {k: v.clone() for k, v in params.items()}
    while out["means"].shape[0] < n:
        cur = out["means"].shape[0]
        m = min(cur, n - cur)
        idx = torch.randperm(cur, generator=g)[:m]
        rest = torch.ones(cur, dtype=torch.bool)
        rest[idx] = False
        q = torch.nn.functional.normalize(out["quats"][idx], dim=-1)
        w, x, y, z = q.unbind(-1)
        R = torch.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ], -1).reshape(-1, 3, 3)  # fmt: skip
        s = torch.exp(out["scales"][idx])
        samples = out["means"][idx][None] + torch.einsum("mij,mj,smj->smi", R, s, torch.randn(2, m, 3, generator=g))
        new = {}
        for k, v in out.items():
            pair = v[idx].repeat(2, *[1] * (v.dim() - 1))
            if k == "means":
                pair = samples.reshape(-1, 3)
            elif k == "scales":
                pair = torch.log(s / 1.6).repeat(2, 1)
            new[k] = torch.cat([v[rest], pair])
        out = new
    return out


# ------------------------------------------------------------------------------------ parts
_CPU: list = []  # process CPU seconds of the last _median_time / _fwd_bwd call (all threads)


def _median_time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (after a warm-up); its median CPU seconds go to _CPU."""
    fn()  # warm-up (numba cache load, allocations)
    walls, cpus = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        walls.append(_timed(fn))
        cpus.append(time.process_time() - c0)
    _CPU.append(statistics.median(cpus))
    return statistics.median(walls)


def _rand_like(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def _fwd_bwd(forward, repeats: int) -> tuple[float, float]:
    """(median forward s, median backward s) of ``forward() -> list of outputs`` (floating
    outputs get random upstream gradients)."""
    t_f = _median_time(forward, repeats)
    c_f = _CPU.pop()
    grads = None
    times, cpus = [], []
    for i in range(repeats + 1):
        outs = [o for o in forward() if isinstance(o, torch.Tensor) and o.requires_grad]
        if grads is None:
            grads = [_rand_like(o) for o in outs]
        c0 = time.process_time()
        t0 = time.perf_counter()
        torch.autograd.backward(outs, grads)
        if i:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    _CPU.append(c_f + (statistics.median(cpus) if cpus else 0.0))
    return t_f, statistics.median(times) if times else 0.0


def _has_fused() -> bool:
    try:
        from recon.splat import adam, fused_cpu, ssim_cpu  # noqa: F401
        from recon.splat.rasterize import rasterize_params  # noqa: F401
    except ImportError:
        return False
    return True


class Profiler:
    """Everything needed to time parts and steps of one scene at one size."""

    def __init__(self, scene: dict, n: int, impl: str, sh_degree: int, repeats: int, scale: float):
        from recon.splat.model import GaussianModel

        self.impl = impl
        self.sh = sh_degree
        self.repeats = repeats
        params = resample(scene["params"], n)
        self.model = GaussianModel(params)
        self.w2c = scene["w2c"]
        self.Ks = scene["Ks"].clone()
        H, W = scene["images"].shape[1:3]
        self.images = scene["images"]
        if scale != 1.0:
            self.Ks[:, :2] *= scale
            H, W = round(H * scale), round(W * scale)
            self.images = torch.nn.functional.interpolate(self.images.permute(0, 3, 1, 2), size=(H, W), mode="area").permute(0, 2, 3, 1).contiguous()
        self.W, self.H = W, H
        self.bg = self.images.mean(dim=(0, 1, 2))[None]
        self.n = n
        self.view = 0

    # -- the pieces, as the step uses them -------------------------------------------------
    def _fresh(self):
        """A copy of the model (its ``params`` are the leaves the parts differentiate)."""
        from recon.splat.model import GaussianModel

        return GaussianModel({k: v.detach() for k, v in self.model.params.items()})

    def _cam(self):
        v = self.view
        return self.w2c[[v]], self.Ks[[v]], self.images[[v]]

    def parts(self) -> dict:
        """{part: (forward wall s, backward wall s)}; self.cpu[part]: CPU s of both."""
        _CPU.clear()
        out = self._parts()
        self.cpu = dict(zip(out.keys(), _CPU))
        return out

    def _parts(self) -> dict:
        from recon.splat import raster_cpu
        from recon.splat.tiles import tile_grid

        vm, K, gt = self._cam()
        W, H, r = self.W, self.H, self.repeats
        out: dict = {}
        act = None
        holder = self._fresh()
        leaves = holder.params
        if self.impl == "fused":
            from recon.splat import fused_cpu


            def proj():
                return fused_cpu.project_and_shade_raw(
                    leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["sh0"],
                    leaves["shN"], vm, K, W, H, self.sh,
                )  # fmt: skip

            out["projection + SH + activation (fused)"] = _fwd_bwd(proj, r)
            radii, m2d, depths, conics, opac, feats = (x.detach() if x.is_floating_point() else x for x in proj())
        else:
            from recon.splat.projection import fully_fused_projection
            from recon.splat.sh import spherical_harmonics

            out["activation"] = _fwd_bwd(lambda: list(_activated(leaves, self.sh).values()), r)
            act = {k: v.detach().requires_grad_() for k, v in _activated(leaves, self.sh).items()}
            out["projection"] = _fwd_bwd(lambda: fully_fused_projection(act["means"], act["quats"], act["scales"], vm, K, W, H), r)
            radii, m2d, depths, conics = (x.detach() for x in fully_fused_projection(act["means"], act["quats"], act["scales"], vm, K, W, H)[:4])
            campos = torch.inverse(vm)[:, :3, 3]

            def sh():
                dirs = act["means"][None] - campos[:, None]
                f = spherical_harmonics(self.sh, dirs, act["colors"][None].expand(1, *act["colors"].shape), masks=radii > 0)
                return [torch.clamp_min(f + 0.5, 0.0)]

            out["SH"] = _fwd_bwd(sh, r)
            feats = sh()[0].detach()
            opac = act["opacities"].detach()[None]
        tw, th = tile_grid(W, H, 16)
        out["binning"] = (_median_time(lambda: raster_cpu.bin_gaussians(m2d, radii, depths, 16, tw, th), r), 0.0)
        _, _, fids, offs = raster_cpu.bin_gaussians(m2d, radii, depths, 16, tw, th)
        self.n_isect = int(fids.shape[0])
        ins = [x.clone().requires_grad_() for x in (m2d, conics, feats, opac)]
        bg = self.bg.clone()
        out["raster"] = _fwd_bwd(lambda: raster_cpu.rasterize_to_pixels(*ins, W, H, 16, offs, fids, bg), r)
        img = raster_cpu.rasterize_to_pixels(*ins, W, H, 16, offs, fids, bg)[0].detach()
        pred = img.clone().requires_grad_()
        if self.impl == "fused":
            from recon.splat.ssim_cpu import photometric_loss

            out["loss"] = _fwd_bwd(lambda: [photometric_loss(pred, gt, 0.2)[0]], r)
        else:
            from recon.metrics import ssim

            out["loss"] = _fwd_bwd(lambda: [0.8 * (pred - gt).abs().mean() + 0.2 * (1.0 - ssim(pred, gt)).mean()], r)
        opts = self._optimizers(holder)
        for p in leaves.values():
            p.grad = _rand_like(p)

        def opt_step():
            for o in opts.values():
                o.step()

        out["optimiser"] = (_median_time(opt_step, r), 0.0)
        grads2d = _rand_like(m2d) * 1e-4
        if self.impl == "fused":
            from recon.splat.fused_cpu import accumulate_grad2d

            g2, cnt = torch.zeros(self.n), torch.zeros(self.n)
            out["densify stats"] = (_median_time(lambda: accumulate_grad2d(g2, cnt, grads2d, radii, W, H), r), 0.0)
        else:
            from recon.splat.strategy import DensifyStrategy

            strat = DensifyStrategy(start_iter=10**9, stop_iter=10**9, reset_every=10**9)
            state = strat.initialize_state(1.0)
            m = m2d.clone().requires_grad_()
            m.grad = grads2d
            info = {"width": W, "height": H, "n_cameras": 1, "radii": radii, "means2d": m, "gaussian_ids": None}
            out["densify stats"] = (_median_time(lambda: strat.step_post_backward(leaves, opts, state, 1, info), r), 0.0)
        return out

    def _optimizers(self, model):
        opts = model.make_optimizers()
        if self.impl == "fused":
            from recon.splat.adam import fuse_optimizers
            from recon.splat.sh import num_sh_bases

            opts = fuse_optimizers(opts)
            opts["shN"].param_groups[0]["active_columns"] = num_sh_bases(self.sh) - 1
        return opts

    def step_time(self, steps: int) -> float:
        """Median wall time of full training steps (cycling over the views)."""
        from recon.splat.strategy import DensifyStrategy

        model = self._fresh()
        leaves = model.params
        opts = self._optimizers(model)
        strat = DensifyStrategy(start_iter=10**9, stop_iter=10**9, reset_every=10**9)
        state = strat.initialize_state(1.0)
        times, cpus = [], []
        for i in range(steps + 1):
            self.view = i % self.w2c.shape[0]
            vm, K, gt = self._cam()
            c0 = time.process_time()
            t0 = time.perf_counter()
            if self.impl == "fused":
                self._fused_step(leaves, opts, strat, state, vm, K, gt)
            else:
                self._reference_step(model, leaves, opts, strat, state, vm, K, gt)
            if i:
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        self.view = 0
        self.step_cpu = statistics.median(cpus)
        return statistics.median(times)

    def _reference_step(self, model, leaves, opts, strat, state, vm, K, gt):
        """SplatTrainer's step without regularisers, as on main (--cpu-kernels reference)."""
        from recon.metrics import ssim
        from recon.splat.rasterize import rasterization

        act = model.activated(self.sh)
        out, _, info = rasterization(**act, viewmats=vm, Ks=K, width=self.W, height=self.H, sh_degree=self.sh,
                                     backgrounds=self.bg, render_mode="RGB")  # fmt: skip
        strat.step_pre_backward(leaves, opts, state, 1, info)
        pred = out[..., :3]
        loss = 0.8 * (pred - gt).abs().mean() + 0.2 * (1.0 - ssim(pred, gt)).mean()
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        strat.step_post_backward(leaves, opts, state, 1, info)
        return float(loss.detach())

    def _fused_step(self, leaves, opts, strat, state, vm, K, gt):
        """The same step as SplatTrainer's CPU default (--cpu-kernels fused): rasterize_params,
        the fused L1 + D-SSIM, FusedAdam on the SH bands in use; densification statistics by
        the strategy, as in the trainer."""
        from recon.splat.rasterize import rasterize_params
        from recon.splat.sh import num_sh_bases
        from recon.splat.ssim_cpu import photometric_loss

        out, _, info = rasterize_params(leaves, vm, K, self.W, self.H, self.sh, backgrounds=self.bg)
        strat.step_pre_backward(leaves, opts, state, 1, info)
        loss, _l1, _ = photometric_loss(out[..., :3], gt, 0.2)
        loss.backward()
        opts["shN"].param_groups[0]["active_columns"] = num_sh_bases(self.sh) - 1
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        strat.step_post_backward(leaves, opts, state, 1, info)
        return float(loss.detach())

def _activated(leaves: dict, d: int) -> dict:
    from recon.splat.sh import num_sh_bases

    return {
        "means": leaves["means"],
        "quats": torch.nn.functional.normalize(leaves["quats"], dim=-1),
        "scales": torch.exp(leaves["scales"]),
        "opacities": torch.sigmoid(leaves["opacities"]),
        "colors": torch.cat([leaves["sh0"], leaves["shN"][:, : num_sh_bases(d) - 1]], dim=1),
    }


# ------------------------------------------------------------------------------------ bounds
@njit(cache=True)
def _contributing_pairs(m2d, conics, opac, fids, offsets, tw, W, H, ts):
    """(pixel, Gaussian) pairs that pass alpha >= 1/255 before the pixel saturates (exact)."""
    n = 0
    for t in range(offsets.shape[0] - 1):
        ty = t // tw
        tx = t - ty * tw
        for y in range(ty * ts, min(ty * ts + ts, H)):
            for x in range(tx * ts, min(tx * ts + ts, W)):
                T = 1.0
                for i in range(offsets[t], offsets[t + 1]):
                    g = fids[i]
                    dx = m2d[g, 0] - (x + 0.5)
                    dy = m2d[g, 1] - (y + 0.5)
                    s = 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy
                    if s < 0.0:
                        continue
                    a = min(0.999, opac[g] * math.exp(-s))
                    if a < 1.0 / 255.0:
                        continue
                    if T * (1.0 - a) <= 1e-4:
                        break
                    T *= 1.0 - a
                    n += 1
    return n


def lower_bounds(prof: Profiler, limits: dict) -> dict:
    """{part: (bytes, flops, bound seconds)} for the parts of ``prof`` (see module docstring)."""
    from recon.splat import raster_cpu
    from recon.splat.projection import fully_fused_projection
    from recon.splat.tiles import tile_grid

    N, HW, F = prof.n, prof.W * prof.H, 4
    vm, K, _ = prof._cam()
    act = _activated({k: v.detach() for k, v in prof.model.params.items()}, prof.sh)
    radii, m2d, depths, conics = (x.detach() for x in fully_fused_projection(act["means"], act["quats"], act["scales"], vm, K, prof.W, prof.H)[:4])
    tw, th = tile_grid(prof.W, prof.H, 16)
    _, _, fids, offs = raster_cpu.bin_gaussians(m2d, radii, depths, 16, tw, th)
    offsets = np.append(offs.reshape(-1).numpy().astype(np.int64), fids.shape[0])
    pairs = _contributing_pairs(m2d[0].numpy().astype(np.float64), conics[0].numpy().astype(np.float64),
                                act["opacities"].numpy().astype(np.float64), fids.numpy(), offsets, tw, prof.W, prof.H, 16)  # fmt: skip
    M = int(fids.shape[0])
    K_sh = (prof.sh + 1) ** 2
    n_params = 3 + 4 + 3 + 1 + 3 + 45  # floats per Gaussian in GaussianModel.params (degree 3)
    b = {  # (bytes forward+backward, flops forward+backward)
        "activation": (N * (n_params + (11 + 3 * K_sh)) * F * 2, N * 40),
        "projection": (N * (10 + 9) * F * 2, N * (250 + 500)),
        "SH": (N * (3 + 3 * K_sh + 3) * F * 2, N * (6 * K_sh + 12 * K_sh)),
        "binning": (N * 16 + M * 12, 0),
        "raster": (M * 36 * 2 + HW * 6 * F + HW * 4 * F + N * 9 * F, pairs * (30 + 60)),
        "loss": (HW * 3 * F * 4, HW * 3 * (5 * 22 * 2 + 40 + 3 * 22 * 2)),
        "optimiser": (N * n_params * 7 * F, N * n_params * 10),
        "densify stats": (N * 24, N * 6),
    }
    b["projection + SH + activation (fused)"] = tuple(b["activation"][i] // 2 + b["projection"][i] + b["SH"][i] for i in (0, 1))
    out = {}
    for part, (nbytes, flops) in b.items():
        t = max(nbytes / (limits["bandwidth_GBs"] * 1e9), flops / (limits["gflops"] * 1e9))
        out[part] = (nbytes, flops, t)
    out["_pairs"] = pairs
    out["_isect"] = M
    return out


# ------------------------------------------------------------------------------------ main
def profile(scene: dict, sizes, impl: str, sh_degree: int, repeats: int, steps: int, scale: float, limits: dict,
            steps_only: bool = False) -> list:  # fmt: skip
    rows = []
    for n in sizes:
        prof = Profiler(scene, n, impl, sh_degree, repeats, scale)
        if steps_only:
            step = prof.step_time(steps)
            rows.append({"n": n, "impl": impl, "resolution": [prof.W, prof.H], "step_s": step,
                         "step_cpu_s": prof.step_cpu, "load": os.getloadavg()[0]})  # fmt: skip
            print(f"  N={n:,}: step {step * 1e3:.1f} ms, CPU {prof.step_cpu * 1e3:.1f} ms (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
            continue
        parts = prof.parts()
        bounds = lower_bounds(prof, limits)
        step = prof.step_time(steps)
        total_parts = sum(f + b for f, b in parts.values())
        rows.append({
            "n": n, "impl": impl, "resolution": [prof.W, prof.H], "intersections": bounds["_isect"],
            "contributing_pairs": bounds["_pairs"], "step_s": step, "step_cpu_s": prof.step_cpu,
            "parts": {k: {"fwd_s": f, "bwd_s": b, "cpu_s": prof.cpu[k], "bound_s": bounds[k][2],
                          "bytes": bounds[k][0], "flops": bounds[k][1]}
                      for k, (f, b) in parts.items()},
            "overhead_s": step - total_parts,
            "overhead_cpu_s": prof.step_cpu - sum(prof.cpu.values()),
            "load": os.getloadavg()[0],
        })  # fmt: skip
        print(f"  N={n:,}: step {step * 1e3:.1f} ms (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    return rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    lim = result["limits"]
    con.print(f"{result['scene']}; {lim['threads']} threads, memory {lim['bandwidth_GBs']:.1f} GB/s, float32 {lim['gflops']:.1f} GFLOP/s")
    for row in result["rows"]:
        t = Table(title=f"{row['impl']}: N = {row['n']:,}, {row['resolution'][0]}x{row['resolution'][1]}, "
                        f"{row['intersections']:,} intersections, {row['contributing_pairs']:,} contributing pairs")  # fmt: skip
        for col in ("part", "forward ms", "backward ms", "total ms", "CPU ms", "bound ms", "total / bound"):
            t.add_column(col, justify="right" if col != "part" else "left")
        for part, p in row["parts"].items():
            tot = p["fwd_s"] + p["bwd_s"]
            t.add_row(part, f"{p['fwd_s'] * 1e3:.1f}", f"{p['bwd_s'] * 1e3:.1f}" if p["bwd_s"] else "", f"{tot * 1e3:.1f}",
                      f"{p['cpu_s'] * 1e3:.1f}", f"{p['bound_s'] * 1e3:.2f}", f"{tot / max(p['bound_s'], 1e-9):.0f}x")  # fmt: skip
        t.add_row("overhead (step - parts)", "", "", f"{row['overhead_s'] * 1e3:.1f}", f"{row['overhead_cpu_s'] * 1e3:.1f}", "0", "")
        t.add_row("[bold]full step[/bold]", "", "", f"[bold]{row['step_s'] * 1e3:.1f}[/bold]", f"{row['step_cpu_s'] * 1e3:.1f}",
                  f"{sum(p['bound_s'] for p in row['parts'].values()) * 1e3:.1f}", "")  # fmt: skip
        con.print(t)


def compare(a: dict, b: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"step time: {a['rows'][0]['impl']} ({a.get('tree', '')}) vs {b['rows'][0]['impl']} ({b.get('tree', '')})")
    for col in ("N", "A step ms", "B step ms", "A / B", "A CPU ms", "B CPU ms", "A / B (CPU)"):
        t.add_column(col, justify="right")
    for ra, rb in zip(a["rows"], b["rows"]):
        t.add_row(f"{ra['n']:,}", f"{ra['step_s'] * 1e3:.1f}", f"{rb['step_s'] * 1e3:.1f}", f"{ra['step_s'] / rb['step_s']:.2f}x",
                  f"{ra['step_cpu_s'] * 1e3:.1f}", f"{rb['step_cpu_s'] * 1e3:.1f}", f"{ra['step_cpu_s'] / rb['step_cpu_s']:.2f}x")  # fmt: skip
    Console(width=160).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", help="profile scene (torch file); synthetic when omitted")
    ap.add_argument("--make-scene", metavar="CKPT", help="write --scene from this recon fit checkpoint and --data")
    ap.add_argument("--data", help="capture of --make-scene")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 120_000, 250_000])
    ap.add_argument("--impl", choices=("auto", "fused", "reference"), default="auto")
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per part (median)")
    ap.add_argument("--steps", type=int, default=8, help="timed full steps (median)")
    ap.add_argument("--scale", type=float, default=1.0, help="resolution scale of the views (0.25: 67x120 for fox)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--steps-only", action="store_true", help="time full steps only (no parts, no machine limits)")
    ap.add_argument("--tree", default="", help="label of the code tree (for --compare)")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        compare(a, b)
        return
    if args.make_scene:
        if not (args.data and args.scene):
            ap.error("--make-scene needs --data and --scene")
        make_scene(args.make_scene, args.data, args.scene)
        return
    impl = args.impl if args.impl != "auto" else ("fused" if _has_fused() else "reference")
    if impl == "fused" and not _has_fused():
        ap.error("--impl fused: this tree has no recon.splat.fused_cpu / ssim_cpu / adam")
    scene = torch.load(args.scene, weights_only=True) if args.scene else synthetic_scene()
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}, numba {numba.__version__} threads "
          f"{numba.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load {os.getloadavg()[0]:.1f}",
          file=sys.stderr)  # fmt: skip
    from recon.splat import raster_cpu

    raster_cpu.warmup()
    limits = {} if args.steps_only else machine_limits()
    rows = profile(scene, args.sizes, impl, args.sh_degree, args.repeats, args.steps, args.scale, limits, args.steps_only)
    result = {"scene": scene.get("source", args.scene), "limits": limits, "rows": rows, "tree": args.tree}
    if not args.steps_only:
        print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
