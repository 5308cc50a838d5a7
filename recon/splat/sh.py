"""Real spherical harmonics (degrees 0..3) in gsplat's basis order and sign convention.

Colours are ``sum_k Y_k(dir) * coeffs[k]`` over the first ``(degree + 1) ** 2`` bases, with the
bases ordered by band and, inside band ``l``, by ``m = -l..l``; odd-``m`` bases carry the
Condon-Shortley sign as in gsplat (``Y_1 = -c * y, Y_2 = c * z, Y_3 = -c * x``). The ``+ 0.5``
offset and the clamp at 0 are *not* applied here: like gsplat, ``rasterization`` applies them
after evaluating the SH (see ``recon.splat.rasterize``).

Pure PyTorch; autograd gives gradients w.r.t. both ``dirs`` and ``coeffs``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_SH_DEGREE", "num_sh_bases", "sh_basis", "spherical_harmonics"]

MAX_SH_DEGREE = 3

# Normalisation constants of the real SH, band by band.
_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
_C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
_C2 = (
    1.0925484305920792,  # m = -2, -1, +1 : sqrt(15 / (4 pi))
    0.31539156525252005,  # m = 0 : sqrt(5 / (16 pi))
    0.5462742152960396,  # m = +2 : sqrt(15 / (16 pi))
)
_C3 = (
    0.5900435899266435,  # |m| = 3 : sqrt(35 / (32 pi))
    1.445305721320277,  # |m| = 2 : sqrt(105 / (16 pi)) (on 2xy / x^2-y^2)
    0.4570457994644658,  # |m| = 1 : sqrt(21 / (32 pi))
    0.3731763325901154,  # m = 0 : sqrt(7 / (16 pi))
)


def num_sh_bases(degree: int) -> int:
    """Number of SH bases used up to and including ``degree``: ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Evaluate the real SH bases at unit directions.

    Args:
        degree: highest band, 0..3.
        dirs: unit directions. [..., 3]

    Returns:
        The bases, in gsplat's order. [..., (degree + 1) ** 2]
    """
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            -_C2[0] * y * z,
            _C2[1] * (3.0 * zz - 1.0),
            -_C2[0] * x * z,
            _C2[2] * (xx - yy),
        ]
    if degree >= 3:
        # cos(2 phi) and sin(2 phi) polynomials, then the band-3 terms.
        c2 = xx - yy
        s2 = 2.0 * x * y
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        p1 = 5.0 * zz - 1.0
        out += [
            -_C3[0] * s3,
            _C3[1] * z * s2,
            -_C3[2] * y * p1,
            _C3[3] * z * (5.0 * zz - 3.0),
            -_C3[2] * x * p1,
            _C3[1] * z * c2,
            -_C3[0] * c3,
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(
    degrees_to_use: int,
    dirs: Tensor,  # [..., 3]
    coeffs: Tensor,  # [..., K, 3]
    masks: Optional[Tensor] = None,  # [...]
) -> Tensor:
    """Colours from SH coefficients, as gsplat's ``spherical_harmonics``.

    Args:
        degrees_to_use: SH degree to evaluate, 0..3; ``(degrees_to_use + 1) ** 2 <= K``.
        dirs: viewing directions (need not be normalised). [..., 3]
        coeffs: SH coefficients. [..., K, 3]
        masks: optional; where False the output is 0 (and receives no gradient). [...]

    Returns:
        Colours, without gsplat's ``+ 0.5`` offset. [..., 3]
    """
    if not isinstance(degrees_to_use, int) or not 0 <= degrees_to_use <= MAX_SH_DEGREE:
        raise ValueError(
            f"degrees_to_use: expected an int in [0, {MAX_SH_DEGREE}], given {degrees_to_use!r}"
        )
    if dirs.shape[-1:] != (3,):
        raise ValueError(f"dirs: expected shape [..., 3], given {tuple(dirs.shape)}")
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3 or coeffs.shape[:-2] != dirs.shape[:-1]:
        raise ValueError(
            f"coeffs: expected shape [{', '.join(map(str, dirs.shape[:-1]))}, K, 3] to match "
            f"dirs {tuple(dirs.shape)}, given {tuple(coeffs.shape)}"
        )
    n_bases = num_sh_bases(degrees_to_use)
    if coeffs.shape[-2] < n_bases:
        raise ValueError(
            f"coeffs: degree {degrees_to_use} needs K >= {n_bases} bases, given K={coeffs.shape[-2]}"
        )
    if masks is not None and masks.shape != dirs.shape[:-1]:
        raise ValueError(
            f"masks: expected shape {tuple(dirs.shape[:-1])}, given {tuple(masks.shape)}"
        )
    if degrees_to_use > 0:
        dirs = F.normalize(dirs, p=2, dim=-1)
    basis = sh_basis(degrees_to_use, dirs)  # [..., n_bases]
    colors = (basis[..., None] * coeffs[..., :n_bases, :]).sum(dim=-2)  # [..., 3]
    if masks is not None:
        colors = torch.where(masks[..., None], colors, torch.zeros_like(colors))
    return colors
