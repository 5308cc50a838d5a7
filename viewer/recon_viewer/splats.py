"""Splat PLY files as the viewer needs them: the header (count, SH degree) and a points-only
subsample for models too large to splat in a browser.

Reads the INRIA 3DGS layout described in ``recon/io/ply.py`` with numpy alone (no torch, no
plyfile), so the server stays quick to start; the browser renders the splats themselves.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SH_C0", "PlyHeader", "points_bytes", "read_ply_header"]

SH_C0 = 0.28209479177387814
"""Degree-0 spherical-harmonic constant: colour = 0.5 + SH_C0 * f_dc (as in recon.splat.sh)."""

_PLY_TYPES = {
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
    "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1",
    "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
}
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
_F_REST = re.compile(r"f_rest_(\d+)$")


@dataclass(frozen=True)
class PlyHeader:
    """What the header of a binary little-endian splat PLY says."""

    n: int
    """Number of Gaussians (vertices)."""
    sh_degree: int
    """Spherical-harmonic degree, from the number of ``f_rest_*`` properties (0..3)."""
    dtype: np.dtype
    """Structured dtype of one vertex record."""
    data_offset: int
    """Byte offset of the first vertex record."""


def read_ply_header(path: Path) -> PlyHeader:
    """Parse the header of a 3DGS splat PLY.

    Raises:
        ValueError: with a one-line reason (not a PLY, not binary little endian, no vertex
            element, missing properties, an ``f_rest`` count that is no SH degree, truncated).
    """
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply") or end < 0:
        raise ValueError("not a PLY file (no 'ply' ... 'end_header' header)")
    lines = head[:end].decode("ascii", "replace").splitlines()
    fmt, n, props, in_vertex, seen_other = None, None, [], False, False
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else None
        elif words[0] == "element":
            in_vertex = len(words) == 3 and words[1] == "vertex"
            if in_vertex:
                n = int(words[2])
            elif n is None:
                seen_other = True
        elif words[0] == "property" and in_vertex:
            if words[1] == "list" or words[1] not in _PLY_TYPES or len(words) != 3:
                raise ValueError(f"unsupported vertex property {' '.join(words[1:])!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt != "binary_little_endian":
        raise ValueError(f"format {fmt!r} (expected binary_little_endian, as recon writes)")
    if n is None:
        raise ValueError("no 'vertex' element")
    if seen_other:
        raise ValueError("elements before 'vertex' (expected the vertex element first)")
    names = [name for name, _ in props]
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise ValueError(f"missing vertex properties {', '.join(missing)} (expected a 3DGS splat PLY)")
    n_rest = sum(1 for name in names if _F_REST.match(name))
    degree = math.isqrt(n_rest // 3 + 1) - 1
    if n_rest % 3 or (degree + 1) ** 2 != n_rest // 3 + 1 or degree > 3:
        raise ValueError(f"{n_rest} f_rest_* properties (expected 0, 9, 24 or 45)")
    dtype = np.dtype(props)
    offset = end + len(b"end_header\n")
    size = Path(path).stat().st_size
    if size < offset + n * dtype.itemsize:
        raise ValueError(f"truncated: {size} bytes for {n} vertices of {dtype.itemsize} bytes")
    return PlyHeader(n=n, sh_degree=degree, dtype=dtype, data_offset=offset)


def points_bytes(path: Path, max_points: int, seed: int = 0) -> bytes:
    """A points-only view of a splat PLY: up to ``max_points`` Gaussian centres with their
    base colour, the most opaque first.

    Returns:
        ``uint32 M`` then ``M * 3`` float32 positions then ``M * 3`` uint8 colours (sRGB of the
        degree-0 SH term), little endian; what the client's points renderer reads.
    """
    header = read_ply_header(path)
    data = np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_offset, shape=(header.n,))
    keep = np.arange(header.n)
    if header.n > max_points:
        # most opaque half by rank, then a seeded random pick: dense where the model is solid
        opacity = np.asarray(data["opacity"], dtype=np.float32)
        keep = np.argsort(-opacity, kind="stable")[: min(header.n, 2 * max_points)]
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_points, replace=False))
    rec = data[keep]
    xyz = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype("<f4")
    dc = np.stack([rec["f_dc_0"], rec["f_dc_1"], rec["f_dc_2"]], axis=1).astype(np.float32)
    rgb = np.clip((0.5 + SH_C0 * dc) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.uint32(len(keep)).astype("<u4").tobytes() + xyz.tobytes() + rgb.tobytes()
