"""recon.prior.ct_indi: the 2.5D network, the InDI update and schedule, slice-wise inference,
data consistency, weights, and ``recon ct fit --method tv --prior indi``."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ct.phantoms import shepp_logan_3d
from recon.ct.simulate import resample_volume, simulate_projections
from recon.ct.tv_trainer import TVConfig, TVTrainer
from recon.errors import InputError
from recon.io.formats import load_volume_file
from recon.io.units import MU_WATER_PER_MM, hu_to_mu
from recon.pipelines.ct import CTFitConfig, InDIConfig
from recon.pipelines.ct_simulate import CTSimulateConfig
from recon.prior.ct_indi import (
    DEFAULT_DC_STEPS,
    DEFAULT_STEPS,
    DEFAULT_WEIGHTS,
    InDIRefiner,
    data_consistency,
    indi_refine,
    indi_step,
    indi_times,
    load_indi,
    slice_stacks,
    time_embedding,
)
from tests.ct.conftest import psnr

TRAINING_CHEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct" / "lidc_idri_0001_ds2.npz"


def _random_model(channels=(4, 8), context: int = 3, seed: int = 0) -> InDIRefiner:
    """A tiny refiner with a non-zero head (so it is not the identity)."""
    torch.manual_seed(seed)
    model = InDIRefiner(context_slices=context, channels=channels, time_dim=8)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.05)
    return model.eval()


class _Constant(InDIRefiner):
    """Predicts ``value`` everywhere and records the times it is called at."""

    def __init__(self, value: float):
        super().__init__(context_slices=3, channels=(4,), time_dim=8)
        self.value, self.times = value, []

    def forward(self, x, t):
        self.times.extend(float(v) for v in t)
        from recon.prior.ct_indi import InDIRefinerOutput

        return InDIRefinerOutput(sample=torch.full_like(x[:, :1], self.value))


# ---------------------------------------------------------------------------- network
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("context", [1, 3, 5])
def test_forward_shapes(batch, context):
    model = _random_model(context=context)
    out = model(torch.rand(batch, context, 8, 12), torch.rand(batch)).sample
    assert out.shape == (batch, 1, 8, 12) and torch.isfinite(out).all() and (out >= 0).all()


def test_fresh_model_is_the_identity_on_the_centre_slice():
    model = InDIRefiner(context_slices=5, channels=(4, 8, 8), time_dim=8).eval()
    x = torch.rand(2, 5, 16, 16)
    torch.testing.assert_close(model(x, torch.tensor([1.0, 0.3])).sample, x[:, 2:3])


def test_output_depends_on_time_and_context():
    model = _random_model(context=3)
    x = torch.rand(1, 3, 8, 8)
    a = model(x, torch.tensor([1.0])).sample
    assert not torch.allclose(a, model(x, torch.tensor([0.2])).sample)
    x2 = x.clone()
    x2[:, 0] += 0.5  # a neighbouring slice
    assert not torch.allclose(a, model(x2, torch.tensor([1.0])).sample)


@pytest.mark.parametrize(
    "x, t, match",
    [
        (torch.rand(1, 2, 8, 8), torch.rand(1), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 7, 8), torch.rand(1), "multiples of 2"),
        (torch.rand(2, 3, 8, 8), torch.rand(3), r"t: expected \[2\]"),
    ],
)
def test_forward_bad_input(x, t, match):
    with pytest.raises(ValueError, match=match):
        _random_model()(x, t)


def test_bad_config():
    with pytest.raises(ValueError, match="odd"):
        InDIRefiner(context_slices=4)
    with pytest.raises(ValueError, match="value_scale_per_mm"):
        InDIRefiner(value_scale_per_mm=0.0)


def test_gradients_reach_every_parameter():
    model = _random_model().train()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    model = model.double()
    model(x, torch.tensor([0.5, 1.0], dtype=torch.float64)).sample.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_time_embedding():
    e = time_embedding(torch.tensor([0.0, 0.5, 1.0]), 16)
    assert e.shape == (3, 16) and torch.isfinite(e).all()
    assert not torch.allclose(e[1], e[2])


# ---------------------------------------------------------------------------- InDI schedule and update
def test_indi_times_known_answer():
    assert indi_times(1) == [1.0]
    assert indi_times(4) == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="steps"):
        indi_times(0)


def test_indi_step_known_answer():
    x_t, clean = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    # x_{t-d} = (d/t) F + (1 - d/t) x_t with t = 0.5, d = 0.25: half way
    torch.testing.assert_close(indi_step(x_t, clean, 0.5, 0.25), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(indi_step(x_t, clean, 0.25, 0.25), clean)  # the last step lands on F
    with pytest.raises(ValueError, match="delta"):
        indi_step(x_t, clean, 0.2, 0.5)


def test_indi_step_is_the_exact_interpolation_for_a_perfect_network():
    """With F = the clean volume and x_t = (1 - t) x + t y, one step lands on x_{t - d}."""
    x, y = torch.rand(10), torch.rand(10)
    t, d = 0.8, 0.3
    out = indi_step((1 - t) * x + t * y, x, t, d)
    torch.testing.assert_close(out, (1 - (t - d)) * x + (t - d) * y)


def test_slice_stacks_repeat_the_edges():
    vol = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    s = slice_stacks(vol, 3)
    assert s.shape == (4, 3, 2, 2)
    assert s[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    with pytest.raises(ValueError):
        slice_stacks(torch.zeros(4, 4), 3)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_indi_refine_runs_the_schedule(steps):
    model = _Constant(0.5)
    vol = np.random.default_rng(0).random((5, 4, 6)).astype(np.float32) * MU_WATER_PER_MM
    out = indi_refine(vol, model, steps=steps, batch=2)
    # every slice is evaluated once per step, at t = 1, 1 - 1/N, ...; the last step lands on F
    assert sorted(set(model.times), reverse=True) == pytest.approx(indi_times(steps))
    assert len(model.times) == 5 * steps
    np.testing.assert_allclose(out, 0.5 * MU_WATER_PER_MM, rtol=1e-6)


def test_indi_refine_batches_padding_and_types():
    model = _random_model(channels=(4, 8, 8))  # slice sides padded to multiples of 4
    vol = np.random.default_rng(1).random((7, 10, 9)).astype(np.float32) * 0.03
    a = indi_refine(vol, model, steps=2, batch=1)
    b = indi_refine(torch.from_numpy(vol), model, steps=2, batch=16)
    assert a.shape == vol.shape and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(a, indi_refine(vol, model, steps=2, batch=1))  # deterministic
    assert not np.allclose(a, vol)


def test_indi_refine_bad_input():
    model = _random_model()
    with pytest.raises(ValueError, match="InDIRefiner"):
        indi_refine(np.zeros((4, 4, 4), np.float32), torch.nn.Identity())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[Z, Y, X\]"):
        indi_refine(np.zeros((4, 4), np.float32), model)
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        indi_refine(bad, model)
    with pytest.raises(ValueError, match="steps"):
        indi_refine(np.zeros((4, 4, 4), np.float32), model, steps=0)


# ---------------------------------------------------------------------------- data consistency
def test_data_consistency_pulls_towards_the_projections(cone_geo):
    vol = np.ascontiguousarray(shepp_logan_3d((16, 16, 16)).astype(np.float32) * MU_WATER_PER_MM)
    proj = simulate_projections(vol, cone_geo, noise=False)
    start = np.clip(vol + np.random.default_rng(0).normal(0, 0.004, vol.shape).astype(np.float32), 0, None)
    np.testing.assert_array_equal(data_consistency(start, proj, cone_geo, 0), start)
    out = data_consistency(start, proj, cone_geo, 6)
    assert out.shape == vol.shape and psnr(out, vol) > psnr(start, vol)
    with pytest.raises(ValueError, match="steps"):
        data_consistency(start, proj, cone_geo, -1)


# ---------------------------------------------------------------------------- weights
def test_save_load_round_trip(tmp_path):
    model = _random_model(seed=3)
    model.save_pretrained(tmp_path / "w")
    back = load_indi(tmp_path / "w")
    x, t = torch.rand(1, 3, 8, 8), torch.tensor([0.7])
    torch.testing.assert_close(back(x, t).sample, model(x, t).sample)


def test_loader_errors_name_the_folder_and_the_script(tmp_path):
    with pytest.raises(InputError, match="train_ct_indi") as err:
        load_indi(tmp_path / "missing")
    assert "missing" in str(err.value) and "\n" not in str(err.value)
    _random_model().save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="could not load"):
        load_indi(tmp_path / "bad")


def test_pipeline_defaults_match_the_module():
    assert InDIConfig().steps == DEFAULT_STEPS and InDIConfig().dc_steps == DEFAULT_DC_STEPS


def test_shipped_weights_load():
    size = (DEFAULT_WEIGHTS / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 5e6 and (DEFAULT_WEIGHTS / "MODEL_CARD.md").is_file()
    model = load_indi()
    assert isinstance(model, InDIRefiner) and not model.training
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    vol = torch.rand(6, 40, 40) * 0.03
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(indi_refine(vol, model), indi_refine(vol, plain), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not TRAINING_CHEST.is_file(), reason="needs the shared data (../shared/data/ct)")
def test_shipped_weights_improve_a_tv_reconstruction():
    """A 16-slice slab of the training chest (LIDC, 128^3 grid), scanned with 10 noisy cone-beam
    views at angles and noise the training never used, reconstructed with --method tv's solver:
    the shipped refiner (1 step, no data consistency) beats its input by a margin."""
    hu, spacing = load_volume_file(TRAINING_CHEST)
    mu, voxel = resample_volume(hu_to_mu(hu), spacing, 128)
    slab = np.ascontiguousarray(mu[56:72])
    geo = CTSimulateConfig(volume=Path("unused"), views=10).geometry(mu.shape, voxel)
    geo = dataclasses.replace(geo, n_voxel=slab.shape)
    proj = simulate_projections(slab, geo, seed=7)
    trainer = TVTrainer(proj, geo, TVConfig(), num_threads=None)
    for _ in range(int(trainer.config.iterations)):  # type: ignore[arg-type]
        trainer.train_step()
    tv = trainer.volume().numpy()
    out = indi_refine(tv, load_indi(), steps=1)
    assert psnr(out, slab) > psnr(tv, slab) + 0.5, (psnr(out, slab), psnr(tv, slab))


# ---------------------------------------------------------------------------- recon ct fit --prior indi
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16^3 Shepp-Logan phantom in HU, simulated with 12 noisy views (as tests/pipelines/test_ct.py)."""
    vol = shepp_logan_3d((16, 16, 16)).astype(np.float32)
    hu = -1000.0 + 1000.0 * vol / vol.max() * 1.2
    folder = tmp_path_factory.mktemp("indi_data")
    np.savez(folder / "phantom.npz", volume=hu, spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
    CTSimulateConfig(folder / "phantom.npz", views=12, out=folder / "ds", n_test=0, detector=32).run()
    return folder / "ds"


def test_fit_tv_prior_indi_end_to_end(dataset, tmp_path):
    weights = tmp_path / "w"
    _random_model(seed=1).save_pretrained(weights)
    plain = CTFitConfig(dataset, method="tv", iterations=8, out=tmp_path / "plain").run()
    cfg = CTFitConfig(dataset, method="tv", iterations=8, out=tmp_path / "indi", prior="indi", indi=InDIConfig(steps=2, dc_steps=3, weights=weights))
    m = cfg.run()
    out = tmp_path / "indi"
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    before, vol = np.load(out / "volume_before_prior.npy"), np.load(out / "volume.npy")
    np.testing.assert_allclose(before, np.load(tmp_path / "plain" / "volume.npy"), atol=1e-7)
    assert not np.array_equal(vol, before) and vol.shape == (16, 16, 16) and np.isfinite(vol).all()
    assert m["prior"] == "indi" and m["indi_steps"] == 2 and m["indi_dc_steps"] == 3 and m["prior_path"] == str(weights)
    assert m["psnr_3d_before_prior"] == plain["psnr_3d"] and m["psnr_3d"] != plain["psnr_3d"]
    assert m["prior_time_s"] >= m["indi_network_s"] >= 0
    assert json.loads((out / "metrics.json").read_text()) == m
    # the data-consistency steps are the ones that change the network's output
    no_dc = CTFitConfig(dataset, method="tv", iterations=8, out=tmp_path / "nodc", prior="indi", indi=InDIConfig(steps=2, dc_steps=0, weights=weights)).run()
    np.testing.assert_allclose(np.load(tmp_path / "nodc" / "volume.npy"), indi_refine(before, load_indi(weights), steps=2), atol=1e-6)
    assert no_dc["psnr_3d"] != m["psnr_3d"]


def test_fit_prior_indi_through_the_cli(dataset, tmp_path):
    from recon.cli import main

    weights = tmp_path / "w"
    _random_model(seed=2).save_pretrained(weights)
    out = tmp_path / "cli"
    args = ["ct", "fit", str(dataset), "--method", "tv", "--iterations", "5", "--prior", "indi", "--indi.weights", str(weights),
            "--indi.steps", "3", "--indi.dc-steps", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["indi_steps"] == 3 and m["indi_dc_steps"] == 2 and (out / "volume_before_prior.npy").is_file()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"indi": InDIConfig(weights=Path("/nonexistent/w"))}, "train_ct_indi"),
        ({"indi": InDIConfig(steps=0)}, "--indi.steps"),
        ({"indi": InDIConfig(dc_steps=-1)}, "--indi.dc-steps"),
        ({"prior_path": Path("/nonexistent/w")}, "--indi.weights"),
    ],
)
def test_fit_prior_indi_refusals_write_nothing(dataset, tmp_path, kw, match):
    with pytest.raises(InputError, match=match):
        CTFitConfig(dataset, method="tv", out=tmp_path / "a", prior="indi", **kw).run()
    assert not (tmp_path / "a").exists()
