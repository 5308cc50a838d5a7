"""recon.splat.camera_paths: orbit, spiral and interpolated paths around a set of cameras."""

from __future__ import annotations

import math

import pytest
import torch

from recon.geometry.cameras import CameraSet, Intrinsics
from recon.splat.camera_paths import (
    interpolated_path,
    look_at,
    orbit_path,
    path_by_name,
    scene_frame,
    spiral_path,
)

K = Intrinsics(100.0, 100.0, 40.0, 30.0, 80, 60)
CENTRE = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
UP = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def ring_cameras(n: int = 6, radius: float = 4.0, heights=(1.0, 2.0)) -> CameraSet:
    """Cameras on a ring around CENTRE, alternating heights, looking at it, z up (shuffled order)."""
    order = [3, 0, 5, 1, 4, 2][:n] if n == 6 else list(range(n))
    eyes = []
    for i in order:
        a = 2 * math.pi * i / n
        eyes.append(CENTRE + torch.tensor([radius * math.cos(a), radius * math.sin(a), heights[i % 2]], dtype=torch.float64))
    w2c = look_at(torch.stack(eyes), CENTRE, UP)
    return CameraSet(w2c.float(), [K] * n)


def _projects_to_principal_point(cams: CameraSet, point: torch.Tensor) -> torch.Tensor:
    x = cams.w2c.double() @ torch.cat([point, torch.ones(1, dtype=torch.float64)])
    uv = x[:, :2] / x[:, 2:3] * 100.0 + torch.tensor([40.0, 30.0], dtype=torch.float64)
    return (uv - torch.tensor([40.0, 30.0], dtype=torch.float64)).norm(dim=-1)


def test_look_at_is_a_proper_opencv_camera():
    eyes = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 7.0]], dtype=torch.float64)
    w2c = look_at(eyes, torch.zeros(3, dtype=torch.float64), UP)
    rot = w2c[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    assert torch.allclose(torch.det(rot), torch.ones(2, dtype=torch.float64))
    # first camera: looks along -x, world up (+z) is image up (camera -y), right is -y world
    torch.testing.assert_close(rot[0], torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.isfinite(w2c[1]).all()  # looking straight down the up axis still works


def test_scene_frame_finds_the_centre_and_up():
    centre, up = scene_frame(ring_cameras())
    torch.testing.assert_close(up, UP, atol=0.15, rtol=0)
    assert float((centre - CENTRE).norm()) < 1e-3


def test_orbit_at_the_mean_height_and_distance_looking_at_the_centre():
    cams = ring_cameras()
    orbit = orbit_path(cams, 36)
    assert len(orbit) == 36 and orbit.intrinsics[0] == K
    c = orbit.centres().double() - CENTRE
    assert torch.allclose(c[:, 2], torch.full((36,), 1.5, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(c[:, :2].norm(dim=-1), torch.full((36,), 4.0, dtype=torch.float64), atol=2e-3)
    assert _projects_to_principal_point(orbit, CENTRE).max() < 0.05
    az = torch.atan2(c[:, 1], c[:, 0])
    step = torch.remainder(az[1:] - az[:-1], 2 * math.pi)
    assert torch.allclose(step, torch.full((35,), 2 * math.pi / 36, dtype=torch.float64), atol=1e-4)  # evenly, counter-clockwise
    wider = orbit_path(cams, 4, radius_scale=1.5, height=0.0)
    assert torch.allclose((wider.centres().double() - CENTRE)[:, :2].norm(dim=-1), torch.full((4,), 6.0, dtype=torch.float64), atol=2e-3)


def test_spiral_turns_and_swings_over_the_camera_heights():
    spiral = spiral_path(ring_cameras(heights=(1.0, 2.6)), 80, turns=2)
    c = spiral.centres().double() - CENTRE
    assert float(c[:, 2].max()) == pytest.approx(2.6, abs=0.05) and float(c[:, 2].min()) == pytest.approx(1.0, abs=0.05)
    flat = spiral_path(ring_cameras(heights=(1.5, 1.5)), 80).centres().double() - CENTRE
    assert float(flat[:, 2].max() - flat[:, 2].min()) == pytest.approx(2 * 0.15 * 4.0, abs=0.05)  # at least +-15 % of the radius
    az = torch.atan2(c[:, 1], c[:, 0])
    assert float(torch.remainder(az[1:] - az[:-1], 2 * math.pi).sum()) == pytest.approx(2 * 2 * math.pi * 79 / 80, rel=1e-3)
    assert _projects_to_principal_point(spiral, CENTRE).max() < 0.05


def test_interpolated_path_passes_through_every_camera_in_azimuth_order():
    cams = ring_cameras()
    path = interpolated_path(cams, 60)
    assert len(path) == 60
    # frames 0, 10, 20, ... are the cameras, visited counter-clockwise around the up axis
    got = path.w2c[::10]
    match = [int((cams.w2c - g).abs().amax(dim=(1, 2)).argmin()) for g in got]
    for g, i in zip(got, match, strict=True):
        torch.testing.assert_close(g, cams.w2c[i], atol=1e-5, rtol=0)
    assert sorted(match) == list(range(6))
    c = cams.centres().double()[match] - CENTRE
    az = torch.atan2(c[:, 1], c[:, 0])
    assert torch.allclose(torch.remainder(az.roll(-1) - az, 2 * math.pi), torch.full((6,), math.pi / 3, dtype=torch.float64), atol=1e-4)
    # in between: smooth (no jumps much larger than the mean step), still looking near the centre
    steps = (path.centres()[1:] - path.centres()[:-1]).norm(dim=-1)
    assert float(steps.max()) < 1.6 * float(steps.mean())
    assert _projects_to_principal_point(path, CENTRE).max() < 10.0


def test_path_by_name_and_bad_input():
    cams = ring_cameras()
    assert len(path_by_name("spiral", cams, 7)) == 7
    with pytest.raises(ValueError, match="expected one of orbit, spiral, interp"):
        path_by_name("zigzag", cams, 7)
    with pytest.raises(ValueError, match="n_frames"):
        orbit_path(cams, 0)
    with pytest.raises(ValueError, match="at least 2"):
        interpolated_path(cams.subset([0]), 10)
    with pytest.raises(ValueError, match="eyes"):
        look_at(torch.zeros(3), torch.zeros(3), UP)
