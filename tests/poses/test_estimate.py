"""Tests for recon.poses.estimate: which estimator ``recon poses`` uses, and the sparse path's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recon.errors import InputError
from recon.poses.estimate import SPARSE_MAX_PHOTOS, choose_method, estimate_camera_poses

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "fox"


@pytest.mark.parametrize(
    "n, method, matcher, model, expected",
    [
        (3, "auto", "exhaustive", "SIMPLE_RADIAL", "sparse"),
        (SPARSE_MAX_PHOTOS, "auto", "exhaustive", "SIMPLE_RADIAL", "sparse"),
        (SPARSE_MAX_PHOTOS + 1, "auto", "exhaustive", "SIMPLE_RADIAL", "colmap"),
        (4, "auto", "sequential", "SIMPLE_RADIAL", "colmap"),
        (4, "auto", "exhaustive", "OPENCV", "colmap"),
        (4, "colmap", "exhaustive", "SIMPLE_RADIAL", "colmap"),
        (40, "sparse", "exhaustive", "SIMPLE_RADIAL", "sparse"),
    ],
)
def test_choose_method(n, method, matcher, model, expected):
    assert choose_method(n, method, matcher, model) == expected


def test_choose_method_bad_input():
    with pytest.raises(InputError, match="--method.*expected one of auto, sparse, colmap"):
        choose_method(3, "magic")
    with pytest.raises(InputError, match="--matcher sequential"):
        choose_method(3, "sparse", "sequential")
    with pytest.raises(InputError, match="--camera-model OPENCV"):
        choose_method(3, "sparse", camera_model="OPENCV")


def test_sparse_path_writes_the_colmap_layout_and_the_report(tmp_path):
    names = ["0019.jpg", "0072.jpg", "0108.jpg"]
    out = tmp_path / "poses" / "transforms.json"
    rep = estimate_camera_poses([SAMPLE / "images" / n for n in names], out, max_image_size=480)
    assert rep.method == "sparse" and rep.n_registered == 3 and rep.unregistered == []
    assert rep.transforms_path == out and rep.ply_path == out.parent / "sparse_pc.ply" and rep.ply_path.exists()
    meta = json.loads(out.read_text())
    assert meta["ply_file_path"] == "sparse_pc.ply" and len(meta["frames"]) == 3
    reg = json.loads((out.parent / "registration.json").read_text())
    assert reg["ok"] and [v["name"] for v in reg["views"]] == names and reg == rep.registration
    assert rep.to_dict()["method"] == "sparse"
