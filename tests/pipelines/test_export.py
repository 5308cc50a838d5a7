"""``recon export``: a complete run's splat.ply, an interrupted run's newest checkpoint (free or
anchored Gaussians), and one-line errors for folders it cannot export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.errors import InputError
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from recon.pipelines.capture import CaptureFitConfig
from recon.pipelines.export import export_run, load_run_params
from recon.splat.anchored import AnchoredConfig
from recon.train import read_checkpoint

PARAMS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _cfg(data, out, **kw) -> CaptureFitConfig:
    base = {"data": data, "out": out, "preset": "plain", "train_views": (3,), "eval_views": 1, "downscale": 16.0,
            "iterations": 6, "init_points": 300, "checkpoint_every": 2}  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base)


def _interrupt_at(step: int):
    def stop(s, total, stats):
        if s == step:
            raise KeyboardInterrupt

    return stop


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert set(a) >= set(PARAMS) and set(b) >= set(PARAMS)
    for name in PARAMS:
        torch.testing.assert_close(a[name].float(), b[name].float(), msg=name, **tol)


def test_complete_run_exports_its_splat_ply(small_fox, tmp_path):
    out = tmp_path / "run"
    _cfg(small_fox, out).setup().run()
    path = export_run(out)
    assert path == out / "export" / "splat.ply"
    exported, final = read_splat_ply(path), read_splat_ply(out / "splat.ply")
    _assert_same(exported, final, rtol=0, atol=0)
    assert exported["shN"].shape[1] == 15 and torch.isfinite(exported["means"]).all()
    assert export_run(out, "ply", tmp_path / "elsewhere" / "x.ply") == tmp_path / "elsewhere" / "x.ply"


def test_interrupted_run_exports_its_newest_checkpoint(small_fox, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20, checkpoint_every=10).setup().run(progress=_interrupt_at(5))
    run = RunDir(out)
    assert run.status()["status"] == "interrupted" and not (out / "splat.ply").exists()  # no preview before step 10
    ckpt = read_checkpoint(run)
    assert ckpt["step"] == 5  # the cancelled step's checkpoint, written on the way out
    exported = read_splat_ply(export_run(out, out=tmp_path / "x.ply"))
    model = ckpt["trainer"]["fields"][0]["model"]
    _assert_same(exported, {k.removeprefix("params."): v for k, v in model.items()}, rtol=0, atol=0)
    # what the checkpoint's model renders is what the PLY renders: a trainer resumed from it agrees
    trainer = _cfg(small_fox, tmp_path / "other", iterations=20).setup().trainer
    trainer.load_state_dict(ckpt["trainer"])
    _assert_same(exported, {k: v.detach() for k, v in trainer.model.params.items()}, rtol=0, atol=0)


def test_interrupted_anchored_run_exports_the_decoded_gaussians(small_fox, tmp_path):
    anchored = {"model": "anchored", "init_points": 2000, "anchored": AnchoredConfig(max_anchors=300, planes=(8, 16))}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20, **anchored).setup().run(progress=_interrupt_at(3))
    assert RunDir(out).status()["status"] == "interrupted"
    ckpt = read_checkpoint(RunDir(out))
    assert ckpt["trainer"]["model_kind"] == "anchored"
    exported = read_splat_ply(export_run(out))
    # the same Gaussians as the checkpoint's model decodes (what a resumed fit would render)
    trainer = _cfg(small_fox, tmp_path / "other", iterations=20, **anchored).setup().trainer
    trainer.load_state_dict(ckpt["trainer"])
    want = trainer.model.to_gaussian_model()
    assert exported["means"].shape[0] == want.num_gaussians > 0
    _assert_same(exported, {k: v.detach() for k, v in want.params.items()}, rtol=1e-5, atol=1e-5)
    assert exported["shN"].shape[1] == 15  # SH degree 3 decoded, as a complete run's splat.ply


def test_cli_export_of_an_interrupted_run(small_fox, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20).setup().run(progress=_interrupt_at(3))
    code = main(["export", str(out), "--out", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert str(tmp_path / "x.ply") in err.replace("\n", "")
    assert read_splat_ply(tmp_path / "x.ply")["means"].shape[0] > 0


def _ct_run(tmp_path):
    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct import CTFitConfig
    from recon.pipelines.ct_simulate import CTSimulateConfig

    np.savez(tmp_path / "p.npz", volume=(shepp_logan_3d((8, 8, 8)) * 1000 - 1000).astype(np.float32),
             spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))  # fmt: skip
    CTSimulateConfig(tmp_path / "p.npz", views=6, out=tmp_path / "scan", n_test=0, detector=16).run()
    CTFitConfig(tmp_path / "scan", method="sart", iterations=5, out=tmp_path / "ct").run()
    return tmp_path / "ct"


def _no_checkpoint_run(tmp_path):
    run = RunDir(tmp_path / "empty_run")
    run.mark("running", kind="capture")
    return run.root


def _torn_checkpoint_run(tmp_path):
    run = RunDir(tmp_path / "torn")
    run.mark("interrupted", kind="capture")
    run.checkpoints.mkdir()
    run.checkpoint_path(10).write_bytes(b"PK\x03\x04 half a zip")
    return run.root


def _bad_run_json(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_bytes(b"\xff\xfe{")
    return tmp_path / "bad"


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p / "missing", "run folder not found"),
        (_no_checkpoint_run, "no splat.ply and no checkpoint"),
        (_torn_checkpoint_run, "ckpt_0000010.pt"),
        (_bad_run_json, "run.json"),
        (_ct_run, "CT run"),
    ],
    ids=["missing", "no-checkpoint", "torn-checkpoint", "bad-run-json", "ct-run"],
)
def test_folders_that_cannot_be_exported_are_one_line_errors(tmp_path, capsys, make, needle):
    run_dir = make(tmp_path)
    with pytest.raises(InputError, match=needle):
        load_run_params(run_dir)
    code = main(["export", str(run_dir), "--format", "ply", "--out", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "x.ply").exists()


def test_export_metadata_unchanged(small_fox, tmp_path):
    """Exporting reads the run; it does not touch run.json or metrics.json."""
    out = tmp_path / "run"
    _cfg(small_fox, out, iterations=2).setup().run()
    before = {name: (out / name).read_bytes() for name in ("run.json", "metrics.json", "config.json")}
    export_run(out)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads(before["run.json"])["status"] == "complete"


# ------------------------------------------------------------------ meshes, points, DICOM, NIfTI
def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


def test_capture_mesh_is_coloured_and_states_whether_it_is_closed(tiny_capture_run, tmp_path, capsys):
    from recon.geometry.mesh import boundary_edges, is_watertight
    from recon.io.mesh import read_mesh
    from recon.splat.mesh import tsdf_backend

    out = tmp_path / "m.ply"
    code, err = _cli(["export", str(tiny_capture_run), "--format", "mesh", "--out", str(out), "--resolution", "48",
                      "--ring-views", "4", "--target-faces", "3000"], capsys)  # fmt: skip
    assert code == 0, err
    mesh = read_mesh(out)
    assert 0 < mesh.n_faces <= 3000 and mesh.colours is not None
    text = err.replace("\n", " ")
    assert f"watertight {is_watertight(mesh)}" in text  # what the CLI states is what the file is
    assert f"boundary edges {boundary_edges(mesh)}" in text and "holes filled" in text
    assert f"tsdf {tsdf_backend('auto')}" in text
    # the mesh lies inside the scene the training cameras look at: near the Gaussians
    means = read_splat_ply(tiny_capture_run / "splat.ply")["means"].numpy()
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    pad = 0.25 * (hi - lo).max()
    assert np.all(mesh.vertices.min(0) > lo - pad) and np.all(mesh.vertices.max(0) < hi + pad)


def test_scalable_tsdf_on_an_open3d_that_cannot_fuse_into_it_is_one_line(tiny_capture_run, tmp_path, capsys, monkeypatch):
    from recon.splat import mesh as mesh_module

    monkeypatch.setattr(mesh_module, "scalable_tsdf_works", lambda: False)  # as on Open3D 0.20.0
    out = tmp_path / "m.ply"
    code, err = _cli(["export", str(tiny_capture_run), "--format", "mesh", "--out", str(out), "--tsdf", "scalable"], capsys)
    _one_line_error(code, err, "--tsdf: scalable")
    assert "open3d<0.20" in err and not out.exists()


def test_capture_points_have_normals_and_colours(tiny_capture_run, tmp_path, capsys):
    from plyfile import PlyData

    out = tmp_path / "p.ply"
    code, err = _cli(["export", str(tiny_capture_run), "--format", "points", "--out", str(out)], capsys)
    assert code == 0, err
    v = PlyData.read(str(out))["vertex"]
    names = {p.name for p in v.properties}
    assert {"x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"} <= names
    n = np.stack([v["nx"], v["ny"], v["nz"]], 1)
    n_gauss = read_splat_ply(tiny_capture_run / "splat.ply")["means"].shape[0]
    assert 0 < len(n) <= n_gauss and np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("iso, suffix", [("skin", ".ply"), ("-400", ".stl"), ("-300", ".obj")])
def test_ct_mesh_is_closed_in_mm_inside_the_volume(tiny_ct_run, tmp_path, capsys, iso, suffix):
    from recon.geometry.ct import CTGeometry
    from recon.geometry.mesh import is_watertight
    from recon.io.mesh import read_mesh

    out = tmp_path / f"m{suffix}"
    code, err = _cli(["ct", "export", str(tiny_ct_run), "--format", "mesh", "--iso", iso, "--out", str(out)], capsys)
    assert code == 0, err
    mesh = read_mesh(out)
    assert mesh.n_faces > 0 and is_watertight(mesh)  # closed at the volume's border, as stated
    assert "watertight True" in err.replace("\n", " ")
    geo = CTGeometry.from_dict(json.loads((tiny_ct_run / "geometry.json").read_text()))
    zc, yc, xc = geo.voxel_centres_mm()
    half = np.array(geo.voxel_mm)[::-1] / 2 + 1e-3  # (x, y, z)
    lo = np.array([xc[0], yc[0], zc[0]]) - half
    hi = np.array([xc[-1], yc[-1], zc[-1]]) + half
    assert np.all(mesh.vertices.min(0) >= lo) and np.all(mesh.vertices.max(0) <= hi)
    assert "volume ml" in err.replace("\n", " ")  # stated for closed meshes


def test_ct_mesh_volume_shrinks_as_iso_rises(tiny_ct_run, tmp_path):
    from recon.geometry.mesh import signed_volume
    from recon.io.mesh import read_mesh
    from recon.pipelines.export import CTExportConfig

    vols = []
    for iso in ("-600", "-450", "-300"):
        path = CTExportConfig(tiny_ct_run, format="mesh", iso=iso, smooth=0, out=tmp_path / f"{iso}.ply").run().path
        vols.append(signed_volume(read_mesh(path)))
    assert vols[0] > vols[1] > vols[2] > 0


def test_dicom_round_trip_pydicom_and_simpleitk_match_the_nifti(tiny_ct_run, tmp_path, capsys):
    import pydicom
    import SimpleITK as sitk

    from recon.io.units import mu_to_hu

    out = tmp_path / "series"
    code, err = _cli(["ct", "export", str(tiny_ct_run), "--format", "dicom", "--out", str(out)], capsys)
    assert code == 0, err
    files = sorted(out.glob("*.dcm"))
    vol = np.load(tiny_ct_run / "volume.npy")
    assert len(files) == vol.shape[0]
    ds = pydicom.dcmread(files[0])
    metrics = json.loads((tiny_ct_run / "metrics.json").read_text())
    assert ds.Modality == "CT" and ds.RescaleType == "HU" and "fdk" in ds.SeriesDescription.lower()
    assert "12" in ds.SeriesDescription  # the number of views
    assert len({pydicom.dcmread(f).SeriesInstanceUID for f in files}) == 1
    hu = mu_to_hu(vol, metrics["mu_water_per_mm"])
    # SimpleITK reads the folder as one volume, where the run's volume.nii.gz lies
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    dicom = reader.Execute()
    nifti = sitk.ReadImage(str(tiny_ct_run / "volume.nii.gz"))
    assert dicom.GetSize() == nifti.GetSize() == vol.shape[::-1]
    np.testing.assert_allclose(dicom.GetSpacing(), nifti.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(dicom.GetOrigin(), nifti.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(dicom.GetDirection(), nifti.GetDirection(), atol=1e-6)
    slope = float(ds.RescaleSlope)
    np.testing.assert_allclose(sitk.GetArrayFromImage(dicom), hu, atol=slope / 2 + 1e-3)
    # re-exporting the same run lands in the same study and series (UIDs derived from the run)
    code, err = _cli(["ct", "export", str(tiny_ct_run), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    again = pydicom.dcmread(min((tmp_path / "again").glob("*.dcm")))
    assert (again.StudyInstanceUID, again.SeriesInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)


def test_nifti_export_in_hu_keeps_the_affine(tiny_ct_run, tmp_path):
    import nibabel as nib

    from recon.io.units import mu_to_hu
    from recon.pipelines.export import export_run

    path = export_run(tiny_ct_run, "nifti", tmp_path / "hu.nii.gz")
    img, ref = nib.load(str(path)), nib.load(str(tiny_ct_run / "volume.nii.gz"))
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    mu = json.loads((tiny_ct_run / "metrics.json").read_text())["mu_water_per_mm"]
    want = np.transpose(mu_to_hu(np.load(tiny_ct_run / "volume.npy"), mu), (2, 1, 0))  # NIfTI stores x, y, z
    np.testing.assert_allclose(np.asarray(img.dataobj), want, atol=1e-2)


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _incomplete(run_dir):
    RunDir(run_dir).mark("running")
    return "not a complete CT run"


def _corrupt_volume(run_dir):
    (run_dir / "volume.npy").write_bytes(b"\x93NUMPY half")
    return "volume.npy"


def _missing_geometry(run_dir):
    (run_dir / "geometry.json").unlink()
    return "geometry.json"


def _wrong_shape(run_dir):
    np.save(run_dir / "volume.npy", np.zeros((3, 4, 5), np.float32))
    return "volume.npy"


@pytest.mark.parametrize("fmt", ["dicom", "mesh", "nifti"])
@pytest.mark.parametrize("damage", [_incomplete, _corrupt_volume, _missing_geometry, _wrong_shape],
                         ids=["incomplete", "corrupt-volume", "no-geometry", "wrong-shape"])  # fmt: skip
def test_bad_ct_runs_are_one_line_errors_and_write_nothing(tiny_ct_run, tmp_path, capsys, fmt, damage):
    run_dir = _copy_run(tiny_ct_run, tmp_path / "run")
    needle = damage(run_dir)
    out = tmp_path / {"dicom": "series", "mesh": "m.stl", "nifti": "v.nii.gz"}[fmt]
    code, err = _cli(["ct", "export", str(run_dir), "--format", fmt, "--out", str(out)], capsys)
    _one_line_error(code, err, needle)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ct", "export", "{capture}"], "is a capture run"),
        (["export", "{capture}", "--format", "dicom"], "does not apply to a capture run"),
        (["export", "{ct}", "--format", "points"], "does not apply to a CT run"),
        (["ct", "export", "{ct}", "--format", "mesh", "--iso", "dense"], "--iso"),
        (["ct", "export", "{ct}", "--format", "mesh", "--iso", "bone"], "outside the volume's range"),
        (["ct", "export", "{ct}", "--format", "mesh", "--out", "{tmp}/m.xyz"], "unknown mesh type"),
        (["ct", "export", "{ct}", "--out", "{tmp}/x.ply"], "DICOM series is a folder"),
        (["export", "{capture}", "--format", "mesh", "--resolution", "2"], "--resolution"),
    ],
    ids=["ct-export-of-capture", "dicom-of-capture", "points-of-ct", "bad-iso", "iso-outside", "mesh-suffix", "dicom-as-file", "resolution"],
)
def test_bad_export_options_are_one_line_errors(tiny_capture_run, tiny_ct_run, tmp_path, capsys, args, needle):
    before = {p: p.stat().st_mtime_ns for r in (tiny_capture_run, tiny_ct_run) for p in r.rglob("*")}
    args = [a.format(capture=tiny_capture_run, ct=tiny_ct_run, tmp=tmp_path) for a in args]
    code, err = _cli(args, capsys)
    _one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for r in (tiny_capture_run, tiny_ct_run) for p in r.rglob("*")} == before
