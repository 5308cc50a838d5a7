"""Fused (and selective) Adam for CPU float32 parameters: one numba pass per tensor.

``torch.optim.Adam`` on CPU runs its single-tensor path: ~8 elementwise ops, each a pass over
the parameter, its gradient and the two moments. :class:`FusedAdam` is a drop-in subclass (same
constructor arguments, hyperparameters, ``state`` layout ``step`` / ``exp_avg`` /
``exp_avg_sq`` and ``state_dict``, so checkpoints and the densification row operations of
``recon.splat.strategy`` keep working) whose ``step`` reads each element of p, g, m, v once and
writes p, m, v once, in parallel over rows; the twin is ``torch.optim.Adam`` itself.

A parameter group may carry ``"active_columns": k``: then only ``p[:, :k]`` is updated. This is
exact (not an approximation) while the other columns have had only zero gradients, hence zero
moments, so their Adam update is exactly zero: e.g. the SH bands above the degree in use
(``optimizers["shN"].param_groups[0]["active_columns"] = num_sh_bases(d) - 1``), which skips
most of the largest tensor for the first two thirds of a 3DGS run.

``step(visibility=mask)`` is the selective variant of gsplat's ``SelectiveAdam`` (3DGS-LM /
Taming 3DGS): only the rows (Gaussians) where ``mask`` is True are updated; moments and
parameters of the others are left untouched (not decayed), while the step count advances for
all. It is *not* the same optimiser as Adam — it moves only what the step's view saw — and is
opt-in.

Other Adam options (weight decay, amsgrad, maximize, capturable, differentiable) are not
implemented here: :class:`FusedAdam` raises ``ValueError`` when given them, and falls back to
``torch.optim.Adam.step`` for tensors that are not contiguous float32 CPU tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["FusedAdam", "fuse_optimizers"]

_ROWS_PER_TASK = 4096


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_kernel(p, g, m, v, row, w1, b2, w2, step_size, bc2_sqrt, eps):
    """In place on flat float32 arrays of ``n_rows * row`` elements, in torch's op order:
    m.lerp_(g, w1); v.mul_(b2).addcmul_(g, g, w2); p.addcdiv_(m, sqrt(v) / bc2_sqrt + eps,
    -step_size) with w1 = 1 - b1, w2 = 1 - b2 rounded once to float32, as torch does."""
    n_rows = p.shape[0] // row
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(n_tasks):
        r0 = t * _ROWS_PER_TASK
        r1 = min(n_rows, r0 + _ROWS_PER_TASK)
        for i in range(np.uint64(r0 * row), np.uint64(r1 * row)):
            gi = g[i]
            mi = m[i] + w1 * (gi - m[i])
            vi = v[i] * b2 + w2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] + (-step_size) * mi / (math.sqrt(vi) / bc2_sqrt + eps)



@njit(parallel=True, cache=True, error_model="numpy")
def _adam_rows_kernel(p, g, m, v, row, rows, w1, b2, w2, step_size, bc2_sqrt, eps):
    """``_adam_kernel`` on the listed rows only (selective Adam)."""
    n = rows.shape[0]
    n_tasks = (n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(n_tasks):
        for k in range(t * _ROWS_PER_TASK, min(n, (t + 1) * _ROWS_PER_TASK)):
            r = rows[k]
            for i in range(np.uint64(r * row), np.uint64((r + 1) * row)):
                gi = g[i]
                mi = m[i] + w1 * (gi - m[i])
                vi = v[i] * b2 + w2 * gi * gi
                m[i] = mi
                v[i] = vi
                p[i] = p[i] + (-step_size) * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_prefix_kernel(p, g, m, v, stride, length, rows, w1, b2, w2, step_size, bc2_sqrt, eps):
    """``_adam_kernel`` on the first ``length`` elements of each listed row of ``stride``."""
    n = rows.shape[0]
    n_tasks = (n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(n_tasks):
        for k in range(t * _ROWS_PER_TASK, min(n, (t + 1) * _ROWS_PER_TASK)):
            r = rows[k]
            for i in range(np.uint64(r * stride), np.uint64(r * stride + length)):
                gi = g[i]
                mi = m[i] + w1 * (gi - m[i])
                vi = v[i] * b2 + w2 * gi * gi
                m[i] = mi
                v[i] = vi
                p[i] = p[i] + (-step_size) * mi / (math.sqrt(vi) / bc2_sqrt + eps)


def _fusable(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with a one-pass numba update for contiguous float32 CPU tensors.

    Args:
        params, lr, betas, eps: as ``torch.optim.Adam``.
        **kwargs: other ``torch.optim.Adam`` options are accepted only at their defaults.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, **kwargs):
        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False, 0, 0.0)}
        if unsupported:
            raise ValueError(f"FusedAdam: supports only lr, betas, eps; given {sorted(unsupported)}")
        super().__init__(params, lr=lr, betas=betas, eps=eps)

    @classmethod
    def from_optimizer(cls, opt: torch.optim.Adam) -> FusedAdam:
        """A FusedAdam over the same parameter groups (names and learning rates kept) and the
        same state (moments and step counts are shared, not copied)."""
        if not isinstance(opt, torch.optim.Adam):
            raise ValueError(f"opt: expected a torch.optim.Adam, given {type(opt).__name__}")  # noqa: TRY004 (bad input is a ValueError here)
        for group in opt.param_groups:
            if group.get("weight_decay", 0) or group.get("amsgrad") or group.get("maximize"):
                raise ValueError("opt: weight_decay / amsgrad / maximize are not supported by FusedAdam")
        first = opt.param_groups[0]
        new = cls([dict(g) for g in opt.param_groups], lr=first["lr"], betas=first["betas"], eps=first["eps"])
        for p, s in opt.state.items():
            new.state[p] = s
        return new

    @torch.no_grad()
    def step(self, closure=None, visibility: Tensor | None = None):  # visibility: [N] bool
        """One Adam step; with ``visibility`` ([N] bool, N = rows of every parameter) only the
        visible rows are updated (selective Adam)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        mask = None
        if visibility is not None:
            if visibility.dim() != 1 or visibility.dtype != torch.bool:
                raise ValueError(f"visibility: expected a bool tensor [N], given {visibility.dtype} {list(visibility.shape)}")
            mask = visibility.detach().cpu()
            rows = np.flatnonzero(mask.numpy()).astype(np.int64)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if not _fusable(p, p.grad, m, v) or p.grad.is_sparse:
                    if mask is not None:
                        raise ValueError("visibility: selective steps need contiguous float32 CPU tensors")
                    self._torch_step(group, p, state)
                    continue
                if mask is not None and (p.dim() == 0 or p.shape[0] != mask.shape[0]):
                    raise ValueError(f"visibility: expected {p.shape[0] if p.dim() else 0} rows, given {mask.shape[0]}")
                state["step"] += 1
                step = float(state["step"])
                bc1 = 1.0 - b1**step
                bc2 = 1.0 - b2**step
                row = max(1, p.numel() // max(1, p.shape[0])) if p.dim() else 1
                active = group.get("active_columns")
                if active is not None and p.dim() >= 2 and int(active) < p.shape[1]:
                    if int(active) <= 0:
                        continue  # nothing active: the update would be exactly zero
                    self._columns_step(p, m, v, int(active), b1, b2, bc1, bc2, group, mask, rows if mask is not None else None)
                    continue
                args = (
                    np.float32(1 - b1), np.float32(b2), np.float32(1 - b2), np.float32(group["lr"] / bc1),
                    np.float32(math.sqrt(bc2)), np.float32(group["eps"]),
                )
                flat = (p.view(-1).numpy(), p.grad.reshape(-1).numpy(), m.view(-1).numpy(), v.view(-1).numpy())
                if mask is None:
                    _adam_kernel(*flat, row, *args)
                else:
                    _adam_rows_kernel(*flat, row, rows, *args)
        return loss

    def _columns_step(self, p, m, v, active, b1, b2, bc1, bc2, group, mask, rows) -> None:
        """Adam on p[:, :active] only (the rest has had zero gradients and zero moments so far,
        so its Adam update is exactly zero)."""
        n = p.shape[0]
        stride = p.numel() // max(1, n)
        length = active * (stride // p.shape[1])
        args = (
            np.float32(1 - b1), np.float32(b2), np.float32(1 - b2), np.float32(group["lr"] / bc1),
            np.float32(math.sqrt(bc2)), np.float32(group["eps"]),
        )
        flat = (p.view(-1).numpy(), p.grad.reshape(-1).numpy(), m.view(-1).numpy(), v.view(-1).numpy())
        sel = rows if mask is not None else np.arange(n, dtype=np.int64)
        _adam_prefix_kernel(*flat, stride, length, sel, *args)

    def _torch_step(self, group, p, state) -> None:
        """torch.optim.Adam's update for one tensor (non-fusable dtype/device/layout)."""
        b1, b2 = group["betas"]
        g = p.grad
        state["step"] += 1
        step = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**step)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1**step))


def fuse_optimizers(optimizers: dict) -> dict:
    """``{name: torch.optim.Adam}`` -> ``{name: FusedAdam}`` over the same parameters and state
    (e.g. ``fuse_optimizers(model.make_optimizers(...))``)."""
    return {name: FusedAdam.from_optimizer(opt) for name, opt in optimizers.items()}


def warmup() -> float:
    import time

    t0 = time.perf_counter()
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = FusedAdam([p], lr=0.1)
    p.grad = torch.ones(3, 2)
    opt.step()
    opt.step(visibility=torch.tensor([True, False, True]))
    return time.perf_counter() - t0
