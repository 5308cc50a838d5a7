"""The recon view server: bind address, what it refuses to serve, bad folders, and the data it
computes for the client (run state and banners, HU volumes, MIPs, scan geometry, points)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from recon_viewer import ct_volumes
from recon_viewer.runs import check_run_folder
from recon_viewer.splats import SH_C0, read_ply_header
from recon_viewer.synthetic import chest_phantom_hu

from recon.io.units import MU_WATER_PER_MM, mu_to_hu
from recon.geometry.ct import CTGeometry, circular_angles
from recon.errors import InputError
from recon.io.ply import read_splat_ply
from tests.viewer.conftest import ROOT

PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in (".", "plugins", "viewer"))


def get(server, target: str, method: str = "GET") -> tuple[int, bytes, dict]:
    """Send ``target`` exactly as given (no client-side normalisation of '..' or '%2e')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def get_json(server, target: str):
    status, body, _ = get(server, target)
    assert status == 200, (target, status, body[:200])
    return json.loads(body)


# ---------------------------------------------------------------------- bind address
def test_binds_localhost_by_default(capture_run, serve_runs):
    server = serve_runs(capture_run)
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/"
    assert get(server, "/")[0] == 200
    # another loopback address of this machine is not 127.0.0.1: nothing listens there
    with pytest.raises(OSError):
        socket.create_connection(("127.0.1.1", server.port), timeout=2).close()


def test_all_interfaces_only_when_asked(capture_run, serve_runs):
    server = serve_runs(capture_run, host="0.0.0.0")
    assert server.httpd.server_address[0] == "0.0.0.0"
    socket.create_connection(("127.0.1.1", server.port), timeout=2).close()


def _launch(*args: str, **env_changes: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, **env_changes}
    return subprocess.Popen([sys.executable, "-m", "recon_viewer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_prints_url_within_3_s_and_warns_on_0000(capture_run):
    t0 = time.monotonic()
    proc = _launch(str(capture_run), "--host", "0.0.0.0", "--port", "0", "--no-browser")
    try:
        line = proc.stdout.readline()
        elapsed = time.monotonic() - t0
        assert line.startswith("recon view: http://127.0.0.1:"), line
        assert elapsed < 3.0, f"URL printed after {elapsed:.2f} s"
        port = int(line.split(":")[3].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/runs")
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "warning: listening on 0.0.0.0" in err


def test_no_warning_on_localhost(capture_run):
    proc = _launch(str(capture_run), "--port", "0", "--no-browser")
    try:
        assert proc.stdout.readline().startswith("recon view: http://127.0.0.1:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "warning" not in err


def test_no_display_prints_the_url_instead_of_a_text_browser(capture_run):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen([sys.executable, "-m", "recon_viewer", str(capture_run), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env={**env, "PYTHONPATH": PYTHONPATH, "BROWSER": "false"})
    try:
        url = proc.stdout.readline().split()[2]
        assert proc.stdout.readline().startswith(f"no display here: open {url} in a browser")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# ---------------------------------------------------------------------- bad folders
@pytest.mark.parametrize("what", ["empty", "missing", "file"])
def test_non_run_folder_is_one_line_and_exit_2(tmp_path, what):
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif what == "file":
        path.write_text("not a folder")
    proc = _launch(str(path), "--no-browser", "--port", "0")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), err


def test_recon_view_subcommand_exit_2(tmp_path, capsys):
    from recon.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and "Traceback" not in err


def test_check_run_folder(capture_run, tmp_path):
    assert check_run_folder(capture_run) == capture_run.resolve()
    with pytest.raises(InputError, match="not a run folder"):
        check_run_folder(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        check_run_folder(tmp_path / "nope")


# ---------------------------------------------------------------------- what is served
@pytest.fixture
def fenced_run(tmp_path):
    """A run folder with a secret beside it and symlinks inside (out of and into the run)."""
    run = tmp_path / "run"
    (run / "renders" / "train").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": "recon-run/1", "kind": "capture", "status": "complete"}))
    (run / "renders" / "train" / "a.png").write_bytes(b"\x89PNG fake")
    (run / ".hidden").write_text("dot-file")
    (tmp_path / "secret.txt").write_text("SECRET")
    (run / "link_out").symlink_to(tmp_path / "secret.txt")
    (run / "link_in").symlink_to(run / "run.json")
    (run / "link_dir").symlink_to(tmp_path)
    (run / "link_renders").symlink_to(run / "renders")  # stays inside the run, still refused
    return run


REFUSED = [
    "/files/0/../secret.txt",
    "/files/0/renders/../../secret.txt",
    "/files/0/%2e%2e/secret.txt",
    "/files/0/%2E%2E/secret.txt",
    "/files/0/..%2fsecret.txt",
    "/files/0/%2e%2e%2fsecret.txt",
    "/files/0/renders/%2e%2e/run.json",
    "/files/0/%252e%252e/secret.txt",
    "/files/0/..%5csecret.txt",
    "/files/0//etc/passwd",
    "/files/0/%2fetc%2fpasswd",
    "/etc/passwd",
    "/files/0/etc/passwd",
    "http://127.0.0.1/etc/passwd",
    "/files/0/link_out",
    "/files/0/link_in",
    "/files/0/link_dir/secret.txt",
    "/files/0/link_renders/train/a.png",
    "/files/0/",
    "/files/0",
    "/files/0/renders",
    "/files/0/renders/",
    "/files/0/.hidden",
    "/files/0/./run.json",
    "/files/0/run.json%00.png",
    "/files/1/run.json",
    "/static/",
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/%2e%2e/%2e%2e/runs.py",
    "/api/run/1",
    "/api/run/0/ct/../../../secret.txt",
]


@pytest.mark.parametrize("target", REFUSED)
def test_refuses_paths_outside_or_odd(fenced_run, serve_runs, target):
    server = serve_runs(fenced_run)
    for method in ("GET", "HEAD"):
        status, body, _ = get(server, target, method)
        assert status == 404, (method, target, status)
        assert b"SECRET" not in body and b"root:" not in body and b"import" not in body


def test_serves_run_files_and_assets(fenced_run, serve_runs):
    server = serve_runs(fenced_run)
    status, body, headers = get(server, "/files/0/run.json")
    assert status == 200 and json.loads(body)["status"] == "complete"
    assert get(server, "/files/0/renders/train/a.png")[0] == 200
    assert get(server, "/files/0/renders%2Ftrain%2Fa.png")[0] == 200  # decoded once: same file
    status, body, headers = get(server, "/")
    assert status == 200 and b'src="/static/main.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert get(server, "/static/main.js")[0] == 200
    assert get(server, "/static/app.css")[0] == 200


def test_assets_need_nothing_from_the_network():
    static = ROOT / "viewer" / "recon_viewer" / "static"
    names = sorted(p.name for p in static.iterdir())
    assert "index.html" in names and "main.js" in names
    for path in static.iterdir():
        text = path.read_text(errors="replace")
        for pattern in ('src="http', "src='http", 'href="http', "import(\"http", "import('http", 'from"http', "from'http"):
            assert pattern not in text, (path.name, pattern)
    total = sum(p.stat().st_size for p in static.iterdir())
    assert total < 5_000_000, f"built client is {total / 1e6:.1f} MB"


# ---------------------------------------------------------------------- run state and banners
def _texts(state):
    return [b["text"] for b in state["banners"]]


def test_capture_state(capture_run, serve_runs):
    server = serve_runs(capture_run)
    state = get_json(server, "/api/run/0")
    assert state["kind"] == "capture" and state["status"] == "complete"
    assert state["banners"] == []
    splat = state["capture"]["splat"]
    assert splat["n"] == 3000 and splat["sh_degree"] == 1
    views = state["capture"]["views"]
    assert [v["split"] for v in views].count("train") == 6 and len(views) == 8
    for view in views:
        assert view["scores"]["psnr"] > 20
        for key in ("photo", "render", "compare"):
            assert get(server, view[key])[0] == 200
    assert len(state["log"]) > 10 and "loss" in state["log"][0]
    assert state["config"]["iterations"] == 500


def test_banners_say_what_is_missing(old_capture_run, failed_run, ct_old_run, running_run, serve_runs):
    server = serve_runs(old_capture_run, failed_run, ct_old_run, running_run)
    old, failed, ct_old, running = (get_json(server, f"/api/run/{i}") for i in range(4))
    assert any("no cameras.json (run written by an older recon)" in t for t in _texts(old))
    assert old["capture"]["splat"]["n"] == 600  # the splat still shows
    assert len(old["capture"]["views"]) == 8  # listed from compare/
    assert any(b["level"] == "error" and "synthetic failure for testing" in b["text"] for b in failed["banners"])
    assert any("no geometry.json" in t for t in _texts(ct_old))
    assert any("no reference.nii.gz" in t for t in _texts(ct_old))
    assert any("no mu_water_per_mm" in t and str(MU_WATER_PER_MM) in t for t in _texts(ct_old))
    assert any("still running" in t for t in _texts(running))
    assert any("no splat.ply yet" in t for t in _texts(running))


def test_damaged_files_become_banners(tmp_path, serve_runs):
    run = tmp_path / "damaged"
    run.mkdir()
    (run / "run.json").write_text("{not json")
    (run / "splat.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    (run / "cameras.json").write_text(json.dumps({"views": "nope"}))
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    server = serve_runs(run)
    state = get_json(server, "/api/run/0")
    texts = _texts(state)
    assert any("run.json is not valid JSON" in t for t in texts)
    assert any("splat.ply cannot be shown" in t and "ascii" in t for t in texts)
    assert any("cameras.json has no 'views' list" in t for t in texts)
    assert state["log"] == [{"step": 1, "loss": 0.5}]


# ---------------------------------------------------------------------- splats
def test_ply_header_and_points(capture_run, serve_runs):
    header = read_ply_header(capture_run / "splat.ply")
    assert (header.n, header.sh_degree) == (3000, 1)
    server = serve_runs(capture_run)
    status, data, _ = get(server, "/api/run/0/points.bin")
    assert status == 200
    m = int(np.frombuffer(data[:4], "<u4")[0])
    xyz = np.frombuffer(data, "<f4", count=3 * m, offset=4).reshape(m, 3)
    rgb = np.frombuffer(data, np.uint8, count=3 * m, offset=4 + 12 * m).reshape(m, 3)
    params = read_splat_ply(capture_run / "splat.ply")
    assert m == 3000
    np.testing.assert_allclose(xyz, params["means"].numpy(), atol=1e-6)
    expected = np.clip((0.5 + SH_C0 * params["sh0"][:, 0].numpy()) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)


def test_points_subsample(capture_run):
    from recon_viewer.splats import points_bytes

    data = points_bytes(capture_run / "splat.ply", max_points=100)
    assert int(np.frombuffer(data[:4], "<u4")[0]) == 100 and len(data) == 4 + 100 * 15


# ---------------------------------------------------------------------- CT
def _nifti(server, target):
    status, data, _ = get(server, target)
    assert status == 200, (target, status, data[:200])
    img = nib.Nifti1Image.from_bytes(data)
    return np.transpose(np.asarray(img.dataobj), (2, 1, 0)), img.affine  # -> [z, y, x]


def test_mu_water_fallback_is_recons():
    assert ct_volumes.MU_WATER_PER_MM == MU_WATER_PER_MM


def test_volumes_in_hu_placed_by_geometry(ct_run, serve_runs):
    server = serve_runs(ct_run)
    vol, affine = _nifti(server, "/api/run/0/ct/volume.nii")
    expected = mu_to_hu(np.load(ct_run / "volume.npy"))
    assert vol.dtype == np.int16 and vol.shape == expected.shape == (32, 48, 48)
    assert np.max(np.abs(vol - expected)) <= 0.51
    geometry = CTGeometry.from_dict(json.loads((ct_run / "geometry.json").read_text()))
    zc, yc, xc = geometry.voxel_centres_mm()
    np.testing.assert_allclose(affine[:3, 3], [xc[0], yc[0], zc[0]])
    np.testing.assert_allclose(np.diag(affine)[:3], geometry.voxel_mm[::-1])
    ref, ref_affine = _nifti(server, "/api/run/0/ct/reference.nii")
    assert np.max(np.abs(ref - chest_phantom_hu((32, 48, 48)))) <= 1
    np.testing.assert_allclose(ref_affine, affine)
    diff, _ = _nifti(server, "/api/run/0/ct/difference.nii")
    assert np.max(np.abs(diff.astype(np.int32) - (vol.astype(np.int32) - ref))) <= 1


def test_slab_mip(ct_run, serve_runs):
    from scipy.ndimage import maximum_filter1d

    server = serve_runs(ct_run)
    vol, _ = _nifti(server, "/api/run/0/ct/volume.nii")
    voxel = json.loads((ct_run / "geometry.json").read_text())["voxel_mm"][0]
    for orientation, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        mip, _ = _nifti(server, f"/api/run/0/ct/mip/{orientation}/{3 * voxel:.3f}/volume.nii")
        np.testing.assert_array_equal(mip, maximum_filter1d(vol, 3, axis=axis, mode="nearest"))
    thin, _ = _nifti(server, "/api/run/0/ct/mip/axial/0/volume.nii")
    np.testing.assert_array_equal(thin, vol)
    assert get(server, "/api/run/0/ct/mip/oblique/10/volume.nii")[0] == 404


def test_patient_orientation_in_the_file_is_kept(tmp_path, serve_runs):
    from recon_viewer.synthetic import write_ct_run

    run = write_ct_run(tmp_path / "ct", shape_zyx=(8, 12, 16), reference=False)
    img = nib.load(str(run / "volume.nii.gz"))
    xyz = np.asarray(img.dataobj, dtype=np.float32)
    flipped = np.diag([-2.0, -2.0, 3.0, 1.0])  # x runs to the patient's left, y posterior
    nib.save(nib.Nifti1Image(xyz, flipped), str(run / "volume.nii.gz"))
    server = serve_runs(run)
    vol, affine = _nifti(server, "/api/run/0/ct/volume.nii")
    canonical = nib.as_closest_canonical(nib.load(str(run / "volume.nii.gz")))
    np.testing.assert_allclose(affine, canonical.affine)
    expected = mu_to_hu(np.transpose(np.asarray(canonical.dataobj), (2, 1, 0)))
    assert np.max(np.abs(vol - expected)) <= 0.51
    assert np.max(np.abs(vol - mu_to_hu(np.transpose(xyz, (2, 1, 0))))) > 100  # flipped, not as stored


@pytest.mark.parametrize(("slab", "voxel", "n"), [(0, 2.0, 1), (2.9, 2.0, 1), (3.0, 2.0, 3), (10, 6.667, 1), (10, 2.0, 5), (11, 2.0, 7), (20, 6.667, 3)])
def test_mip_slices(slab, voxel, n):
    assert ct_volumes.mip_slices(slab, voxel) == n


def test_ct_without_reference_has_no_difference(ct_old_run, serve_runs):
    server = serve_runs(ct_old_run)
    assert get(server, "/api/run/0/ct/reference.nii")[0] == 404
    assert get(server, "/api/run/0/ct/difference.nii")[0] == 404
    vol, _ = _nifti(server, "/api/run/0/ct/volume.nii")  # assumed water value, file affine
    assert np.max(np.abs(vol - mu_to_hu(np.load(ct_old_run / "volume.npy")))) <= 0.51


def _geometries():
    angles = tuple(circular_angles(7))
    cone = CTGeometry(mode="cone", n_detector=(20, 30), detector_pixel_mm=(1.5, 1.2), n_voxel=(16, 24, 24), voxel_mm=(1.0, 1.0, 1.0),
                      angles_rad=angles, dsd_mm=900.0, dso_mm=600.0, offset_origin_mm=(3.0, -2.0, 1.0), offset_detector_mm=(4.0, -6.0))
    fan = CTGeometry(mode="fan", n_detector=(1, 40), detector_pixel_mm=(1.0, 1.0), n_voxel=(1, 24, 24), voxel_mm=(1.0, 1.0, 1.0),
                     angles_rad=angles, dsd_mm=500.0, dso_mm=300.0, offset_origin_mm=(5.0, 0.0, 0.0))
    parallel = CTGeometry(mode="parallel", n_detector=(10, 30), detector_pixel_mm=(1.0, 1.0), n_voxel=(8, 24, 24), voxel_mm=(1.0, 1.0, 1.0),
                          angles_rad=angles, offset_detector_mm=(0.0, 2.0))
    vectors = CTGeometry(mode="cone", n_detector=(20, 30), detector_pixel_mm=(1.5, 1.2), n_voxel=(16, 24, 24), voxel_mm=(1.0, 1.0, 1.0),
                         vectors=tuple(map(tuple, cone.as_vectors() + 0.5)))
    return {"cone": cone, "fan": fan, "parallel": parallel, "vectors": vectors}


@pytest.mark.parametrize("name", ["cone", "fan", "parallel", "vectors"])
def test_scan_drawing_matches_recon_geometry(name):
    geometry = _geometries()[name]
    drawing = ct_volumes.scan_drawing(json.loads(json.dumps(geometry.to_dict())))
    rays = geometry.per_view_rays()
    nv, nu = geometry.n_detector
    assert drawing["n_views"] == geometry.n_views
    if rays.source_mm is not None:
        np.testing.assert_allclose(drawing["sources"], rays.source_mm, atol=1e-3)
    else:
        np.testing.assert_allclose(drawing["directions"], rays.ray_direction, atol=1e-5)
    corners = np.asarray(drawing["detectors"])  # [V, 4, 3]
    np.testing.assert_allclose(corners.mean(axis=1), rays.detector_centre_mm, atol=1e-3)
    # top-left corner: half a detector back along U, half up (minus V)
    np.testing.assert_allclose(corners[:, 0], rays.detector_centre_mm - nu / 2 * rays.u_mm - nv / 2 * rays.v_mm, atol=1e-3)
    zc, yc, xc = geometry.voxel_centres_mm()
    lo, hi = drawing["volume_box"]
    dz, dy, dx = geometry.voxel_mm
    np.testing.assert_allclose(lo, [xc[0] - dx / 2, yc[0] - dy / 2, zc[0] - dz / 2])
    np.testing.assert_allclose(hi, [xc[-1] + dx / 2, yc[-1] + dy / 2, zc[-1] + dz / 2])


def test_ct_state(ct_run, serve_runs):
    server = serve_runs(ct_run)
    state = get_json(server, "/api/run/0")
    assert state["kind"] == "ct" and state["banners"] == []
    assert state["ct"]["mu_water_per_mm"] == MU_WATER_PER_MM and state["ct"]["units"] == "attenuation_per_mm"
    assert state["ct"]["drawing"]["n_views"] == 25 and len(state["ct"]["drawing"]["sources"]) == 25
    assert state["metrics"]["psnr_3d"] > 20
