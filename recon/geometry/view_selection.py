"""Deterministic choice of training and evaluation views for the sparse-view protocol.

Training views are spread over the capture by farthest-point sampling on camera centres;
evaluation views are chosen the same way among the views not trained on, so the two sets
never overlap and the same capture always gives the same split.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np
from torch import Tensor

from recon.geometry.cameras import CameraSet
from recon.errors import InputError

if TYPE_CHECKING:
    from recon.io.capture import Capture

logger = logging.getLogger(__name__)

__all__ = ["farthest_point_views", "split_views"]


def farthest_point_views(
    centres: Tensor, k: int, start: int | None = None
) -> list[int]:  # centres: [N, 3]
    """Pick ``k`` views spread over the capture by farthest-point sampling on camera centres.

    The first pick is ``start``, or by default the view whose centre is closest to the centroid
    of all centres (the "middle" of the capture). Each next pick is the view farthest from all
    views picked so far. Ties go to the lowest index; distances are computed in float64, so the
    result is deterministic. The picks come in selection order, so the first ``k'`` of a
    ``k``-selection are the ``k'``-selection (nested protocols: K=3 within K=4 within K=6 ...).

    Args:
        centres: camera centres, Tensor [N, 3].
        k: number of views, 1..N.
        start: index of the first view, or ``None`` for the one nearest the centroid.

    Returns:
        ``k`` distinct indices in selection order.

    Raises:
        ValueError: bad shape, ``k`` outside 1..N, ``start`` out of range.
    """
    if not isinstance(centres, Tensor) or centres.ndim != 2 or centres.shape[1] != 3:
        raise ValueError(
            f"centres must be a Tensor [N, 3], got {getattr(centres, 'shape', centres)}"
        )
    pts = centres.detach().cpu().double().numpy()
    n = pts.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in 1..{n}, got {k!r}")
    if not np.isfinite(pts).all():
        raise ValueError("centres contain NaN or infinite values")
    if start is None:
        start = int(np.argmin(np.linalg.norm(pts - pts.mean(axis=0), axis=1)))
    elif isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n:
        raise ValueError(f"start must be an index in 0..{n - 1}, got {start!r}")
    chosen = [int(start)]
    dist = np.linalg.norm(pts - pts[start], axis=1)
    dist[start] = -1.0
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))  # first index among ties
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
        dist[chosen] = -1.0
    return chosen


def split_views(
    capture: Capture | CameraSet,
    train_views: int | Sequence[int],
    n_eval: int = 8,
) -> tuple[list[int], list[int]]:
    """Choose training and evaluation views (disjoint, deterministic).

    Training: ``train_views`` as an explicit list of indices, or an integer K for K views by
    :func:`farthest_point_views` over all cameras. Evaluation: ``n_eval`` views by
    :func:`farthest_point_views` (default start) among the views not trained on. When fewer than
    ``n_eval`` views remain, all remaining views are used and a warning is logged; when none
    remain and ``n_eval > 0``, that is an error. ``n_eval = 0`` gives no evaluation views.

    Args:
        capture: a :class:`~recon.io.capture.Capture` or a :class:`~recon.geometry.cameras.CameraSet`.
        train_views: K, or explicit training indices.
        n_eval: number of evaluation views wanted.

    Returns:
        ``(train, eval)`` index lists, each sorted ascending.

    Raises:
        InputError: K < 1 or K > number of views; an explicit index out of range or repeated;
            ``n_eval < 0``; no view left to evaluate on.
    """
    cameras = capture if isinstance(capture, CameraSet) else capture.cameras
    n = len(cameras)
    centres = cameras.centres()
    if isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer)) or n_eval < 0:
        raise InputError("n_eval", f"is {n_eval!r} (expected an integer >= 0)")
    if isinstance(train_views, (int, np.integer)) and not isinstance(train_views, bool):
        if not 1 <= train_views <= n:
            raise InputError(
                "train_views",
                f"asks for {train_views} views but the capture has {n} (expected 1..{n})",
            )
        train = farthest_point_views(centres, int(train_views))
    else:
        try:
            train = list(train_views)
        except TypeError:
            raise InputError(
                "train_views", f"is {train_views!r} (expected a count or a list of indices)"
            ) from None
        if not train:
            raise InputError("train_views", "is empty (expected at least one view)")
        for i in train:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise InputError("train_views", f"contains {i!r} (expected integer view indices)")
            if not 0 <= i < n:
                raise InputError(
                    "train_views", f"index {i} is out of range (the capture has views 0..{n - 1})"
                )
        dup = sorted({int(i) for i in train if train.count(i) > 1})
        if dup:
            raise InputError("train_views", f"repeats view {dup[0]} (expected distinct indices)")
        train = [int(i) for i in train]
    rest = [i for i in range(n) if i not in set(train)]
    if n_eval == 0:
        evals: list[int] = []
    elif not rest:
        raise InputError(
            "train_views", f"uses all {n} views, leaving none to evaluate on (n_eval={n_eval})"
        )
    else:
        if len(rest) < n_eval:
            logger.warning(
                "only %d views are left for evaluation (asked for %d); using them all",
                len(rest),
                n_eval,
            )
        picks = farthest_point_views(centres[rest], min(n_eval, len(rest)))
        evals = [rest[j] for j in picks]
    return sorted(train), sorted(evals)
