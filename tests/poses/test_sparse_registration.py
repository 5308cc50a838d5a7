"""Tests for recon.poses.sparse_registration: bad input is refused in one line, nothing silent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.errors import InputError
from recon.poses.sparse_registration import RegistrationError, register_views


def _noise(path, seed, size=(96, 128), exif_model=None):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    if exif_model is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = exif_model
        im.save(path, exif=exif)


def test_photos_sharing_no_content_fail_naming_every_view(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _noise(photos / f"{i}.png", i)
    out = tmp_path / "out" / "transforms.json"
    with pytest.raises(RegistrationError) as e:
        register_views(photos, out, max_image_size=128, num_threads=1)
    msg = str(e.value)
    assert "\n" not in msg and str(photos) in msg
    assert "0 of 3 photos registered" in msg
    for i in range(3):
        assert f"{i}.png (shares fewer than 30 verified matches" in msg
    assert isinstance(e.value, InputError)  # the CLI prints it alone and exits 2
    assert e.value.report.n_registered == 0 and not e.value.report.ok
    assert not out.exists() and not out.parent.exists()


def test_allow_partial_returns_the_report_instead(tmp_path):
    for i in range(2):
        _noise(tmp_path / f"{i}.png", i)
    rep = register_views(tmp_path, None, max_image_size=128, allow_partial=True, num_threads=1)
    assert rep.n_images == 2 and rep.n_registered == 0 and not rep.ok
    assert [v.registered for v in rep.views] == [False, False]
    assert rep.to_dict()["summary"] == rep.summary()


def test_fewer_than_two_usable_photos(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    _noise(one / "a.png", 0)
    (one / "notes.txt").write_text("not a photo")
    with pytest.raises(InputError, match=r"has 1 photo \(a.png\); registration needs at least 2") as e:
        register_views(one, tmp_path / "t.json")
    assert str(one) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="contains no images"):
        register_views(empty, tmp_path / "t.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    _noise(broken / "a.png", 0)
    (broken / "b.jpg").write_text("text, not a JPEG")
    with pytest.raises(InputError, match="not a readable image"):
        register_views(broken, tmp_path / "t.json")


def test_mixed_cameras_are_refused(tmp_path):
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    _noise(sizes / "a.png", 0)
    _noise(sizes / "b.png", 1, size=(64, 128))
    with pytest.raises(InputError, match="mixed cameras") as e:
        register_views(sizes, tmp_path / "t.json")
    assert "b.png" in str(e.value) and "\n" not in str(e.value)

    models = tmp_path / "models"
    models.mkdir()
    _noise(models / "a.jpg", 0, exif_model=("Canon", "EOS 5D"))
    _noise(models / "b.jpg", 1, exif_model=("Apple", "iPhone 12"))
    with pytest.raises(InputError, match="mixed cameras") as e:
        register_views(models, tmp_path / "t.json")
    assert "Apple iPhone 12" in str(e.value) and "Canon EOS 5D" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(max_image_size=10), "max_image_size"), (dict(focal_px=-3.0), "focal_px")],
)
def test_bad_options(tmp_path, kwargs, match):
    for i in range(2):
        _noise(tmp_path / f"{i}.png", i)
    with pytest.raises(InputError, match=match):
        register_views(tmp_path, tmp_path / "t.json", **kwargs)


# ------------------------------------------------------------------------------ real photos

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "fox"
"""The 16 fox photos the repository ships (270x480, calibrated poses): in CI."""
FULL = Path(__file__).resolve().parents[3] / "shared" / "data" / "object" / "fox"
"""The full-resolution fox capture (1080x1920), outside the repository: not in CI."""
K4 = ["0019.jpg", "0054.jpg", "0072.jpg", "0108.jpg"]
"""The K = 4 farthest-point views of the fox (docs/benchmarks.md, pose-free registration)."""


def _registered_errors(capture_dir: Path, names: list[str], rep) -> tuple[dict, float]:
    from recon.io.formats import load_capture
    from recon.poses.align import align_sim3, pose_errors

    cap = load_capture(capture_dir)
    ref = cap.cameras.subset([cap.names.index(p.name) for p in rep.image_paths])
    err = pose_errors(rep.cameras.w2c, ref.w2c, align_sim3(rep.cameras.centres(), ref.centres()))
    return err, rep.focal_px / ref.intrinsics[0].fx - 1.0


def test_four_sample_fox_photos_register_within_5_degrees(tmp_path):
    """4 wide-baseline photos of the shipped sample (480 px): all registered, checks passed,
    rotations within 5 deg of the calibration after Sim(3), focal within 15 % (measured: 1.1-3.3
    deg, +10 %), and the written transforms.json reads back."""
    from recon.io.formats import load_capture

    paths = [SAMPLE / "images" / n for n in K4]
    out = tmp_path / "reg" / "transforms.json"
    rep = register_views(paths, out, max_image_size=480, num_threads=1)
    assert rep.ok and rep.n_registered == 4, rep.summary()
    assert rep.focal_source == "triplet search" and all(v.n_points >= 30 and v.confidence > 0 for v in rep.views)
    err, focal_err = _registered_errors(SAMPLE, K4, rep)
    assert err["rot_deg_max"] < 5.0, err["rot_deg"]
    assert err["centre_err_max"] < 0.15, err["centre_err"]
    assert abs(focal_err) < 0.15, focal_err
    back = load_capture(out, allow_outside_paths=True)
    assert sorted(back.names) == K4


@pytest.mark.slow  # 21 s of CPU (one pycolmap thread); 640 and 800 px register only 0 and 2 of the 4
@pytest.mark.skipif(not (FULL / "transforms.json").exists(), reason=f"full-resolution fox capture not found at {FULL}")
def test_four_full_resolution_fox_photos_register_within_2_degrees():
    """The same 4 views at 1080x1920 (features at 1000 px, as the benchmark): median rotation error <= 2 deg (the
    issue's target) and focal within 5 %."""
    import statistics

    rep = register_views([FULL / "images" / n for n in K4], None, max_image_size=1000, num_threads=1)
    assert rep.ok and rep.n_registered == 4, rep.summary()
    err, focal_err = _registered_errors(FULL, K4, rep)
    assert statistics.median(err["rot_deg"]) <= 2.0, err["rot_deg"]
    assert err["rot_deg_max"] < 4.0 and abs(focal_err) < 0.05, (err["rot_deg"], focal_err)


def test_fewer_than_three_photos_sharing_content_fail(tmp_path):
    """Two overlapping photos always fit some relative pose; without a third nothing checks it."""
    two = tmp_path / "two"
    two.mkdir()
    for n in ("0019.jpg", "0029.jpg"):
        shutil.copy(SAMPLE / "images" / n, two / n)
    with pytest.raises(RegistrationError, match="fewer than 3 photos share content") as e:
        register_views(two, tmp_path / "out" / "transforms.json", max_image_size=480, num_threads=1)
    msg = str(e.value)
    assert "\n" not in msg and str(two) in msg and "0019.jpg-0029.jpg" in msg
    assert not (tmp_path / "out").exists()
    _noise(two / "zz_noise.png", 0, size=(480, 270))
    with pytest.raises(RegistrationError, match="fewer than 3 photos share content") as e:
        register_views(two, None, max_image_size=480, num_threads=1)
    assert "2 of 3 photos registered" in str(e.value) and "zz_noise.png (shares fewer than 30" in str(e.value)
