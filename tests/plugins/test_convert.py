"""recon_nerfstudio.convert: nerfstudio OpenGL c2w <-> recon OpenCV w2c, and X-ray pinholes."""

from __future__ import annotations

import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from recon_nerfstudio.convert import camera_set_from_nerfstudio, viewmats_from_c2w
from recon.geometry.cameras import opengl_c2w_to_w2c


def _c2w(n: int) -> torch.Tensor:  # [n, 3, 4] OpenGL cameras on a circle, looking at the origin
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.5])
        back = eye / eye.norm()  # OpenGL +z points away from the target
        right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), back)
        right = right / right.norm()
        up = torch.linalg.cross(back, right)
        out.append(torch.cat([torch.stack([right, up, back], dim=1), eye[:, None]], dim=1))
    return torch.stack(out)


def test_viewmats_match_recon_and_look_forward():
    c2w = _c2w(5)
    vm = viewmats_from_c2w(c2w)
    assert vm.shape == (5, 4, 4)
    full = torch.cat([c2w, torch.tensor([0.0, 0, 0, 1]).expand(5, 1, 4)], dim=1)
    torch.testing.assert_close(vm, opengl_c2w_to_w2c(full))
    torch.testing.assert_close(viewmats_from_c2w(full), vm)
    # the origin (the look-at target) is straight ahead: OpenCV x = y = 0, z = distance 3.04
    origin_cam = vm[:, :3, 3]
    torch.testing.assert_close(origin_cam[:, :2], torch.zeros(5, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(origin_cam[:, 2], torch.full((5,), math.sqrt(9.25)), atol=1e-5, rtol=0)


def test_viewmats_gradient_flows():
    c2w = _c2w(2).requires_grad_(True)
    viewmats_from_c2w(c2w).sum().backward()
    assert c2w.grad is not None and torch.isfinite(c2w.grad).all()


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(2, 3, 3), "not a tensor"])
def test_viewmats_bad_input(bad):
    with pytest.raises(ValueError, match="c2w"):
        viewmats_from_c2w(bad)


def test_camera_set_from_nerfstudio():
    c2w = _c2w(4)
    cams = Cameras(camera_to_worlds=c2w, fx=100.0, fy=110.0, cx=32.0, cy=24.0, width=64, height=48)
    cs = camera_set_from_nerfstudio(cams)
    assert len(cs) == 4
    torch.testing.assert_close(cs.centres(), c2w[:, :, 3], atol=1e-5, rtol=0)
    intr = cs.intrinsics[2]
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (100.0, 110.0, 32.0, 24.0, 64, 48)


def test_camera_set_rejects_other_models():
    cams = Cameras(camera_to_worlds=_c2w(2), fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=2, height=2,
                   camera_type=CameraType.FISHEYE)  # fmt: skip
    with pytest.raises(ValueError, match="perspective"):
        camera_set_from_nerfstudio(cams)


# ---------------------------------------------------------------------- CT (X-ray pinholes)
def _ct_geometry(mode: str):
    from recon.geometry.ct import CTGeometry, circular_angles

    distances = {"dsd_mm": 100.0, "dso_mm": 60.0} if mode == "cone" else {}
    return CTGeometry(mode=mode, n_detector=(8, 12), detector_pixel_mm=(1.0, 1.5), n_voxel=(4, 4, 4),
                      voxel_mm=(1.0, 1.0, 1.0), angles_rad=circular_angles(5, 200.0), offset_detector_mm=(0.5, -1.0),
                      **distances)  # fmt: skip


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_xray_cameras_round_trip(mode):
    from recon_nerfstudio.convert import cameras_from_xray, xray_cameras_from_nerfstudio
    from recon.ct.gaussians import xray_cameras

    ref = xray_cameras(_ct_geometry(mode))
    cams = cameras_from_xray(ref, 0.25)
    assert cams.shape == (5,) and int(cams.width[0]) == 12 and int(cams.height[0]) == 8
    torch.testing.assert_close(cams.get_intrinsics_matrices(), ref.Ks)
    # OpenGL: the camera looks down its -z, i.e. its third column points from the volume to the source
    back_dir = cams.camera_to_worlds[:, :, 2]
    torch.testing.assert_close(back_dir, -ref.viewmats[:, 2, :3], atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.camera_to_worlds[:, :, 3], ref.centres * 0.25, rtol=1e-6, atol=1e-5)
    back = xray_cameras_from_nerfstudio(cams, 0.25)
    assert (back.width, back.height, back.views) == (12, 8, (0, 1, 2, 3, 4))
    torch.testing.assert_close(back.Ks, ref.Ks)
    torch.testing.assert_close(back.viewmats[:, :3, :3], ref.viewmats[:, :3, :3], atol=1e-6, rtol=0)
    torch.testing.assert_close(back.centres, ref.centres, rtol=1e-6, atol=1e-4)
    one = cams[3:4]
    one.metadata = {"cam_idx": 3}
    assert xray_cameras_from_nerfstudio(one, 0.25).views == (3,)


def test_xray_cameras_bad_input():
    from recon_nerfstudio.convert import cameras_from_xray, xray_cameras_from_nerfstudio
    from recon.ct.gaussians import xray_cameras

    ref = xray_cameras(_ct_geometry("cone"))
    with pytest.raises(ValueError, match="XrayCameras"):
        cameras_from_xray("cameras", 1.0)
    with pytest.raises(ValueError, match="world_scale"):
        cameras_from_xray(ref, 0.0)
    cams = cameras_from_xray(ref, 1.0)
    with pytest.raises(ValueError, match="world_scale"):
        xray_cameras_from_nerfstudio(cams, -1.0)
    with pytest.raises(ValueError, match="one batch dimension"):
        xray_cameras_from_nerfstudio(cams.reshape((5, 1)), 1.0)
    mixed = Cameras(camera_to_worlds=cams.camera_to_worlds[:2], fx=1.0, fy=1.0, cx=1.0, cy=1.0,
                    width=torch.tensor([[4], [6]]), height=4)  # fmt: skip
    with pytest.raises(ValueError, match="one image size"):
        xray_cameras_from_nerfstudio(mixed, 1.0)
