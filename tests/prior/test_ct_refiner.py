"""recon.prior.ct_refiner: non-air selection, chunked inference, weights, and ``recon ct fit --refine``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ct.analytic import fdk
from recon.io.units import MU_WATER_PER_MM
from recon.ct.phantoms import shepp_logan_3d
from recon.prior.ct_refiner import (
    DEFAULT_WEIGHTS,
    VolumeRefiner,
    load_refiner,
    refine_volume,
    select_non_air,
)
from recon.ct.simulate import simulate_projections
from recon.errors import InputError
from recon.pipelines.ct import CTFitConfig
from recon.pipelines.ct_simulate import CTSimulateConfig
from recon.sparse.tensor import SparseTensor

from tests.ct.conftest import psnr


def _random_model(planes=(4, 8), layers=(1, 1), seed: int = 0, **kw) -> VolumeRefiner:
    """A small refiner with a non-zero head and non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    model = VolumeRefiner(planes=planes, layers=layers, backend="torch", **kw)
    with torch.no_grad():
        model.unet.head.kernel.normal_(0.0, 0.3)
        model.unet.head.bias.normal_(0.0, 0.1)
        for m in model.modules():
            if hasattr(m, "running_mean") and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _cube_phantom(n: int = 32, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Water cube [8:24]^3 with an air cavity [12:20]^3 inside, in 1/mm."""
    vol = np.zeros((n, n, n), np.float32)
    vol[8:24, 8:24, 8:24] = MU_WATER_PER_MM
    vol[12:20, 12:20, 12:20] = 0.0
    if noise:
        vol += np.random.default_rng(seed).normal(0.0, noise, vol.shape).astype(np.float32)
    return vol


# ---------------------------------------------------------------------------- selection
def test_select_non_air_known_answer():
    vol = _cube_phantom()
    thr = 0.3 * MU_WATER_PER_MM
    mask = select_non_air(vol, thr, sigma_vox=0.0, margin_vox=2)
    expected = np.zeros_like(mask)
    expected[6:26, 6:26, 6:26] = True  # cube + 2-voxel margin, cavity filled
    np.testing.assert_array_equal(mask, expected)
    no_fill = select_non_air(vol, thr, sigma_vox=0.0, margin_vox=2, fill_holes=False)
    assert not no_fill[14:18, 14:18, 14:18].any() and no_fill[8:12, 8:24, 8:24].all()
    assert not select_non_air(vol, thr, sigma_vox=0.0, margin_vox=0)[7, 16, 16]


def test_select_non_air_ignores_noise_in_air():
    vol = _cube_phantom(noise=0.25 * MU_WATER_PER_MM)  # air noise would pass the threshold unsmoothed
    thr = 0.3 * MU_WATER_PER_MM
    assert select_non_air(vol, thr, sigma_vox=0.0, margin_vox=0, fill_holes=False)[:4].mean() > 0.05
    mask = select_non_air(vol, thr, sigma_vox=1.5, margin_vox=2)
    assert mask[10:22, 10:22, 10:22].all()  # object and cavity
    assert not mask[:4].any() and not mask[28:].any()  # far air


@pytest.mark.parametrize("bad,match", [(np.zeros((4, 4)), "Z, Y, X"), (np.full((4, 4, 4), np.nan), "NaN"), ([1, 2], "numpy array")])
def test_select_non_air_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        select_non_air(bad, 0.1)


# ---------------------------------------------------------------------------- inference
def test_receptive_radius_bounds_the_reach():
    model = _random_model(planes=(4, 8, 16), layers=(1, 1, 1))
    r = model.receptive_radius()
    assert r == 27
    n = 72
    c = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(5), torch.arange(n), indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(len(c), 1, dtype=torch.long), c], 1).int()
    f = torch.randn(len(c), 2)
    at = (c[:, 0] == 2) & (c[:, 1] == 2) & (c[:, 2] == 36)
    with torch.no_grad():
        y0 = model(SparseTensor(f, coords)).residual
        f[at] += 10.0
        y1 = model(SparseTensor(f, coords)).residual
    moved = c[(y1 - y0).abs() > 0][:, 2] - 36
    assert moved.numel() > 0 and int(moved.abs().max()) <= r
    assert int(moved.abs().max()) > r // 2  # the bound is not loose by more than 2x


def test_chunked_inference_equals_whole():
    model = _random_model()
    rng = np.random.default_rng(0)
    vol = rng.normal(0.0, 0.1 * MU_WATER_PER_MM, (48, 26, 26)).astype(np.float32)
    vol[5:20, 4:22, 6:20] += MU_WATER_PER_MM
    vol[26:44, 8:24, 3:18] += 0.5 * MU_WATER_PER_MM  # a second object
    r = model.receptive_radius()
    whole = refine_volume(vol, model, chunk=64)
    assert r == 11  # < chunk: the chunks of 16 really are partial along z
    chunked = refine_volume(vol, model, chunk=16)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    no_halo = refine_volume(vol, model, chunk=16, halo=0)
    assert np.abs(no_halo - whole).max() > 1e-4  # the halo is what makes them agree


def test_air_untouched_and_object_changed():
    model = _random_model(nonnegative=False)
    vol = _cube_phantom(noise=0.05 * MU_WATER_PER_MM)
    mask = model.select(vol)
    out = refine_volume(vol, model)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out[~mask], vol[~mask])
    assert (out[mask] != vol[mask]).mean() > 0.99
    t = refine_volume(torch.from_numpy(vol), model)  # tensors in, tensor out
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(out))


def test_fresh_refiner_is_the_identity_and_clamps_negatives():
    vol = _cube_phantom(noise=0.05 * MU_WATER_PER_MM)
    model = VolumeRefiner(planes=(4, 8), layers=(1, 1), nonnegative=False, backend="torch").eval()
    np.testing.assert_array_equal(refine_volume(vol, model), vol)
    clamped = refine_volume(vol, VolumeRefiner(planes=(4, 8), layers=(1, 1), backend="torch").eval())
    mask = select_non_air(vol, 0.3 * MU_WATER_PER_MM)
    assert clamped[mask].min() >= 0.0 and vol[mask].min() < 0.0
    np.testing.assert_array_equal(clamped[mask], np.maximum(vol[mask], 0.0))


def test_refine_volume_bad_input():
    model = _random_model()
    with pytest.raises(ValueError, match="VolumeRefiner"):
        refine_volume(np.zeros((8, 8, 8), np.float32), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Z, Y, X"):
        refine_volume(np.zeros((8, 8), np.float32), model)
    with pytest.raises(ValueError, match="mask"):
        refine_volume(np.zeros((8, 8, 8), np.float32), model, mask=np.ones((8, 8, 4), bool))
    with pytest.raises(ValueError, match="chunk"):
        refine_volume(np.zeros((8, 8, 8), np.float32), model, chunk=0)


def test_features_channels_and_units():
    vol = _cube_phantom()
    two = VolumeRefiner(planes=(4,), layers=(1,), backend="torch").features(vol)
    assert two.shape == (*vol.shape, 2) and two[16, 10, 10, 0] == pytest.approx(1.0)  # water = 1
    one = VolumeRefiner(planes=(4,), layers=(1,), smooth_sigma_vox=0.0, backend="torch")
    assert one.features(vol).shape == (*vol.shape, 1) and one.unet.config.in_channels == 1


# ---------------------------------------------------------------------------- weights
def test_save_load_roundtrip(tmp_path):
    model = _random_model(margin_vox=2, threshold=0.25)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = load_refiner(tmp_path, backend="torch")
    assert loaded.config.margin_vox == 2 and loaded.config.threshold == 0.25 and not loaded.training
    vol = _cube_phantom(noise=0.05 * MU_WATER_PER_MM)
    for k, v in model.state_dict().items():  # the round trip itself is exact
        assert torch.equal(loaded.state_dict()[k], v), k
    # outputs to float32 rounding: with MinkowskiEngine installed (it changes OpenMP/BLAS set-up
    # at import) two models with equal weights differed by 3e-7 relative in a few voxels
    np.testing.assert_allclose(refine_volume(vol, loaded), refine_volume(vol, model), rtol=1e-5, atol=1e-8)


def test_missing_weights_error_names_path_and_script(tmp_path):
    with pytest.raises(InputError, match="scripts/train_ct_refiner.py") as err:
        load_refiner(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "diffusion_pytorch_model.safetensors" in str(err.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"missing diffusion_pytorch_model\.safetensors"):
        load_refiner(tmp_path / "half")


def test_shipped_weights_load_and_help_on_a_phantom():
    """The shipped weights (trained on a simulated chest CT) on a 32^3 Shepp-Logan phantom they
    never saw, scanned with the protocol they were trained for (``recon ct simulate``'s cone beam,
    25 noisy views): finite, same shape, air untouched, and better than FDK. (With a coarser
    48^2 detector the same phantom comes out worse: the model card's Shepp-Logan rows.)"""
    assert (DEFAULT_WEIGHTS / "diffusion_pytorch_model.safetensors").stat().st_size < 20e6
    model = load_refiner(backend="torch")
    ref = (shepp_logan_3d((32, 32, 32)) * 1.2 * MU_WATER_PER_MM).astype(np.float32)
    geo = CTSimulateConfig(volume=Path("unused"), views=25).geometry(ref.shape, (2.0, 2.0, 2.0))
    rec = fdk(simulate_projections(ref, geo, seed=3), geo).numpy()
    out = refine_volume(rec, model)
    mask = model.select(rec)
    assert out.shape == rec.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out[~mask], rec[~mask])
    assert psnr(out, ref) > psnr(rec, ref) + 0.2


# ---------------------------------------------------------------------------- recon ct fit --prior unet
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16^3 Shepp-Logan phantom in HU, simulated with 12 noisy views (as tests/pipelines/test_ct.py)."""
    vol = shepp_logan_3d((16, 16, 16)).astype(np.float32)
    hu = -1000.0 + 1000.0 * vol / vol.max() * 1.2
    folder = tmp_path_factory.mktemp("refine_data")
    np.savez(folder / "phantom.npz", volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    CTSimulateConfig(folder / "phantom.npz", views=12, out=folder / "ds", n_test=0, detector=32).run()
    return folder / "ds"


def test_fit_refine_end_to_end(dataset, tmp_path):
    weights = tmp_path / "w"
    _random_model(planes=(4, 8), layers=(1, 1), seed=1).save_pretrained(weights)
    plain = CTFitConfig(dataset, method="fdk", out=tmp_path / "plain").run()
    m = CTFitConfig(dataset, method="fdk", out=tmp_path / "refined", prior="unet", prior_path=weights).run()
    out = tmp_path / "refined"
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    unref, vol = np.load(out / "volume_before_prior.npy"), np.load(out / "volume.npy")
    np.testing.assert_allclose(unref, np.load(tmp_path / "plain" / "volume.npy"), atol=1e-7)
    assert not np.array_equal(vol, unref) and vol.shape == (16, 16, 16)
    assert m["prior"] == "unet" and plain["prior"] == "none" and m["prior_path"] == str(weights)
    assert m["psnr_3d_before_prior"] == plain["psnr_3d"] and m["ssim_3d_before_prior"] == plain["ssim_3d"]
    assert m["psnr_3d"] != plain["psnr_3d"] and 0.0 < m["prior_fraction"] <= 1.0
    assert json.loads((out / "metrics.json").read_text()) == m
    from recon.io.nifti import read_nifti

    np.testing.assert_allclose(read_nifti(out / "volume.nii.gz")[0], vol, atol=1e-6)  # the main output is refined
    assert "psnr_3d_before_prior" not in plain and not (tmp_path / "plain" / "volume_before_prior.npy").exists()


def test_fit_refine_with_shipped_weights_through_the_cli(dataset, tmp_path):
    from recon.cli import main

    out = tmp_path / "cli"
    assert main(["ct", "fit", str(dataset), "--method", "fdk", "--prior", "unet", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["prior_path"] == str(DEFAULT_WEIGHTS) and np.isfinite(np.load(out / "volume.npy")).all()
    assert {"psnr_3d", "psnr_3d_before_prior", "ssim_3d", "ssim_3d_before_prior"} <= set(m)


def test_fit_refine_refusals_write_nothing(dataset, tmp_path):
    with pytest.raises(InputError, match="train_ct_refiner"):
        CTFitConfig(dataset, method="fdk", out=tmp_path / "a", prior="unet", prior_path=tmp_path / "missing").run()
    with pytest.raises(InputError, match="--prior"):
        CTFitConfig(dataset, method="fdk", out=tmp_path / "b", prior_path=tmp_path / "missing").run()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
