"""recon.prior.dds: the data-consistency step, the schedule, and ``recon ct fit --method diffusion`` end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ct.phantoms import shepp_logan_3d
from recon.ct.project import Projector
from recon.errors import InputError
from recon.pipelines.ct import CTFitConfig
from recon.pipelines.ct_simulate import CTSimulateConfig
from recon.prior.ct_diffusion import SliceDiffusion
from recon.prior.dds import (
    DiffusionConfig,
    data_consistency,
    dds_reconstruct,
    ray_weights,
    timestep_schedule,
)
from tests.ct.conftest import MU, cone_geometry, psnr


def _weighted_residual(projector, mu, b, w) -> float:
    r = projector.forward(mu) - b
    return float((w * r * r).sum())


def _tiny_model(seed: int = 0) -> SliceDiffusion:
    torch.manual_seed(seed)
    return SliceDiffusion(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=8, train_crop=16).eval()


# ---------------------------------------------------------------------------- data consistency
def test_data_consistency_reduces_the_projection_residual():
    geo = cone_geometry(n_views=8, n=16)
    projector = Projector(geo, num_threads=None)
    ref = torch.from_numpy(shepp_logan_3d((16, 16, 16))).float() * MU
    b = projector.forward(ref)
    w = ray_weights(projector, geo)
    start = (ref + 0.3 * MU * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))).clamp_min(0)
    residuals = [_weighted_residual(projector, data_consistency(start, b, projector, w, iterations=k), b, w) for k in range(5)]
    assert residuals[0] == pytest.approx(_weighted_residual(projector, start, b, w))  # 0 iterations: unchanged
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in itertools.pairwise(residuals)), residuals  # CGLS: monotone
    assert residuals[3] < 0.2 * residuals[0], residuals
    damped = data_consistency(start, b, projector, w, iterations=3, damping=1e3)
    assert _weighted_residual(projector, damped, b, w) < residuals[0]
    assert float((damped - start).norm()) < float((data_consistency(start, b, projector, w, iterations=3) - start).norm())  # damping holds it near the start


def test_data_consistency_bad_input():
    geo = cone_geometry(n_views=4, n=16)
    projector = Projector(geo, num_threads=None)
    b = torch.zeros(geo.projection_shape)
    with pytest.raises(InputError, match="data_consistency"):
        data_consistency(torch.zeros(16, 16), b, projector, b)
    with pytest.raises(InputError, match="weights"):
        data_consistency(torch.zeros(16, 16, 16), b, projector, b[:2])


def test_timestep_schedule():
    assert timestep_schedule(100, 5) == [100, 75, 50, 25, 0]
    assert timestep_schedule(2, 10) == [2, 1, 0]  # distinct, fewer when the range is short
    assert timestep_schedule(0, 3) == [0]


@pytest.mark.parametrize("field,value", [("steps", 0), ("t_start", 1000), ("eta", 1.5), ("tv_z", -1.0), ("init", "sart")])
def test_config_validation(field, value):
    cfg = DiffusionConfig(**{field: value})
    with pytest.raises(InputError, match=f"--diffusion.{field.replace('_', '-')}"):
        cfg.validate()


def test_dds_reconstruct_beats_its_noisy_start_with_an_untrained_model():
    """Even with a random network the data-consistency steps pull a noisy start towards the scan."""
    geo = cone_geometry(n_views=12, n=16)
    projector = Projector(geo, num_threads=None)
    ref = torch.from_numpy(shepp_logan_3d((16, 16, 16))).float() * MU
    b = projector.forward(ref)
    start = (ref + 0.5 * MU * torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))).clamp_min(0)
    seen = []
    out = dds_reconstruct(b, geo, _tiny_model(), start, DiffusionConfig(steps=4, t_start=50, cg_iterations=4), projector=projector,
                          progress=lambda s, n, r: seen.append((s, n, r["t"])))  # fmt: skip
    assert out.shape == ref.shape and bool(torch.isfinite(out).all()) and float(out.min()) >= 0
    assert [s for s, _n, _t in seen] == [1, 2, 3, 4] and seen[-1][2] == 0.0
    assert psnr(out, ref) > psnr(start, ref) + 3.0, (psnr(out, ref), psnr(start, ref))
    with pytest.raises(InputError, match="multiples of 2"):
        g15 = cone_geometry(n_views=4, n=15)
        dds_reconstruct(torch.zeros(g15.projection_shape), g15, _tiny_model(), torch.zeros(g15.n_voxel))


# ---------------------------------------------------------------------------- recon ct fit --method diffusion
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16^3 Shepp-Logan phantom in HU, simulated with 12 noisy views (as tests/pipelines/test_ct.py)."""
    vol = shepp_logan_3d((16, 16, 16)).astype(np.float32)
    hu = -1000.0 + 1000.0 * vol / vol.max() * 1.2
    folder = tmp_path_factory.mktemp("dds_data")
    np.savez(folder / "phantom.npz", volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    CTSimulateConfig(folder / "phantom.npz", views=12, out=folder / "ds", n_test=0, detector=32).run()
    return folder / "ds"


def test_fit_diffusion_end_to_end_through_the_cli(dataset, tmp_path):
    from recon.cli import main

    weights = tmp_path / "w"
    _tiny_model(seed=3).save_pretrained(weights)
    out = tmp_path / "run"
    args = ["ct", "fit", str(dataset), "--method", "diffusion", "--diffusion.weights", str(weights), "--diffusion.steps", "3",
            "--diffusion.t-start", "60", "--tv.iterations", "20", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    vol, init = np.load(out / "volume.npy"), np.load(out / "volume_init.npy")
    ref = np.load(dataset / "vol_gt.npy") if (dataset / "vol_gt.npy").is_file() else None
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all() and not np.array_equal(vol, init)
    assert m["method"] == "diffusion" and m["diffusion_steps"] == 3 and m["diffusion_weights"] == str(weights)
    assert m["init"].startswith("tv (fista") and {"psnr_3d", "psnr_3d_init", "ssim_3d", "ssim_3d_init"} <= set(m)
    # floors: far above a blank (all-zero) or constant volume of the reference's mean
    if ref is None:
        from recon.io.r2gaussian import read_r2gaussian

        ref = read_r2gaussian(dataset).volume
    blank = psnr(np.zeros_like(ref), ref)
    constant = psnr(np.full_like(ref, ref.mean()), ref)
    assert m["psnr_3d"] > max(blank, constant) + 8.0, (m["psnr_3d"], blank, constant)
    assert m["psnr_3d"] > m["psnr_3d_init"] - 3.0  # the random network does not wreck the TV start
    # --diffusion.init-volume: the same start read from a file gives the same run
    again = CTFitConfig(dataset, method="diffusion", out=tmp_path / "again",
                        diffusion=DiffusionConfig(weights=weights, steps=3, t_start=60, init_volume=out / "volume_init.npy")).run()  # fmt: skip
    assert again["init"].startswith("given volume") and again["psnr_3d_init"] == m["psnr_3d_init"]
    np.testing.assert_allclose(np.load(tmp_path / "again" / "volume.npy"), vol, atol=1e-5)
    np.save(tmp_path / "small.npy", np.zeros((8, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"shape \[16, 16, 16\]"):
        CTFitConfig(dataset, method="diffusion", out=tmp_path / "bad", diffusion=DiffusionConfig(weights=weights, init_volume=tmp_path / "small.npy")).run()
    assert not (tmp_path / "bad").exists()


def test_fit_diffusion_bad_weights_one_line_and_nothing_written(dataset, tmp_path, capsys):
    from recon.cli import main

    with pytest.raises(InputError, match="train_ct_prior.py") as err:
        CTFitConfig(dataset, method="diffusion", out=tmp_path / "a", diffusion=DiffusionConfig(weights=tmp_path / "missing")).run()
    assert "\n" not in str(err.value) and str(tmp_path / "missing") in str(err.value)
    corrupt = tmp_path / "corrupt"
    _tiny_model().save_pretrained(corrupt)
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="could not load") as err:
        CTFitConfig(dataset, method="diffusion", out=tmp_path / "b", diffusion=DiffusionConfig(weights=corrupt)).run()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code = main(["ct", "fit", str(dataset), "--method", "diffusion", "--diffusion.weights", str(corrupt), "--out", str(tmp_path / "c")])
    assert code == 2 and not (tmp_path / "c").exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "could not load" in errors[0], errors
    with pytest.raises(InputError, match="--resume"):
        CTFitConfig(dataset, method="diffusion", out=tmp_path / "d", resume=True).run()
