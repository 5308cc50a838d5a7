"""Tests for recon.io.capture: every layout, error messages, transforms.json round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from recon.errors import InputError
from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    opengl_c2w_to_w2c,
    quaternion_to_rotation,
)
from recon.io.capture import Capture
from recon.io.colmap import load_colmap
from recon.io.formats import load_capture
from recon.io.llff import load_llff
from recon.io.transforms import load_transforms_json, write_transforms_json


def random_c2w(n: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    rot = quaternion_to_rotation(torch.randn(n, 4, generator=g, dtype=torch.float64))
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = rot.numpy()
    out[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64).numpy() * 2
    return out


def write_png(path: Path, w: int, h: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = (np.arange(h * w * channels) % 251).astype(np.uint8).reshape(h, w, channels)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)


def make_nerfstudio(root: Path, n: int = 3, w: int = 16, h: int = 12, **extra) -> np.ndarray:
    """A tiny nerfstudio capture, frames listed in reverse order; returns c2w in file order."""
    c2w = random_c2w(n)
    frames = []
    for i in reversed(range(n)):
        write_png(root / "images" / f"frame_{i:02d}.png", w, h)
        frames.append(
            {"file_path": f"images/frame_{i:02d}.png", "transform_matrix": c2w[i].tolist()}
        )
    meta = {
        "fl_x": 20.0,
        "fl_y": 21.0,
        "cx": 8.0,
        "cy": 6.0,
        "w": w,
        "h": h,
        "k1": 0.01,
        "p2": 0.001,
    }
    meta.update(extra)
    meta["frames"] = frames
    (root / "transforms.json").write_text(json.dumps(meta))
    return c2w


# ---------------------------------------------------------------- nerfstudio / instant-ngp


def test_nerfstudio_basic(tmp_path):
    c2w = make_nerfstudio(tmp_path)
    cap = load_capture(tmp_path)
    assert (
        cap.format == "nerfstudio" and len(cap) == 3 and cap.source == tmp_path / "transforms.json"
    )
    assert cap.names == ["frame_00.png", "frame_01.png", "frame_02.png"]  # sorted, not file order
    assert cap.image_paths[1] == tmp_path / "images" / "frame_01.png"
    assert cap.mask_paths == [None] * 3 and cap.points is None and cap.scene_aabb is None
    expected = opengl_c2w_to_w2c(torch.from_numpy(c2w)).float()
    torch.testing.assert_close(cap.cameras.w2c, expected, atol=1e-6, rtol=0)
    intr = cap.cameras.intrinsics[0]
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (
        20.0,
        21.0,
        8.0,
        6.0,
        16,
        12,
    )
    assert (intr.k1, intr.k2, intr.p2) == (0.01, 0.0, 0.001)
    # the file itself works too, and the subset keeps things aligned
    cap2 = load_capture(tmp_path / "transforms.json")
    sub = cap2.subset([2, 0])
    assert sub.names == ["frame_02.png", "frame_00.png"]
    torch.testing.assert_close(sub.cameras.w2c[0], cap.cameras.w2c[2])


def test_nerfstudio_per_frame_intrinsics_masks_and_angles(tmp_path):
    make_nerfstudio(tmp_path, n=2)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del meta[k]
    meta["camera_angle_x"] = 2 * math.atan(0.5)  # fl_x = w / 2 / tan(angle / 2) = 16
    meta["frames"][0]["fl_x"] = 30.0  # frame_01 overrides
    write_png(tmp_path / "masks" / "m1.png", 16, 12, "L")
    meta["frames"][0]["mask_path"] = "masks/m1.png"
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    cap = load_capture(tmp_path)
    a, b = cap.cameras.intrinsics
    assert (a.width, a.height) == (16, 12)  # from the image header
    assert (
        a.fx == pytest.approx(16.0) and a.fy == pytest.approx(16.0) and a.cx == 8.0 and a.cy == 6.0
    )
    assert b.fx == 30.0
    assert cap.mask_paths == [None, tmp_path / "masks" / "m1.png"]


def test_instant_ngp_aabb(tmp_path):
    make_nerfstudio(tmp_path, n=1, aabb_scale=4)
    box = load_capture(tmp_path).scene_aabb
    torch.testing.assert_close(box, torch.tensor([[-2 / 0.33] * 3, [2 / 0.33] * 3]))
    make_nerfstudio(tmp_path, n=1, aabb_scale=1, scale=0.5, offset=[0.5, 0.5, 1.0])
    box = load_capture(tmp_path).scene_aabb
    # ngp z' = world x * scale + offset[2]: world x in [(0 - 1) / 0.5, (1 - 1) / 0.5] = [-2, 0]
    torch.testing.assert_close(box, torch.tensor([[-2.0, -1.0, -1.0], [0.0, 1.0, 1.0]]))


def test_nerfstudio_split_lists(tmp_path):
    make_nerfstudio(tmp_path, n=3, train_filenames=["images/frame_00.png", "images/frame_02.png"])
    assert load_capture(tmp_path, split="train").names == ["frame_00.png", "frame_02.png"]
    assert len(load_capture(tmp_path)) == 3
    with pytest.raises(InputError, match="'val_filenames'"):
        load_capture(tmp_path, split="val")


def test_fox(fox_dir):
    cap = load_capture(fox_dir)
    assert len(cap) == 42 and cap.format == "nerfstudio"
    assert cap.names[0] == "0001.jpg" and cap.names == sorted(cap.names)
    intr = cap.cameras.intrinsics[0]
    assert (intr.width, intr.height) == (1080, 1920) and intr.has_distortion
    assert intr.fx == pytest.approx(1375.52) and intr.k1 == pytest.approx(0.0578421)
    # every camera sees the fox (world origin) in front of it, inside the image
    w2c = cap.cameras.w2c
    origin = w2c[:, :3, 3]
    assert (origin[:, 2] > 0).all()
    uv = (cap.cameras.Ks() @ origin[..., None])[..., 0]
    uv = uv[:, :2] / uv[:, 2:]
    assert (
        (uv[:, 0] > 0).all()
        and (uv[:, 0] < 1080).all()
        and (uv[:, 1] > 0).all()
        and (uv[:, 1] < 1920).all()
    )
    # aabb_scale 4 with instant-ngp's default scale 0.33 -> +-6.06, and all cameras inside +-7
    torch.testing.assert_close(cap.scene_aabb[1], torch.full((3,), 2 / 0.33))
    assert cap.cameras.centres().abs().max() < 7


# ---------------------------------------------------------------- Blender


def make_blender(root: Path, splits=("train", "test"), n: int = 2) -> None:
    for split in splits:
        c2w = random_c2w(n, seed=len(split))
        frames = []
        for i in range(n):
            write_png(root / split / f"r_{i}.png", 8, 8, "RGBA")
            frames.append(
                {
                    "file_path": f"./{split}/r_{i}",
                    "rotation": 0.1,
                    "transform_matrix": c2w[i].tolist(),
                }
            )
        meta = {"camera_angle_x": 0.6911112070083618, "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))


def test_blender(tmp_path):
    make_blender(tmp_path)
    cap = load_capture(tmp_path)
    assert cap.format == "blender" and cap.source.name == "transforms_train.json"
    assert cap.image_paths[0] == tmp_path / "train" / "r_0.png"
    assert cap.names == ["r_0.png", "r_1.png"]
    intr = cap.cameras.intrinsics[0]
    assert (intr.width, intr.height) == (8, 8)
    assert intr.fx == pytest.approx(4 / math.tan(0.6911112070083618 / 2)) and intr.cx == 4.0
    assert load_capture(tmp_path, split="test").image_paths[0] == tmp_path / "test" / "r_0.png"
    assert load_capture(tmp_path / "transforms_test.json").format == "blender"
    with pytest.raises(
        InputError,
        match=r"transforms_val.json: does not exist \(found transforms_test.json, transforms_train.json\)",
    ):
        load_capture(tmp_path, split="val")
    with pytest.raises(InputError, match="'test' split"):
        load_capture(tmp_path / "transforms_test.json", split="train")


# ---------------------------------------------------------------- COLMAP


def make_colmap(
    root: Path, text: bool = False, model: str = "OPENCV", sub: str = "sparse/0"
) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    cam1 = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 20.0, 16, 12)
    cam1.params = [20.0, 21.0, 8.0, 6.0]
    cam2 = pycolmap.Camera.create_from_model_name(2, model, 30.0, 16, 12)
    if model == "OPENCV":
        cam2.params = [30.0, 31.0, 7.5, 6.5, 0.1, -0.05, 0.001, 0.002]
    rec.add_camera_with_trivial_rig(cam1)
    rec.add_camera_with_trivial_rig(cam2)
    rng = np.random.default_rng(0)
    for image_id, (name, cam) in enumerate([("b.png", 1), ("a.png", 2), ("c.png", 1)], start=1):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(rng.normal(size=3)), rng.normal(size=3))
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, camera_id=cam, image_id=image_id), pose
        )
        write_png(root / "images" / name, 16, 12)
    for i in range(5):
        rec.add_point3D(
            np.array([i, 2.0 * i, -1.0]),
            pycolmap.Track(),
            np.array([255, 0, 51 * i], dtype=np.uint8),
        )
    out = root / sub
    out.mkdir(parents=True, exist_ok=True)
    (rec.write_text if text else rec.write)(str(out))
    return rec


@pytest.mark.parametrize("text,sub", [(False, "sparse/0"), (True, "sparse")])
def test_colmap(tmp_path, text, sub):
    rec = make_colmap(tmp_path, text=text, sub=sub)
    cap = load_capture(tmp_path)
    assert cap.format == "colmap" and cap.names == ["a.png", "b.png", "c.png"]
    for j, name in enumerate(cap.names):
        im = rec.find_image_with_name(name)
        np.testing.assert_allclose(
            cap.cameras.w2c[j, :3].numpy(), im.cam_from_world().matrix(), atol=1e-6
        )
    a, b = cap.cameras.intrinsics[0], cap.cameras.intrinsics[1]
    assert (a.fx, a.fy, a.cx, a.cy, a.k1, a.k2, a.p1, a.p2) == pytest.approx(
        (30, 31, 7.5, 6.5, 0.1, -0.05, 0.001, 0.002)
    )
    assert (b.fx, b.fy, b.cx, b.cy, b.has_distortion) == (20.0, 21.0, 8.0, 6.0, False)
    assert cap.points.shape == (5, 3) and cap.point_colours.shape == (5, 3)
    order = torch.argsort(cap.points[:, 0])
    torch.testing.assert_close(cap.points[order][3], torch.tensor([3.0, 6.0, -1.0]))
    torch.testing.assert_close(cap.point_colours[order][1], torch.tensor([1.0, 0.0, 0.2]))


@pytest.mark.parametrize(
    "model,params,expected",
    [
        ("SIMPLE_PINHOLE", [10.0, 4.0, 3.0], dict(fx=10.0, fy=10.0, cx=4.0, cy=3.0)),
        ("SIMPLE_RADIAL", [10.0, 4.0, 3.0, 0.2], dict(fx=10.0, fy=10.0, k1=0.2)),
        ("RADIAL", [10.0, 4.0, 3.0, 0.2, 0.3], dict(fx=10.0, k1=0.2, k2=0.3)),
    ],
)
def test_colmap_camera_models(tmp_path, model, params, expected):
    make_colmap(tmp_path, model=model)
    model_dir = tmp_path / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(model_dir))
    rec.cameras[2].params = params
    rec.write(str(model_dir))
    intr = load_colmap(tmp_path).cameras.intrinsics[0]  # a.png uses camera 2
    for k, v in expected.items():
        assert getattr(intr, k) == pytest.approx(v), k


def test_colmap_unsupported_model(tmp_path):
    make_colmap(tmp_path, model="OPENCV_FISHEYE")
    with pytest.raises(
        InputError, match=r"cameras.bin: camera 2 uses unsupported model OPENCV_FISHEYE"
    ):
        load_capture(tmp_path)


def test_colmap_corrupt_and_missing(tmp_path):
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "sparse" / "0" / "cameras.bin").write_bytes(b"garbage")
    with pytest.raises(InputError, match="images.bin: does not exist"):
        load_capture(tmp_path)
    for stem in ("images", "points3D"):
        (tmp_path / "sparse" / "0" / f"{stem}.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="cannot read COLMAP model"):
        load_capture(tmp_path)
    with pytest.raises(InputError, match="split"):
        load_capture(tmp_path, split="train")


def test_colmap_missing_images(tmp_path):
    make_colmap(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "c.png").unlink()
    with pytest.raises(InputError, match=r"b.png: image file not found \(2 of 3 images"):
        load_capture(tmp_path)
    assert len(load_capture(tmp_path, check_images=False)) == 3


# ---------------------------------------------------------------- LLFF


def test_llff(tmp_path):
    n = 3
    c2w = random_c2w(n)
    # OpenGL [right, up, back] -> LLFF [down, right, back] = [-up, right, back]
    llff = np.concatenate(
        [-c2w[:, :3, 1:2], c2w[:, :3, 0:1], c2w[:, :3, 2:3], c2w[:, :3, 3:4]], axis=2
    )
    hwf = np.tile(np.array([[24.0], [32.0], [40.0]]), (n, 1, 1))  # poses for 32x24 images
    poses = np.concatenate([llff, hwf], axis=2).reshape(n, 15)
    np.save(
        tmp_path / "poses_bounds.npy",
        np.concatenate([poses, np.tile([[1.0, 10.0]], (n, 1))], axis=1),
    )
    for i in range(n):
        write_png(tmp_path / "images" / f"IMG_{i}.png", 16, 12)  # half size
    cap = load_capture(tmp_path)
    assert cap.format == "llff" and cap.names == ["IMG_0.png", "IMG_1.png", "IMG_2.png"]
    torch.testing.assert_close(
        cap.cameras.to_opengl_c2w().double(), torch.from_numpy(c2w), atol=1e-6, rtol=0
    )
    intr = cap.cameras.intrinsics[0]
    assert (intr.width, intr.height, intr.fx, intr.cx, intr.cy) == (16, 12, 20.0, 8.0, 6.0)
    assert len(load_capture(tmp_path / "poses_bounds.npy")) == 3
    (tmp_path / "images" / "IMG_2.png").unlink()
    with pytest.raises(InputError, match="has 2 images but poses_bounds.npy has 3 poses"):
        load_llff(tmp_path)


def test_llff_bad_shape(tmp_path):
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(InputError, match=r"poses_bounds.npy: has shape \(3, 15\)"):
        load_capture(tmp_path)


# ---------------------------------------------------------------- errors


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="nope: does not exist"):
        load_capture(tmp_path / "nope")
    with pytest.raises(InputError, match="no recognisable capture"):
        load_capture(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="x.txt: is not a capture file"):
        load_capture(tmp_path / "x.txt")
    with pytest.raises(InputError, match="does not exist"):
        load_transforms_json(tmp_path / "transforms.json")


def test_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text('{"frames": [1, 2,}')
    with pytest.raises(InputError) as err:
        load_capture(tmp_path)
    msg = str(err.value)
    assert (
        msg.startswith(str(tmp_path / "transforms.json"))
        and "malformed JSON" in msg
        and "line 1" in msg
    )
    assert "\n" not in msg
    (tmp_path / "transforms.json").write_text('{"fl_x": 1}')
    with pytest.raises(InputError, match="has no frames"):
        load_capture(tmp_path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.__setitem__(0, [float("nan")] * 4), "NaN"),
        (lambda m: m.__setitem__(0, [2.0, 0.0, 0.0, 0.0]), "not orthonormal"),
        (lambda m: m.__setitem__(3, [0.0, 0.0, 1.0, 1.0]), "last row"),
    ],
)
def test_bad_pose_names_frame(tmp_path, edit, match):
    make_nerfstudio(tmp_path, n=2)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    mat = meta["frames"][1]["transform_matrix"]  # frame_00
    edit(mat)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))  # NaN becomes a bare NaN token
    with pytest.raises(
        InputError, match=rf"transforms.json \(frame images/frame_00.png\): .*{match}"
    ):
        load_capture(tmp_path)


def test_missing_images_counted(tmp_path):
    make_nerfstudio(tmp_path, n=3)
    (tmp_path / "images" / "frame_01.png").unlink()
    (tmp_path / "images" / "frame_02.png").unlink()
    with pytest.raises(
        InputError,
        match=r"frame_01.png: image file not found \(2 of 3 images listed in transforms.json",
    ):
        load_capture(tmp_path)
    cap = load_capture(tmp_path, check_images=False)
    assert len(cap) == 3


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"camera_model": "OPENCV_FISHEYE"}, "unsupported camera model 'OPENCV_FISHEYE'"),
        ({"camera_model": "EQUIRECTANGULAR"}, "unsupported camera model"),
        ({"is_fisheye": True}, "unsupported camera model 'fisheye'"),
        ({"k4": 0.1}, "k4"),
        ({"fl_x": "abc"}, "'fl_x' is 'abc'"),
        ({"fl_x": -3.0}, "bad intrinsics"),
    ],
)
def test_bad_intrinsics(tmp_path, extra, match):
    make_nerfstudio(tmp_path, n=1, **extra)
    with pytest.raises(InputError, match=match):
        load_capture(tmp_path)


def test_no_focal(tmp_path):
    make_nerfstudio(tmp_path, n=1)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    del meta["fl_x"], meta["fl_y"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="no focal length"):
        load_capture(tmp_path)


# ---------------------------------------------------------------- writing


def test_write_round_trip_shared(tmp_path):
    make_nerfstudio(tmp_path / "in", n=3, aabb_scale=2)
    write_png(tmp_path / "in" / "masks" / "m.png", 16, 12, "L")
    cap = load_capture(tmp_path / "in")
    cap.mask_paths[1] = tmp_path / "in" / "masks" / "m.png"
    out = write_transforms_json(cap, tmp_path / "out" / "transforms.json")
    meta = json.loads(out.read_text())
    assert meta["fl_x"] == 20.0 and "fl_x" not in meta["frames"][0]  # shared intrinsics at top
    assert meta["frames"][0]["file_path"] == "../in/images/frame_00.png"
    with pytest.raises(InputError, match="outside the dataset folder"):
        load_capture(out)
    back = load_capture(out, allow_outside_paths=True)
    torch.testing.assert_close(back.cameras.w2c, cap.cameras.w2c, atol=1e-6, rtol=0)
    assert back.cameras.intrinsics == cap.cameras.intrinsics
    assert back.image_paths == cap.image_paths and back.mask_paths == cap.mask_paths
    torch.testing.assert_close(back.scene_aabb, cap.scene_aabb)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_write_round_trip_per_frame(tmp_path):
    w2c = opengl_c2w_to_w2c(torch.from_numpy(random_c2w(2)))
    intr = [Intrinsics(10.0, 11.0, 4.0, 3.0, 8, 6, k1=0.1), Intrinsics(12.0, 12.0, 4.0, 3.0, 8, 6)]
    cams = CameraSet(w2c, intr)
    out = write_transforms_json(cams, tmp_path / "t.json")
    meta = json.loads(out.read_text())
    assert "fl_x" not in meta and meta["frames"][1]["fl_x"] == 12.0
    back = load_transforms_json(out, check_images=False)
    assert back.cameras.intrinsics == intr and back.names == ["00000.png", "00001.png"]
    torch.testing.assert_close(back.cameras.w2c, cams.w2c, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="file_paths"):
        write_transforms_json(cams, tmp_path / "t.json", file_paths=["a.png"])


def test_capture_validation(tmp_path):
    cams = CameraSet(torch.eye(4)[None], [Intrinsics(1.0, 1.0, 1.0, 1.0, 2, 2)])
    with pytest.raises(ValueError, match="names"):
        Capture(tmp_path, [tmp_path / "a.png"], cams, [None], [], "nerfstudio")
    with pytest.raises(ValueError, match="points"):
        Capture(tmp_path, [tmp_path / "a.png"], cams, [None], ["a"], "x", points=torch.zeros(4, 2))
