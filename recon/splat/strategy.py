"""Adaptive density control of 3D Gaussians (3DGS: grow, split, prune, opacity reset).

:class:`DensifyStrategy` has the hyperparameters, defaults and hook API of gsplat 1.4.0's
``DefaultStrategy``, so either can drive the other's trainer loop::

    strategy = DensifyStrategy(max_gaussians=200_000)
    strategy.check_sanity(model.params, optimizers)
    state = strategy.initialize_state(scene_scale)
    for step in range(max_steps):
        renders, alphas, info = rasterize(...)
        strategy.step_pre_backward(model.params, optimizers, state, step, info)
        loss.backward()
        strategy.step_post_backward(model.params, optimizers, state, step, info)

The row operations (duplicate / split / remove / reset) replace the ``Parameter`` objects in
``params`` and in each optimiser's single param group, carrying the Adam moments along: rows of
kept Gaussians keep theirs, new rows start at zero, removed rows are dropped.
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["DensifyStrategy", "duplicate_rows", "remove_rows", "reorder_rows", "split_rows"]

logger = logging.getLogger(__name__)

Params = MutableMapping[str, nn.Parameter]  # e.g. torch.nn.ParameterDict
Optimizers = Mapping[str, torch.optim.Optimizer]


@dataclass
class DensifyStrategy:
    """The 3DGS densification schedule, as gsplat 1.4.0 ``DefaultStrategy`` plus a size cap.

    Field names drop gsplat's "refine" (in recon, refining means pose refinement):
    ``start_iter``, ``stop_iter``, ``every``, ``pause_after_reset`` and ``scale2d_stop_iter`` are
    gsplat's ``refine_start_iter``, ``refine_stop_iter``, ``refine_every``,
    ``pause_refine_after_reset`` and ``refine_scale2d_stop_iter``.

    Every step before ``stop_iter`` it accumulates, per Gaussian visible in a view
    (radius > 0), the norm of the gradient of its projected 2D mean, scaled to [-1, 1] screen
    units (x by W/2 * n_cameras, y by H/2 * n_cameras), and how often it was visible. Every
    ``every`` steps with ``start_iter < step < stop_iter`` it then

    - duplicates Gaussians whose mean gradient exceeds ``grow_grad2d`` and whose largest scale
      is at most ``grow_scale3d * scene_scale`` (copies appended at the end);
    - splits those with a high gradient and a larger scale (or, before
      ``scale2d_stop_iter``, a screen radius above ``grow_scale2d``) into 2 samples drawn
      from the Gaussian, with scales divided by 1.6 (the originals are removed and the pairs
      appended at the end);
    - prunes Gaussians with opacity below ``prune_opa`` and, once ``step > reset_every``, those
      larger than ``prune_scale3d * scene_scale`` (or, before ``scale2d_stop_iter``,
      wider on screen than ``prune_scale2d``);
    - zeroes the accumulated statistics.

    Opacity reset: every ``reset_every`` steps it clamps opacities to at most ``2 * prune_opa``
    and zeroes their Adam moments, **only for step > 0** (and before ``stop_iter``).
    gsplat 1.4.0 also resets at step 0, clamping a freshly initialised model's opacities (0.1)
    to 0.01 before it has been trained at all; gsplat 1.5.3 never resets, because its condition
    ``step % self.reset_every == 0 & step > 0`` parses as a chained comparison ending in
    ``0 > 0`` (fixed upstream in gsplat PR #776). This class does neither.

    Size cap: with ``max_gaussians`` set, a refine step grows at most
    ``max_gaussians - N`` Gaussians (each duplicate or split adds one), keeping the candidates
    with the highest accumulated gradient. Pruning is not forced to reach the cap: a model that
    starts above it simply stops growing. CPU training needs a cap; without one the count can
    reach millions.

    Works on any device and never calls ``torch.cuda``. The row ops follow gsplat's order, so
    with the same random seed the result equals gsplat's.
    """

    prune_opa: float = 0.005
    """Gaussians with opacity below this are pruned; reset clamps opacities to twice this."""
    grow_grad2d: float = 0.0002
    """Mean normalised 2D gradient above which a Gaussian is duplicated or split."""
    grow_scale3d: float = 0.01
    """Largest scale (relative to ``scene_scale``) at or below which a Gaussian is duplicated;
    above, it is split."""
    grow_scale2d: float = 0.05
    """Screen radius (relative to max(W, H)) above which a Gaussian is split, before
    ``scale2d_stop_iter``."""
    prune_scale3d: float = 0.1
    """Largest scale (relative to ``scene_scale``) above which a Gaussian is pruned, after the
    first opacity reset."""
    prune_scale2d: float = 0.15
    """Screen radius (relative to max(W, H)) above which a Gaussian is pruned, before
    ``scale2d_stop_iter``."""
    scale2d_stop_iter: int = 0
    """Use the 2D-radius criteria before this step; 0 disables them (and the radius state)."""
    start_iter: int = 500
    """Refine only at steps strictly greater than this."""
    stop_iter: int = 15_000
    """From this step on, nothing happens: no statistics, no refinement, no reset."""
    reset_every: int = 3000
    """Reset opacities at every positive multiple of this step."""
    every: int = 100
    """Refine at multiples of this step."""
    pause_after_reset: int = 0
    """Skip refinement for this many steps after each reset (e.g. the number of images)."""
    absgrad: bool = False
    """Accumulate absolute gradients (AbsGS; rasterise with ``absgrad=True`` and raise
    ``grow_grad2d``, e.g. to 0.0008)."""
    revised_opacity: bool = False
    """Split with the opacity correction of arXiv:2404.06109: 1 - sqrt(1 - opacity)."""
    verbose: bool = False
    """Log refine counts at INFO level (DEBUG otherwise)."""
    key_for_gradient: Literal["means2d", "gradient_2dgs"] = "means2d"
    """Entry of the rasteriser's ``info`` whose gradient drives growth (2DGS: gradient_2dgs)."""
    max_gaussians: int | None = None
    """Never grow beyond this many Gaussians; None for no cap."""

    def __post_init__(self) -> None:
        for name in ("every", "reset_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise ValueError(f"max_gaussians: expected >= 1 or None, got {self.max_gaussians}")
        if self.key_for_gradient not in ("means2d", "gradient_2dgs"):
            raise ValueError(
                f"key_for_gradient: expected 'means2d' or 'gradient_2dgs', got {self.key_for_gradient!r}"
            )

    def within(self, iterations: int, fraction: float = 0.8) -> DensifyStrategy:
        """This strategy with refinement stopping by ``fraction`` of a run of ``iterations``
        steps (so the last Gaussians added still get trained); unchanged when it already does."""
        stop = int(fraction * iterations)
        return self if self.stop_iter <= stop else dataclasses.replace(self, stop_iter=stop)

    # ------------------------------------------------------------------ hooks
    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """The running state to pass to the step hooks.

        ``grad2d`` [N] (sum of normalised 2D gradient norms), ``count`` [N] (times visible) and,
        when 2D criteria are on, ``radii`` [N] (max screen radius / max(W, H)) are created on
        the first step, on the gradients' device. ``last`` holds the counts of the latest
        refine step (``duplicated``, ``split``, ``pruned``, ``reset``).
        """
        state: dict[str, Any] = {"grad2d": None, "count": None, "scene_scale": float(scene_scale)}
        if self.scale2d_stop_iter > 0:
            state["radii"] = None
        state["last"] = {"step": None, "duplicated": 0, "split": 0, "pruned": 0, "reset": False}
        return state

    def check_sanity(self, params: Params, optimizers: Optimizers) -> None:
        """Raise ValueError unless params and optimizers fit the strategy.

        Requires: the same keys in both; ``means``, ``scales``, ``quats``, ``opacities``
        present; every optimiser has one param group holding exactly its parameter; all
        parameters have the same number of rows.
        """
        if set(params.keys()) != set(optimizers.keys()):
            raise ValueError(
                f"params/optimizers: expected the same keys, got {sorted(params.keys())} "
                f"and {sorted(optimizers.keys())}"
            )
        missing = [k for k in ("means", "scales", "quats", "opacities") if k not in params]
        if missing:
            raise ValueError(f"params: missing {missing}, which densification needs")
        n = params["means"].shape[0]
        for name, opt in optimizers.items():
            groups = opt.param_groups
            if len(groups) != 1 or len(groups[0]["params"]) != 1:
                raise ValueError(
                    f"optimizers[{name!r}]: expected one param group with one parameter, got "
                    f"{[len(g['params']) for g in groups]}"
                )
            if groups[0]["params"][0] is not params[name]:
                raise ValueError(
                    f"optimizers[{name!r}]: optimises a different tensor than params[{name!r}] "
                    "(rebuild the optimisers after moving or loading the model)"
                )
            if params[name].shape[0] != n:
                raise ValueError(f"params[{name!r}]: {params[name].shape[0]} rows, means has {n}")

    def step_pre_backward(
        self,
        params: Params,
        optimizers: Optimizers,
        state: dict[str, Any],
        step: int,
        info: Mapping[str, Any],
    ) -> None:
        """Before ``loss.backward()``: keep the gradient of ``info[key_for_gradient]``."""
        if self.key_for_gradient not in info:
            raise ValueError(
                f"info: missing {self.key_for_gradient!r} (the rasteriser's projected means)"
            )
        info[self.key_for_gradient].retain_grad()

    def step_post_backward(
        self,
        params: Params,
        optimizers: Optimizers,
        state: dict[str, Any],
        step: int,
        info: Mapping[str, Any],
        packed: bool = False,
    ) -> dict[str, Any]:
        """After ``loss.backward()`` (before ``optimizer.step()``): update and maybe refine.

        ``info`` needs ``width``, ``height``, ``n_cameras``, ``radii`` ([C, N], or [nnz] when
        ``packed``; gsplat >= 1.5's [..., 2] also works), ``gaussian_ids`` (used when
        ``packed``) and ``key_for_gradient`` ([C, N, 2] or [nnz, 2], with ``.grad`` or, for
        ``absgrad``, ``.absgrad``).

        Returns ``state["last"]``: what this step did (``duplicated``, ``split``, ``pruned``
        counts and ``reset``); zeros on steps that do nothing.
        """
        last = {"step": step, "duplicated": 0, "split": 0, "pruned": 0, "reset": False}
        state["last"] = last
        if step >= self.stop_iter:
            return last

        self._accumulate(params, state, info, packed)

        if (
            step > self.start_iter
            and step % self.every == 0
            and step % self.reset_every >= self.pause_after_reset
        ):
            last["duplicated"], last["split"] = self._grow(params, optimizers, state, step)
            last["pruned"] = self._prune(params, optimizers, state, step)
            for key in ("grad2d", "count", "radii"):
                if isinstance(state.get(key), Tensor):
                    state[key].zero_()
            logger.log(
                logging.INFO if self.verbose else logging.DEBUG,
                "step %d: %d duplicated, %d split, %d pruned, %d Gaussians",
                step, last["duplicated"], last["split"], last["pruned"], params["means"].shape[0],
            )

        if step > 0 and step % self.reset_every == 0:
            _reset_opacities(params, optimizers, self.prune_opa * 2.0)
            last["reset"] = True
            logger.log(logging.INFO if self.verbose else logging.DEBUG, "step %d: opacity reset", step)
        return last

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _accumulate(
        self, params: Params, state: dict[str, Any], info: Mapping[str, Any], packed: bool
    ) -> None:
        needed = ["width", "height", "n_cameras", "radii", self.key_for_gradient]
        if packed:
            needed.append("gaussian_ids")
        missing = [k for k in needed if k not in info]
        if missing:
            raise ValueError(f"info: missing {missing} (expected the rasteriser's meta dict)")
        source = info[self.key_for_gradient]
        grads = getattr(source, "absgrad", None) if self.absgrad else source.grad
        if grads is None:
            what = "absgrad (rasterise with absgrad=True)" if self.absgrad else "grad"
            raise ValueError(
                f"info[{self.key_for_gradient!r}]: no {what}; call step_pre_backward before "
                "loss.backward() and make the loss depend on the render"
            )
        # normalise to [-1, 1] screen units, per camera in the batch
        scale = grads.new_tensor(
            [info["width"] / 2.0 * info["n_cameras"], info["height"] / 2.0 * info["n_cameras"]]
        )
        norms = (grads * scale).norm(dim=-1)  # [C, N] or [nnz]
        radii = info["radii"]
        if radii.dim() == grads.dim():  # gsplat >= 1.5: per-axis radii [..., 2]
            visible_ax = (radii > 0).all(dim=-1)
            radii = radii.amax(dim=-1)
        else:
            visible_ax = radii > 0
        if packed:
            ids = info["gaussian_ids"]  # [nnz]
            norms, radii = norms[visible_ax], radii[visible_ax]
            ids = ids[visible_ax]
        else:
            ids = torch.nonzero(visible_ax, as_tuple=True)[1]  # [nnz]
            norms, radii = norms[visible_ax], radii[visible_ax]  # [nnz]

        n = params["means"].shape[0]
        keys = ["grad2d", "count"] + (["radii"] if self.scale2d_stop_iter > 0 else [])
        for key in keys:
            if state.get(key) is None:
                state[key] = torch.zeros(n, device=grads.device)
            elif state[key].shape[0] != n:
                raise ValueError(
                    f"state[{key!r}]: {state[key].shape[0]} rows but {n} Gaussians (the model "
                    "changed outside the strategy; call initialize_state again)"
                )
        state["grad2d"].index_add_(0, ids, norms.to(state["grad2d"].dtype))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=state["count"].dtype))
        if self.scale2d_stop_iter > 0:
            rel = radii.to(state["radii"].dtype) / float(max(info["width"], info["height"]))
            state["radii"].scatter_reduce_(0, ids, rel, reduce="amax")

    @torch.no_grad()
    def _grow(
        self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int
    ) -> tuple[int, int]:
        mean_grad = state["grad2d"] / state["count"].clamp_min(1)  # [N]
        high = mean_grad > self.grow_grad2d
        max_scale = torch.exp(params["scales"]).amax(dim=-1)  # [N]
        small = max_scale <= self.grow_scale3d * state["scene_scale"]
        to_dupe = high & small
        to_split = high & ~small
        if step < self.scale2d_stop_iter:
            to_split |= state["radii"] > self.grow_scale2d

        if self.max_gaussians is not None:
            budget = max(self.max_gaussians - params["means"].shape[0], 0)
            wanted = to_dupe | to_split
            if int(wanted.sum()) > budget:
                score = torch.where(wanted, mean_grad, torch.full_like(mean_grad, -torch.inf))
                keep = torch.zeros_like(wanted)
                keep[torch.topk(score, budget).indices] = True
                to_dupe &= keep
                to_split &= keep

        n_dupe, n_split = int(to_dupe.sum()), int(to_split.sum())
        if n_dupe:
            duplicate_rows(params, optimizers, state, to_dupe)
            # the copies (appended at the end) are not split
            to_split = torch.cat([to_split, to_split.new_zeros(n_dupe)])
        if n_split:
            split_rows(params, optimizers, state, to_split, self.revised_opacity)
        return n_dupe, n_split

    @torch.no_grad()
    def _prune(
        self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int
    ) -> int:
        doomed = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa  # [N]
        if step > self.reset_every:
            too_big = torch.exp(params["scales"]).amax(dim=-1) > self.prune_scale3d * state["scene_scale"]
            if step < self.scale2d_stop_iter:
                too_big |= state["radii"] > self.prune_scale2d
            doomed |= too_big
        n_pruned = int(doomed.sum())
        if n_pruned:
            remove_rows(params, optimizers, state, doomed)
        return n_pruned


# -------------------------------------------------------------------------- row operations
def _replace_rows(
    params: Params,
    optimizers: Optimizers,
    new_param: Callable[[str, Tensor], Tensor],
    new_moment: Callable[[Tensor], Tensor],
    names: list[str] | None = None,
) -> None:
    """Swap each parameter for ``new_param(name, old)`` and its per-row optimiser state for
    ``new_moment(old_state)``; scalar state (Adam's ``step``) is kept."""
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        fresh = nn.Parameter(new_param(name, old.detach()), requires_grad=old.requires_grad)
        opt = optimizers.get(name)
        if opt is not None:
            group = opt.param_groups[0]
            tracked = group["params"][0]
            saved = opt.state.pop(tracked, None)
            group["params"][0] = fresh
            if saved is not None:
                rows = tracked.shape[0]
                opt.state[fresh] = {
                    key: new_moment(v)
                    if isinstance(v, Tensor) and key != "step" and v.dim() > 0 and v.shape[0] == rows
                    else v
                    for key, v in saved.items()
                }
        params[name] = fresh


def _extend_state(state: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> None:
    for key, v in state.items():
        if isinstance(v, Tensor):
            state[key] = fn(v)


def duplicate_rows(params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor) -> None:
    """Append a copy of each masked Gaussian; the copies' Adam moments start at zero."""
    idx = torch.nonzero(mask, as_tuple=True)[0]  # [M]
    _replace_rows(
        params,
        optimizers,
        lambda name, p: torch.cat([p, p[idx]]),
        lambda v: torch.cat([v, v.new_zeros((len(idx), *v.shape[1:]))]),
    )
    _extend_state(state, lambda v: torch.cat([v, v[idx]]))


def _quat_to_rotmat(q: Tensor) -> Tensor:
    """Unit quaternions wxyz [M, 4] -> rotation matrices [M, 3, 3]."""
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def split_rows(
    params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor, revised_opacity: bool
) -> None:
    """Replace each masked Gaussian by 2 samples drawn from it, scales / 1.6.

    Layout after: unmasked rows in order, then the first samples of all masked rows, then the
    second samples. New rows start with zero Adam moments; running stats are copied.
    """
    idx = torch.nonzero(mask, as_tuple=True)[0]  # [M]
    rest = torch.nonzero(~mask, as_tuple=True)[0]
    scales = torch.exp(params["scales"][idx])  # [M, 3]
    rot = _quat_to_rotmat(nn.functional.normalize(params["quats"][idx], dim=-1))  # [M, 3, 3]
    noise = torch.randn(2, len(idx), 3, device=scales.device)  # [2, M, 3]
    offsets = torch.einsum("mij,mj,smj->smi", rot, scales, noise)  # [2, M, 3]

    def new_param(name: str, p: Tensor) -> Tensor:
        if name == "means":
            pairs = (p[idx] + offsets).reshape(-1, 3)  # [2M, 3]
        elif name == "scales":
            pairs = torch.log(scales / 1.6).repeat(2, 1)  # [2M, 3]
        elif name == "opacities" and revised_opacity:
            pairs = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[idx]))).repeat(2, *[1] * (p.dim() - 1))
        else:
            pairs = p[idx].repeat(2, *[1] * (p.dim() - 1))
        return torch.cat([p[rest], pairs])

    _replace_rows(
        params,
        optimizers,
        new_param,
        lambda v: torch.cat([v[rest], v.new_zeros((2 * len(idx), *v.shape[1:]))]),
    )
    _extend_state(state, lambda v: torch.cat([v[rest], v[idx].repeat(2, *[1] * (v.dim() - 1))]))


def remove_rows(params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor) -> None:
    """Drop the masked Gaussians, their Adam rows and their running stats."""
    keep = torch.nonzero(~mask, as_tuple=True)[0]
    _replace_rows(params, optimizers, lambda name, p: p[keep], lambda v: v[keep])
    _extend_state(state, lambda v: v[keep])


def reorder_rows(params: Params, optimizers: Optimizers, state: dict[str, Any], order: Tensor) -> None:
    """Put row ``order[i]`` at row ``i`` in every parameter, its Adam moments and running stats."""
    _replace_rows(params, optimizers, lambda name, p: p[order], lambda v: v[order])
    _extend_state(state, lambda v: v[order])


def _reset_opacities(params: Params, optimizers: Optimizers, value: float) -> None:
    """Clamp opacities to at most ``value`` (post-sigmoid) and zero their Adam moments."""
    p = params["opacities"]
    ceiling = torch.logit(torch.tensor(value, dtype=p.dtype)).item()
    _replace_rows(
        params,
        optimizers,
        lambda name, q: q.clamp(max=ceiling),
        torch.zeros_like,
        names=["opacities"],
    )
