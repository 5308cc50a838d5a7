from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest

from recon.geometry.ct import CTGeometry, circular_angles, normalize_view_indices
from recon.errors import InputError

from tests.ct.conftest import cone_geometry


def test_basic_properties(cone_geo):
    g = cone_geo
    assert g.n_views == 8
    assert g.volume_shape == (16, 16, 16)
    assert g.projection_shape == (8, 24, 34)
    assert g.detector_size_mm == pytest.approx((28.8, 40.8))
    assert g.volume_size_mm == (16.0, 16.0, 16.0)
    zc, yc, xc = g.voxel_centres_mm()
    assert xc[0] == pytest.approx(-7.5) and xc[-1] == pytest.approx(7.5)
    hash(g)  # frozen and hashable (used as a cache key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.dsd_mm = 1.0  # type: ignore[misc]


def test_circular_angles_r2gaussian_convention():
    a = circular_angles(4, 360.0, 10.0)
    np.testing.assert_allclose(np.degrees(a), [10, 100, 190, 280])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dsd_mm=200.0, dso_mm=250.0), "must exceed"),
        (dict(dsd_mm=250.0, dso_mm=250.0), "must exceed"),
        (dict(dso_mm=-1.0), "positive"),
        (dict(n_voxel=(16, 0, 16)), "positive"),
        (dict(voxel_mm=(1.0, -1.0, 1.0)), "positive"),
        (dict(detector_pixel_mm=(0.0, 1.0)), "positive"),
        (dict(n_detector=(24.5, 28)), "whole numbers"),
        (dict(angles_rad=[0.0, float("nan"), 1.0]), r"NaN/inf \(first at index 1\)"),
        (dict(angles_rad=[]), "no views"),
        (dict(mode="helical"), "unknown mode"),
        (dict(offset_origin_mm=(0, 0)), "3 entries"),
    ],
)
def test_validation_errors(kw, match):
    with pytest.raises(InputError, match=match) as err:
        cone_geometry(**kw)
    assert "\n" not in str(err.value)


def test_fan_and_parallel_rules():
    with pytest.raises(InputError, match="fan beam is 2D"):
        cone_geometry(mode="fan")
    fan = cone_geometry(mode="fan", det=(1, 34), n_voxel=(1, 16, 16))
    assert fan.projection_shape == (8, 1, 34)
    par = CTGeometry(mode="parallel", n_detector=(4, 4), detector_pixel_mm=(1, 1), n_voxel=(4, 4, 4), voxel_mm=(1, 1, 1), angles_rad=[0.0])
    assert par.dsd_mm is None


def test_per_view_rays_follow_tigre_convention():
    g = cone_geometry(angles_rad=[0.0, math.pi / 2], offset_detector_mm=(2.0, 3.0))
    r = g.per_view_rays()
    np.testing.assert_allclose(r.source_mm[0], [250, 0, 0], atol=1e-12)
    np.testing.assert_allclose(r.source_mm[1], [0, 250, 0], atol=1e-9)  # counter-clockwise seen from +z
    # detector centre: -(DSD - DSO) on the far side, shifted +u (= +y at angle 0) and +z
    np.testing.assert_allclose(r.detector_centre_mm[0], [-150, 3.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(r.u_mm[0], [0, 1.2, 0], atol=1e-12)
    np.testing.assert_allclose(r.v_mm[0], [0, 0, -1.2], atol=1e-12)  # row 0 is the top row
    np.testing.assert_allclose(r.u_mm[1], [-1.2, 0, 0], atol=1e-12)
    par = dataclasses.replace(g, mode="parallel").per_view_rays()
    np.testing.assert_allclose(par.ray_direction[0], [-1, 0, 0], atol=1e-12)
    assert par.source_mm is None


def test_project_points_centre_and_direction():
    g = cone_geometry(angles_rad=[0.0])
    rc = g.project_points(np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    nv, nu = g.n_detector
    assert rc[0, 0] == pytest.approx([(nv - 1) / 2, (nu - 1) / 2])
    mag = 400.0 / 250.0
    assert rc[0, 1, 1] - rc[0, 0, 1] == pytest.approx(mag / 1.2)  # +y -> +u
    assert rc[0, 2, 0] - rc[0, 0, 0] == pytest.approx(-mag / 1.2)  # +z -> smaller row index


def test_dict_json_yaml_roundtrip(tmp_path, cone_geo):
    g = dataclasses.replace(cone_geo, offset_origin_mm=(1.0, 2.0, 3.0), offset_detector_mm=(0.5, -0.5))
    assert CTGeometry.from_dict(g.to_dict()) == g
    g.to_json(tmp_path / "g.json")
    g.to_yaml(tmp_path / "g.yaml")
    assert CTGeometry.from_json(tmp_path / "g.json") == g
    assert CTGeometry.from_file(tmp_path / "g.yaml") == g
    vec = dataclasses.replace(g, vectors=g.as_vectors())
    assert CTGeometry.from_dict(json.loads(json.dumps(vec.to_dict()))) == vec


def test_unknown_keys_are_listed(tmp_path, cone_geo):
    d = cone_geo.to_dict()
    d["pixel_size"] = 1
    d["zoom"] = 2
    with pytest.raises(InputError, match=r"unknown geometry keys \['pixel_size', 'zoom'\]"):
        CTGeometry.from_dict(d)
    path = tmp_path / "bad.yaml"
    path.write_text("DSD: 10\nDSO: 5\nnVoxel: [4,4,4]\nsVoxel: [4,4,4]\nnDetector: [4,4]\ndDetector: [1,1]\nangles: [0]\nfoo: 1\n")
    with pytest.raises(InputError, match=r"bad.yaml: unknown TIGRE geometry keys \['foo'\]"):
        CTGeometry.from_yaml(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        CTGeometry.from_json(tmp_path / "broken.json")


def test_from_tigre_dict():
    tig = {
        "mode": "cone", "DSD": 1536.0, "DSO": 1000.0, "nDetector": [512, 256], "dDetector": [0.8, 0.8],
        "nVoxel": [128, 256, 256], "sVoxel": [256.0, 256.0, 256.0], "offOrigin": [0, 0, 5], "offDetector": [1, 2],
        "accuracy": 0.5, "filter": None, "COR": 0,
    }
    g = CTGeometry.from_tigre_dict(tig, angles_rad=[0.0, 1.0])
    assert g.n_voxel == (128, 256, 256) and g.voxel_mm == (2.0, 1.0, 1.0)
    assert g.n_detector == (512, 256) and g.offset_detector_mm == (1.0, 2.0)
    assert g.offset_origin_mm == (0.0, 0.0, 5.0)
    back = g.to_tigre_dict()
    assert CTGeometry.from_tigre_dict(back) == g
    with pytest.raises(InputError, match="does not equal sVoxel"):
        CTGeometry.from_tigre_dict({**tig, "dVoxel": [1.0, 1.0, 1.0]}, angles_rad=[0.0])
    with pytest.raises(InputError, match="COR != 0"):
        CTGeometry.from_tigre_dict({**tig, "COR": 0.5}, angles_rad=[0.0])
    with pytest.raises(InputError, match="no angles"):
        CTGeometry.from_tigre_dict(tig)


def test_views_helpers(cone_geo):
    g = cone_geo.with_angles(circular_angles(40))
    idx = g.view_indices(10)
    np.testing.assert_array_equal(idx, np.arange(0, 40, 4))
    sub = g.views(10)
    np.testing.assert_allclose(sub.angles, g.angles[idx])
    assert g.subset(slice(0, 5)).n_views == 5
    assert normalize_view_indices(np.array([-1]), 40) == (39,)
    with pytest.raises(InputError, match="out of range"):
        g.subset([40])
    with pytest.raises(InputError, match="asked for 50 views"):
        g.views(50)
    vec = dataclasses.replace(g, vectors=g.as_vectors())
    assert vec.subset([1, 3]).as_vectors().shape == (2, 12)
    with pytest.raises(InputError, match="use subset"):
        vec.with_angles([0.0])


def test_vectors_validation(cone_geo):
    vec = cone_geo.as_vectors()
    g = dataclasses.replace(cone_geo, vectors=vec, angles_rad=())
    np.testing.assert_allclose(np.mod(g.angles, 2 * np.pi), np.mod(cone_geo.angles, 2 * np.pi), atol=1e-12)
    bad = vec.copy()
    bad[:, 9:12] = bad[:, 6:9]
    with pytest.raises(InputError, match="must not be parallel"):
        dataclasses.replace(cone_geo, vectors=bad)
    with pytest.raises(InputError, match=r"expected shape \[V, 12\]"):
        dataclasses.replace(cone_geo, vectors=vec[:, :9])
    with pytest.raises(InputError, match="8 angles but 3 vector rows"):
        dataclasses.replace(cone_geo, vectors=vec[:3])


def test_fov_check(caplog, cone_geo):
    with caplog.at_level(logging.WARNING, logger="recon.geometry.ct"):
        rep = cone_geo.fov_check()
    assert rep.inside and rep.n_views_truncated == 0 and not caplog.records
    big = cone_geo.with_volume((16, 40, 40), (1.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="recon.geometry.ct"):
        rep = cone_geo.fov_check(big)
    assert not rep.inside and rep.n_views_truncated == 8 and rep.max_overflow_u_px > 5
    assert "leaves the detector field of view" in caplog.text
    small_det = cone_geometry(det=(24, 28))
    assert not small_det.fov_check().inside  # box corners at 45 deg leave a 28-px detector ...
    assert small_det.fov_check(shape="cylinder").inside  # ... the inscribed cylinder does not
    with pytest.raises(InputError, match="does not match n_voxel"):
        cone_geo.fov_check(np.zeros((3, 3, 3)))
