"""plugins.recon_nerfstudio.convert: nerfstudio OpenGL c2w <-> recon OpenCV w2c."""

from __future__ import annotations

import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from plugins.recon_nerfstudio.convert import camera_set_from_nerfstudio, viewmats_from_c2w
from recon.cameras import opengl_c2w_to_w2c


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
