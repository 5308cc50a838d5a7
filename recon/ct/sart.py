"""SART and OS-SART with the matched projector (Andersen & Kak 1984; OS variant as in TIGRE).

Update for one subset ``s`` of views (``A_s`` its rows)::

    x <- clamp_{>=0}( x + lambda * (A_s^T [ (b_s - A_s x) / (A_s 1) ]) / (A_s^T 1) )

Row sums ``A_s 1`` (ray lengths through the volume) and column sums ``A_s^T 1`` are computed once
by projecting / backprojecting ones; entries below a small threshold are left out (rays that
miss the volume, voxels no ray of the subset crosses). One subset per view is classic SART;
fewer, larger subsets is OS-SART (SIRT with a single subset).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from recon.geometry.ct import CTGeometry
from recon.ct.project import Projector, torch_threads
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["SARTProgress", "SARTSolver", "SARTTrainer", "os_sart", "sart", "subset_order"]

_COLUMN_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class SARTProgress:
    """Passed to the ``callback`` after every iteration (a pass over all subsets)."""

    iteration: int
    """Iterations completed (1-based)."""
    n_iterations: int
    residual_rms: float
    """RMS of ``b - A x`` over the views, measured before each subset's update during this iteration."""
    relaxation: float
    """The relaxation used in this iteration."""
    elapsed_s: float


def subset_order(n_views: int, n_subsets: int) -> list[np.ndarray]:
    """Split views into ``n_subsets`` interleaved subsets (``k, k + n, k + 2n, ...``) visited in
    bit-reversed order, so consecutive subsets are far apart in angle."""
    if not 1 <= n_subsets <= n_views:
        raise InputError("n_subsets", f"must be in 1..{n_views} (number of views), got {n_subsets}")
    bits = max(1, math.ceil(math.log2(n_subsets)))
    rev = sorted(range(1 << bits), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    order = [k for k in rev if k < n_subsets]
    return [np.arange(k, n_views, n_subsets) for k in order]


def sart(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    n_iterations: int = 20,
    *,
    n_subsets: int | None = None,
    relaxation: float = 1.0,
    relaxation_decay: float = 1.0,
    nonneg: bool = True,
    init: torch.Tensor | np.ndarray | str | None = None,  # [Z, Y, X] | "fdk" | None (zeros)
    callback: Callable[[SARTProgress], bool | None] | None = None,
    projector: Projector | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    eps: float = 1e-6,
    num_threads: int | str | None = "auto",
) -> torch.Tensor:  # [Z, Y, X]
    """Reconstruct [V, v, u] line integrals -> [Z, Y, X] attenuation by (OS-)SART.

    Args:
        n_subsets: ``None`` = one view per subset (SART); ``k`` = OS-SART with ``k`` subsets.
        relaxation: lambda in (0, 2); multiplied by ``relaxation_decay`` after every iteration.
        nonneg: clamp the volume at 0 after every update.
        init: starting volume [Z, Y, X], ``"fdk"`` (needs a full scan) or ``None`` (zeros).
        callback: called after each iteration with a :class:`SARTProgress`; return ``True`` to
            stop early (the CLI draws its progress bar from it).
        projector: reuse a :class:`Projector` (its ray tables stay cached).
        num_threads: torch CPU threads for the whole run (see :func:`recon.ct.project.torch_threads`).
    """
    with torch_threads(num_threads):
        return _sart(projections, geometry, n_iterations, n_subsets, relaxation, relaxation_decay, nonneg, init, callback, projector, device, dtype, eps)


class SARTSolver:
    """(OS-)SART iterations on one scan: the row and column normalisations of every subset are
    computed once at construction, then each :meth:`iterate` is one pass over all subsets.

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan.
        n_subsets: ``None`` = one view per subset (SART); ``k`` = OS-SART with ``k`` subsets.
        nonneg: clamp the volume at 0 after every update.
        projector: reuse a :class:`Projector` (its ray tables stay cached).
    """

    def __init__(
        self,
        projections: torch.Tensor | np.ndarray,  # [V, v, u]
        geometry: CTGeometry,
        *,
        n_subsets: int | None = None,
        nonneg: bool = True,
        projector: Projector | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        eps: float = 1e-6,
    ) -> None:
        geo = geometry
        if not isinstance(geo, CTGeometry):
            raise InputError("geometry", f"expected a CTGeometry, got {type(geo).__name__}")
        b = torch.as_tensor(projections)
        if b.dim() != 3 or tuple(b.shape) != geo.projection_shape:
            raise InputError("projections", f"expected shape {list(geo.projection_shape)} (views, v, u), got {list(b.shape)}")
        if not torch.isfinite(b).all():
            raise InputError("projections", "contains NaN/inf; expected finite line integrals")
        if projector is None:
            projector = Projector(geo, device=device)
        elif projector.geometry != geo:
            raise InputError("projector", "was built for another geometry")
        self.geometry, self.projector, self.nonneg, self.eps, self.dtype = geo, projector, nonneg, eps, dtype
        self.device = torch.device(device) if device is not None else (b.device if projector.device.type == "cpu" else projector.device)
        self.b = b.to(device=self.device, dtype=dtype)
        subsets = subset_order(geo.n_views, geo.n_views if n_subsets is None else n_subsets)
        self.keys = [tuple(int(i) for i in s) for s in subsets]
        self._rows = [torch.as_tensor(s, device=self.device) for s in subsets]
        # Normalisations per subset: row sums (projection-sized) are kept; column sums (one
        # volume per subset) only while they fit in ``_COLUMN_CACHE_BYTES``, else recomputed.
        ones_vol = torch.ones(geo.n_voxel, device=self.device, dtype=dtype)
        vol_bytes = ones_vol.numel() * ones_vol.element_size()
        cache_cols = vol_bytes * len(self.keys) <= _COLUMN_CACHE_BYTES
        if not cache_cols:
            logger.info("SART: %d subsets x %.0f MB column sums exceed the cache budget; recomputing them", len(self.keys), vol_bytes / 1e6)
        self._row_inv, self._col_inv = [], []
        for key in self.keys:
            row = projector.forward(ones_vol, key)
            self._row_inv.append(torch.where(row > eps * max(geo.voxel_mm), 1.0 / row.clamp_min(1e-12), torch.zeros_like(row)))
            self._col_inv.append(self._column_inverse(key) if cache_cols else None)

    def _column_inverse(self, key: tuple[int, ...]) -> torch.Tensor:
        geo = self.geometry
        col = self.projector.backproject(torch.ones((len(key), *geo.n_detector), device=self.device, dtype=self.dtype), key)
        return torch.where(col > self.eps * col.max(), 1.0 / col.clamp_min(1e-12), torch.zeros_like(col))

    def initial(self, init: torch.Tensor | np.ndarray | str | None) -> torch.Tensor:  # -> [Z, Y, X]
        """The starting volume: a given [Z, Y, X] volume (copied), ``"fdk"`` or ``None`` (zeros)."""
        geo = self.geometry
        if isinstance(init, str):
            if init != "fdk":
                raise InputError("init", f"expected a volume, 'fdk' or None, got {init!r}")
            from recon.ct.analytic import fdk

            x = fdk(self.b, geo, device=self.device, dtype=self.dtype)
        elif init is None:
            x = torch.zeros(geo.n_voxel, device=self.device, dtype=self.dtype)
        else:
            x = torch.as_tensor(init).to(device=self.device, dtype=self.dtype).clone()
            if tuple(x.shape) != geo.n_voxel:
                raise InputError("init", f"expected shape {list(geo.n_voxel)} (z, y, x), got {list(x.shape)}")
        if self.nonneg:
            x.clamp_(min=0)
        return x

    @torch.no_grad()
    def iterate(self, x: torch.Tensor, relaxation: float) -> float:  # x: [Z, Y, X], updated in place
        """One pass over all subsets, updating ``x`` in place; returns the RMS of ``b - A x``
        over the views, measured before each subset's update."""
        sq, count = 0.0, 0
        for key, rows, ri, ci in zip(self.keys, self._rows, self._row_inv, self._col_inv):
            residual = self.b.index_select(0, rows) - self.projector.forward(x, key)
            sq += float((residual * residual).sum())
            count += residual.numel()
            x += relaxation * self.projector.backproject(residual * ri, key) * (ci if ci is not None else self._column_inverse(key))
            if self.nonneg:
                x.clamp_(min=0)
        return math.sqrt(sq / max(count, 1))


def _sart(projections, geometry, n_iterations, n_subsets, relaxation, relaxation_decay, nonneg, init, callback, projector, device, dtype, eps):
    if n_iterations < 0:
        raise InputError("n_iterations", f"must be >= 0, got {n_iterations}")
    if not 0.0 < relaxation < 2.0:
        raise InputError("relaxation", f"must be in (0, 2), got {relaxation}")
    if relaxation_decay <= 0:
        raise InputError("relaxation_decay", f"must be > 0, got {relaxation_decay}")
    solver = SARTSolver(projections, geometry, n_subsets=n_subsets, nonneg=nonneg, projector=projector, device=device, dtype=dtype, eps=eps)
    x = solver.initial(init)
    lam = float(relaxation)
    start = time.perf_counter()
    for it in range(n_iterations):
        rms = solver.iterate(x, lam)
        progress = SARTProgress(iteration=it + 1, n_iterations=n_iterations, residual_rms=rms, relaxation=lam, elapsed_s=time.perf_counter() - start)
        logger.debug("SART iteration %d/%d residual rms %.4g", it + 1, n_iterations, rms)
        lam *= relaxation_decay
        if callback is not None and callback(progress) is True:
            logger.info("SART stopped by callback after %d iterations", it + 1)
            break
    return x


def os_sart(
    projections: torch.Tensor | np.ndarray,  # [V, v, u]
    geometry: CTGeometry,
    n_iterations: int = 20,
    *,
    n_subsets: int = 10,
    **kwargs,
) -> torch.Tensor:  # [Z, Y, X]
    """OS-SART: :func:`sart` with ``n_subsets`` ordered subsets (default 10, capped at the number
    of views)."""
    return sart(projections, geometry, n_iterations, n_subsets=min(n_subsets, geometry.n_views), **kwargs)


class SARTTrainer:
    """(OS-)SART as a :class:`recon.train.Trainer`: one step is one iteration (a pass over all
    subsets), so ``recon ct fit --method sart`` checkpoints, logs and resumes like the other
    methods. ``history`` records ``residual_rms`` (and ``loss``, the same number).

    Args:
        projections: [V, v, u] line integrals.
        geometry: the scan.
        n_subsets: ``None`` = SART; ``k`` = OS-SART.
        relaxation: lambda in (0, 2), multiplied by ``relaxation_decay`` after every iteration.
        init: starting volume ([Z, Y, X], ``"fdk"`` or ``None`` = zeros); ignored with ``state``.
        state: a :meth:`state_dict` to continue from.
    """

    def __init__(
        self,
        projections: torch.Tensor | np.ndarray,  # [V, v, u]
        geometry: CTGeometry,
        *,
        n_subsets: int | None = None,
        relaxation: float = 1.0,
        relaxation_decay: float = 1.0,
        init: torch.Tensor | np.ndarray | str | None = None,
        state: dict | None = None,
        projector: Projector | None = None,
    ) -> None:
        if not 0.0 < relaxation < 2.0:
            raise InputError("relaxation", f"must be in (0, 2), got {relaxation}")
        if relaxation_decay <= 0:
            raise InputError("relaxation_decay", f"must be > 0, got {relaxation_decay}")
        self.solver = SARTSolver(projections, geometry, n_subsets=n_subsets, projector=projector)
        self.relaxation, self.relaxation_decay = float(relaxation), float(relaxation_decay)
        self.step = 0
        self.history: list[dict] = []
        self.init_description = "zeros" if init is None else (init if isinstance(init, str) else "given volume")
        if state is not None:
            self.load_state_dict(state)
        else:
            self.x = self.solver.initial(init)

    def train_step(self) -> dict[str, float]:
        lam = self.relaxation * self.relaxation_decay**self.step
        rms = self.solver.iterate(self.x, lam)
        self.step += 1
        return {"loss": rms, "residual_rms": rms, "relaxation": lam}

    def state_dict(self) -> dict:
        return {"step": self.step, "x": self.x.detach().cpu().clone(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        x = torch.as_tensor(state["x"])
        if tuple(x.shape) != self.solver.geometry.n_voxel:
            raise InputError("checkpoint", f"holds a {list(x.shape)} volume, the geometry's grid is {list(self.solver.geometry.n_voxel)}")
        self.x = x.to(device=self.solver.device, dtype=self.solver.dtype).clone()
        self.step = int(state["step"])
        self.history = list(state.get("history", []))

    def volume(self) -> torch.Tensor:  # [Z, Y, X]
        return self.x
