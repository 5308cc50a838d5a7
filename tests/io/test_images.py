"""Tests for recon.io.images: decoding errors, load_views (size check, undistortion,
downsampling, alpha/masks), atomic PNG writes, comparison strips."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics
from recon.io.capture import Capture
from recon.io.formats import load_capture
from recon.io.images import image_size, load_image, save_image, side_by_side
from recon.io.views import clear_image_cache, load_views


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_image_cache()
    yield
    clear_image_cache()


def make_capture(
    tmp_path: Path, arrays: list[np.ndarray], intr: list[Intrinsics], masks=None
) -> Capture:
    paths = []
    for i, arr in enumerate(arrays):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    cams = CameraSet(torch.eye(4).repeat(len(arrays), 1, 1), intr)
    return Capture(
        root=tmp_path,
        image_paths=paths,
        cameras=cams,
        mask_paths=masks or [None] * len(arrays),
        names=[p.name for p in paths],
        format="test",
        source=tmp_path / "transforms.json",
    )


def pinhole(w: int, h: int, **kw) -> Intrinsics:
    return Intrinsics(float(w), float(w), w / 2, h / 2, w, h, **kw)


# ---------------------------------------------------------------- load_image


def test_load_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (5, 7, 3)
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-7)
    rgba = np.dstack([rgb, np.full((5, 7), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").shape == (5, 7, 4)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    grey = load_image(tmp_path / "g.png")
    assert grey.shape == (5, 7, 3) and np.allclose(grey[..., 2], rgb[..., 0] / 255.0)
    deep = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_allclose(load_image(tmp_path / "d.png")[..., 0], deep / 65535.0, atol=1e-6)
    smooth = np.broadcast_to(np.linspace(0, 255, 7).astype(np.uint8)[None, :, None], (5, 7, 3))
    Image.fromarray(np.ascontiguousarray(smooth)).save(tmp_path / "j.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "j.jpg") - smooth / 255.0).mean() < 0.03
    assert image_size(tmp_path / "a.png") == (7, 5)


def test_load_image_errors(tmp_path):
    with pytest.raises(InputError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(InputError, match="text.png: is not a readable image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="text.png: is not a readable image"):
        image_size(tmp_path / "text.png")
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "cut.jpg")
    assert str(err.value).startswith(str(tmp_path / "cut.jpg")) and "truncated" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- load_views


def test_load_views_downscale_area(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    cap = make_capture(tmp_path, [arr], [pinhole(8, 6)])
    images, masks, cams = load_views(cap, [0], downscale=2)
    assert images.shape == (1, 3, 4, 3) and images.dtype == torch.float32 and masks is None
    expected = arr.reshape(3, 2, 4, 2, 3).astype(np.float64).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(images[0].numpy(), expected, atol=0.5 / 255 + 1e-6)
    intr = cams.intrinsics[0]
    assert (intr.width, intr.height, intr.fx, intr.cx) == (4, 3, 4.0, 2.0)
    full, _, _ = load_views(cap, [0])
    np.testing.assert_allclose(full[0].numpy(), arr / 255.0, atol=1e-7)


def test_load_views_size_mismatch(tmp_path):
    cap = make_capture(tmp_path, [np.zeros((16, 12, 3), np.uint8)], [pinhole(16, 12)])
    with pytest.raises(InputError, match=r"im0.png: image is 12x16 but transforms.json says 16x12"):
        load_views(cap, [0])


def test_load_views_mixed_sizes(tmp_path):
    cap = make_capture(
        tmp_path,
        [np.zeros((4, 4, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)],
        [pinhole(4, 4), pinhole(4, 6)],
    )
    with pytest.raises(
        InputError, match="im1.png: is 4x6 at downscale 1.0, unlike the first view's 4x4"
    ):
        load_views(cap, [0, 1], downscale=1.0)
    images, _, _ = load_views(cap, [1])
    assert images.shape == (1, 6, 4, 3)


def test_load_views_alpha_and_masks(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque, right half transparent
    mask = np.full((4, 4), 255, np.uint8)
    mask[0] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rgb = np.full((4, 4, 3), 50, np.uint8)
    cap = make_capture(
        tmp_path, [rgba, rgb], [pinhole(4, 4)] * 2, masks=[None, tmp_path / "mask.png"]
    )
    images, masks, _ = load_views(cap, [0, 1], background=(0.0, 1.0, 0.0))
    assert masks.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(masks[0, :, :, 0].numpy(), np.tile([1.0, 1.0, 0.0, 0.0], (4, 1)))
    np.testing.assert_allclose(
        images[0, 0, 0].numpy(), [200 / 255, 0, 0], atol=1e-6
    )  # opaque keeps colour
    np.testing.assert_allclose(
        images[0, 0, 3].numpy(), [0, 1, 0], atol=1e-6
    )  # transparent -> background
    np.testing.assert_allclose(masks[1, :, :, 0].numpy(), (mask / 255.0))
    np.testing.assert_allclose(images[1].numpy(), 50 / 255.0, atol=1e-6)  # no alpha: untouched
    # without background the colour stays straight (not premultiplied)
    images, _, _ = load_views(cap, [0])
    np.testing.assert_allclose(images[0, 0, 3].numpy(), [200 / 255, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="background"):
        load_views(cap, [0], background=(0, 2, 0))


def test_load_views_mask_size_mismatch(tmp_path):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "mask.png")
    cap = make_capture(
        tmp_path, [np.zeros((4, 4, 3), np.uint8)], [pinhole(4, 4)], masks=[tmp_path / "mask.png"]
    )
    with pytest.raises(InputError, match="mask.png: mask is 3x3 but its image is 4x4"):
        load_views(cap, [0])


def _pattern(xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    return 0.5 + 0.4 * np.sin(12.0 * xn) * np.cos(10.0 * yn)


def test_load_views_undistorts(tmp_path):
    w, h = 64, 48
    intr = Intrinsics(40.0, 42.0, 31.5, 23.0, w, h, k1=0.2, k2=-0.05, k3=0.01, p1=0.01, p2=-0.005)
    K = intr.K(torch.float64).numpy()
    # distorted image: each pixel shows the pattern at its undistorted normalised coordinates
    uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([uu, vv], -1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    norm = cv2.undistortPointsIter(pix, K, intr.distortion_coeffs(), None, None, crit).reshape(
        h, w, 2
    )
    distorted = _pattern(norm[..., 0], norm[..., 1])
    arr = np.round(np.repeat(distorted[..., None], 3, -1) * 255).astype(np.uint8)
    cap = make_capture(tmp_path, [arr], [intr])
    images, _, cams = load_views(cap, [0])
    assert not cams.intrinsics[0].has_distortion and cams.intrinsics[0].fx == 40.0
    truth = _pattern((uu - intr.cx) / intr.fx, (vv - intr.cy) / intr.fy)
    # compare where the undistorted pixel comes from inside the distorted image
    mx, my = cv2.initUndistortRectifyMap(K, intr.distortion_coeffs(), None, K, (w, h), cv2.CV_32FC1)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    assert inside.mean() > 0.8
    err = np.abs(images[0, ..., 1].numpy() - truth)[inside].max()
    assert err < 0.015, err
    baseline = np.abs(arr[..., 1] / 255.0 - truth)[
        inside
    ].max()  # not undistorting is visibly wrong
    assert baseline > 0.1


def test_load_views_fox_fast(fox_dir):
    cap = load_capture(fox_dir)
    t0 = time.perf_counter()
    images, masks, cams = load_views(cap, list(range(8)), downscale=4)
    elapsed = time.perf_counter() - t0
    assert images.shape == (8, 480, 270, 3) and masks is None
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    assert (cams.intrinsics[0].width, cams.intrinsics[0].height) == (270, 480)
    assert (
        cams.intrinsics[0].fx == pytest.approx(1375.52 / 4)
        and not cams.intrinsics[0].has_distortion
    )
    torch.testing.assert_close(cams.w2c, cap.cameras.w2c[:8])
    assert elapsed < 5.0, f"8 fox views took {elapsed:.2f} s"
    # cached second call returns the same pixels
    again, _, _ = load_views(cap, [3], downscale=4)
    torch.testing.assert_close(again[0], images[3])


# ---------------------------------------------------------------- save_image / side_by_side


@pytest.mark.parametrize("as_tensor", [False, True])
def test_save_image_round_trip(tmp_path, as_tensor):
    img = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    src = torch.from_numpy(img) if as_tensor else img
    out = save_image(tmp_path / "sub" / "x.png", src)
    back = load_image(out)
    np.testing.assert_allclose(back, img, atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]  # no temp files left
    save_image(out, np.ones((5, 6, 3)) * 2.0)  # overwrite, values clipped
    assert load_image(out).min() == 1.0


@pytest.mark.parametrize("bad", [np.zeros((5, 6, 2)), np.zeros((5,)), np.full((2, 2, 3), np.nan)])
def test_save_image_bad(tmp_path, bad):
    with pytest.raises(ValueError):
        save_image(tmp_path / "x.png", bad)
    assert not list(tmp_path.iterdir())


def test_side_by_side():
    gt = np.zeros((4, 5, 3), np.float32)
    pred = gt.copy()
    pred[0, 0] = 1.0
    strip = side_by_side(torch.from_numpy(pred), gt)
    assert strip.shape == (4, 15, 3) and strip.dtype == np.float32
    np.testing.assert_array_equal(strip[:, :5], pred)
    np.testing.assert_array_equal(strip[:, 5:10], gt)
    heat = strip[:, 10:]
    assert heat[0, 0].sum() > heat[1, 1].sum() + 1.0  # the wrong pixel is hot, the rest cold
    np.testing.assert_allclose(heat[1, 1], heat[3, 4])
    with pytest.raises(ValueError):
        side_by_side(pred, gt[:3])
