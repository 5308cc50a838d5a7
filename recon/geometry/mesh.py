"""Triangle meshes: one plain container (:class:`Mesh`, numpy arrays) shared by the capture and
CT mesh extractors and the mesh writer, the checks they are tested with (watertight, signed
volume, surface samples), and the clean-up steps done with Open3D (largest components, Taubin
smoothing, quadric decimation).

Faces are counter-clockwise seen from outside, so the right-hand normals point out of a closed
surface and a closed mesh's :func:`signed_volume` is positive. :func:`fill_small_holes` closes
boundary loops of a few edges (the pinholes marching cubes leaves in a fused TSDF) with fans that
keep that orientation.

Open3D is imported when a function needs it (:func:`require_open3d`); a missing or broken
install is one :class:`~recon.errors.InputError` line with the install hint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "Mesh",
    "boundary_edges",
    "clean_mesh",
    "fill_small_holes",
    "from_open3d",
    "is_watertight",
    "require_open3d",
    "sample_surface",
    "signed_volume",
    "to_open3d",
]


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh in world units (the run's world frame; mm for CT meshes)."""

    vertices: np.ndarray  # [V, 3] float64
    """Vertex positions, float64 [V, 3]."""
    faces: np.ndarray  # [F, 3] int64
    """Vertex indices of each triangle, int64 [F, 3], counter-clockwise seen from outside."""
    colours: np.ndarray | None = None  # [V, 3] float in [0, 1]
    """Per-vertex RGB in [0, 1], float64 [V, 3], or None."""
    normals: np.ndarray | None = None  # [V, 3]
    """Per-vertex unit normals, float64 [V, 3], or None."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)
        v = np.asarray(self.vertices, dtype=np.float64)
        f = np.asarray(self.faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"Mesh.vertices: expected shape [V, 3], given {list(v.shape)}")
        if f.size == 0:
            f = f.reshape(0, 3)
        if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"Mesh.faces: expected integer [F, 3], given {f.dtype} {list(f.shape)}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"Mesh.faces: indices must be in 0..{len(v) - 1}, given {f.min()}..{f.max()}")
        set_("vertices", v)
        set_("faces", f.astype(np.int64))
        for name in ("colours", "normals"):
            value = getattr(self, name)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64)
                if arr.shape != v.shape:
                    raise ValueError(f"Mesh.{name}: expected shape {list(v.shape)} like vertices, given {list(arr.shape)}")
                set_(name, arr)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def bounds(self) -> np.ndarray:
        """``[2, 3]`` min and max corner of the vertices."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])


# ---------------------------------------------------------------------- checks (numpy)
def _edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges ``[3F, 2]`` of the faces (a->b, b->c, c->a)."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def boundary_edges(mesh: Mesh) -> int:
    """Number of undirected edges not shared by exactly two faces (0 for a closed 2-manifold)."""
    if mesh.n_faces == 0:
        return 0
    und = np.sort(_edges(mesh.faces), axis=1)
    _, counts = np.unique(und, axis=0, return_counts=True)
    return int((counts != 2).sum())


def is_watertight(mesh: Mesh) -> bool:
    """Closed and consistently oriented: every edge is used by exactly two faces, once in each
    direction (what trimesh and Open3D call watertight, plus orientation)."""
    if mesh.n_faces == 0:
        return False
    if boundary_edges(mesh):
        return False
    directed = _edges(mesh.faces)
    return len(np.unique(directed, axis=0)) == len(directed)


def _boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """The holes' outlines: simple loops of vertices ``[p0, p1, ...]`` such that each
    ``p_i -> p_i+1`` is the reverse of a directed edge used once, so a face ``(p_i, p_i+1, x)``
    continues the surface's orientation. Where holes touch at a vertex the walk through it is cut
    into simple loops; a rim that does not close (non-manifold edges) gives none."""
    directed = _edges(faces)
    _, inverse, counts = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True, return_counts=True)
    nxt: dict[int, list[int]] = {}
    for a, b in directed[counts[inverse.reshape(-1)] == 1].tolist():
        nxt.setdefault(b, []).append(a)  # the loop runs b -> a for each boundary edge a -> b
    loops = []
    for start in list(nxt):
        while nxt[start]:
            path, where, v = [start], {start: 0}, start
            while nxt.get(v):
                w = nxt[v].pop()
                if w in where:  # the walk came back to w: cut the loop w -> ... -> v -> w off the path
                    i = where[w]
                    loops.append(path[i:])
                    for x in path[i + 1 :]:
                        del where[x]
                    del path[i + 1 :]
                else:
                    where[w] = len(path)
                    path.append(w)
                v = w
    return [loop for loop in loops if len(loop) >= 3]


def fill_small_holes(mesh: Mesh, max_edges: int) -> tuple[Mesh, int]:
    """Close every hole whose outline has at most ``max_edges`` edges with a fan of triangles
    around a new vertex at the outline's centroid (colour and normal: the outline's mean),
    oriented like the faces around it. Returns the mesh and the number of holes closed; larger
    holes stay open. Holes that touch at a vertex are closed one by one."""
    if max_edges < 3:
        raise ValueError(f"max_edges: expected >= 3, given {max_edges}")
    if mesh.n_faces == 0:
        return mesh, 0
    loops = [loop for loop in _boundary_loops(mesh.faces) if len(loop) <= max_edges]
    if not loops:
        return mesh, 0
    vertices, faces = [mesh.vertices], [mesh.faces]
    colours = [mesh.colours] if mesh.colours is not None else None
    normals = [mesh.normals] if mesh.normals is not None else None
    n = mesh.n_vertices
    for loop in loops:
        ring = np.asarray(loop, dtype=np.int64)
        vertices.append(mesh.vertices[ring].mean(0, keepdims=True))
        faces.append(np.stack([ring, np.roll(ring, -1), np.full_like(ring, n)], axis=1))
        if colours is not None:
            colours.append(mesh.colours[ring].mean(0, keepdims=True))  # type: ignore[index]
        if normals is not None:
            mean = mesh.normals[ring].mean(0, keepdims=True)  # type: ignore[index]
            normals.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        n += 1
    cat = lambda parts: None if parts is None else np.concatenate(parts)  # noqa: E731
    return Mesh(np.concatenate(vertices), np.concatenate(faces), cat(colours), cat(normals)), len(loops)


def signed_volume(mesh: Mesh) -> float:
    """Volume enclosed by the mesh (divergence theorem); positive when the faces are
    counter-clockwise seen from outside. Meaningful for closed meshes only."""
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points ``[n, 3]`` uniformly distributed over the mesh's area (for Chamfer distances)."""
    if mesh.n_faces == 0:
        raise ValueError("sample_surface: the mesh has no faces")
    rng = np.random.default_rng(seed)
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    face = rng.choice(mesh.n_faces, size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[face] + u[:, None] * (b[face] - a[face]) + v[:, None] * (c[face] - a[face])


# ---------------------------------------------------------------------- Open3D
def require_open3d() -> Any:
    """The ``open3d`` module, or an :class:`InputError` line saying why it cannot be imported."""
    try:
        import open3d
    except Exception as err:  # noqa: BLE001  ImportError, or OSError for a missing shared library (libusb)
        raise InputError("open3d", f"cannot be imported ({type(err).__name__}: {err}); install it with "
                                   "'pip install open3d' (on Debian it also needs 'apt-get install libusb-1.0-0')") from None  # fmt: skip
    return open3d


def to_open3d(mesh: Mesh) -> Any:
    """An ``open3d.geometry.TriangleMesh`` of ``mesh`` (colours and normals kept)."""
    o3d = require_open3d()
    out = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
    if mesh.colours is not None:
        out.vertex_colors = o3d.utility.Vector3dVector(mesh.colours)
    if mesh.normals is not None:
        out.vertex_normals = o3d.utility.Vector3dVector(mesh.normals)
    return out


def from_open3d(mesh: Any, *, normals: bool = True) -> Mesh:
    """A :class:`Mesh` of an Open3D ``TriangleMesh`` (vertex normals computed when ``normals``)."""
    if normals and len(mesh.triangles):
        mesh.compute_vertex_normals()
    colours = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None
    return Mesh(
        np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3),
        np.asarray(mesh.triangles, dtype=np.int64).reshape(-1, 3),
        None if colours is None else np.clip(colours, 0.0, 1.0),
        np.asarray(mesh.vertex_normals) if normals and mesh.has_vertex_normals() else None,
    )


def clean_mesh(
    mesh: Mesh,
    *,
    components: int | None = 1,
    min_component_fraction: float = 0.0,
    smooth_iterations: int = 0,
    target_faces: int | None = None,
) -> Mesh:
    """Clean a mesh with Open3D, in this order: drop degenerate and duplicated faces and unused
    vertices; keep the ``components`` largest connected components (by face count; ``None``:
    all) and drop those under ``min_component_fraction`` of the largest; Taubin smoothing
    (``smooth_iterations``, which keeps the volume, unlike Laplacian smoothing); quadric
    decimation to at most ``target_faces`` faces.

    Decimation may open a closed mesh at a few edges; callers that promise a watertight mesh
    check :func:`is_watertight` on the result.
    """
    if components is not None and components < 1:
        raise ValueError(f"components: expected >= 1 or None, given {components}")
    if target_faces is not None and target_faces < 4:
        raise ValueError(f"target_faces: expected >= 4 or None, given {target_faces}")
    if smooth_iterations < 0:
        raise ValueError(f"smooth_iterations: expected >= 0, given {smooth_iterations}")
    if mesh.n_faces == 0:
        return mesh
    m = to_open3d(mesh)
    m.remove_degenerate_triangles()
    m.remove_duplicated_triangles()
    m.remove_duplicated_vertices()
    m.remove_unreferenced_vertices()
    if components is not None or min_component_fraction > 0:
        labels, counts, _areas = m.cluster_connected_triangles()
        labels, counts = np.asarray(labels), np.asarray(counts)
        order = np.argsort(-counts, kind="stable")
        keep = order[: components] if components is not None else order
        keep = keep[counts[keep] >= min_component_fraction * counts.max()]
        m.remove_triangles_by_mask(~np.isin(labels, keep))
        m.remove_unreferenced_vertices()
    if smooth_iterations:
        m = m.filter_smooth_taubin(number_of_iterations=int(smooth_iterations))
    if target_faces is not None and len(m.triangles) > target_faces:
        m = m.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
        m.remove_degenerate_triangles()
        m.remove_unreferenced_vertices()
    return from_open3d(m)
