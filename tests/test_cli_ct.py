"""``recon ct simulate`` / ``recon ct fit`` from the command line: outputs and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.ct.phantoms import shepp_logan_3d
from tests._floors import constant_volume_scores


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    vol = shepp_logan_3d((16, 16, 16)).astype(np.float32)
    hu = -1000.0 + 1200.0 * vol / vol.max()
    path = tmp_path_factory.mktemp("vol") / "phantom.npz"
    np.savez(path, volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    return path


@pytest.fixture(scope="module")
def scan(volume, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "scan"
    assert main(["ct", "simulate", str(volume), "--views", "12", "--n-test", "2", "--detector", "32", "--out", str(out)]) == 0
    return out


def _errors(args, capsys, *needles) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    msg = " ".join(ln for ln in err.splitlines() if ln.strip())
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_simulate_writes_r2gaussian_layout(scan):
    meta = json.loads((scan / "meta_data.json").read_text())
    assert len(meta["proj_train"]) == 12 and len(meta["proj_test"]) == 2
    assert (scan / "vol_gt.npy").is_file()


GAUSSIAN_FLAGS = ["--gaussian.n-gaussians", "800", "--gaussian.init-fit-steps", "2"]


@pytest.mark.parametrize("method", ["fdk", "sart", "gaussian"])
def test_fit_writes_volume_slices_and_scores(scan, tmp_path, capfd, method):
    out = tmp_path / method
    extra = {"sart": ["--iterations", "3"], "gaussian": ["--iterations", "20", *GAUSSIAN_FLAGS]}
    code = main(["ct", "fit", str(scan), "--method", method, "--out", str(out), *extra.get(method, [])])
    err = capfd.readouterr().err
    assert code == 0, err
    flat = err.replace("\n", "")
    assert "3D PSNR" in flat and "volume.nii.gz" in flat and "metrics.json" in flat
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["n_views"] == 12
    # a reconstruction, not a blank: the best constant volume scores 14.1 dB (SSIM <= 0.17);
    # FDK 22.5 dB / 0.74, 3 SART iterations 25.2 / 0.89, 20 Gaussian steps 21.5 / 0.76
    blank = constant_volume_scores(np.load(scan / "vol_gt.npy"))
    assert np.isfinite(metrics["psnr_3d"]) and metrics["psnr_3d"] > blank["psnr_3d"] + 5.0, (metrics["psnr_3d"], blank)
    assert metrics["ssim_3d"] > blank["ssim_3d"] + 0.4, (metrics["ssim_3d"], blank)
    if method == "gaussian":  # training adds to the SART-initialised Gaussians (19.9 dB, SSIM 0.57)
        start = tmp_path / "untrained"
        assert main(["ct", "fit", str(scan), "--method", method, "--out", str(start), "--iterations", "0", *GAUSSIAN_FLAGS]) == 0
        untrained = json.loads((start / "metrics.json").read_text())
        assert metrics["psnr_3d"] > untrained["psnr_3d"] + 0.8, (metrics["psnr_3d"], untrained["psnr_3d"])
        assert metrics["ssim_3d"] > untrained["ssim_3d"] + 0.1, (metrics["ssim_3d"], untrained["ssim_3d"])
    assert np.load(out / "volume.npy").shape == (16, 16, 16)
    assert (out / "volume.nii.gz").is_file() and any((out / "slices").glob("*.png"))


def test_tv_solver_options_reach_the_run(scan, tmp_path):
    """``--method tv`` runs the fista solver by default, its --tv.fista-* options are recorded in
    the run's config, and ``--tv.solver adam`` still selects Adam."""
    out = tmp_path / "tv"
    assert main(["ct", "fit", str(scan), "--method", "tv", "--iterations", "6", "--tv.fista-huber", "0.2", "--tv.fista-subset-views", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tv_solver"] == "fista" and metrics["iterations"] == 6
    flat = " ".join(p.read_text() for p in out.glob("*.json"))
    assert '"fista_huber": 0.2' in flat and '"fista_subset_views": 3' in flat
    adam = tmp_path / "adam"
    assert main(["ct", "fit", str(scan), "--method", "tv", "--tv.solver", "adam", "--iterations", "3", "--out", str(adam)]) == 0
    assert json.loads((adam / "metrics.json").read_text())["tv_solver"] == "adam"


def test_sart_beats_fdk_at_12_views(scan, tmp_path):
    assert main(["ct", "fit", str(scan), "--method", "fdk", "--out", str(tmp_path / "f")]) == 0
    assert main(["ct", "fit", str(scan), "--method", "sart", "--iterations", "10", "--out", str(tmp_path / "s")]) == 0
    fdk = json.loads((tmp_path / "f" / "metrics.json").read_text())["psnr_3d"]
    sart = json.loads((tmp_path / "s" / "metrics.json").read_text())["psnr_3d"]
    assert sart > fdk + 1.0, (sart, fdk)


def test_missing_data_is_one_line(tmp_path, capsys):
    _errors(["ct", "fit", str(tmp_path / "nope"), "--method", "fdk", "--out", str(tmp_path / "o")], capsys, "nope")
    assert not (tmp_path / "o").exists()


def test_mismatched_projection_count(scan, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in scan.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
        else:
            (bad / f.name).mkdir()
            for g in f.iterdir():
                (bad / f.name / g.name).write_bytes(g.read_bytes())
    meta = json.loads((bad / "meta_data.json").read_text())
    meta["proj_train"] = meta["proj_train"][:-1]  # an angle disappears, its projection stays
    (bad / "meta_data.json").write_text(json.dumps(meta))
    np.save(bad / "vol_gt.npy", np.full((16, 16, 16), np.nan, np.float32))
    _errors(["ct", "fit", str(bad), "--method", "fdk", "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()


def test_existing_run_is_kept(scan, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["ct", "fit", str(scan), "--method", "fdk", "--out", str(out)]) == 0
    before = (out / "volume.npy").read_bytes()
    _errors(["ct", "fit", str(scan), "--method", "fdk", "--out", str(out)], capsys, "exists")
    assert (out / "volume.npy").read_bytes() == before


def test_views_out_of_range(scan, tmp_path, capsys):
    _errors(["ct", "fit", str(scan), "--method", "fdk", "--views", "40", "--out", str(tmp_path / "o")], capsys, "--views", "12")
    assert not (tmp_path / "o").exists()


def _copy_scan(scan: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(scan, dst)
    return dst


def _edited_meta(edit):
    def make(scan, tmp):
        bad = _copy_scan(scan, tmp / "bad")
        meta = json.loads((bad / "meta_data.json").read_text())
        needle = edit(meta)
        (bad / "meta_data.json").write_text(json.dumps(meta))
        return bad, [], needle

    return make


def _negative_dsd(meta):
    meta["scanner"]["DSD"] = -1.0
    return "meta_data.json: scanner geometry: CTGeometry.dsd_mm"


def _text_dsd(meta):
    meta["scanner"]["DSD"] = "far"
    return "meta_data.json: scanner geometry"


def _unknown_key(meta):
    meta["surprise"] = 1
    return "unknown keys"


def _stack(edit_projections):
    """A projection stack (.npy + .json geometry) of the scan with its projections edited."""

    def make(scan, tmp):
        from recon.io.r2gaussian import read_r2gaussian
        from recon.io.tigre import write_projection_stack

        data = read_r2gaussian(scan)
        write_projection_stack(tmp / "stack.npy", data.projections, data.geometry)
        projections, needle = edit_projections(data.projections.copy())
        np.save(tmp / "stack.npy", projections)
        return tmp / "stack.npy", [], needle

    return make


def _nan_projection(p):
    p[3, 4, 5] = np.nan
    return p, "NaN"


BAD_SCANS = {
    "missing-data": lambda scan, tmp: (tmp / "nope", [], "nope"),
    "truncated-meta": lambda scan, tmp: ((lambda d: ((d / "meta_data.json").write_text('{"scanner": {'), d)[1])(_copy_scan(scan, tmp / "bad")), [], "meta_data.json"),
    "missing-projection-file": lambda scan, tmp: ((lambda d: (next((d / "proj_train").iterdir()).unlink(), d)[1])(_copy_scan(scan, tmp / "bad")), [], "proj_train"),
    "negative-distance": _edited_meta(_negative_dsd),
    "distance-not-a-number": _edited_meta(_text_dsd),
    "unknown-meta-key": _edited_meta(_unknown_key),
    "count-disagrees-with-angles": _stack(lambda p: (p[:10], "10 projections but 12 angles")),
    "detector-disagrees-with-geometry": _stack(lambda p: (p[:, :30], "detector")),
    "nan-projection": _stack(_nan_projection),
    "too-many-views": lambda scan, tmp: (scan, ["--views", "13"], "--views"),
    "bad-relaxation": lambda scan, tmp: (scan, ["--method", "sart", "--relaxation", "2.5"], "relaxation"),
    "negative-huber": lambda scan, tmp: (scan, ["--method", "tv", "--tv.fista-huber", "-1"], "--tv.fista-huber"),
    "resume-non-iterative": lambda scan, tmp: (scan, ["--resume"], "resume"),
    "missing-prior-weights": lambda scan, tmp: (scan, ["--prior", "unet", "--prior-path", str(tmp / "w")], "train_ct_refiner"),
}


@pytest.mark.parametrize("case", list(BAD_SCANS))
def test_bad_input_is_one_line_and_writes_no_run_folder(scan, tmp_path, capsys, case):
    data, args, needle = BAD_SCANS[case](scan, tmp_path)
    out = tmp_path / "run"
    code = main(["ct", "fit", str(data), "--method", "fdk", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists()


def test_console_script_lists_ct():
    out = subprocess.run([sys.executable, "-m", "recon.cli", "ct", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "fit" in out.stdout and "simulate" in out.stdout


HEAVY_MODULES = ("diffusers", "transformers", "peft")


def test_tv_fit_imports_no_diffusion_stack(scan, tmp_path):
    """``recon ct fit --method tv`` must not pay for the diffusion prior's imports (seconds of CPU
    in every command): only --method diffusion and --prior load them. Nor for pyplot (figures
    use matplotlib's object-oriented API)."""
    code = (
        "import json, sys\n"
        "from recon.cli import main\n"
        f"rc = main(['ct', 'fit', {str(scan)!r}, '--method', 'tv', '--iterations', '2', '--out', {str(tmp_path / 'tv')!r}])\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r} or m == 'matplotlib.pyplot')\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, out.stderr
    assert result["heavy"] == [], result["heavy"][:10]
    assert (tmp_path / "tv" / "metrics.json").is_file()
