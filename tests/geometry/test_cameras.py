"""Tests for recon.geometry.cameras: converters, intrinsics, pose checks, CameraSet."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from recon.geometry.cameras import (
    CameraSet,
    Intrinsics,
    camera_centres,
    check_pose,
    colmap_to_w2c,
    llff_poses_to_opengl_c2w,
    opengl_c2w_to_w2c,
    quaternion_to_rotation,
    rigid_inverse,
    rotation_to_quaternion,
    w2c_to_colmap,
    w2c_to_opengl_c2w,
)
from recon.errors import InputError

BATCH = [(), (2,), (1, 2)]


def random_rotations(shape, dtype=torch.float64) -> torch.Tensor:
    q = torch.randn(*shape, 4, dtype=dtype)
    return quaternion_to_rotation(q)


def random_rigid(shape, dtype=torch.float64) -> torch.Tensor:
    rot = random_rotations(shape, dtype)
    t = torch.randn(*shape, 3, dtype=dtype) * 3
    out = torch.zeros(*shape, 4, 4, dtype=dtype)
    out[..., :3, :3] = rot
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out


# ---------------------------------------------------------------- converters: round trips


@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rigid_inverse(batch, dtype):
    mat = random_rigid(batch, dtype)
    inv = rigid_inverse(mat)
    assert inv.shape == (*batch, 4, 4) and inv.dtype == dtype
    eye = torch.eye(4, dtype=dtype).expand(*batch, 4, 4)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(mat @ inv, eye, atol=tol, rtol=0)
    torch.testing.assert_close(inv, torch.linalg.inv(mat), atol=tol, rtol=0)


@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opengl_round_trip(batch, dtype):
    c2w = random_rigid(batch, dtype)
    w2c = opengl_c2w_to_w2c(c2w)
    assert w2c.shape == (*batch, 4, 4) and w2c.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(w2c_to_opengl_c2w(w2c), c2w, atol=tol, rtol=0)
    torch.testing.assert_close(opengl_c2w_to_w2c(w2c_to_opengl_c2w(w2c)), w2c, atol=tol, rtol=0)


@pytest.mark.parametrize("batch", BATCH)
def test_colmap_round_trip(batch):
    w2c = random_rigid(batch)
    q, t = w2c_to_colmap(w2c)
    assert q.shape == (*batch, 4) and t.shape == (*batch, 3)
    assert (q[..., 0] >= 0).all()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(batch, dtype=q.dtype))
    torch.testing.assert_close(colmap_to_w2c(q, t), w2c, atol=1e-12, rtol=0)
    # and the other way: q and -q give the same matrix
    q2, t2 = w2c_to_colmap(colmap_to_w2c(-q, t))
    torch.testing.assert_close(q2, q, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "rot",
    [
        torch.eye(3),
        torch.diag(torch.tensor([1.0, -1.0, -1.0])),  # 180 deg about x: w = 0
        torch.diag(torch.tensor([-1.0, 1.0, -1.0])),
        torch.diag(torch.tensor([-1.0, -1.0, 1.0])),
    ],
)
def test_rotation_to_quaternion_degenerate(rot):
    q = rotation_to_quaternion(rot.double())
    torch.testing.assert_close(quaternion_to_rotation(q), rot.double(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", BATCH)
def test_llff_known_and_batched(batch):
    # LLFF columns [down, right, back]; identity means down=+x, right=+y, back=+z in the world.
    poses = torch.zeros(*batch, 3, 5, dtype=torch.float64)
    poses[..., :3, :3] = torch.eye(3, dtype=torch.float64)
    poses[..., :, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    poses[..., :, 4] = torch.tensor([480.0, 640.0, 500.0], dtype=torch.float64)
    c2w, hwf = llff_poses_to_opengl_c2w(poses)
    assert c2w.shape == (*batch, 4, 4) and hwf.shape == (*batch, 3)
    expected = torch.tensor(
        [[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(c2w, expected.expand(*batch, 4, 4))
    torch.testing.assert_close(hwf[..., 1], torch.full(batch, 640.0, dtype=torch.float64))
    # a point straight below the LLFF camera (+down) is at +y in OpenCV image terms
    w2c = opengl_c2w_to_w2c(c2w)
    below = torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64)  # centre + 1 * down
    cam = (w2c @ below)[..., :3]
    torch.testing.assert_close(
        cam, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(*batch, 3)
    )


# ---------------------------------------------------------------- converters: known answers


def test_identity_opengl_camera_is_flipped_opencv():
    # OpenGL camera at origin with identity c2w looks down world -z, y up.
    w2c = opengl_c2w_to_w2c(torch.eye(4))
    torch.testing.assert_close(w2c, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])))
    # a point in front of it (world -z) has positive OpenCV depth; world +y is image-up (y < 0)
    p = w2c @ torch.tensor([0.0, 1.0, -2.0, 1.0])
    assert p[2] == 2.0 and p[1] == -1.0


def test_camera_looking_at_origin():
    # OpenGL camera at (0, 0, 5) with identity rotation looks at the origin along -z.
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[2, 3] = 5.0
    w2c = opengl_c2w_to_w2c(c2w)
    origin_cam = w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(origin_cam[:3], torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(
        camera_centres(w2c), torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("batch", BATCH)
def test_camera_centres_batched(batch):
    c2w = random_rigid(batch)
    centres = camera_centres(opengl_c2w_to_w2c(c2w))
    assert centres.shape == (*batch, 3)
    torch.testing.assert_close(centres, c2w[..., :3, 3], atol=1e-12, rtol=0)


def test_colmap_quaternion_matches_pycolmap():
    rng = np.random.default_rng(0)
    for _ in range(5):
        xyzw = rng.normal(size=4)
        xyzw /= np.linalg.norm(xyzw)
        t = rng.normal(size=3)
        rigid = pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw), t)
        wxyz = torch.tensor([xyzw[3], *xyzw[:3]])
        ours = colmap_to_w2c(wxyz, torch.tensor(t))
        np.testing.assert_allclose(ours[:3].numpy(), rigid.matrix(), atol=1e-12)
        q, tv = w2c_to_colmap(ours)
        theirs = pycolmap.Rotation3d(ours[:3, :3].numpy()).quat  # xyzw
        theirs = np.array([theirs[3], *theirs[:3]]) * np.sign(theirs[3])
        np.testing.assert_allclose(q.numpy(), theirs, atol=1e-10)
        np.testing.assert_allclose(tv.numpy(), t, atol=1e-12)


def test_converters_differentiable():
    c2w = random_rigid(()).requires_grad_(True)
    opengl_c2w_to_w2c(c2w).sum().backward()
    assert c2w.grad is not None and torch.isfinite(c2w.grad).all()


@pytest.mark.parametrize(
    "fn,arg",
    [
        (rigid_inverse, torch.zeros(3, 3)),
        (opengl_c2w_to_w2c, torch.zeros(2, 3, 4)),
        (w2c_to_opengl_c2w, torch.zeros(4, 4, dtype=torch.int64)),
        (camera_centres, np.eye(4)),
        (quaternion_to_rotation, torch.zeros(3)),
        (llff_poses_to_opengl_c2w, torch.zeros(2, 3, 4)),
    ],
)
def test_converters_bad_shapes(fn, arg):
    with pytest.raises(ValueError):
        fn(arg)


def test_colmap_to_w2c_batch_mismatch():
    with pytest.raises(ValueError, match="batch"):
        colmap_to_w2c(torch.randn(2, 4), torch.randn(3, 3))


# ---------------------------------------------------------------- check_pose


def test_check_pose_accepts_rigid():
    check_pose(random_rigid(()), "x.json")
    check_pose(np.eye(4), "x.json")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.__setitem__((0, 0), float("nan")), "NaN"),
        (lambda m: m.__setitem__((1, 3), float("inf")), "NaN or infinite"),
        (lambda m: m.__setitem__((0, 0), 1.1), "not orthonormal"),
        (lambda m: m.__setitem__((3, 0), 0.5), "last row"),
        (lambda m: m.__setitem__((2, 2), -1.0), "determinant"),
    ],
)
def test_check_pose_errors(edit, match):
    m = np.eye(4)
    edit(m)
    with pytest.raises(InputError, match=match) as err:
        check_pose(m, "scene/transforms.json (frame images/1.jpg)")
    assert str(err.value).startswith("scene/transforms.json (frame images/1.jpg): ")
    assert "\n" not in str(err.value)


def test_check_pose_shape():
    with pytest.raises(InputError, match="4x4"):
        check_pose(np.eye(3), "a")


# ---------------------------------------------------------------- Intrinsics


def test_intrinsics_K_and_distortion():
    intr = Intrinsics(100.0, 110.0, 50.0, 40.0, 101, 81, k1=0.1, k2=0.2, k3=0.3, p1=0.4, p2=0.5)
    K = intr.K(torch.float64)
    assert K.dtype == torch.float64
    torch.testing.assert_close(
        K, torch.tensor([[100.0, 0, 50], [0, 110.0, 40], [0, 0, 1]], dtype=torch.float64)
    )
    np.testing.assert_array_equal(intr.distortion_coeffs(), [0.1, 0.2, 0.4, 0.5, 0.3])
    assert intr.has_distortion
    plain = intr.without_distortion()
    assert not plain.has_distortion and plain.fx == 100.0 and plain.width == 101


def test_intrinsics_scaled():
    intr = Intrinsics(1375.52, 1374.49, 554.558, 965.268, 1080, 1920, k1=0.05)
    s = intr.scaled(4)
    assert (s.width, s.height) == (270, 480)
    assert s.fx == pytest.approx(1375.52 / 4) and s.cy == pytest.approx(965.268 / 4)
    assert s.k1 == 0.05
    # non-integer factor: size rounds, focal follows the actual size ratio
    odd = Intrinsics(100.0, 100.0, 50.0, 25.0, 101, 51).scaled(2)
    assert (odd.width, odd.height) == (50, 26)  # round(50.5) = 50 (banker's), round(25.5) = 26
    assert odd.fx == pytest.approx(100 * 50 / 101) and odd.fy == pytest.approx(100 * 26 / 51)
    assert odd.cx == pytest.approx(50 * 50 / 101)
    assert intr.scaled(1.0) is intr
    # up-scaling is fine too
    assert intr.scaled(0.5).width == 2160


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1e9])
def test_intrinsics_scaled_bad(bad):
    with pytest.raises(ValueError):
        Intrinsics(10.0, 10.0, 5.0, 5.0, 10, 10).scaled(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(width=0),
        dict(width=10.5),
        dict(fx=-1.0),
        dict(cx=float("nan")),
        dict(k1=float("inf")),
    ],
)
def test_intrinsics_bad(kwargs):
    base = dict(fx=10.0, fy=10.0, cx=5.0, cy=5.0, width=10, height=10)
    base.update(kwargs)
    with pytest.raises(ValueError):
        Intrinsics(**base)


def test_intrinsics_coerces_types():
    intr = Intrinsics(np.float64(10), 10, 5, 5, 10.0, np.int64(12))
    assert type(intr.width) is int and intr.height == 12 and type(intr.fx) is float
    assert hash(intr) == hash(Intrinsics(10.0, 10.0, 5.0, 5.0, 10, 12))


# ---------------------------------------------------------------- CameraSet


def make_set(n=4) -> CameraSet:
    w2c = random_rigid((n,), torch.float64)
    intr = [Intrinsics(100.0 + i, 100.0, 50.0, 40.0, 100, 80) for i in range(n)]
    return CameraSet(w2c, intr)


def test_cameraset_basics():
    cams = make_set(4)
    assert len(cams) == 4 and cams.w2c.dtype == torch.float32
    sub = cams.subset([3, 1])
    assert len(sub) == 2 and sub.intrinsics[0].fx == 103.0
    torch.testing.assert_close(sub.w2c[1], cams.w2c[1])
    Ks = cams.Ks(2.0)
    assert Ks.shape == (4, 3, 3) and Ks[2, 0, 0].item() == pytest.approx(51.0)
    assert cams.scaled(2.0).intrinsics[0].width == 50
    assert cams.centres().shape == (4, 3)
    torch.testing.assert_close(opengl_c2w_to_w2c(cams.to_opengl_c2w()), cams.w2c, atol=1e-5, rtol=0)
    assert len(cams.subset([])) == 0 and cams.subset([]).Ks().shape == (0, 3, 3)


@pytest.mark.parametrize(
    "w2c,n_intr,match",
    [
        (torch.eye(4), 1, r"\[N, 4, 4\]"),
        (torch.eye(4).expand(2, 4, 4), 3, "2 poses but 3 intrinsics"),
        (torch.zeros(2, 4, 4, dtype=torch.int32), 2, "floating"),
        (np.zeros((2, 4, 4)), 2, "torch.Tensor"),
    ],
)
def test_cameraset_bad(w2c, n_intr, match):
    intr = [Intrinsics(1.0, 1.0, 1.0, 1.0, 2, 2)] * n_intr
    with pytest.raises(ValueError, match=match):
        CameraSet(w2c, intr)


def test_cameraset_subset_out_of_range():
    with pytest.raises(IndexError):
        make_set(3).subset([3])
