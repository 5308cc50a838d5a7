"""Ordered-subsets FISTA for TV-regularised least squares, preconditioned like SART.

Solves, over ``x >= 0`` on the voxel grid,

    F(x) = sum_rays w h(A x - b) + lambda * TV(x),    w = 1 / (A 1)  (1 / ray length)

with ``h(r) = r^2 / 2`` (least squares) or, given ``huber = delta > 0``, Huber's loss
(``r^2 / 2`` for ``|r| <= delta``, ``delta |r| - delta^2 / 2`` beyond): rays whose residual stays
above ``delta`` -- photon-starved rays, whose line integrals are clipped or dominated by noise --
pull with a bounded force instead of one that grows with the residual. ``h'' <= 1`` either way, so
the majoriser below holds for both.

with ``A`` the matched projector and ``TV`` the anisotropic 3D total variation (sum of absolute
forward differences). The weights ``w`` are SART's row normalisation, so ``A^T w A`` is
majorised by the diagonal ``D = A^T 1`` (column sums; the separable quadratic surrogate of
Erdogan & Fessler 1999), and a gradient step preconditioned by ``D^-1`` is a SIRT step.

One step visits one subset ``s`` of ``n`` interleaved view groups (the OS idea: ``n * A_s^T w_s
(A_s z - b_s)`` stands in for the full gradient) and is a proximal-gradient step in the metric
``D`` with Nesterov/FISTA momentum (Beck & Teboulle 2009; ordered subsets with momentum:
Kim, Ramani & Fessler 2015)::

    v = z - D^-1 * n A_s^T w_s (A_s z - b_s)
    x' = argmin_{u >= 0} 1/2 ||u - v||_D^2 + lambda TV(u)        (:func:`tv_prox`)
    z = x' + (t_k - 1) / t_{k+1} (x' - x)

with the momentum restarted (``t = 1``) whenever the step went against the extrapolation
(``(z - x') . (x' - x) > 0``; O'Donoghue & Candes 2015's gradient scheme), which keeps the
ordered subsets' noise from building up in the momentum.

The proximal step is solved in its dual (Chambolle 2004; Beck & Teboulle's constrained TV):
projected gradient ascent on ``p`` in [-1, 1]^3 per voxel, ``u = max(0, v - lambda D^-1 grad^T
p)``, warm-started from the previous step's ``p``, so a few inner iterations per step suffice.
``D`` is floored at ``d_floor`` of its maximum (any larger diagonal still majorises; it keeps the
dual step from collapsing at the edge of the field of view).

:class:`TVSolver` holds the operators and the state (``x``, ``z``, ``p``, ``t``); the trainer
(:class:`recon.ct.tv_trainer.TVTrainer`) runs one :meth:`TVSolver.step` per training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from recon.ct.project import Projector
from recon.ct.sart import subset_order
from recon.errors import InputError
from recon.geometry.ct import CTGeometry

__all__ = ["TVSolver", "grad_3d", "grad_3d_adjoint", "huber_residual", "tv_objective", "tv_prox", "tv_sum"]


def grad_3d(u: Tensor) -> Tensor:  # [Z, Y, X] -> [3, Z, Y, X]
    """Forward differences along z, y, x; the last plane of each axis is 0 (Neumann)."""
    g = u.new_zeros((3, *u.shape))
    torch.sub(u[1:], u[:-1], out=g[0, :-1])
    torch.sub(u[:, 1:], u[:, :-1], out=g[1, :, :-1])
    torch.sub(u[:, :, 1:], u[:, :, :-1], out=g[2, :, :, :-1])
    return g


def grad_3d_adjoint(p: Tensor) -> Tensor:  # [3, Z, Y, X] -> [Z, Y, X]
    """``grad_3d^T p`` (minus the divergence); ignores the last plane of each component."""
    out = p.new_zeros(p.shape[1:])
    out[1:] += p[0, :-1]
    out[:-1] -= p[0, :-1]
    out[:, 1:] += p[1, :, :-1]
    out[:, :-1] -= p[1, :, :-1]
    out[:, :, 1:] += p[2, :, :, :-1]
    out[:, :, :-1] -= p[2, :, :, :-1]
    return out


def tv_sum(u: Tensor, isotropic: bool = False) -> Tensor:  # [Z, Y, X] -> scalar
    """Anisotropic TV: the sum of absolute forward differences over the three axes; isotropic:
    the sum over voxels of the Euclidean norm of the forward-difference gradient."""
    if isotropic:
        return grad_3d(u).square().sum(0).sqrt().sum()
    return sum((torch.diff(u, dim=d).abs().sum() for d in range(3)), u.new_zeros(()))


def tv_prox(
    v: Tensor,  # [Z, Y, X]
    lam: float,
    d: Tensor,  # [Z, Y, X], > 0
    *,
    p: Tensor | None = None,  # [3, Z, Y, X] dual warm start, updated in place
    iterations: int = 50,
    axes: tuple[int, ...] = (0, 1, 2),
    isotropic: bool = False,
) -> tuple[Tensor, Tensor]:  # ([Z, Y, X], [3, Z, Y, X])
    """``argmin_{u >= 0} 1/2 sum d (u - v)^2 + lam * TV(u)`` by projected dual gradient ascent.

    Args:
        v: the point to denoise.
        lam: TV weight (>= 0).
        d: the diagonal metric (positive).
        p: dual variable to start from (changed in place); zeros when None.
        iterations: dual steps.
        axes: the axes (0 = z, 1 = y, 2 = x) whose differences TV sums; e.g. ``(0,)`` for TV
            across slices only (the dual components of the other axes stay 0).
        isotropic: isotropic TV (the dual is projected per voxel onto the unit ball instead of
            the box [-1, 1]^3).

    Returns:
        (u, p): the primal solution (>= 0) and the dual variable.
    """
    if v.dim() != 3 or d.shape != v.shape:
        raise InputError("tv_prox", f"expected v and d of one [Z, Y, X] shape, got {list(v.shape)} and {list(d.shape)}")
    axes = tuple(sorted({int(a) for a in axes}))
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise InputError("tv_prox", f"axes must be a non-empty subset of (0, 1, 2), got {axes}")
    if p is None:
        p = v.new_zeros((3, *v.shape))
    if lam <= 0:
        return v.clamp_min(0), p
    dinv_lam = lam / d
    # 1 / (Lipschitz constant of the dual gradient / lam): 4 per axis
    step = 1.0 / (4.0 * len(axes) * lam * float((1.0 / d).max()))
    others = [a for a in (0, 1, 2) if a not in axes]
    if others:
        p[others] = 0.0
    u = (v - dinv_lam * grad_3d_adjoint(p)).clamp_min_(0)
    for _ in range(iterations):
        g = grad_3d(u)
        if others:
            g[others] = 0.0
        p.add_(g, alpha=step)
        if isotropic:
            p.div_(p.square().sum(0).sqrt_().clamp_min_(1.0))
        else:
            p.clamp_(-1.0, 1.0)
        u = (v - dinv_lam * grad_3d_adjoint(p)).clamp_min_(0)
    return u, p


def huber_residual(r: Tensor, delta: float) -> tuple[Tensor, Tensor]:  # [...] -> ([...], [...])
    """``(h(r), h'(r))`` elementwise for the data loss of the module docstring: least squares
    (``r^2 / 2``, ``r``) when ``delta <= 0``, else Huber's loss with threshold ``delta`` and its
    derivative ``clamp(r, -delta, delta)``."""
    if delta <= 0:
        return 0.5 * r * r, r
    rc = r.clamp(-delta, delta)
    return rc * r - 0.5 * rc * rc, rc


def tv_objective(projector: Projector, x: Tensor, b: Tensor, w: Tensor, lam: float, isotropic: bool = False, huber: float = 0.0) -> float:  # x [Z, Y, X], b / w [V, v, u]
    """``F(x)`` of the module docstring over all views (one forward projection)."""
    h, _ = huber_residual(projector.forward(x) - b, huber)
    return float((w * h).sum() + lam * tv_sum(x, isotropic))


class TVSolver:
    """OS-FISTA with a TV proximal step (see the module docstring).

    Args:
        projections: [V, v, u] line integrals, in the units the volume's projections should take.
        geometry: the scan.
        lam: TV weight (in the units of ``F``; see the module docstring).
        n_subsets: view groups per pass (1: full-batch FISTA), or a schedule: the number of
            groups in pass 0, 1, ... (the last repeats). The momentum carries over from one
            number of groups to another (measured faster than restarting it), except into
            full-batch steps, where it restarts.
        prox_iterations: dual steps of the TV proximal problem per step (warm-started).
        momentum: FISTA momentum (False: proximal gradient, monotone with one subset).
        d_floor: the diagonal ``D`` is raised to at least this fraction of its maximum.
        relaxation: step scale: the metric is ``D / relaxation``.
        restart_every: also restart the momentum every this many steps (0: only adaptively).
        os_passes: after this many passes over the subsets, every step takes all views
            (full-batch FISTA, which converges; ordered subsets with momentum only approach
            the solution and can drift away from it). None: subsets throughout.
        projector: reuse a :class:`Projector`.
        ray_weights: [V, v, u] non-negative factors of the data weights ``w`` (e.g. statistical
            weights); None: 1.
        isotropic: isotropic TV (Euclidean norm of the gradient per voxel) instead of anisotropic.
        huber: Huber threshold ``delta`` of the data loss, in the units of ``projections``
            (0: least squares).
    """

    def __init__(
        self,
        projections: Tensor,  # [V, v, u]
        geometry: CTGeometry,
        *,
        lam: float,
        n_subsets: int | Sequence[int] = 5,
        prox_iterations: int = 3,
        momentum: bool = True,
        d_floor: float = 0.05,
        relaxation: float = 1.0,
        restart_every: int = 0,
        os_passes: int | None = None,
        projector: Projector | None = None,
        ray_weights: Tensor | None = None,  # [V, v, u]
        isotropic: bool = False,
        huber: float = 0.0,
    ) -> None:
        if not isinstance(geometry, CTGeometry):
            raise InputError("geometry", f"expected a CTGeometry, got {type(geometry).__name__}")
        b = torch.as_tensor(projections).float()
        if tuple(b.shape) != geometry.projection_shape:
            raise InputError("projections", f"expected shape {list(geometry.projection_shape)} (views, v, u), got {list(b.shape)}")
        if lam < 0 or prox_iterations < 1 or not 0 < d_floor <= 1 or huber < 0:
            raise InputError("TVSolver", f"need lam >= 0, prox_iterations >= 1, 0 < d_floor <= 1, huber >= 0; got {lam}, {prox_iterations}, {d_floor}, {huber}")
        self.geometry, self.b, self.lam = geometry, b, float(lam)
        self.prox_iterations, self.momentum, self.relaxation = int(prox_iterations), bool(momentum), float(relaxation)
        self.restart_every = int(restart_every)
        self.isotropic = bool(isotropic)
        self.huber = float(huber)
        self.projector = projector or Projector(geometry, num_threads=None)
        schedule = [int(n_subsets)] if isinstance(n_subsets, int) else [int(n) for n in n_subsets]
        if not schedule or min(schedule) < 1:
            raise InputError("n_subsets", f"expected a positive int or a non-empty list of them, got {n_subsets!r}")
        if os_passes is not None:
            schedule = schedule[:1] * int(os_passes) + [1]
        self.schedule = [min(n, geometry.n_views) for n in schedule]  # subsets in pass 0, 1, ...; the last repeats
        self._keys: dict[int, list[tuple[int, ...]]] = {}
        if ray_weights is not None and (tuple(ray_weights.shape) != tuple(b.shape) or not bool((ray_weights >= 0).all())):
            raise InputError("ray_weights", f"expected non-negative weights of shape {list(b.shape)}")
        with torch.no_grad():
            # view group by view group, so only the ray tables the first pass needs are built
            ones = torch.ones(geometry.n_voxel)
            self.w = torch.zeros_like(b)  # [V, v, u]
            d = torch.zeros(geometry.n_voxel)  # [Z, Y, X] = A^T w A 1
            for key in self.keys(self.schedule[0]):
                rows = list(key)
                ray = self.projector.forward(ones, key)  # ray lengths (mm)
                w = torch.where(ray > 1e-6 * max(geometry.voxel_mm), 1.0 / ray.clamp_min(1e-12), torch.zeros_like(ray))
                if ray_weights is not None:
                    w = w * ray_weights[rows].float()
                self.w[rows] = w
                d += self.projector.backproject(w * ray, key)
        self.d = d.clamp_min(d_floor * float(d.max())) / self.relaxation  # [Z, Y, X]
        self.x: Tensor = torch.zeros(geometry.n_voxel)
        self.z: Tensor = self.x.clone()
        self.p: Tensor = torch.zeros((3, *geometry.n_voxel))
        self.t = 1.0
        self.k = 0  # steps done
        self.restarts = 0  # momentum restarts so far

    def start(self, x0: Tensor) -> None:  # [Z, Y, X]
        """Start from ``x0`` (clamped at 0), no momentum, zero dual."""
        if tuple(x0.shape) != self.geometry.n_voxel:
            raise InputError("x0", f"expected shape {list(self.geometry.n_voxel)} (z, y, x), got {list(x0.shape)}")
        self.x = x0.float().clamp_min(0).clone()
        self.z = self.x.clone()
        self.p.zero_()
        self.t, self.k, self.restarts = 1.0, 0, 0

    def keys(self, n: int) -> list[tuple[int, ...]]:
        """The ``n`` interleaved view groups of a pass with ``n`` subsets."""
        if n not in self._keys:
            self._keys[n] = [tuple(int(i) for i in s) for s in subset_order(self.geometry.n_views, n)]
        return self._keys[n]

    def position(self, k: int) -> tuple[int, int, int]:
        """(pass, subsets in that pass, index of step ``k`` in it) under the subset schedule."""
        start = 0
        for i, n in enumerate(self.schedule[:-1]):
            if k < start + n:
                return i, n, k - start
            start += n
        n = self.schedule[-1]
        q, r = divmod(k - start, n)
        return len(self.schedule) - 1 + q, n, r

    def _data_gradient(self, z: Tensor, key: tuple[int, ...]) -> tuple[float, Tensor]:  # z [Z, Y, X] -> (value, [Z, Y, X])
        """The data term of the views ``key`` at ``z`` and its gradient."""
        rows = list(key)
        h, dh = huber_residual(self.projector.forward(z, key) - self.b[rows], self.huber)
        w = self.w[rows]
        return float((w * h).sum()), self.projector.backproject(w * dh, key)

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """One proximal-gradient step on the next subset; returns ``data`` (the subset's data term
        at ``z``, times the number of subsets: an estimate of the full data
        term), ``change`` (``||x' - x|| / ||x'||``), ``restarted`` and ``pass_end`` (1.0 when
        this step finished a pass over all views)."""
        pass_index, n, i = self.position(self.k)
        key = self.keys(n)[i]
        if i == 0 and pass_index > 0 and n == 1 and self.position(self.k - 1)[1] != 1:
            self.t = 1.0  # the momentum of the ordered-subset phase does not carry over into full-batch steps
        data, grad = self._data_gradient(self.z, key)
        v = self.z - (n / self.d) * grad
        data *= n
        x_new, self.p = tv_prox(v, self.lam, self.d, p=self.p, iterations=self.prox_iterations, isotropic=self.isotropic)
        diff = x_new - self.x
        change = float(diff.norm()) / max(float(x_new.norm()), 1e-30)
        restart = self.momentum and float(((self.z - x_new) * diff).sum()) > 0
        if self.restart_every and (self.k + 1) % self.restart_every == 0:
            restart = True
        if restart:  # adaptive restart (O'Donoghue & Candes 2015), or the scheduled one
            self.t = 1.0
            self.restarts += 1
        if self.momentum:
            t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * self.t * self.t))
            self.z = x_new + ((self.t - 1.0) / t_next) * diff
            self.t = t_next
        else:
            self.z = x_new
        self.x = x_new
        self.k += 1
        pass_end = i == n - 1
        return {"data": data, "change": change, "restarted": float(restart), "pass_end": float(pass_end)}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.clone(), "z": self.z.clone(), "p": self.p.clone(), "t": self.t, "k": self.k, "restarts": self.restarts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("x", "z"):
            if tuple(state[name].shape) != self.geometry.n_voxel:
                raise InputError("checkpoint", f"holds a {list(state[name].shape)} volume, the geometry's grid is {list(self.geometry.n_voxel)}")
        self.x, self.z, self.p = (torch.as_tensor(state[k]).float().clone() for k in ("x", "z", "p"))
        self.t, self.k, self.restarts = float(state["t"]), int(state["k"]), int(state["restarts"])
