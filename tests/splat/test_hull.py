"""Visual hull: masks, carving a synthetic sphere seen by 8 cameras with exact silhouettes, points."""

from __future__ import annotations

import math

import pytest
import torch

from recon.geometry.cameras import CameraSet, Intrinsics
from recon.splat.hull import (
    compute_masks,
    hull_points,
    hull_surface,
    visual_hull,
    voxel_centres,
)

SIZE = 48
FOCAL = 48.0
RADIUS = 0.5
BOUNDS = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _look_at(centre: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV w2c of a camera at ``centre`` looking at ``target`` (the origin), world +z up."""
    fwd = (torch.zeros(3) if target is None else target) - centre
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    rot = torch.stack([right, down, fwd])
    m = torch.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = -rot @ centre
    return m


def _sphere_rig(n: int = 8, dist: float = 3.0) -> tuple[CameraSet, torch.Tensor]:
    """``n`` cameras around a sphere of radius RADIUS at the origin and its exact silhouettes [n, H, W]."""
    w2c = []
    for i in range(n):
        az, el = 2 * math.pi * i / n, math.radians(25.0 if i % 2 else -25.0)
        w2c.append(_look_at(dist * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])))
    w2c = torch.stack(w2c)
    intr = Intrinsics(fx=FOCAL, fy=FOCAL, cx=SIZE / 2, cy=SIZE / 2, width=SIZE, height=SIZE)
    cams = CameraSet(w2c, [intr] * n)
    # pixel (x, y) covers [x, x+1) x [y, y+1): its centre ray hits the sphere?
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    dirs_cam = torch.stack([(xs - SIZE / 2) / FOCAL, (ys - SIZE / 2) / FOCAL, torch.ones_like(xs)], -1)
    masks = []
    for m in w2c:
        rot, t = m[:3, :3], m[:3, 3]
        origin = -rot.T @ t
        d = dirs_cam @ rot  # world directions (rot.T @ d per pixel)
        d = d / d.norm(dim=-1, keepdim=True)
        closest = origin - (origin * d).sum(-1, keepdim=True) * d  # point of the ray nearest 0
        masks.append(closest.norm(dim=-1) < RADIUS)
    return cams, torch.stack(masks)


def test_hull_of_sphere_contains_it_and_excludes_most_of_the_box():
    cams, masks = _sphere_rig()
    assert 0.05 < float(masks.float().mean()) < 0.3  # the sphere is well inside every image
    res = 32
    occ = visual_hull(cams, masks, BOUNDS, resolution=res)
    assert occ.shape == (res, res, res) and occ.dtype == torch.bool
    r = voxel_centres(BOUNDS, res).norm(dim=-1)
    # every voxel well inside the sphere survives (one pixel ~ 0.06 at the sphere's distance)
    assert bool(occ[r < RADIUS - 0.1].all())
    # nothing far outside survives, and most of the box is carved
    assert not bool(occ[r > 2 * RADIUS].any())
    sphere_frac = (4 / 3 * math.pi * RADIUS**3) / 8.0
    frac = float(occ.float().mean())
    assert sphere_frac * 0.9 < frac < 2.0 * sphere_frac, frac


def test_views_that_do_not_see_a_voxel_do_not_carve_it():
    cams, masks = _sphere_rig()
    empty = torch.zeros_like(masks)
    empty[0] = masks[0]  # only one view has information; the others see nothing of the object...
    occ = visual_hull(cams, empty, BOUNDS, resolution=16, min_views=1)
    assert not bool(occ.any())  # ... and they do see the box, so they carve everything
    # a camera looking away from the box sees none of it and carves nothing
    centres = cams.centres()
    away = torch.stack([cams.w2c[0]] + [_look_at(c, 2 * c) for c in centres[1:]])
    cams_away = CameraSet(away, cams.intrinsics)
    occ = visual_hull(cams_away, empty, BOUNDS, resolution=16, min_views=1)
    occ0 = visual_hull(CameraSet(cams.w2c[:1], cams.intrinsics[:1]), masks[:1], BOUNDS, resolution=16, min_views=1)
    assert torch.equal(occ, occ0)


def test_hull_points_on_the_sphere_with_image_colours():
    cams, masks = _sphere_rig()
    colour = torch.tensor([0.2, 0.6, 0.4])
    images = masks[..., None].float() * colour  # object colour inside the silhouette, black outside
    pts, cols = hull_points(cams, images, masks, 2000, bounds=BOUNDS, resolution=32,
                            generator=torch.Generator().manual_seed(0))
    assert pts.shape == (2000, 3) and cols.shape == (2000, 3)
    r = pts.norm(dim=-1)
    assert float(r.median()) == pytest.approx(RADIUS, abs=0.1)  # the surface shell
    assert float(r.max()) < 2 * RADIUS
    assert torch.allclose(cols.median(0).values, colour, atol=0.05)


def test_hull_surface_of_a_cube():
    occ = torch.zeros(6, 6, 6, dtype=torch.bool)
    occ[1:5, 1:5, 1:5] = True
    shell = hull_surface(occ)
    assert int(shell.sum()) == 4**3 - 2**3
    full = torch.ones(3, 3, 3, dtype=torch.bool)  # touching the grid border counts as surface
    assert int(hull_surface(full).sum()) == 26


def test_hull_bad_input():
    cams, masks = _sphere_rig(4)
    with pytest.raises(ValueError, match="4 cameras"):
        visual_hull(cams, masks[:3], BOUNDS)
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        visual_hull(cams, masks, torch.zeros(3))
    images = torch.zeros(4, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="empty"):
        hull_points(cams, images, torch.zeros_like(masks), 10, bounds=BOUNDS, resolution=8)
    with pytest.raises(ValueError, match="masks"):
        hull_points(cams, images, masks[:, :10], 10, bounds=BOUNDS)


def _disk_image(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    disk = ((xs - size / 2) ** 2 + (ys - size / 2) ** 2) < (size / 4) ** 2
    img = torch.full((size, size, 3), 0.15) + 0.03 * torch.randn(size, size, 3, generator=g)
    img[disk] = torch.tensor([0.9, 0.5, 0.2]) + 0.03 * torch.randn(int(disk.sum()), 3, generator=g)
    return img.clamp(0, 1), disk


@pytest.mark.parametrize("method", ["grabcut", "threshold"])
def test_compute_masks_find_a_centred_object(method):
    img, disk = _disk_image()
    masks = compute_masks(torch.stack([img, img.flip(0)]), method)
    assert masks.shape == (2, 64, 64) and masks.dtype == torch.bool
    for m in masks:
        iou = float((m & disk).sum()) / float((m | disk).sum())
        assert iou > 0.9, iou


def test_compute_masks_bad_input():
    with pytest.raises(ValueError, match=r"\[V, H, W, 3\]"):
        compute_masks(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="method"):
        compute_masks(torch.zeros(1, 8, 8, 3), "otsu")  # type: ignore[arg-type]
