"""recon_nerfstudio.dataparser: the recon-fewview split of a nerfstudio capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon_nerfstudio.dataparser import FewViewDataParserConfig
from recon.errors import InputError
from recon.io.formats import load_capture
from recon.geometry.view_selection import split_views


def _names(outputs) -> list[str]:
    return [p.name for p in outputs.image_filenames]


def _parser(data: Path, **kw):
    return FewViewDataParserConfig(data=data, downscale_factor=8, **kw).setup()


def test_split_is_recon_split_and_disjoint(tiny_fox):
    parser = _parser(tiny_fox, train_views=4)
    train = parser.get_dataparser_outputs("train")
    evals = parser.get_dataparser_outputs("test")
    assert len(train.image_filenames) == 4 and len(evals.image_filenames) == 2
    assert set(_names(train)).isdisjoint(_names(evals))
    assert len(set(_names(train)) | set(_names(evals))) == 6
    # the same views ``recon fit --train-views 4`` picks from the same capture
    capture = load_capture(tiny_fox)
    r_train, r_eval = split_views(capture, 4, 2)
    assert sorted(Path(capture.names[i]).name for i in r_train) == sorted(_names(train))
    assert sorted(Path(capture.names[i]).name for i in r_eval) == sorted(_names(evals))
    # one world frame for both splits; images are the pre-downscaled copies
    torch.testing.assert_close(train.dataparser_transform, evals.dataparser_transform)
    assert train.dataparser_scale == evals.dataparser_scale
    assert all(p.parent.name == "images_8" and p.exists() for p in train.image_filenames)
    assert int(train.cameras.width[0]) == 135 and int(train.cameras.height[0]) == 240
    assert float(train.cameras.camera_to_worlds[:, :3, 3].abs().max()) <= 1.0 + 1e-5  # nerfstudio's scaling


def test_eval_views_count_and_none(tiny_fox):
    assert len(_parser(tiny_fox, train_views=3, eval_views=2).get_dataparser_outputs("val").image_filenames) == 2
    assert len(_parser(tiny_fox, train_views=3, eval_views=0).get_dataparser_outputs("val").image_filenames) == 0


@pytest.mark.parametrize("kw,match", [({"train_views": 0}, "--train-views"), ({"train_views": 7}, "--train-views"),
                                      ({"eval_views": -2}, "--eval-views")])  # fmt: skip
def test_bad_counts(tiny_fox, kw, match):
    with pytest.raises(InputError, match=match):
        _parser(tiny_fox, **kw).get_dataparser_outputs("train")


def test_missing_downscaled_images_is_one_clear_error(tiny_fox, tmp_path):
    (tmp_path / "transforms.json").write_text((tiny_fox / "transforms.json").read_text())
    (tmp_path / "images").symlink_to(tiny_fox / "images")
    with pytest.raises(InputError, match="images_8"):
        _parser(tmp_path, train_views=4).get_dataparser_outputs("train")


def test_fixed_split_lists_are_refused(tiny_fox, tmp_path):
    meta = json.loads((tiny_fox / "transforms.json").read_text())
    names = [f["file_path"] for f in meta["frames"]]
    meta.update(train_filenames=names[:4], test_filenames=names[4:])
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    for sub in ("images", "images_8"):
        (tmp_path / sub).symlink_to(tiny_fox / sub)
    with pytest.raises(InputError, match="fixed splits"):
        _parser(tmp_path, train_views=2).get_dataparser_outputs("train")


def test_explicit_names(tiny_fox):
    names = sorted(p.name for p in _parser(tiny_fox, train_views=4).get_dataparser_outputs("train").image_filenames)
    every = sorted(names + _names(_parser(tiny_fox, train_views=4).get_dataparser_outputs("test")))
    pick_train, pick_eval = tuple(every[:2]), tuple(every[2:3])
    parser = _parser(tiny_fox, train_names=pick_train, eval_names=pick_eval)
    assert _names(parser.get_dataparser_outputs("train")) == list(pick_train)
    assert _names(parser.get_dataparser_outputs("test")) == list(pick_eval)
    with pytest.raises(InputError, match="nope.jpg"):
        _parser(tiny_fox, train_names=("nope.jpg",)).get_dataparser_outputs("train")
    with pytest.raises(InputError, match="also a training image"):
        _parser(tiny_fox, train_names=pick_train, eval_names=pick_train[:1]).get_dataparser_outputs("train")
