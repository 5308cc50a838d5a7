"""Triangle meshes (:class:`recon.geometry.mesh.Mesh`): written as PLY, OBJ, GLB or STL and read
back, through trimesh (the one mesh writer).

=======  ==========================================================================  =========
format   what is kept                                                                 used by
=======  ==========================================================================  =========
``.ply`` binary little endian: float32 positions and normals, uchar RGBA colours     MeshLab, Blender, Open3D
``.obj`` text: positions, vertex colours (``v x y z r g b``), normals                 Blender, most tools
``.glb`` binary glTF 2.0: positions, normals, ``COLOR_0``                            web viewers, Blender
``.stl`` binary: triangles and face normals (no colours, vertices not shared)       3D printing, CAD
=======  ==========================================================================  =========

Positions are in the run's world units (mm for CT meshes). Colours are stored as 8 bits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recon.errors import InputError
from recon.geometry.mesh import Mesh
from recon.io.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["MESH_FORMATS", "read_mesh", "write_mesh"]

MESH_FORMATS = (".ply", ".obj", ".glb", ".stl")
"""File suffixes :func:`write_mesh` writes and :func:`read_mesh` reads."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InputError(path, f"unknown mesh type {suffix or '(no suffix)'!r} (expected {', '.join(MESH_FORMATS)})")
    return suffix


def write_mesh(path: str | Path, mesh: Mesh) -> Path:
    """Write ``mesh`` to ``path`` (format from the suffix: .ply, .obj, .glb, .stl), atomically.

    An empty mesh (no faces) is refused: no format holds it usefully.
    """
    import trimesh

    path = Path(path)
    suffix = _suffix(path)
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a recon.geometry.mesh.Mesh, given {type(mesh).__name__}")  # noqa: TRY004  (bad input is a ValueError here)
    if mesh.n_faces == 0:
        raise InputError(path, "the mesh is empty (no faces); nothing to write")
    colours = None
    if mesh.colours is not None and suffix != ".stl":
        rgb = np.round(np.clip(mesh.colours, 0.0, 1.0) * 255.0).astype(np.uint8)
        colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=colours,
                         vertex_normals=mesh.normals if suffix != ".stl" else None, process=False)  # fmt: skip
    data = tm.export(file_type=suffix[1:])
    return atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def read_mesh(path: str | Path) -> Mesh:
    """Read a mesh written by :func:`write_mesh` (or any single-mesh PLY/OBJ/GLB/STL file).

    STL stores each triangle's corners separately; they are merged into shared vertices.
    Normals are not read (recompute them from the faces when needed).
    """
    import trimesh

    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise InputError(path, "not found (expected a mesh file)")
    try:
        tm = trimesh.load(str(path), file_type=suffix[1:], force="mesh", process=suffix == ".stl")
    except Exception as err:  # noqa: BLE001  trimesh raises many types for bad files
        raise InputError(path, f"not a readable {suffix[1:].upper()} mesh ({type(err).__name__}: {err})") from None
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise InputError(path, f"holds no triangles (expected a {suffix[1:].upper()} triangle mesh)")
    colours = None
    if tm.visual.kind == "vertex":
        colours = np.asarray(tm.visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
    return Mesh(np.asarray(tm.vertices, dtype=np.float64), np.asarray(tm.faces, dtype=np.int64), colours)
