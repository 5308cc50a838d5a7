"""Voxel-anchored Gaussians (Scaffold-GS-like) with a sparse U-Net as the anchor-feature backbone.

The initial points (SfM, photo-consistent, hull: whatever the fit initialises from) are
voxelised with :func:`recon.sparse.sparse_quantize`; every occupied voxel is an *anchor* at the
voxel centre (fixed) with learnable parameters

==============  =========  ===================================================================
name            shape      meaning
==============  =========  ===================================================================
``features``    [N, C]     anchor feature (first 3 channels start at the mean point colour)
``scales``      [N, 6]     log scales: 3 for the offsets, 3 for the decoded Gaussians' sizes
==============  =========  ===================================================================

Decoding (:meth:`AnchoredGaussians.decode`), all differentiable:

1. a small :class:`recon.sparse.nets.MinkUNet` maps the features of all anchors, as one sparse
   tensor on the voxel grid, to refined features (residual: ``f + unet(f)``), so every anchor
   sees its neighbourhood;
2. an MLP (``Linear(C, H)``, ReLU, ``Linear(H, k * P)``) decodes each refined feature into k
   Gaussians: ``offsets`` [k, 3] times ``exp(scales[:3])`` around the anchor, ``opacity =
   tanh(.)``, ``scale = sigmoid(.) * exp(scales[3:])``, a quaternion, and SH colour
   coefficients up to the model's degree (view dependence comes from the SH, not from a
   view-conditioned MLP as in Scaffold-GS);
3. Gaussians with ``opacity <= min_opacity`` are culled before rasterising (Scaffold-GS's mask:
   the kept ones carry the gradient to the shared networks, the culled ones get none).

The output is the dict :meth:`recon.splat.model.GaussianModel.activated` gives to
:func:`recon.splat.rasterize.rasterization` (``means``, ``quats``, ``scales``, ``opacities``,
``colors``); :meth:`AnchoredGaussians.to_gaussian_model` bakes the decoded Gaussians into a
plain :class:`~recon.splat.model.GaussianModel` (for scoring and the PLY).

Anchor growing is not implemented. Pruning is simple: every ``prune_every`` steps, anchors none
of whose k Gaussians survived the cull at any step since the last check are removed (rows of
their parameters and of the Adam moments; :meth:`AnchoredGaussians.step_post_backward`).

BatchNorm in the U-Net always normalises with the statistics of the whole anchor set (the batch
*is* the scene, so they are exact and deterministic): the backbone stays in training mode even
under ``model.eval()``, and training renders equal evaluation renders.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from recon.sparse.collate import sparse_quantize
from recon.sparse.tensor import CoordinateManager, SparseTensor
from recon.splat.model import GaussianModel, points_and_colours
from recon.splat.sh import MAX_SH_DEGREE, num_sh_bases

__all__ = ["AnchoredConfig", "AnchoredGaussians", "choose_voxel_size", "set_learning_rates"]

logger = logging.getLogger(__name__)

ANCHOR_PARAMS = ("features", "scales")
"""Keys of :attr:`AnchoredGaussians.anchors` (one row per anchor)."""


@dataclass
class AnchoredConfig:
    """Voxel-anchored Gaussians (``--model anchored``): grid, networks and learning rates."""

    k: int = 8
    """Gaussians decoded per anchor."""
    voxel_size: float = 0.0
    """Anchor voxel edge in world units; 0 chooses it from the initial points' spacing
    (:func:`choose_voxel_size`)."""
    max_anchors: int = 5000
    """Automatic voxel size: the median nearest-neighbour spacing of the initial points, grown
    by 1.25x until at most this many voxels are occupied."""
    feature_dim: int = 32
    """Channels of the anchor features."""
    planes: tuple[int, ...] = (16, 32)
    """Channels per level of the sparse U-Net (finest first)."""
    layers: tuple[int, ...] = (1, 1)
    """Residual blocks per level of the sparse U-Net."""
    hidden: int = 64
    """Width of the decoder MLP's hidden layer."""
    min_opacity: float = 0.005
    """Decoded Gaussians with opacity at or below this are culled before rasterising."""
    prune_every: int = 500
    """Remove anchors whose Gaussians were all culled at every step of the last this-many
    steps (0: never)."""
    feature_lr: float = 7.5e-3
    """Adam learning rate of the anchor features (constant)."""
    scale_lr: float = 7e-3
    """Adam learning rate of the anchor log scales (constant)."""
    decoder_lr: float = 4e-3
    """Initial Adam learning rate of the decoder MLP."""
    backbone_lr: float = 1e-3
    """Initial Adam learning rate of the sparse U-Net."""
    lr_final_ratio: float = 0.01
    """The networks' learning rates decay exponentially to this fraction at the last step."""
    backend: Literal["auto", "torch", "minkowski"] = "torch"
    """Sparse-convolution backend of the U-Net (``recon.sparse.backends``)."""

    def validate(self) -> list[str]:
        """Problems with the values, as ``"--anchored.name: what"`` lines (empty when fine)."""
        bad = []
        for name in ("k", "max_anchors", "feature_dim", "hidden"):
            if getattr(self, name) < 1:
                bad.append(f"--anchored.{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.voxel_size) and self.voxel_size >= 0):
            bad.append(f"--anchored.voxel-size: must be >= 0 (0: automatic), got {self.voxel_size}")
        if len(self.planes) < 1 or len(self.planes) != len(self.layers):
            bad.append(f"--anchored.planes/layers: expected equal non-empty lengths, got {self.planes} and {self.layers}")
        elif any(p < 1 for p in self.planes) or any(n < 0 for n in self.layers):
            bad.append(f"--anchored.planes/layers: expected planes >= 1 and layers >= 0, got {self.planes}, {self.layers}")
        if not 0.0 <= self.min_opacity < 1.0:
            bad.append(f"--anchored.min-opacity: must be in [0, 1), got {self.min_opacity}")
        if self.prune_every < 0:
            bad.append(f"--anchored.prune-every: must be >= 0, got {self.prune_every}")
        for name in ("feature_lr", "scale_lr", "decoder_lr", "backbone_lr"):
            if not getattr(self, name) > 0:
                bad.append(f"--anchored.{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.lr_final_ratio <= 1.0:
            bad.append(f"--anchored.lr-final-ratio: must be in (0, 1], got {self.lr_final_ratio}")
        return bad


def choose_voxel_size(
    points: Tensor,  # [P, 3]
    max_anchors: int,
) -> float:
    """Anchor voxel edge for ``points`` [P, 3]: the median distance of a point to its nearest
    neighbour, grown by 1.25x until at most ``max_anchors`` voxels are occupied."""
    from scipy.spatial import cKDTree

    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 2:
        raise ValueError(f"points: expected [P, 3] with P >= 2, got {tuple(points.shape)}")
    if max_anchors < 1:
        raise ValueError(f"max_anchors: expected >= 1, got {max_anchors}")
    pts = points.detach().cpu().double().numpy()
    dist, _ = cKDTree(pts).query(pts, k=2)
    size = float(np.median(dist[:, 1]))
    if not size > 0:  # many duplicate points: fall back to the extent
        size = float(np.ptp(pts, axis=0).max()) / 100 or 1.0
    while len(sparse_quantize(torch.from_numpy(pts), quantization_size=size)) > max_anchors:
        size *= 1.25
    return size


def set_learning_rates(optimizers: Mapping[str, torch.optim.Optimizer], step: int, max_steps: int) -> None:
    """Exponential decay: ``lr = lr_init * lr_final_ratio ** (step / max_steps)`` in every
    parameter group that carries ``lr_init`` and ``lr_final_ratio`` (set by
    :meth:`AnchoredGaussians.make_optimizers`; they are saved with the optimiser state)."""
    t = step / max(1, max_steps)
    for opt in optimizers.values():
        for group in opt.param_groups:
            if "lr_init" in group:
                group["lr"] = group["lr_init"] * group["lr_final_ratio"] ** t


class AnchoredGaussians(nn.Module):
    """Anchors on a voxel grid whose features a sparse U-Net refines and an MLP decodes into
    k Gaussians each (see the module docstring).

    Build one with :meth:`from_points`. ``anchors`` holds the per-anchor parameters (names in
    :data:`ANCHOR_PARAMS`), the buffers ``positions`` [N, 3] (voxel centres) and ``coords``
    [N, 3] (integer voxel coordinates) place them. :meth:`load_state_dict` accepts checkpoints
    with any number of anchors (after pruning); rebuild the optimisers after loading.
    """

    anchors: nn.ParameterDict
    positions: Tensor
    coords: Tensor
    offset_pattern: Tensor

    def __init__(
        self,
        coords: Tensor,  # [N, 3] int
        voxel_size: float,
        colours: Tensor,  # [N, 3] in 0..1
        config: AnchoredConfig | None = None,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        cfg = config if config is not None else AnchoredConfig()
        problems = cfg.validate()
        if problems:
            raise ValueError(f"config: {problems[0]}")
        if coords.ndim != 2 or coords.shape[1] != 3 or coords.shape[0] < 2:
            raise ValueError(f"coords: expected [N, 3] with N >= 2, got {tuple(coords.shape)}")
        if colours.shape != coords.shape:
            raise ValueError(f"colours: expected {tuple(coords.shape)} like coords, got {tuple(colours.shape)}")
        if not voxel_size > 0:
            raise ValueError(f"voxel_size: expected > 0, got {voxel_size}")
        if not (isinstance(sh_degree, int) and 0 <= sh_degree <= MAX_SH_DEGREE):
            raise ValueError(f"sh_degree: expected an int in 0..{MAX_SH_DEGREE}, got {sh_degree!r}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity: expected a value in (0, 1), got {init_opacity}")
        if not 0.0 < init_scale < 1.0:
            raise ValueError(f"init_scale: expected a value in (0, 1) (fraction of the voxel size), got {init_scale}")
        coarse = torch.div(coords.long(), 2 ** (len(cfg.planes) - 1), rounding_mode="floor")
        if len(torch.unique(coarse, dim=0)) < 2:
            raise ValueError(
                f"coords: the anchors occupy a single voxel at the U-Net's coarsest level (stride "
                f"{2 ** (len(cfg.planes) - 1)}); expected >= 2 for BatchNorm (use a smaller voxel size)"
            )
        self.config = replace(cfg)  # own copy: tests and callers may tweak it per model
        self.sh_degree = sh_degree
        n, C, k = coords.shape[0], cfg.feature_dim, cfg.k
        gen = torch.Generator().manual_seed(seed)
        coords = coords.to(torch.int32)
        self.register_buffer("coords", coords.clone())
        self.register_buffer("positions", (coords.double() + 0.5).mul(voxel_size).float())
        self.register_buffer("voxel_size", torch.tensor(float(voxel_size), dtype=torch.float64))
        features = 0.1 * torch.randn(n, C, generator=gen)
        features[:, : min(3, C)] = (2.0 * colours.float() - 1.0)[:, : min(3, C)]
        log_voxel = math.log(voxel_size)
        scales = torch.cat([torch.full((n, 3), log_voxel + math.log(0.5)), torch.full((n, 3), log_voxel)], dim=1)
        self.anchors = nn.ParameterDict({"features": nn.Parameter(features), "scales": nn.Parameter(scales)})

        from recon.sparse.nets import MinkUNet  # lazy: pulls in diffusers

        self.backbone = MinkUNet(C, C, planes=cfg.planes, layers=cfg.layers, dimension=3, backend=cfg.backend)
        n_bases = num_sh_bases(sh_degree)
        self._split = (3, 1, 3, 4, 3 * n_bases)  # offset, opacity, scale, rotation, SH per Gaussian
        self.trunk = nn.Linear(C, cfg.hidden)
        self.head = nn.Linear(cfg.hidden, k * sum(self._split))
        with torch.no_grad():
            # small weights: at the start every anchor decodes (nearly) the same k Gaussians,
            # set by the biases: offsets in [-1, 1]^3 (times exp(scales[:3]) = half a voxel),
            # the initial opacity and scale, identity rotation, grey colour.
            self.head.weight.mul_(0.1)
            bias = torch.zeros(k, sum(self._split))
            self.register_buffer("offset_pattern", 2.0 * torch.rand(k, 3, generator=gen) - 1.0)
            bias[:, 0:3] = self.offset_pattern
            bias[:, 3] = math.atanh(init_opacity)
            bias[:, 4:7] = math.log(init_scale / (1.0 - init_scale))  # sigmoid -> init_scale
            bias[:, 7] = 1.0
            self.head.bias.copy_(bias.reshape(-1))
        self._sparse: tuple[CoordinateManager, Any, torch.device] | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_points(
        cls,
        points: Tensor | np.ndarray,  # [P, 3]
        colours: Tensor | np.ndarray,  # [P, 3] in 0..1
        config: AnchoredConfig | None = None,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 0.5,
        seed: int = 0,
    ) -> AnchoredGaussians:
        """Anchors at the occupied voxels of ``points`` [P, 3] (colours [P, 3] averaged per voxel).

        The voxel size is ``config.voxel_size``, or :func:`choose_voxel_size` when that is 0.
        ``init_scale`` is the decoded Gaussians' initial size as a fraction of the voxel size.
        """
        cfg = config if config is not None else AnchoredConfig()
        pts, rgb = points_and_colours(points, colours)
        if not (torch.isfinite(pts).all() and torch.isfinite(rgb).all()):
            raise ValueError("points/colours: expected finite values, got NaN or inf")
        size = cfg.voxel_size if cfg.voxel_size > 0 else choose_voxel_size(pts, cfg.max_anchors)
        coords, _, inverse = sparse_quantize(pts, quantization_size=size, return_index=True, return_inverse=True)
        counts = torch.zeros(len(coords)).index_add_(0, inverse, torch.ones(len(pts)))
        mean_rgb = torch.zeros(len(coords), 3).index_add_(0, inverse, rgb.clamp(0, 1)) / counts[:, None]
        logger.info("%d anchors from %d points, voxel size %.4g", len(coords), len(pts), size)
        return cls(coords, size, mean_rgb, cfg, sh_degree, init_opacity, init_scale, seed)

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Tensor],
        config: AnchoredConfig | None = None,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 0.5,
    ) -> AnchoredGaussians:
        """A model holding ``state`` (a :meth:`state_dict`, any number of anchors), built
        without initial points: resume and export read anchored fits this way."""
        coords = torch.as_tensor(state["coords"])
        model = cls(coords, float(state["voxel_size"]), torch.zeros(coords.shape), config, sh_degree, init_opacity, init_scale)
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ views
    @property
    def num_anchors(self) -> int:
        return self.anchors["features"].shape[0]

    @property
    def num_gaussians(self) -> int:
        """Gaussians before the opacity cull (``num_anchors * k``)."""
        return self.num_anchors * self.config.k

    def train(self, mode: bool = True) -> AnchoredGaussians:
        """As ``nn.Module.train``, except that the backbone always normalises with the
        statistics of the whole anchor set (see the module docstring)."""
        super().train(mode)
        self.backbone.train(True)
        return self

    def _sparse_input(self, features: Tensor) -> SparseTensor:  # [N, C] -> sparse tensor on the anchors
        """The anchors as a sparse tensor; the coordinate manager (and so the U-Net's kernel
        maps) is built once and reused until the anchors change."""
        dev = features.device
        if self._sparse is None or self._sparse[2] != dev:
            coords = torch.cat([torch.zeros_like(self.coords[:, :1]), self.coords], dim=1).to(dev)
            x = SparseTensor(features, coords)
            self._sparse = (x.coordinate_manager, x.coordinate_map_key, dev)
            return x
        manager, key, _ = self._sparse
        return SparseTensor(features, coordinate_map_key=key, coordinate_manager=manager)

    def decode(self, sh_degree_to_use: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Decode all anchors and cull transparent Gaussians.

        Returns ``(inputs, kept)``: ``inputs`` as :meth:`GaussianModel.activated` (``means``
        [M, 3], ``quats`` [M, 4] unit wxyz, ``scales`` [M, 3], ``opacities`` [M] in (0, 1),
        ``colors`` [M, (d+1)^2, 3] SH up to ``d = sh_degree_to_use``), M the Gaussians kept, in
        anchor-major order; ``kept`` [N, k] bool, which of each anchor's k Gaussians were kept.
        """
        d = self.sh_degree if sh_degree_to_use is None else sh_degree_to_use
        if not (isinstance(d, int) and 0 <= d <= self.sh_degree):
            raise ValueError(f"sh_degree_to_use: expected 0..{self.sh_degree} (the model's degree), got {d!r}")
        n, k = self.num_anchors, self.config.k
        feats = self.anchors["features"]  # [N, C]
        refined = feats + self.backbone(self._sparse_input(feats)).F  # [N, C]
        raw = self.head(torch.relu(self.trunk(refined))).view(n, k, -1)  # [N, k, P]
        off, opa, scl, rot, col = raw.split(self._split, dim=-1)
        log_s = self.anchors["scales"][:, None, :]  # [N, 1, 6]
        means = self.positions[:, None, :] + off * torch.exp(log_s[..., :3])  # [N, k, 3]
        opacities = torch.tanh(opa[..., 0])  # [N, k]
        scales = torch.sigmoid(scl) * torch.exp(log_s[..., 3:])  # [N, k, 3]
        quats = nn.functional.normalize(rot, dim=-1)  # [N, k, 4]
        colors = col.reshape(n, k, -1, 3)[:, :, : num_sh_bases(d)]  # [N, k, (d+1)^2, 3]
        kept = opacities > self.config.min_opacity  # [N, k]
        rows = kept.reshape(-1).nonzero().squeeze(1)  # index_select: its backward is cheaper than a mask's
        inputs = {
            "means": means.reshape(-1, 3).index_select(0, rows),
            "quats": quats.reshape(-1, 4).index_select(0, rows),
            "scales": scales.reshape(-1, 3).index_select(0, rows),
            "opacities": opacities.reshape(-1).index_select(0, rows),
            "colors": colors.reshape(n * k, -1, 3).index_select(0, rows),
        }
        return inputs, kept

    def activated(self, sh_degree_to_use: int | None = None) -> dict[str, Tensor]:
        """Rasterisation inputs of the kept Gaussians (``decode(...)[0]``), like
        :meth:`GaussianModel.activated`."""
        return self.decode(sh_degree_to_use)[0]

    @torch.no_grad()
    def to_gaussian_model(self) -> GaussianModel:
        """The kept decoded Gaussians as a plain :class:`GaussianModel` (raw parameters: log
        scales, opacity logits, SH up to the model's degree), e.g. for ``write_splat_ply``."""
        g = self.activated(self.sh_degree)
        if g["means"].shape[0] == 0:
            logger.warning("no decoded Gaussian survives the opacity cull (min_opacity %g)", self.config.min_opacity)
        op = g["opacities"].clamp(1e-6, 1 - 1e-6)
        params = {
            "means": g["means"],
            "quats": g["quats"],
            "scales": torch.log(g["scales"].clamp_min(1e-12)),
            "opacities": torch.log(op / (1 - op)),
            "sh0": g["colors"][:, :1],
            "shN": g["colors"][:, 1:],
        }
        return GaussianModel({name: t.detach().float() for name, t in params.items()})  # on the model's device

    # ------------------------------------------------------------------ optimisation
    def make_optimizers(self) -> dict[str, torch.optim.Adam]:
        """Adam per group: ``features``, ``scales`` (constant rates), ``decoder``, ``backbone``
        (decaying; see :func:`set_learning_rates`)."""
        cfg = self.config
        groups = {
            "features": ([self.anchors["features"]], cfg.feature_lr, 1.0),
            "scales": ([self.anchors["scales"]], cfg.scale_lr, 1.0),
            "decoder": ([*self.trunk.parameters(), *self.head.parameters()], cfg.decoder_lr, cfg.lr_final_ratio),
            "backbone": (list(self.backbone.parameters()), cfg.backbone_lr, cfg.lr_final_ratio),
        }
        return {
            name: torch.optim.Adam(
                [{"params": params, "lr": lr, "lr_init": lr, "lr_final_ratio": ratio, "name": name}], eps=1e-15
            )
            for name, (params, lr, ratio) in groups.items()
        }

    def initialize_state(self) -> dict[str, Any]:
        """Pruning state: steps each anchor had a kept Gaussian since the last check."""
        return {"alive": torch.zeros(self.num_anchors, dtype=torch.long, device=self.positions.device)}

    @torch.no_grad()
    def step_post_backward(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        kept: Tensor,  # [N, k] bool, from this step's decode
    ) -> int:
        """Count live anchors; every ``prune_every`` steps remove those never alive since the
        last check (keeping at least 2). Returns the number of anchors removed."""
        state["alive"] += kept.any(dim=1).to(state["alive"].device)
        every = self.config.prune_every
        if not every or (step + 1) % every:
            return 0
        dead = state["alive"] == 0
        state["alive"].zero_()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.num_anchors - n_dead < 2:
            return 0
        self.remove_anchors(dead, optimizers)
        state["alive"] = torch.zeros(self.num_anchors, dtype=torch.long, device=self.positions.device)
        logger.debug("step %d: pruned %d dead anchors, %d left", step, n_dead, self.num_anchors)
        return n_dead

    @torch.no_grad()
    def remove_anchors(self, mask: Tensor, optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
        """Remove the anchors where ``mask`` [N] is true, with their rows of the Adam moments."""
        if mask.shape != (self.num_anchors,) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected bool [{self.num_anchors}], got {mask.dtype} {tuple(mask.shape)}")
        keep = ~mask.to(self.positions.device)
        for name in ANCHOR_PARAMS:
            old = self.anchors[name]
            new = nn.Parameter(old[keep].clone(), requires_grad=old.requires_grad)
            for opt in (optimizers or {}).values():
                for group in opt.param_groups:
                    for i, p in enumerate(group["params"]):
                        if p is not old:
                            continue
                        group["params"][i] = new
                        st = opt.state.pop(old, None)
                        if st is not None:
                            opt.state[new] = {
                                key: (v[keep] if isinstance(v, Tensor) and v.shape[:1] == keep.shape else v)
                                for key, v in st.items()
                            }
            self.anchors[name] = new
        self.coords = self.coords[keep]
        self.positions = self.positions[keep]
        self._sparse = None

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Pruning changes N: resize the per-anchor parameters and buffers to the checkpoint's
        # shapes first, so the ordinary copy in ``nn.Module`` succeeds.
        for name, old in list(self.anchors.items()):
            saved = state_dict.get(f"{prefix}anchors.{name}")
            if isinstance(saved, Tensor) and saved.shape != old.shape:
                self.anchors[name] = nn.Parameter(
                    torch.empty(saved.shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
                )
        for name in ("coords", "positions"):
            saved = state_dict.get(f"{prefix}{name}")
            old = getattr(self, name)
            if isinstance(saved, Tensor) and saved.shape != old.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=old.dtype, device=old.device))
        self._sparse = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"anchors={self.num_anchors}, voxel_size={float(self.voxel_size):.4g}, {asdict(self.config)}"
