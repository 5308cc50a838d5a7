"""Tests for recon.poses.colmap: pycolmap pose estimation on real photos, Sim(3) alignment, errors."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from recon.geometry.cameras import camera_centres
from recon.errors import InputError
from recon.io.formats import load_capture
from recon.poses.refine import exp_so3, perturb_poses
from recon.poses.align import align_sim3, pose_errors
from recon.poses.colmap import estimate_poses

# Six neighbouring fox views (every third photo of the first 16): overlapping enough to
# register at 640 px in a few seconds. Far-apart views are what scripts/bench_poses.py measures.
FOX_SUBSET = [0, 3, 6, 9, 12, 15]
IDENTITY = (1.0, torch.eye(3), torch.zeros(3))  # the Sim(3) that changes nothing


def random_rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return exp_so3(torch.randn(3, generator=g, dtype=torch.float64) * 1.5)


# ------------------------------------------------------------------------------ align_sim3


@pytest.mark.parametrize("n", [3, 4, 50])
def test_align_sim3_known_answer(n):
    g = torch.Generator().manual_seed(n)
    src = torch.randn(n, 3, generator=g, dtype=torch.float64)
    rot, s, t = random_rotation(n), 2.7, torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    dst = s * src @ rot.T + t
    s_hat, r_hat, t_hat = align_sim3(src, dst)
    assert s_hat == pytest.approx(s, rel=1e-10)
    torch.testing.assert_close(r_hat, rot, atol=1e-10, rtol=0)
    torch.testing.assert_close(t_hat, t, atol=1e-10, rtol=0)
    assert torch.linalg.det(r_hat) == pytest.approx(1.0)


def test_align_sim3_noisy_and_float32():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(40, 3, generator=g)
    rot = random_rotation(1)
    dst = (0.5 * src.double() @ rot.T + 2.0).float() + 1e-3 * torch.randn(40, 3, generator=g)
    s, r, t = align_sim3(src, dst)
    assert s == pytest.approx(0.5, rel=1e-2)
    angle = math.degrees(math.acos(min(1.0, (float(torch.trace(r.T @ rot)) - 1) / 2)))
    assert angle < 0.5


def test_align_sim3_never_returns_a_reflection():
    src = torch.randn(10, 3, dtype=torch.float64)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # a mirror image
    _, r, _ = align_sim3(src, dst)
    assert torch.linalg.det(r) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "src,dst,match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), "at least 3"),
        (torch.zeros(4, 3), torch.zeros(5, 3), "same shape"),
        (torch.zeros(4, 2), torch.zeros(4, 2), r"\[N, 3\]"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), "floating"),
        (torch.arange(12.0).reshape(4, 3), torch.arange(12.0).reshape(4, 3), "collinear"),
        (torch.full((4, 3), float("nan")), torch.zeros(4, 3), "NaN"),
    ],
)
def test_align_sim3_bad_input(src, dst, match):
    with pytest.raises(ValueError, match=match):
        align_sim3(src, dst)


# ------------------------------------------------------------------------------ pose_errors


def test_pose_errors_known_answer(fox_dir):
    ref = load_capture(fox_dir).cameras.w2c[:8].double()
    u, _, vt = torch.linalg.svd(ref[:, :3, :3])  # float32 file -> exactly orthonormal
    ref[:, :3, :3] = u @ vt
    noisy = perturb_poses(ref, rot_deg=2.0, trans_frac=0.0, seed=0)
    # Express the noisy cameras in another similarity frame: x_est = (R^T (x_ref - t)) / s.
    s, rot, t = 0.3, random_rotation(5), torch.tensor([4.0, 1.0, -2.0], dtype=torch.float64)
    to_est = torch.eye(4, dtype=torch.float64)
    to_est[:3, :3] = rot
    to_est[:3, 3] = t
    est = noisy @ to_est  # w2c_est = w2c_ref @ T, then rescale the translation
    est[:, :3, 3] /= s
    s_hat, r_hat, t_hat = align_sim3(camera_centres(est), camera_centres(ref))
    assert s_hat == pytest.approx(s, rel=1e-9)
    err = pose_errors(est, ref, (s_hat, r_hat, t_hat))
    assert err["rot_deg_mean"] == pytest.approx(2.0, abs=1e-6)
    assert err["rot_deg_max"] == pytest.approx(2.0, abs=1e-6)
    assert err["centre_err_max"] < 1e-9
    assert len(err["rot_deg"]) == 8 and err["scene_scale"] > 0

    moved = perturb_poses(ref, rot_deg=0.0, trans_frac=0.1, seed=1)
    err = pose_errors(moved, ref, (1.0, torch.eye(3), torch.zeros(3)))
    assert err["centre_err_mean"] == pytest.approx(0.1, rel=1e-6)
    assert err["rot_deg_max"] < 1e-4


def test_pose_errors_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        pose_errors(torch.eye(4).repeat(2, 1, 1), torch.eye(4).repeat(3, 1, 1), IDENTITY)
    with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
        pose_errors(torch.eye(4), torch.eye(4), IDENTITY)


# ------------------------------------------------------------------------------ estimate_poses


@pytest.mark.slow  # 8-25 s on 2 shared cores (two mapping passes)
def test_estimate_poses_on_fox(fox_dir, tmp_path, caplog):
    """Six real photos plus one featureless image: the photos register with poses within 5 deg
    of the calibration, the blank one is named in a warning, and the outputs load back."""
    cap = load_capture(fox_dir).subset(FOX_SUBSET)
    images = tmp_path / "photos"
    images.mkdir()
    for p in cap.image_paths:
        shutil.copy(p, images / p.name)
    w, h = cap.cameras.intrinsics[0].width, cap.cameras.intrinsics[0].height
    ramp = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32)[None, :, None], (h, w, 3))
    Image.fromarray(ramp.astype(np.uint8)).save(images / "zz_blank.png")
    (images / "notes.txt").write_text("not an image; skipped when listing the folder")

    out = tmp_path / "out" / "transforms.json"
    with caplog.at_level(logging.WARNING, logger="recon.poses.colmap"):
        rep = estimate_poses(images, out, max_image_size=640)

    assert rep.n_images == 7 and rep.n_registered >= 4
    assert "zz_blank.png" in rep.unregistered
    assert "zz_blank.png" in caplog.text and "could not be registered" in caplog.text
    assert 0 < rep.mean_reproj_error_px < 2.0 and rep.n_points > 100
    assert rep.seconds > 0 and rep.ply_path == out.parent / "sparse_pc.ply"

    # Written files: nerfstudio layout, relative paths, points, readable by load_capture.
    meta = json.loads(out.read_text())
    assert meta["ply_file_path"] == "sparse_pc.ply" and meta["camera_model"] == "OPENCV"
    assert all(f["file_path"].startswith("../photos/") for f in meta["frames"])
    with pytest.raises(InputError, match="outside the dataset folder"):
        load_capture(out)  # images beside, not inside, the json's folder: refused by default
    back = load_capture(out, allow_outside_paths=True)
    assert len(back) == rep.n_registered
    torch.testing.assert_close(back.cameras.w2c, rep.cameras.w2c, atol=1e-5, rtol=0)
    ply = rep.ply_path.read_bytes()
    assert ply.startswith(b"ply") and f"element vertex {rep.n_points}".encode() in ply

    # Accuracy against the calibrated poses after a Sim(3) alignment of the centres.
    by_name = {p.name: i for i, p in enumerate(cap.image_paths)}
    ref = cap.cameras.w2c[[by_name[p.name] for p in rep.image_paths]]
    sim3 = align_sim3(rep.cameras.centres(), camera_centres(ref))
    err = pose_errors(rep.cameras.w2c, ref, sim3)
    assert err["rot_deg_max"] < 5.0, err
    assert err["centre_err_max"] < 0.1, err
    fx = rep.cameras.intrinsics[0].fx
    assert abs(fx / cap.cameras.intrinsics[0].fx - 1) < 0.1, fx


def _noise_png(path, seed, size=(96, 96)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_estimate_poses_nothing_registers(tmp_path):
    for i in range(2):
        _noise_png(tmp_path / f"{i}.png", i)
    with pytest.raises(InputError, match=r"only [01] of 2 images could be registered") as e:
        estimate_poses(tmp_path, tmp_path / "out" / "transforms.json", max_image_size=96)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "transforms.json").exists()


def test_estimate_poses_bad_input(tmp_path):
    out = tmp_path / "out" / "transforms.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="contains no images") as e:
        estimate_poses(empty, out)
    assert str(empty) in str(e.value)

    with pytest.raises(InputError, match="does not exist"):
        estimate_poses(tmp_path / "missing", out)

    one = tmp_path / "one"
    one.mkdir()
    _noise_png(one / "a.png", 0)
    (one / "readme.md").write_text("hi")
    with pytest.raises(InputError, match="has 1 image .*at least 2") as e:
        estimate_poses(one, out)
    assert str(one) in str(e.value)

    fake = tmp_path / "fake"
    fake.mkdir()
    _noise_png(fake / "a.png", 0)
    (fake / "b.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(InputError, match="not a readable image") as e:
        estimate_poses(fake, out)
    assert str(fake / "b.jpg") in str(e.value)

    with pytest.raises(InputError, match="is not an image"):
        estimate_poses([one / "a.png", one / "readme.md"], out)
    with pytest.raises(InputError, match="listed twice"):
        estimate_poses([one / "a.png", one / "a.png"], out)
    with pytest.raises(InputError, match="empty list"):
        estimate_poses([], out)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _noise_png(mixed / "a.png", 0)
    _noise_png(mixed / "b.png", 1, size=(64, 96))
    with pytest.raises(InputError, match="shared_intrinsics=False") as e:
        estimate_poses(mixed, out)
    assert "b.png" in str(e.value)

    with pytest.raises(InputError, match="matcher"):
        estimate_poses(mixed, out, matcher="vocab_tree")
    with pytest.raises(InputError, match="camera_model"):
        estimate_poses(mixed, out, camera_model="FISHEYE")
    with pytest.raises(InputError, match="max_image_size"):
        estimate_poses(mixed, out, max_image_size=0)
    assert not out.exists()


def test_exif_focal(tmp_path):
    from recon.poses.colmap import _exif_focal_px

    im = Image.new("RGB", (400, 300))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm, mm
    im.save(tmp_path / "a.jpg", exif=exif)
    assert _exif_focal_px(tmp_path / "a.jpg", 400, 300) == pytest.approx(28 / 43.2666 * 500)
    im.save(tmp_path / "b.jpg")
    assert _exif_focal_px(tmp_path / "b.jpg", 400, 300) is None
