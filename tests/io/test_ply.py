"""Splat and point-cloud PLY files: INRIA layout, exact round trip, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from recon.errors import InputError
from recon.io import ply as ply_mod
from recon.io.ply import read_splat_ply, write_points_ply, write_splat_ply

NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _params(n: int = 7, degree: int = 3) -> dict[str, torch.Tensor]:
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3),
        "quats": torch.randn(n, 4),
        "scales": torch.randn(n, 3) - 3,
        "opacities": torch.randn(n),
        "sh0": torch.randn(n, 1, 3),
        "shN": torch.randn(n, k - 1, 3),
    }


def _inria_names(degree: int) -> list[str]:
    k1 = (degree + 1) ** 2 - 1
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * k1)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_roundtrip_is_bitwise(tmp_path, degree):
    params = _params(11, degree)
    path = write_splat_ply(tmp_path / "s.ply", params)
    back = read_splat_ply(path)
    assert set(back) == set(NAMES)
    for name in NAMES:
        assert back[name].dtype == torch.float32
        assert back[name].shape == params[name].shape, name
        assert torch.equal(back[name], params[name]), name


@pytest.mark.parametrize("degree", [0, 3])
def test_header_is_inria_layout(tmp_path, degree):
    path = write_splat_ply(tmp_path / "s.ply", _params(3, degree))
    head = path.read_bytes()[:40]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")
    el = PlyData.read(str(path))["vertex"]
    assert [p.name for p in el.properties] == _inria_names(degree)
    assert all(p.val_dtype == "f4" for p in el.properties)
    assert len(el.data) == 3
    assert (el.data["nx"] == 0).all()


def test_f_rest_is_channel_major(tmp_path):
    n, k1 = 2, 15
    params = _params(n, 3)
    k_idx = torch.arange(k1, dtype=torch.float32)[None, :, None]
    c_idx = torch.arange(3, dtype=torch.float32)[None, None, :]
    params["shN"] = (100 * c_idx + k_idx).expand(n, k1, 3).contiguous()  # value encodes (k, c)
    data = PlyData.read(str(write_splat_ply(tmp_path / "s.ply", params)))["vertex"].data
    for c in range(3):
        for k in range(k1):
            assert data[f"f_rest_{c * k1 + k}"][0] == 100 * c + k


def test_writes_model_objects(tmp_path):
    class Holder:
        params = _params(4, 1)

    back = read_splat_ply(write_splat_ply(tmp_path / "m.ply", Holder()))
    assert torch.equal(back["shN"], Holder.params["shN"])


def test_reads_other_property_order_and_doubles(tmp_path):
    params = _params(5, 1)
    k1 = 3
    cols = {
        "x": params["means"][:, 0], "y": params["means"][:, 1], "z": params["means"][:, 2],
        "opacity": params["opacities"],
    }
    for i in range(3):
        cols[f"f_dc_{i}"] = params["sh0"][:, 0, i]
        cols[f"scale_{i}"] = params["scales"][:, i]
    for i in range(4):
        cols[f"rot_{i}"] = params["quats"][:, i]
    rest = params["shN"].transpose(1, 2).reshape(5, 3 * k1)
    for i in range(3 * k1):
        cols[f"f_rest_{i}"] = rest[:, i]
    order = sorted(cols, reverse=True)  # rot_3 ... f_rest_8 ... f_rest_10 ... x etc, no normals
    doubles = {"x", "opacity", "f_rest_7"}
    vertex = np.empty(5, dtype=[(k, "<f8" if k in doubles else ">f4") for k in order])
    for k in order:
        vertex[k] = cols[k].numpy()
    path = tmp_path / "other.ply"
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))
    back = read_splat_ply(path)
    for name in NAMES:
        assert torch.equal(back[name], params[name]), name


def test_reads_ascii_ply(tmp_path):
    params = _params(3, 0)
    path = write_splat_ply(tmp_path / "b.ply", params)
    ply = PlyData.read(str(path))
    ply.text = True
    ply.write(str(tmp_path / "a.ply"))
    back = read_splat_ply(tmp_path / "a.ply")
    torch.testing.assert_close(back["means"], params["means"])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_splat_ply(tmp_path / "nope.ply")


def test_not_a_ply(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"this is not a ply file\n\x00\x01")
    with pytest.raises(InputError, match="not a readable PLY"):
        read_splat_ply(bad)


def test_truncated_ply(tmp_path):
    path = write_splat_ply(tmp_path / "t.ply", _params(50, 3))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError):
        read_splat_ply(path)


def test_missing_properties_are_named(tmp_path):
    vertex = np.zeros(2, dtype=[(k, "<f4") for k in _inria_names(0) if k not in ("scale_1", "rot_3")])
    path = tmp_path / "m.ply"
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    with pytest.raises(InputError, match="scale_1, rot_3") as err:
        read_splat_ply(path)
    assert str(path) in str(err.value)


def test_point_cloud_is_not_a_splat(tmp_path):
    path = write_points_ply(tmp_path / "p.ply", torch.randn(4, 3))
    with pytest.raises(InputError, match="f_dc_0"):
        read_splat_ply(path)


def test_bad_f_rest_count(tmp_path):
    names = _inria_names(0) + [f"f_rest_{i}" for i in range(5)]
    vertex = np.zeros(2, dtype=[(k, "<f4") for k in names])
    path = tmp_path / "r.ply"
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    with pytest.raises(InputError, match="f_rest"):
        read_splat_ply(path)


def test_no_vertex_element(tmp_path):
    el = np.zeros(2, dtype=[("min_x", "<f4")])
    path = tmp_path / "c.ply"
    PlyData([PlyElement.describe(el, "chunk")]).write(str(path))
    with pytest.raises(InputError, match="compressed"):
        read_splat_ply(path)


def test_write_rejects_bad_shapes(tmp_path):
    params = _params(4, 1)
    with pytest.raises(ValueError, match="opacities"):
        write_splat_ply(tmp_path / "x.ply", {**params, "opacities": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="shN"):
        write_splat_ply(tmp_path / "x.ply", {**params, "shN": torch.zeros(4, 4, 3)})
    with pytest.raises(ValueError, match="missing"):
        write_splat_ply(tmp_path / "x.ply", {"means": torch.zeros(4, 3)})
    assert not any(tmp_path.iterdir())


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = write_splat_ply(tmp_path / "s.ply", _params(3, 0))
    old = path.read_bytes()

    def broken_write(self, stream):
        stream.write(b"ply\n")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ply_mod.PlyData, "write", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_splat_ply(path, _params(8, 3))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["s.ply"]  # no temp file left


def test_overwrite_and_create_folder(tmp_path):
    path = tmp_path / "deep" / "er" / "s.ply"
    write_splat_ply(path, _params(3, 0))
    write_splat_ply(path, _params(5, 2))
    assert read_splat_ply(path)["means"].shape == (5, 3)
    assert [p.name for p in path.parent.iterdir()] == ["s.ply"]


def test_write_points_ply_with_and_without_colors(tmp_path):
    pts = torch.randn(6, 3)
    rgb = torch.tensor([[0.0, 0.5, 1.0]] * 5 + [[-1.0, 2.0, 0.2]])
    data = PlyData.read(str(write_points_ply(tmp_path / "c.ply", pts, rgb)))["vertex"]
    assert [p.name for p in data.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert data["x"].dtype == np.float32 and data["red"].dtype == np.uint8
    assert np.array_equal(data["y"], pts[:, 1].numpy())
    assert data["red"].tolist() == [0] * 5 + [0]
    assert data["green"].tolist() == [128] * 5 + [255]
    assert data["blue"].tolist() == [255] * 5 + [51]
    u8 = np.full((6, 3), 7, np.uint8)
    assert (PlyData.read(str(write_points_ply(tmp_path / "u.ply", pts.numpy(), u8)))["vertex"]["blue"] == 7).all()
    plain = PlyData.read(str(write_points_ply(tmp_path / "p.ply", pts)))["vertex"]
    assert [p.name for p in plain.properties] == ["x", "y", "z"]
    with pytest.raises(ValueError):
        write_points_ply(tmp_path / "x.ply", torch.randn(6, 2))
    with pytest.raises(ValueError):
        write_points_ply(tmp_path / "x.ply", pts, rgb[:3])


def test_write_points_ply_with_normals_read_by_open3d(tmp_path):
    import open3d as o3d

    pts = torch.randn(7, 3)
    normals = torch.nn.functional.normalize(torch.randn(7, 3), dim=-1)
    rgb = torch.rand(7, 3)
    path = write_points_ply(tmp_path / "n.ply", pts, rgb, normals)
    data = PlyData.read(str(path))["vertex"]
    assert [p.name for p in data.properties] == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    cloud = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(cloud.points), pts.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.normals), normals.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors), np.round(rgb.numpy() * 255) / 255, atol=1e-6)
    with pytest.raises(ValueError, match="normals"):
        write_points_ply(tmp_path / "x.ply", pts, None, normals[:3])
