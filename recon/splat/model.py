"""3D Gaussian model: raw (pre-activation) parameters, initialisation, optimisers.

Parameters live in one ``torch.nn.ParameterDict`` under gsplat's ``simple_trainer`` names, so
the dict can be handed as-is to :class:`recon.splat.strategy.DensifyStrategy` (or gsplat's
strategies) and written with :func:`recon.io.ply.write_splat_ply`:

==============  ===============  ==============================================
name            shape            stored as
==============  ===============  ==============================================
``means``       [N, 3]           world position
``quats``       [N, 4]           rotation, wxyz, *not* normalised
``scales``      [N, 3]           log of the standard deviations
``opacities``   [N]              logit of the opacity
``sh0``         [N, 1, 3]        degree-0 SH coefficient (DC) per channel
``shN``         [N, K - 1, 3]    higher SH coefficients, K = (sh_degree + 1)^2
==============  ===============  ==============================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor, nn

from recon.splat.sh import MAX_SH_DEGREE, num_sh_bases

__all__ = [
    "PARAM_NAMES",
    "SH_C0",
    "GaussianModel",
    "LearningRates",
    "means_lr_scheduler",
    "rgb_to_sh",
    "sh_to_rgb",
]

PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")
"""Keys of :attr:`GaussianModel.params`, in a fixed order."""

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic, 1 / (2 sqrt(pi))."""


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colour in 0..1 -> DC coefficient such that the rendered degree-0 colour is ``rgb``.

    rgb: [..., 3] -> [..., 3]
    """
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh`. sh: [..., 3] -> [..., 3]"""
    return sh * SH_C0 + 0.5


@dataclass
class LearningRates:
    """Per-parameter Adam learning rates (gsplat ``simple_trainer`` defaults)."""

    means: float = 1.6e-4
    """Learning rate of the means per unit of scene scale (multiplied by ``scene_scale``)."""
    scales: float = 5e-3
    """Learning rate of the log-scales."""
    quats: float = 1e-3
    """Learning rate of the unnormalised quaternions."""
    opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    sh0: float = 2.5e-3
    """Learning rate of the DC colour coefficients."""
    shN: float = 2.5e-3 / 20
    """Learning rate of the higher SH coefficients (20x lower than sh0)."""
    eps: float = 1e-15
    """Adam epsilon (tiny, as in 3DGS: gradients of far Gaussians are very small)."""


class GaussianModel(nn.Module):
    """A set of 3D Gaussians stored as raw parameters in :attr:`params`.

    Build one with :meth:`from_points` (SfM / point cloud init), :meth:`random_in_box`, or
    directly from a dict of tensors with the names and shapes in the module docstring (e.g. the
    output of :func:`recon.io.ply.read_splat_ply`).

    The strategy replaces the ``Parameter`` objects in :attr:`params` when it densifies, so hold
    on to the model (or the dict), never to a single parameter. :meth:`load_state_dict` accepts
    checkpoints with any number of Gaussians; rebuild the optimisers after loading.
    """

    params: nn.ParameterDict

    def __init__(self, params: Mapping[str, Tensor]):
        super().__init__()
        _check_params(params, "params")
        self.params = nn.ParameterDict(
            {name: nn.Parameter(params[name].detach().clone()) for name in PARAM_NAMES}
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_params(cls, params: Mapping[str, Tensor]) -> GaussianModel:
        """Same as ``GaussianModel(params)`` (e.g. ``from_params(read_splat_ply(path))``)."""
        return cls(params)

    @classmethod
    def from_points(
        cls,
        points: Tensor | np.ndarray,  # [P, 3]
        colours: Tensor | np.ndarray,  # [P, 3] in 0..1
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
    ) -> GaussianModel:
        """One isotropic Gaussian per point (the 3DGS / gsplat initialisation).

        Args:
            points: [P, 3] positions, P >= 2.
            colours: [P, 3] RGB in 0..1; stored in ``sh0`` so degree 0 renders exactly them.
            sh_degree: highest SH degree the model holds (0..3); ``shN`` starts at zero.
            init_opacity: opacity of every Gaussian, in (0, 1).
            init_scale: multiplier on the neighbour distance.

        The scale of each Gaussian is ``init_scale`` times the root-mean-square distance to its
        3 nearest neighbours (what INRIA's ``distCUDA2`` and gsplat's ``knn`` init compute),
        floored at 1e-7 so duplicate points do not give log(0). Rotations start at identity.
        """
        pts, rgb = points_and_colours(points, colours)
        _check_sh_degree(sh_degree, "sh_degree")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity: expected a value in (0, 1), got {init_opacity}")
        if not init_scale > 0.0:
            raise ValueError(f"init_scale: expected > 0, got {init_scale}")
        if not (torch.isfinite(pts).all() and torch.isfinite(rgb).all()):
            raise ValueError("points/colours: expected finite values, got NaN or inf")

        n = pts.shape[0]
        dist = _knn_rms_distance(pts, k=min(3, n - 1))  # [P]
        log_scale = torch.log(dist.clamp_min(1e-7) * init_scale)  # [P]
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        k = num_sh_bases(sh_degree)
        return cls(
            {
                "means": pts,
                "quats": quats,
                "scales": log_scale[:, None].repeat(1, 3),
                "opacities": torch.full((n,), math.log(init_opacity / (1.0 - init_opacity))),
                "sh0": rgb_to_sh(rgb.clamp(0.0, 1.0))[:, None, :],
                "shN": torch.zeros(n, k - 1, 3),
            }
        )

    @classmethod
    def random_in_box(
        cls,
        n: int,
        aabb: Tensor | np.ndarray,  # [2, 3]: min corner, max corner
        sh_degree: int = 3,
        seed: int = 0,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
    ) -> GaussianModel:
        """``n`` Gaussians uniform in the box ``aabb`` with uniform random colours.

        Same initialisation as :meth:`from_points` otherwise; ``seed`` makes it reproducible
        without touching torch's global generator.
        """
        box = torch.as_tensor(aabb, dtype=torch.float32)
        if box.shape != (2, 3) or not bool((box[1] >= box[0]).all()):
            raise ValueError(f"aabb: expected [2, 3] (min corner, max corner), got {box.tolist()}")
        if n < 2:
            raise ValueError(f"n: expected >= 2 Gaussians, got {n}")
        gen = torch.Generator().manual_seed(seed)
        pts = box[0] + (box[1] - box[0]) * torch.rand(n, 3, generator=gen)  # [n, 3]
        rgb = torch.rand(n, 3, generator=gen)  # [n, 3]
        return cls.from_points(pts, rgb, sh_degree, init_opacity, init_scale)

    # ------------------------------------------------------------------ views
    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def sh_degree(self) -> int:
        """Highest SH degree held, inferred from ``shN`` (so it follows loaded checkpoints)."""
        return math.isqrt(self.params["shN"].shape[1] + 1) - 1

    def activated(self, sh_degree_to_use: int | None = None) -> dict[str, Tensor]:
        """Rasterisation inputs, differentiable w.r.t. :attr:`params`.

        Returns a dict to splat into ``rasterization(**inputs, ..., sh_degree=d)`` with
            ``means`` [N, 3], ``quats`` [N, 4] (unit, wxyz), ``scales`` [N, 3] (exp),
            ``opacities`` [N] (sigmoid), ``colors`` [N, (d+1)^2, 3]: the SH coefficients up to
            ``d = sh_degree_to_use`` (default: the model's degree); higher bands are sliced off
            and get no gradient.
        """
        d = self.sh_degree if sh_degree_to_use is None else sh_degree_to_use
        if not 0 <= d <= self.sh_degree:
            raise ValueError(
                f"sh_degree_to_use: expected 0..{self.sh_degree} (the model's degree), got {d}"
            )
        p = self.params
        colors = torch.cat([p["sh0"], p["shN"][:, : num_sh_bases(d) - 1]], dim=1)  # [N, (d+1)^2, 3]
        return {
            "means": p["means"],
            "quats": nn.functional.normalize(p["quats"], dim=-1),
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "colors": colors,
        }

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Densification changes N: resize our parameters to the checkpoint's shapes first, so
        # the ordinary copy in ``nn.Module`` succeeds. Called for nested models too.
        for name, old in list(self.params.items()):
            saved = state_dict.get(f"{prefix}params.{name}")
            if isinstance(saved, Tensor) and saved.shape != old.shape:
                self.params[name] = nn.Parameter(
                    torch.empty(saved.shape, dtype=old.dtype, device=old.device),
                    requires_grad=old.requires_grad,
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, object], strict: bool = True, assign: bool = False):
        """Load a checkpoint of any size N (and any SH degree); optimisers must be rebuilt."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        _check_params(self.params, "state_dict")
        return result

    # ------------------------------------------------------------------ optimisation
    def make_optimizers(
        self,
        lrs: LearningRates | Mapping[str, float] | None = None,
        scene_scale: float = 1.0,
        means_lr: float | None = None,
    ) -> dict[str, torch.optim.Adam]:
        """One Adam per parameter (the layout gsplat strategies require).

        Args:
            lrs: a :class:`LearningRates`, or a mapping overriding some of its fields (unknown
                names raise ``ValueError``); None for the defaults.
            scene_scale: the means' learning rate is ``lrs.means * scene_scale``.
            means_lr: shortcut overriding ``lrs.means`` (still multiplied by ``scene_scale``).
        """
        if lrs is None:
            rates = LearningRates()
        elif isinstance(lrs, LearningRates):
            rates = lrs
        else:
            known = {f.name for f in fields(LearningRates)}
            unknown = sorted(set(lrs) - known)
            if unknown:
                raise ValueError(f"lrs: unknown names {unknown} (expected some of {sorted(known)})")
            rates = replace(LearningRates(), **dict(lrs))
        if means_lr is not None:
            rates = replace(rates, means=means_lr)
        if not scene_scale > 0:
            raise ValueError(f"scene_scale: expected > 0, got {scene_scale}")
        optimizers = {}
        for name in PARAM_NAMES:
            lr = getattr(rates, name) * (scene_scale if name == "means" else 1.0)
            optimizers[name] = torch.optim.Adam(
                [{"params": [self.params[name]], "lr": lr, "name": name}], eps=rates.eps
            )
        return optimizers


def means_lr_scheduler(
    optimizers: Mapping[str, torch.optim.Optimizer] | torch.optim.Optimizer,
    max_steps: int,
    final_ratio: float = 0.01,
) -> torch.optim.lr_scheduler.ExponentialLR:
    """Exponential decay of the means' learning rate to ``final_ratio`` of it after ``max_steps``.

    Call ``scheduler.step()`` once per training step. Densification swaps parameters inside the
    optimiser but keeps the optimiser object, so the scheduler stays valid.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1, got {max_steps}")
    if not 0.0 < final_ratio <= 1.0:
        raise ValueError(f"final_ratio: expected a value in (0, 1], got {final_ratio}")
    opt = optimizers if isinstance(optimizers, torch.optim.Optimizer) else optimizers["means"]
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=final_ratio ** (1.0 / max_steps))


# ---------------------------------------------------------------------- helpers
def _knn_rms_distance(points: Tensor, k: int) -> Tensor:
    """Root-mean-square distance of each point to its k nearest other points. [P, 3] -> [P]"""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    dist, _ = cKDTree(pts).query(pts, k=k + 1)  # [P, k+1], column 0 is the point itself
    rms = np.sqrt((dist[:, 1:] ** 2).mean(axis=1))
    return torch.from_numpy(rms).to(torch.float32)


def points_and_colours(points, colours) -> tuple[Tensor, Tensor]:  # [P, 3], [P, 3] -> float32 tensors
    """Initial points and their RGB as float32 tensors, checked: [P, 3] each with P >= 2."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    rgb = torch.as_tensor(colours, dtype=torch.float32)
    if pts.ndim != 2 or pts.shape[-1] != 3 or pts.shape[0] < 2:
        raise ValueError(f"points: expected [P, 3] with P >= 2, got {tuple(pts.shape)}")
    if rgb.shape != pts.shape:
        raise ValueError(f"colours: expected {tuple(pts.shape)} like points, got {tuple(rgb.shape)}")
    return pts, rgb


def _check_sh_degree(degree: int, where: str) -> None:
    if not (isinstance(degree, int) and 0 <= degree <= MAX_SH_DEGREE):
        raise ValueError(f"{where}: expected an SH degree in 0..{MAX_SH_DEGREE}, got {degree!r}")


def _check_params(params: Mapping[str, Tensor], where: str) -> None:
    """Names, shapes and a common N; raises ValueError naming what is off."""
    missing = [name for name in PARAM_NAMES if name not in params]
    if missing:
        raise ValueError(f"{where}: missing {missing} (expected {list(PARAM_NAMES)})")
    extra = sorted(set(params) - set(PARAM_NAMES))
    if extra:
        raise ValueError(f"{where}: unexpected names {extra} (expected {list(PARAM_NAMES)})")
    n = params["means"].shape[0]
    trailing = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (1, 3)}
    for name, tail in trailing.items():
        shape = tuple(params[name].shape)
        if shape != (n, *tail):
            raise ValueError(f"{where}: {name} has shape {shape}, expected {(n, *tail)}")
    sh_n = tuple(params["shN"].shape)
    valid = [num_sh_bases(d) - 1 for d in range(MAX_SH_DEGREE + 1)]
    if len(sh_n) != 3 or sh_n[0] != n or sh_n[2] != 3 or sh_n[1] not in valid:
        raise ValueError(f"{where}: shN has shape {sh_n}, expected [{n}, K-1, 3] with K-1 in {valid}")
