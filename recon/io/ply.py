"""PLY files: Gaussian splats in the INRIA 3DGS layout, and coloured point clouds.

Splat layout (what the INRIA viewer, SuperSplat, nerfstudio's ``ns-export gaussian-splat`` and
antimatter15's viewer read and write), one ``vertex`` element, float32, binary little endian::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..3(K-1)-1  opacity  scale_0..2  rot_0..3

- ``f_dc`` is the degree-0 SH coefficient per channel (``sh0`` [N, 1, 3]).
- ``f_rest`` is channel-major: ``shN`` [N, K-1, 3] transposed to [N, 3, K-1], then flattened,
  so ``f_rest_0..K-2`` are red, the next K-1 green, then blue.
- ``opacity`` is the logit, ``scale_*`` the log, ``rot_*`` the (unnormalised) wxyz quaternion.
- ``nx ny nz`` are written as zeros and ignored when reading.

This module sits below ``recon.splat`` and does not import it: it works on plain tensor dicts
with the names of :attr:`recon.splat.model.GaussianModel.params` (or anything with ``.params``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from recon.errors import InputError
from recon.io.atomic import atomic_write

__all__ = ["read_splat_ply", "write_points_ply", "write_splat_ply"]

_EXPECTED = "a 3DGS splat PLY (x, y, z, f_dc_*, f_rest_*, opacity, scale_*, rot_*)"
_REQUIRED = (
    ["x", "y", "z"]
    + [f"f_dc_{i}" for i in range(3)]
    + ["opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
_F_REST = re.compile(r"f_rest_(\d+)$")


def write_splat_ply(path: str | Path, params_or_model: Mapping[str, Tensor] | Any) -> Path:
    """Write Gaussians to ``path`` in the INRIA 3DGS PLY layout, atomically.

    Args:
        path: output file; its folder is created if needed.
        params_or_model: a mapping with ``means`` [N, 3], ``quats`` [N, 4] (wxyz),
            ``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3],
            ``shN`` [N, K-1, 3]; or an object with such a ``.params`` (``GaussianModel``).

    Returns:
        The path written.
    """
    params = getattr(params_or_model, "params", params_or_model)
    arrays = _splat_arrays(params)  # name -> [N, c] float32
    n = arrays["means"].shape[0]
    k1 = arrays["shN"].shape[1]
    columns = [
        ("means", ["x", "y", "z"]),
        ("normals", ["nx", "ny", "nz"]),
        ("sh0", [f"f_dc_{i}" for i in range(3)]),
        # [N, K-1, 3] -> [N, 3, K-1] -> [N, 3(K-1)]: channel-major like INRIA
        ("shN", [f"f_rest_{i}" for i in range(3 * k1)]),
        ("opacities", ["opacity"]),
        ("scales", [f"scale_{i}" for i in range(3)]),
        ("quats", [f"rot_{i}" for i in range(4)]),
    ]
    flat = {
        "means": arrays["means"],
        "normals": np.zeros((n, 3), np.float32),
        "sh0": arrays["sh0"].reshape(n, 3),
        "shN": arrays["shN"].transpose(0, 2, 1).reshape(n, 3 * k1),
        "opacities": arrays["opacities"].reshape(n, 1),
        "scales": arrays["scales"],
        "quats": arrays["quats"],
    }
    names = [prop for _, props in columns for prop in props]
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for key, props in columns:
        for j, prop in enumerate(props):
            vertex[prop] = flat[key][:, j]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    return atomic_write(Path(path), ply.write)


def read_splat_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a 3DGS splat PLY into float32 tensors named like ``GaussianModel.params``.

    Properties may come in any order and as float or double; the SH degree is inferred from
    the number of ``f_rest_*`` properties (0, 9, 24 or 45 -> degree 0..3).

    Returns:
        ``means`` [N, 3], ``quats`` [N, 4], ``scales`` [N, 3], ``opacities`` [N],
        ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3].

    Raises:
        InputError: missing file, not a PLY, no ``vertex`` element, missing properties (named),
            or an ``f_rest`` count that is no SH degree.
    """
    path = Path(path)
    vertex = _read_vertex(path)
    present = set(vertex.data.dtype.names or ())
    missing = [name for name in _REQUIRED if name not in present]
    if missing:
        raise InputError(path, f"missing vertex properties {', '.join(missing)} (expected {_EXPECTED})")

    rest_idx = sorted(int(m.group(1)) for name in present if (m := _F_REST.match(name)))
    n_rest = len(rest_idx)
    k1 = n_rest // 3
    degree = math.isqrt(k1 + 1) - 1
    if n_rest % 3 or (degree + 1) ** 2 != k1 + 1 or degree > 3 or rest_idx != list(range(n_rest)):
        raise InputError(
            path,
            f"{n_rest} f_rest_* properties, indices {rest_idx[:3]}..{rest_idx[-3:]} "
            "(expected f_rest_0..f_rest_{3(K-1)-1} with K-1 in 0, 3, 8, 15)",
        )

    data = vertex.data
    n = len(data)

    def cols(names: list[str]) -> np.ndarray:  # -> [N, len(names)] float32
        out = np.empty((n, len(names)), np.float32)
        for j, name in enumerate(names):
            out[:, j] = data[name]
        return out

    sh_rest = cols([f"f_rest_{i}" for i in range(n_rest)])  # [N, 3(K-1)], channel-major
    arrays = {
        "means": cols(["x", "y", "z"]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "opacities": cols(["opacity"]).reshape(n),
        "sh0": cols([f"f_dc_{i}" for i in range(3)]).reshape(n, 1, 3),
        "shN": sh_rest.reshape(n, 3, k1).transpose(0, 2, 1),  # [N, K-1, 3]
    }
    return {key: torch.from_numpy(np.ascontiguousarray(a)) for key, a in arrays.items()}


def write_points_ply(
    path: str | Path,
    points: Tensor | np.ndarray,  # [P, 3]
    colors: Tensor | np.ndarray | None = None,  # [P, 3] float in 0..1, or uint8
    normals: Tensor | np.ndarray | None = None,  # [P, 3]
) -> Path:
    """Write a point cloud (float32 x, y, z, optional float32 nx, ny, nz and optional uchar
    red, green, blue), atomically.

    Float colours are clipped to 0..1 and rounded to 0..255; uint8 colours are kept as they are.
    """
    pts = _to_numpy(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points: expected [P, 3], got {tuple(pts.shape)}")
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    nrm = None
    if normals is not None:
        nrm = _to_numpy(normals)
        if nrm.shape != pts.shape:
            raise ValueError(f"normals: expected {tuple(pts.shape)} like points, got {tuple(nrm.shape)}")
        props += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    rgb = None
    if colors is not None:
        rgb = _to_numpy(colors)
        if rgb.shape != pts.shape:
            raise ValueError(f"colors: expected {tuple(pts.shape)} like points, got {tuple(rgb.shape)}")
        if rgb.dtype != np.uint8:
            rgb = np.round(np.clip(rgb.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(pts.shape[0], dtype=props)
    for j, axis in enumerate("xyz"):
        vertex[axis] = pts[:, j]
    if nrm is not None:
        for j, axis in enumerate(("nx", "ny", "nz")):
            vertex[axis] = nrm[:, j]
    if rgb is not None:
        for j, channel in enumerate(("red", "green", "blue")):
            vertex[channel] = rgb[:, j]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    return atomic_write(Path(path), ply.write)


# ---------------------------------------------------------------------- helpers
def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _splat_arrays(params: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Check names/shapes and return float32 numpy copies; ValueError naming what is off."""
    names = ("means", "quats", "scales", "opacities", "sh0", "shN")
    if not isinstance(params, (Mapping, torch.nn.ParameterDict)):
        raise ValueError(f"params_or_model: expected a mapping of tensors or a model with .params, got {type(params).__name__}")  # noqa: TRY004
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params_or_model: missing {missing} (expected {list(names)})")
    arrays = {k: _to_numpy(params[k]).astype(np.float32, copy=False) for k in names}
    n = arrays["means"].shape[0]
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"params_or_model: {key} has shape {arrays[key].shape}, expected {shape}")
    sh_n = arrays["shN"].shape
    if len(sh_n) != 3 or sh_n[0] != n or sh_n[2] != 3 or sh_n[1] not in (0, 3, 8, 15):
        raise ValueError(f"params_or_model: shN has shape {sh_n}, expected ({n}, K-1, 3), K-1 in 0, 3, 8, 15")
    return arrays


def _read_vertex(path: Path) -> PlyElement:
    if not path.is_file():
        raise InputError(path, f"no such file (expected {_EXPECTED})")
    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # noqa: BLE001  plyfile raises several types (header, element, struct, unicode)
        raise InputError(path, f"not a readable PLY file: {err} (expected {_EXPECTED})") from None
    elements = [el.name for el in ply.elements]
    if "vertex" not in elements:
        hint = " (SuperSplat's compressed PLY is not supported)" if "chunk" in elements else ""
        raise InputError(path, f"no 'vertex' element, found {elements}{hint} (expected {_EXPECTED})")
    return ply["vertex"]


