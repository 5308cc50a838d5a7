"""recon.geometry.mesh: the Mesh container, watertightness, signed volume, surface samples and
the Open3D clean-up steps."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.geometry import mesh as mesh_module
from recon.geometry.mesh import (
    Mesh,
    boundary_edges,
    clean_mesh,
    fill_small_holes,
    is_watertight,
    sample_surface,
    signed_volume,
)


def cube(size: float = 2.0, offset=(0.0, 0.0, 0.0)) -> Mesh:
    """A closed cube, faces counter-clockwise seen from outside."""
    v = (np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) - 0.5) * size + offset
    # vertex index = 4x + 2y + z
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))]
    return Mesh(v, np.array(faces))


def test_cube_is_closed_with_its_volume_and_area_samples():
    m = cube(2.0, offset=(5.0, -1.0, 2.0))
    assert m.n_vertices == 8 and m.n_faces == 12
    assert is_watertight(m) and boundary_edges(m) == 0
    assert signed_volume(m) == pytest.approx(8.0)
    flipped = Mesh(m.vertices, m.faces[:, ::-1])
    assert signed_volume(flipped) == pytest.approx(-8.0) and is_watertight(flipped)
    pts = sample_surface(m, 6000, seed=1)
    # every sample on a face of the cube: one coordinate at +-1 from the centre
    d = np.abs(pts - [5.0, -1.0, 2.0])
    assert np.allclose(d.max(axis=1), 1.0) and (d <= 1.0 + 1e-12).all()
    # uniform over the area: each of the 6 faces gets about a sixth
    counts = np.bincount(np.argmax(d, axis=1) * 2 + (np.take_along_axis(pts - [5.0, -1.0, 2.0], np.argmax(d, axis=1)[:, None], 1)[:, 0] > 0), minlength=6)
    assert counts.min() > 850 and counts.max() < 1150


def test_open_and_inconsistent_meshes_are_not_watertight():
    m = cube()
    opened = Mesh(m.vertices, m.faces[:-1])
    assert not is_watertight(opened) and boundary_edges(opened) == 3
    mixed = m.faces.copy()
    mixed[0] = mixed[0, ::-1]  # one face turned over: every edge still shared twice, orientation not
    assert boundary_edges(Mesh(m.vertices, mixed)) == 0 and not is_watertight(Mesh(m.vertices, mixed))
    assert not is_watertight(Mesh(np.zeros((0, 3)), np.zeros((0, 3), int)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vertices": np.zeros((3, 2)), "faces": np.zeros((1, 3), int)}, "vertices"),
        ({"vertices": np.zeros((3, 3)), "faces": np.zeros((1, 3))}, "faces"),
        ({"vertices": np.zeros((3, 3)), "faces": np.array([[0, 1, 3]])}, "indices"),
        ({"vertices": np.zeros((3, 3)), "faces": np.array([[0, 1, 2]]), "colours": np.zeros((2, 3))}, "colours"),
    ],
)
def test_bad_meshes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mesh(**kwargs)


def test_clean_mesh_keeps_the_largest_component_and_decimates():
    from skimage.measure import marching_cubes

    z, y, x = np.mgrid[-20:21, -20:21, -20:21].astype(float)
    big = np.sqrt(x**2 + y**2 + z**2) - 12.0
    small = np.sqrt((x - 16) ** 2 + (y - 16) ** 2 + (z - 16) ** 2) - 3.0
    verts, faces, _n, _v = marching_cubes(np.minimum(big, small), 0.0)
    both = Mesh(verts, faces)
    one = clean_mesh(both, components=1)
    assert one.n_faces < both.n_faces and np.linalg.norm(one.vertices - 20, axis=1).max() < 13.5
    kept = clean_mesh(both, components=None)
    assert kept.n_faces == both.n_faces and kept.normals is not None
    light = clean_mesh(both, components=1, target_faces=500)
    assert 400 <= light.n_faces <= 500
    smooth = clean_mesh(both, components=1, smooth_iterations=10)
    assert smooth.n_faces == one.n_faces
    with pytest.raises(ValueError, match="components"):
        clean_mesh(both, components=0)


def _sphere_mesh() -> Mesh:
    from skimage.measure import marching_cubes

    z, y, x = np.mgrid[-12:13, -12:13, -12:13].astype(float)
    verts, faces, _n, _v = marching_cubes(np.sqrt(x**2 + y**2 + z**2) - 9.3, 0.0)  # no grid point on the surface
    m = Mesh(verts - 12.0, faces)
    assert is_watertight(m) and signed_volume(m) > 0
    return m


def _punch(m: Mesh, centre, radius: float) -> Mesh:
    """``m`` without the faces that have a vertex within ``radius`` of ``centre`` (a hole)."""
    near = np.linalg.norm(m.vertices - np.asarray(centre, float), axis=1) < radius
    return Mesh(m.vertices, m.faces[~near[m.faces].any(axis=1)], np.full_like(m.vertices, 0.25), None)


def test_fill_small_holes_closes_pinholes_with_outward_faces_and_leaves_large_holes():
    closed = _sphere_mesh()
    pinholes = _punch(_punch(closed, (0, 0, 9), 1.0), (9, 0, 0), 1.2)
    assert not is_watertight(pinholes) and boundary_edges(pinholes) > 6
    filled, n = fill_small_holes(pinholes, 24)
    assert n == 2 and is_watertight(filled)  # closed, and the fans turn the way the surface does
    assert signed_volume(filled) == pytest.approx(signed_volume(closed), rel=0.01)
    assert filled.colours is not None and np.allclose(filled.colours, 0.25)
    # a hole larger than max_edges stays open, the pinhole beside it is closed
    big = _punch(_punch(closed, (0, 0, -9), 5.0), (9, 0, 0), 1.2)
    partly, n = fill_small_holes(big, 24)
    assert n == 1 and not is_watertight(partly) and boundary_edges(partly) == boundary_edges(_punch(closed, (0, 0, -9), 5.0))
    same, n = fill_small_holes(closed, 24)
    assert same is closed and n == 0
    with pytest.raises(ValueError, match="max_edges"):
        fill_small_holes(closed, 2)


def test_a_broken_open3d_is_one_input_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_open3d(name, *args, **kwargs):
        if name == "open3d":
            raise OSError("libusb-1.0.so.0: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open3d)
    with pytest.raises(InputError, match="open3d.*libusb"):
        mesh_module.require_open3d()
