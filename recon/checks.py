"""Argument checks every public entry point uses (ground floor): tensor shapes and dtypes, finite
values. Programming errors raise ``ValueError`` saying what was expected and what was given;
bad *user data* (a file with NaNs) raises :class:`recon.errors.InputError` naming the file.

Shapes are written as tuples of ints, ``None`` (any size) and one optional leading ``...``
(any number of batch dimensions)::

    check_shape("means", means, (None, 3))          # [N, 3]
    check_shape("viewmats", viewmats, (..., 4, 4))  # [..., 4, 4]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError

__all__ = ["check_finite", "check_shape", "shape_text"]


def shape_text(spec: tuple[Any, ...]) -> str:
    """``(..., None, 3)`` -> ``"[..., N, 3]"`` (``None`` shown as a letter)."""
    letters = iter("NMKLPQ")
    return "[" + ", ".join("..." if s is Ellipsis else next(letters) if s is None else str(s) for s in spec) + "]"


def check_shape(
    name: str,
    x: Any,
    spec: tuple[Any, ...],
    *,
    floating: bool = False,
    text: str | None = None,
) -> Tensor:
    """Raise ``ValueError`` unless ``x`` is a tensor of shape ``spec`` (see the module
    docstring; ``floating``: also a floating-point dtype). Returns ``x``."""
    want = text or shape_text(spec)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {want}, given {type(x).__name__}")
    tail = spec[1:] if spec and spec[0] is Ellipsis else spec
    ok = x.dim() >= len(tail) if spec and spec[0] is Ellipsis else x.dim() == len(tail)
    ok = ok and all(e is None or s == e for s, e in zip(x.shape[x.dim() - len(tail):], tail))
    if not ok:
        raise ValueError(f"{name}: expected shape {want}, given [{', '.join(str(s) for s in x.shape)}]")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, given {x.dtype}")
    return x


def check_finite(array: np.ndarray | Tensor, where: str | Path, what: str) -> None:
    """Raise :class:`InputError` when ``array`` holds NaN or inf, naming how many and the first index."""
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(where, f"{what} contains {int(bad.sum())} NaN/inf values (first at index {first}); expected finite numbers")
