"""recon.io.camera_path: nerfstudio camera-path JSON read (a file in nerfstudio's own layout),
written and read back, and one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recon.errors import InputError
from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    quaternion_to_rotation,
    w2c_to_opengl_c2w,
)
from recon.io.camera_path import read_camera_path, write_camera_path

# as the nerfstudio viewer exports it (fields recon does not use included)
NERFSTUDIO_PATH = {
    "keyframes": [{"matrix": "[1,0,0,0,0,1,0,0,0,0,1,0,0,0,3,1]", "fov": 50, "aspect": 1.5}],
    "camera_type": "perspective",
    "render_height": 200,
    "render_width": 300,
    "camera_path": [
        {"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0, 0, 1], "fov": 50, "aspect": 1.5},
        {"camera_to_world": [0, 0, 1, 3, 0, 1, 0, 0, -1, 0, 0, 0, 0, 0, 0, 1], "fov": 40, "aspect": 1.5},
    ],
    "fps": 24,
    "seconds": 2,
    "smoothness_value": 0.5,
    "is_cycle": False,
    "crop": None,
}


def test_reads_a_nerfstudio_camera_path(tmp_path):
    path = tmp_path / "path.json"
    path.write_text(json.dumps(NERFSTUDIO_PATH))
    cams, fps = read_camera_path(path)
    assert fps == 24 and len(cams) == 2
    k = cams.intrinsics[0]
    assert (k.width, k.height, k.cx, k.cy) == (300, 200, 150.0, 100.0)
    assert k.fy == pytest.approx(100.0 / math.tan(math.radians(25.0)))  # nerfstudio: H / (2 tan(fov / 2))
    assert cams.intrinsics[1].fx == pytest.approx(100.0 / math.tan(math.radians(20.0)))
    # camera 0 sits at z = 3 looking down -z (OpenGL): in OpenCV it looks at the origin along -z
    torch.testing.assert_close(cams.centres()[0], torch.tensor([0.0, 0.0, 3.0]))
    x_cam = cams.w2c[0] @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert x_cam[2] == pytest.approx(3.0) and abs(float(x_cam[0])) < 1e-6  # in front, on the axis
    torch.testing.assert_close(cams.centres()[1], torch.tensor([3.0, 0.0, 0.0]))


def test_write_then_read_is_the_same_cameras(tmp_path):
    rng = np.random.default_rng(0)
    w2c = []
    for _ in range(5):
        q = torch.tensor(rng.normal(size=4))
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = quaternion_to_rotation(q)
        m[:3, 3] = torch.tensor(rng.normal(size=3))
        w2c.append(m)
    k = Intrinsics(250.0, 250.0, 160.0, 90.0, 320, 180)
    cams = CameraSet(torch.stack(w2c), [k] * 5)
    back, fps = read_camera_path(write_camera_path(tmp_path / "p.json", cams, fps=25))
    assert fps == 25
    torch.testing.assert_close(back.w2c, cams.w2c, rtol=0, atol=1e-6)
    b = back.intrinsics[3]
    assert (b.width, b.height, b.cx, b.cy) == (320, 180, 160.0, 90.0)
    assert b.fx == pytest.approx(250.0, rel=1e-12) and b.fy == pytest.approx(250.0, rel=1e-12)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["seconds"] == pytest.approx(0.2) and len(data["camera_path"][0]["camera_to_world"]) == 16
    torch.testing.assert_close(torch.tensor(data["camera_path"][2]["camera_to_world"], dtype=torch.float64).reshape(4, 4),
                               w2c_to_opengl_c2w(cams.w2c[2:3].double())[0], atol=1e-6, rtol=0)  # fmt: skip


def _edit(**changes):
    data = json.loads(json.dumps(NERFSTUDIO_PATH))
    for key, value in changes.items():
        if key == "frame0":
            data["camera_path"][0].update(value)
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        (_edit(camera_type="fisheye"), "camera_type 'fisheye'"),
        (_edit(render_width=None), "render_width"),
        (_edit(camera_path=[]), "camera_path is empty"),
        (_edit(frame0={"fov": 0}), r"camera_path\[0\].*fov"),
        (_edit(frame0={"camera_to_world": [1, 2, 3]}), r"camera_path\[0\]"),
        (_edit(frame0={"camera_to_world": [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]}), "not orthonormal"),
        (_edit(fps=-1), "fps"),
    ],
    ids=["json", "list", "fisheye", "no-width", "empty", "fov", "short-matrix", "scaled-pose", "fps"],
)
def test_bad_camera_paths_are_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=needle) as err:
        read_camera_path(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
