from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from recon.ct.formats import (
    MU_WATER_PER_MM,
    NAF_PROJECTION_SCALE,
    ClippedTransmissionWarning,
    counts_to_line_integrals,
    hu_to_mu,
    mu_to_hu,
    read_dicom_series,
    read_naf_pickle,
    read_nifti,
    read_projection_stack,
    read_r2gaussian,
    read_tiff_stack,
    read_volume,
    write_dicom_series,
    write_naf_pickle,
    write_nifti,
    write_projection_stack,
    write_r2gaussian,
    write_tiff_stack,
    write_volume,
)
from recon.geometry.ct import CTGeometry, circular_angles
from recon.errors import InputError

from .conftest import CT_DATA, cone_geometry


@pytest.fixture
def geo() -> CTGeometry:
    # non-cubic volume and detector so axis mix-ups show
    return cone_geometry(n_views=5, det=(6, 8), n_voxel=(3, 4, 5), voxel_mm=(2.0, 1.5, 1.0), offset_origin_mm=(1.0, 2.0, 3.0), offset_detector_mm=(0.5, -0.25))


def _data(geo: CTGeometry, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random(geo.projection_shape).astype(np.float32), rng.random(geo.n_voxel).astype(np.float32)


# ---------------------------------------------------------------------- HU
def test_hu_mu_roundtrip():
    assert hu_to_mu(np.array([-1000.0]))[0] == pytest.approx(0.0)
    assert hu_to_mu(np.array([0.0]))[0] == pytest.approx(MU_WATER_PER_MM)
    assert hu_to_mu(np.array([-1024.0]))[0] == 0.0  # clipped
    hu = np.array([-500.0, 0.0, 1000.0, 3000.0])
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, rtol=1e-5, atol=1e-2)


# ---------------------------------------------------------------------- counts
def test_counts_to_line_integrals():
    flat = np.full((2, 3), 1000.0)
    dark = np.full((2, 3), 100.0)
    raw = np.stack([np.full((2, 3), 100.0 + 900.0 * np.exp(-k)) for k in (0.5, 2.0)])
    np.testing.assert_allclose(counts_to_line_integrals(raw, dark, flat)[:, 0, 0], [0.5, 2.0], rtol=1e-6)
    # stacks of darks/flats are averaged
    np.testing.assert_allclose(counts_to_line_integrals(raw, np.stack([dark, dark]), np.stack([flat, flat])), counts_to_line_integrals(raw, dark, flat))
    with pytest.raises(InputError, match=r"flat <= dark at 2 pixels \(first at \(0, 2\)\)"):
        counts_to_line_integrals(raw, dark, np.where(np.arange(3) == 2, 50.0, flat))
    with pytest.raises(InputError, match="negative"):
        counts_to_line_integrals(raw - 1000.0, dark, flat)
    bad = raw.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError, match=r"NaN/inf values \(first at index \(1, 1, 1\)\)"):
        counts_to_line_integrals(bad, dark, flat)
    with pytest.raises(InputError, match=r"dark field is \[3, 3\]"):
        counts_to_line_integrals(raw, np.zeros((3, 3)), flat)
    starved = raw.copy()
    starved[0, 0, 0] = 100.0  # no photons
    with pytest.warns(ClippedTransmissionWarning, match="clipped 1 of 12"):
        out = counts_to_line_integrals(starved, dark, flat, min_transmission=1e-4)
    assert out[0, 0, 0] == pytest.approx(-np.log(1e-4))


def test_counts_on_real_synchrotron_data():
    """Savu I13 raw counts: our conversion matches the shipped line integrals (clip 1e-3),
    with its one dead pixel (flat = dark = 0) zeroed."""
    d = np.load(CT_DATA / "savu_dls_i13_24737_parallel.npz")
    with pytest.raises(InputError, match="flat <= dark at 1 pixels"):
        counts_to_line_integrals(d["projections_raw"][:2], d["dark"], d["flat"])
    li = counts_to_line_integrals(d["projections_raw"], d["dark"], d["flat"], min_transmission=1e-3, dead_pixels="zero")
    dead = d["flat"] <= d["dark"]
    np.testing.assert_allclose(li[:, ~dead], d["line_integrals"][:, ~dead], atol=1e-5)


# ---------------------------------------------------------------------- R2-Gaussian
def test_r2gaussian_layout_and_roundtrip(tmp_path, geo):
    proj, vol = _data(geo)
    test_geo = geo.with_angles([0.1, 2.0])
    test_proj = np.random.default_rng(1).random(test_geo.projection_shape).astype(np.float32)
    out = write_r2gaussian(tmp_path / "case", geo, proj, volume=vol, test_geometry=test_geo, test_projections=test_proj)
    meta = json.loads((out / "meta_data.json").read_text())
    assert set(meta) == {"scanner", "vol", "bbox", "proj_train", "proj_test"}
    sc = meta["scanner"]
    assert sc["nVoxel"] == [5, 4, 3] and sc["dVoxel"] == [1.0, 1.5, 2.0]  # (x, y, z)
    assert sc["nDetector"] == [6, 8] and sc["offDetector"] == [-0.25, 0.5]  # (v, u) and (u, v)
    assert sc["offOrigin"] == [3.0, 2.0, 1.0]
    assert meta["proj_train"][1] == {"file_path": "proj_train/proj_train_0001.npy", "angle": pytest.approx(geo.angles_rad[1])}
    np.testing.assert_array_equal(np.load(out / "vol_gt.npy"), vol.transpose(2, 1, 0))  # [x, y, z]
    np.testing.assert_array_equal(np.load(out / "proj_train/proj_train_0001.npy"), proj[1][::-1])  # flipped in v
    back = read_r2gaussian(out)
    assert back.geometry == geo
    np.testing.assert_array_equal(back.projections, proj)
    np.testing.assert_array_equal(back.volume, vol)
    np.testing.assert_array_equal(back.test_projections, test_proj)
    np.testing.assert_allclose(back.test_geometry.angles, [0.1, 2.0])


def test_r2gaussian_errors(tmp_path, geo):
    proj, vol = _data(geo)
    out = write_r2gaussian(tmp_path / "case", geo, proj, volume=vol)
    meta = json.loads((out / "meta_data.json").read_text())
    meta["scanner"]["weird"] = 1
    meta["scanner"]["zz"] = 2
    (out / "meta_data.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"unknown scanner keys \['weird', 'zz'\]"):
        read_r2gaussian(out)
    del meta["scanner"]["weird"], meta["scanner"]["zz"]
    meta["scanner"]["nDetector"] = [6, 9]
    (out / "meta_data.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"6x8 pixels but the geometry's detector is 6x9"):
        read_r2gaussian(out)
    with pytest.raises(InputError, match="meta_data.json: not found"):
        read_r2gaussian(tmp_path / "nothing")


# ---------------------------------------------------------------------- NAF pickle
def test_naf_pickle_roundtrip_and_units(tmp_path, geo):
    proj, vol = _data(geo)
    path = write_naf_pickle(tmp_path / "case.pickle", geo, proj, volume=vol)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert raw["nVoxel"] == [5, 4, 3] and raw["numTrain"] == 5
    np.testing.assert_allclose(raw["train"]["projections"], proj[:, ::-1, :] / NAF_PROJECTION_SCALE, rtol=1e-6)
    np.testing.assert_array_equal(raw["image"], vol.transpose(2, 1, 0))
    back = read_naf_pickle(path)
    assert back.geometry == geo
    np.testing.assert_allclose(back.projections, proj, rtol=1e-6)
    np.testing.assert_array_equal(back.volume, vol)
    raw["mystery"] = 1
    with open(path, "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(InputError, match=r"unknown NAF keys \['mystery'\]"):
        read_naf_pickle(path)


# ---------------------------------------------------------------------- projection stacks
@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_projection_stack_with_sidecar(tmp_path, geo, suffix):
    proj, _ = _data(geo)
    path = write_projection_stack(tmp_path / f"scan{suffix}", proj, geo)
    assert (tmp_path / "scan.json").exists()
    back = read_projection_stack(path)
    assert back.geometry == geo
    np.testing.assert_array_equal(back.projections, proj)


def test_projection_stack_tigre_yaml_and_errors(tmp_path, geo):
    proj, _ = _data(geo)
    np.save(tmp_path / "scan.npy", proj)
    import yaml

    tig = geo.to_tigre_dict()
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump(tig))
    assert read_projection_stack(tmp_path / "scan.npy").geometry == geo
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump({**tig, "angles": tig["angles"][:4]}))
    with pytest.raises(InputError, match="5 projections but 4 angles"):
        read_projection_stack(tmp_path / "scan.npy")
    other = dataclasses.replace(geo, n_detector=(6, 9))
    with pytest.raises(InputError, match="6x8 pixels but the geometry's detector is 6x9"):
        read_projection_stack(tmp_path / "scan.npy", other)
    bad = proj.copy()
    bad[0, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="NaN/inf"):
        read_projection_stack(tmp_path / "bad.npy", geo)
    with pytest.raises(InputError, match="no geometry given"):
        read_projection_stack(tmp_path / "bad.npy")


# ---------------------------------------------------------------------- volumes
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_nifti_roundtrip_with_spacing(tmp_path, name):
    import nibabel as nib

    vol = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    path = write_nifti(tmp_path / name, vol, (2.0, 1.5, 1.0), origin_mm=(10.0, 20.0, 30.0))
    assert path.name == name and sorted(p.name for p in tmp_path.iterdir()) == [name]
    img = nib.load(str(path))
    assert img.shape == (5, 4, 3)  # NIfTI data are [x, y, z]
    np.testing.assert_allclose(np.diag(img.affine)[:3], [1.0, 1.5, 2.0])
    np.testing.assert_allclose(img.affine[:3, 3], [30.0, 20.0, 10.0])
    back, spacing = read_nifti(path)
    np.testing.assert_array_equal(back, vol)
    assert spacing == (2.0, 1.5, 1.0)


def test_dicom_series_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, size=(4, 6, 5)).astype(np.float32)
    write_dicom_series(tmp_path / "dcm", hu, (2.5, 0.7, 0.6))
    import pydicom

    ds = pydicom.dcmread(tmp_path / "dcm" / "slice_0002.dcm")
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024.0 and list(map(float, ds.PixelSpacing)) == [0.7, 0.6]
    back, spacing = read_dicom_series(tmp_path / "dcm")
    np.testing.assert_array_equal(back, hu)
    assert spacing == pytest.approx((2.5, 0.7, 0.6))
    # a finer rescale slope keeps half-HU values
    write_dicom_series(tmp_path / "fine", hu / 2, (1.0, 1.0, 1.0), rescale_slope=0.5)
    np.testing.assert_array_equal(read_volume(tmp_path / "fine")[0], hu / 2)
    with pytest.raises(InputError, match="does not fit int16"):
        write_dicom_series(tmp_path / "x", hu * 100, (1, 1, 1))


def test_tiff_and_npy_and_dispatch(tmp_path):
    vol = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    write_tiff_stack(tmp_path / "v.tif", vol, (2.0, 1.5, 1.0))
    back, spacing = read_tiff_stack(tmp_path / "v.tif")
    np.testing.assert_array_equal(back, vol)
    assert spacing == pytest.approx((2.0, 1.5, 1.0))
    write_volume(tmp_path / "v.npy", vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.npy")[0], vol)
    with pytest.raises(InputError, match="unknown volume type"):
        write_volume(tmp_path / "v.mhd", vol)
    with pytest.raises(InputError, match="3D"):
        write_volume(tmp_path / "v.npy", vol[0])


def test_angles_in_geometry_match_r2_protocol():
    np.testing.assert_allclose(circular_angles(50)[1], 2 * np.pi / 50)
