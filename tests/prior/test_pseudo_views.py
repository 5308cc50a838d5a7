"""Pseudo views around training cameras: counts, look-at, arcs, weights."""

from __future__ import annotations

import math

import pytest
import torch

from recon.geometry.cameras import CameraSet, Intrinsics, camera_centres
from recon.prior.pseudo_views import (
    PseudoViewConfig,
    make_pseudo_views,
    rotation_angle_deg,
    view_weights,
)
from recon.splat.camera_paths import look_at

INTR = Intrinsics(fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)


def ring(angles_deg: list[float], radius: float = 4.0, height: float = 1.0) -> CameraSet:
    """Cameras on a circle around the z axis at ``height``, looking at the origin (z up)."""
    a = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    eyes = torch.stack([radius * a.cos(), radius * a.sin(), torch.full_like(a, height)], -1)
    w2c = look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    return CameraSet(w2c.float(), [INTR] * len(angles_deg))


def test_rotation_angle_known_answer():
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    assert float(rotation_angle_deg(rz, torch.eye(3))) == pytest.approx(30.0, abs=1e-4)
    assert float(rotation_angle_deg(rz, rz)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"r0: expected shape \[\.\.\., 3, 3\]"):
        rotation_angle_deg(torch.eye(4), torch.eye(3))


@pytest.mark.parametrize(("between", "near", "neighbours"), [(2, 1, 2), (1, 0, 1), (0, 3, 2), (3, 2, 3)])
def test_counts_shapes_and_ranges(between, near, neighbours):
    train = ring([0, 60, 150, 250])
    views = make_pseudo_views(train, PseudoViewConfig(between=between, near=near, neighbours=neighbours))
    centres = camera_centres(train.w2c.double())
    dist = torch.cdist(centres, centres).fill_diagonal_(float("inf"))
    nn = dist.topk(min(neighbours, 3), largest=False).indices
    pairs = {tuple(sorted((i, int(j)))) for i in range(4) for j in nn[i]}
    p = between * len(pairs) + near * 4
    assert len(views) == p == len(views.kinds) == len(views.names())
    assert views.cameras.w2c.shape == (p, 4, 4)
    assert views.weights.shape == views.nearest.shape == views.rot_deg.shape == views.distance.shape == (p,)
    assert bool(((views.weights > 0) & (views.weights <= 1)).all())
    assert bool(((views.nearest >= 0) & (views.nearest < 4)).all())
    assert views.names()[0] == "pseudo_000"


def test_views_look_at_the_scene_centre_and_lie_on_the_arc():
    train = ring([0, 90, 180, 270], radius=4.0, height=0.0)  # centre: the origin
    views = make_pseudo_views(train, PseudoViewConfig(between=3, near=2, near_radius=0.0))
    w2c = views.cameras.w2c.double()
    origin_cam = w2c[:, :3, 3]  # the origin in camera coordinates
    assert torch.allclose(origin_cam[:, :2], torch.zeros_like(origin_cam[:, :2]), atol=1e-5)  # on the optical axis
    assert bool((origin_cam[:, 2] > 0).all())  # in front
    radii = camera_centres(w2c).norm(dim=-1)
    assert torch.allclose(radii, torch.full_like(radii, 4.0), atol=1e-4)  # arcs, not chords
    between = [i for i, k in enumerate(views.kinds) if k.startswith("between 0-1")]
    azimuth = torch.rad2deg(torch.atan2(camera_centres(w2c)[between, 1], camera_centres(w2c)[between, 0]))
    assert azimuth.tolist() == pytest.approx([22.5, 45.0, 67.5], abs=1e-3)
    near = [i for i, k in enumerate(views.kinds) if k.startswith("near")]
    angle = [float(rotation_angle_deg(w2c[i, :3, :3], train.w2c[int(views.nearest[i]), :3, :3].double())) for i in near]
    assert angle == pytest.approx([8.0] * len(near), abs=0.5)


def test_weights_fall_with_distance_from_the_nearest_training_view():
    train = ring([0, 90])
    probe = ring([0, 5, 15, 30, 45])  # 0 is a training view, 45 the middle of the gap
    w, nearest, rot, dist = view_weights(probe.w2c, train.w2c, rot_scale_deg=20.0, trans_scale=0.5)
    assert float(w[0]) == pytest.approx(1.0, abs=1e-5) and int(nearest[0]) == 0
    assert float(rot[0]) == pytest.approx(0.0, abs=1e-3) and float(dist[0]) == pytest.approx(0.0, abs=1e-5)
    assert bool((w[1:] < w[:-1]).all()), w  # strictly decreasing
    # the known value at 45 degrees: rotation 45, distance 2 r sin(22.5) / spacing (spacing = chord of 90)
    d = 2 * math.sin(math.radians(22.5)) / (2 * math.sin(math.radians(45)))
    assert float(w[-1]) == pytest.approx(math.exp(-0.5 * (45 / 20) ** 2 - 0.5 * (d / 0.5) ** 2), rel=1e-3)
    # pseudo views made by make_pseudo_views obey the same rule
    views = make_pseudo_views(train, PseudoViewConfig(between=1, near=0, rot_scale_deg=20.0, trans_scale=0.5))
    again = view_weights(views.cameras.w2c, train.w2c, 20.0, 0.5)[0]
    assert torch.allclose(views.weights, again)


def test_near_views_are_reproducible_from_the_seed():
    train = ring([0, 70, 200])
    a = make_pseudo_views(train, PseudoViewConfig(between=0, near=2, seed=3)).cameras.w2c
    b = make_pseudo_views(train, PseudoViewConfig(between=0, near=2, seed=3)).cameras.w2c
    c = make_pseudo_views(train, PseudoViewConfig(between=0, near=2, seed=4)).cameras.w2c
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("kwargs", "cams", "match"),
    [
        ({"between": 0, "near": 0}, 3, "at least one must be > 0"),
        ({"between": -1}, 3, "between: must be >= 0"),
        ({"rot_scale_deg": 0.0}, 3, "rot_scale_deg: must be > 0"),
        ({"between": 2, "near": 0}, 1, "need >= 2 training cameras"),
    ],
)
def test_bad_input(kwargs, cams, match):
    with pytest.raises(ValueError, match=match):
        make_pseudo_views(ring([0, 90, 200][:cams]), PseudoViewConfig(**kwargs))


def test_view_weights_bad_shapes():
    with pytest.raises(ValueError, match=r"w2c: expected shape \[N, 4, 4\]"):
        view_weights(torch.eye(4), torch.eye(4)[None], 20.0, 0.5)
    with pytest.raises(ValueError, match="expected > 0"):
        view_weights(torch.eye(4)[None], torch.eye(4)[None], 0.0, 0.5)
