"""Tests for recon.poses.sparse_registration: bad input is refused in one line, nothing silent."""

from __future__ import annotations

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
