"""recon.io.mesh: round trips of every mesh format written, Open3D reading them (an independent
reader), and one-line errors for bad paths and files."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.geometry.mesh import Mesh, is_watertight, signed_volume
from recon.io.mesh import MESH_FORMATS, read_mesh, write_mesh


def icosphere(subdivisions: int = 2) -> Mesh:
    import trimesh

    s = trimesh.creation.icosphere(subdivisions, radius=30.0)
    v = np.asarray(s.vertices) + [100.0, -50.0, 12.5]  # mm-sized, off the origin
    rng = np.random.default_rng(0)
    return Mesh(v, np.asarray(s.faces), rng.random((len(v), 3)), np.asarray(s.vertex_normals))


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_round_trip_keeps_vertices_faces_and_8_bit_colours(tmp_path, suffix):
    m = icosphere()
    path = write_mesh(tmp_path / f"m{suffix}", m)
    back = read_mesh(path)
    assert back.n_vertices == m.n_vertices and np.array_equal(back.faces, m.faces)
    np.testing.assert_allclose(back.vertices, m.vertices, rtol=0, atol=2e-5)  # float32 in the file
    np.testing.assert_array_equal(np.round(back.colours * 255), np.round(m.colours * 255))
    assert is_watertight(back) and signed_volume(back) == pytest.approx(signed_volume(m), rel=1e-6)
    # Open3D, another reader, sees the same mesh
    import open3d as o3d

    o = o3d.io.read_triangle_mesh(str(path))
    assert len(o.triangles) == m.n_faces and o.has_vertex_colors()
    np.testing.assert_allclose(np.sort(np.asarray(o.vertices), axis=0), np.sort(m.vertices, axis=0), atol=2e-5)


def test_stl_keeps_the_surface_and_merges_corners(tmp_path):
    m = icosphere()
    path = write_mesh(tmp_path / "m.stl", m)
    assert path.read_bytes()[80:84] == np.uint32(m.n_faces).tobytes()  # binary STL triangle count
    back = read_mesh(path)
    assert back.n_faces == m.n_faces and back.n_vertices == m.n_vertices and back.colours is None
    assert is_watertight(back) and signed_volume(back) == pytest.approx(signed_volume(m), rel=1e-5)


def test_writing_replaces_atomically_and_refuses_empty_meshes(tmp_path):
    path = write_mesh(tmp_path / "m.ply", icosphere(1))
    before = path.read_bytes()
    with pytest.raises(InputError, match="empty"):
        write_mesh(path, Mesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64)))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.ply"]


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("m.fbx", None, "unknown mesh type"),
        ("missing.ply", None, "not found"),
        ("bad.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n", "not a readable PLY"),
        ("bad.stl", b"\x00" * 10, "STL"),
        ("bad.glb", b"glTF\x02\x00\x00\x00garbage", "GLB"),
    ],
)
def test_bad_mesh_files_are_one_line_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=needle) as err:
        read_mesh(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_formats_listed():
    assert MESH_FORMATS == (".ply", ".obj", ".glb", ".stl")
    with pytest.raises(InputError, match="unknown mesh type"):
        write_mesh("x.off", icosphere(1))
