"""recon.ct.mesh: iso-surfaces in HU, in world mm, closed at the volume's border, oriented
outwards; presets and bad iso values."""

from __future__ import annotations

import numpy as np
import pytest

from recon.ct.mesh import ISO_PRESETS, iso_hu, iso_surface
from recon.errors import InputError
from recon.geometry.mesh import is_watertight, signed_volume
from recon.io.units import hu_to_mu

MU_W = 0.0206
SHAPE = (20, 24, 28)  # z, y, x: non-cubic, anisotropic voxels, an offset origin, so axis mix-ups show
VOXEL = (2.0, 1.5, 1.0)
ORIGIN = (-19.0, -17.25, -10.5)  # (z, y, x) of voxel 0's centre


def _grid():
    axes = [o + np.arange(n) * d for n, d, o in zip(SHAPE, VOXEL, ORIGIN, strict=True)]
    return np.meshgrid(*axes, indexing="ij")  # z, y, x


def ball_hu(centre_xyz=(2.0, -1.0, -3.0), radius=8.0, inside=1000.0, outside=-1000.0, edge_mm=0.6) -> np.ndarray:
    zz, yy, xx = _grid()
    dist = np.sqrt((xx - centre_xyz[0]) ** 2 + (yy - centre_xyz[1]) ** 2 + (zz - centre_xyz[2]) ** 2)
    return outside + (inside - outside) / (1.0 + np.exp((dist - radius) / edge_mm))  # a smooth edge, 0 HU at r


def test_ball_surface_in_world_mm():
    mu = hu_to_mu(ball_hu(), MU_W)
    mesh = iso_surface(mu, VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None)
    r = np.linalg.norm(mesh.vertices - [2.0, -1.0, -3.0], axis=1)
    assert abs(r.mean() - 8.0) < 0.1 and r.std() < 0.1  # on the 0 HU shell, centred where the ball is in (x, y, z)
    assert is_watertight(mesh)
    assert signed_volume(mesh) == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.03)  # positive: faces point outwards


def test_smoothing_and_decimation_keep_it_closed():
    mu = hu_to_mu(ball_hu(), MU_W)
    full = iso_surface(mu, VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None)
    mesh = iso_surface(mu, VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=10, target_faces=600)
    assert mesh.n_faces <= 600 < full.n_faces
    assert is_watertight(mesh)
    assert signed_volume(mesh) == pytest.approx(signed_volume(full), rel=0.05)


def test_a_surface_cut_by_the_border_is_closed_there():
    zz, _yy, _xx = _grid()
    slab = np.where(np.abs(zz) < 8.0, 400.0, -1000.0)  # fills x and y to the volume's border
    mesh = iso_surface(hu_to_mu(slab, MU_W), VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None)
    assert is_watertight(mesh)
    lo, hi = mesh.bounds()
    # closed just outside the outermost voxel centres in x and y (within a voxel), between the slab's faces in z
    first, last = np.array([ORIGIN[2], ORIGIN[1]]), np.array([ORIGIN[2] + 27 * 1.0, ORIGIN[1] + 23 * 1.5])
    assert np.all(lo[:2] < first) and np.all(lo[:2] > first - [1.0, 1.5])
    assert np.all(hi[:2] > last) and np.all(hi[:2] < last + [1.0, 1.5])
    assert -9.0 < lo[2] < -7.0 and 7.0 < hi[2] < 9.0


def test_two_balls_and_components():
    a = ball_hu((-6.0, 0.0, 0.0), 4.0)
    b = ball_hu((8.0, 0.0, 0.0), 3.0)
    both = hu_to_mu(np.maximum(a, b), MU_W)
    two = iso_surface(both, VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None)
    one = iso_surface(both, VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None, components=1)
    assert one.n_faces < two.n_faces and one.vertices[:, 0].max() < 0  # the larger ball, on the -x side
    alone = [iso_surface(hu_to_mu(v, MU_W), VOXEL, 0.0, mu_water_per_mm=MU_W, origin_mm=ORIGIN, smooth_iterations=0, target_faces=None)
             for v in (a, b)]  # fmt: skip
    assert signed_volume(two) == pytest.approx(sum(signed_volume(m) for m in alone), rel=1e-3)
    assert signed_volume(one) == pytest.approx(signed_volume(alone[0]), rel=1e-3)


def test_iso_presets_and_bad_values():
    assert iso_hu("bone") == ISO_PRESETS["bone"] == 300.0 and iso_hu("Skin") == -500.0 and iso_hu("-120.5") == -120.5
    for bad in ("bones", "nan"):
        with pytest.raises(InputError, match="--iso"):
            iso_hu(bad)
    mu = hu_to_mu(ball_hu(), MU_W)
    with pytest.raises(InputError, match="outside the volume's range"):
        iso_surface(mu, VOXEL, 2000.0, mu_water_per_mm=MU_W)
    with pytest.raises(ValueError, match="voxel_mm"):
        iso_surface(mu, (1.0, 0.0, 1.0), 0.0, mu_water_per_mm=MU_W)
