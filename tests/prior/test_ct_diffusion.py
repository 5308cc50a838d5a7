"""recon.prior.ct_diffusion: units, Tweedie estimates, weights (shipped, round trip, missing, corrupt)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.errors import InputError
from recon.io.units import MU_WATER_PER_MM
from recon.prior.ct_diffusion import (
    DEFAULT_WEIGHTS,
    SliceDiffusion,
    from_model_units,
    load_slice_diffusion,
    to_model_units,
)
from tests.conftest import CT_DATA


def _tiny(prediction_type: str = "v_prediction", seed: int = 0) -> SliceDiffusion:
    torch.manual_seed(seed)
    return SliceDiffusion(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, prediction_type=prediction_type, train_crop=16).eval()


def test_units_round_trip_and_anchors():
    mu = torch.tensor([0.0, MU_WATER_PER_MM, 2 * MU_WATER_PER_MM])
    torch.testing.assert_close(to_model_units(mu), torch.tensor([-1.0, 0.0, 1.0]))  # air, water, HU +1000
    torch.testing.assert_close(from_model_units(to_model_units(mu)), mu)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_denoise_inverts_the_training_target(kind, monkeypatch):
    """A network that outputs exactly its training target gives back the clean slices and the noise."""
    model = _tiny(kind)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    t = 300
    tt = torch.full((3,), t, dtype=torch.long)
    x_t = model.add_noise(x0[:, None], noise[:, None], tt)[:, 0]
    target = model.training_target(x0[:, None], noise[:, None], tt)
    monkeypatch.setattr(SliceDiffusion, "forward", lambda self, sample, timesteps: target[: sample.shape[0]])
    out = model.denoise(x_t, t, batch=8)
    torch.testing.assert_close(out.x0, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.eps, noise, atol=1e-4, rtol=1e-4)
    ab = float(model.alphas_cumprod[t])
    assert ab == pytest.approx(float(model.train_scheduler().alphas_cumprod[t]))  # the diffusers schedule
    noisy_again = model.train_scheduler().add_noise(x0[:, None], noise[:, None], tt)[:, 0]
    torch.testing.assert_close(noisy_again, x_t, atol=1e-5, rtol=1e-5)


def test_denoise_shapes_batches_and_bad_input():
    model = _tiny()
    x = torch.randn(5, 16, 24)
    whole = model.denoise(x, 100, batch=8)
    parts = model.denoise(x, 100, batch=2)
    assert whole.x0.shape == x.shape and whole.eps.shape == x.shape
    torch.testing.assert_close(whole.x0, parts.x0, atol=1e-5, rtol=1e-5)
    ab = float(model.alphas_cumprod[100])
    torch.testing.assert_close(math.sqrt(ab) * whole.x0 + math.sqrt(1 - ab) * whole.eps, x, atol=1e-4, rtol=1e-4)  # consistent pair
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        model.denoise(torch.zeros(16, 16), 10)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.denoise(torch.zeros(1, 15, 16), 10)
    with pytest.raises(ValueError, match="t:"):
        model.denoise(torch.zeros(1, 16, 16), 1000)
    with pytest.raises(ValueError, match="norm_num_groups"):
        SliceDiffusion(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="prediction_type"):
        SliceDiffusion(prediction_type="x")


# ---------------------------------------------------------------------------- weights
def test_save_load_roundtrip(tmp_path):
    model = _tiny("epsilon", seed=2)
    model.save_pretrained(tmp_path)
    loaded = load_slice_diffusion(tmp_path)
    assert loaded.config.prediction_type == "epsilon" and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(loaded.denoise(x, 50).x0, model.denoise(x, 50).x0)


def test_missing_or_corrupt_weights_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="scripts/train_ct_prior.py") as err:
        load_slice_diffusion(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)
    _tiny().save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="could not load") as err:
        load_slice_diffusion(tmp_path / "bad")
    assert "\n" not in str(err.value)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{not json")
    (tmp_path / "cfg" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="could not load"):
        load_slice_diffusion(tmp_path / "cfg")


def test_shipped_weights_load_and_denoise_the_held_out_chest():
    """The shipped weights (size cap 20 MB) on slices of the patient they never saw: one Tweedie
    step at t = 200 (~340 HU of noise) must clean the slices far beyond the noisy input."""
    assert (DEFAULT_WEIGHTS / "diffusion_pytorch_model.safetensors").stat().st_size < 20e6
    assert (DEFAULT_WEIGHTS / "MODEL_CARD.md").is_file()
    model = load_slice_diffusion()
    from recon.ct.simulate import resample_volume
    from recon.io.formats import load_volume_file
    from recon.io.units import hu_to_mu

    hu, spacing = load_volume_file(CT_DATA / "more" / "itkelastix_4dct_phase00_chest.npz")
    mu, _ = resample_volume(hu_to_mu(hu), spacing, 128)
    x0 = to_model_units(torch.from_numpy(mu[[40, 64, 90]]))  # [3, 128, 128]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = 200
    ab = float(model.alphas_cumprod[t])
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    est = model.denoise(x_t, t).x0
    rng = float(x0.max() - x0.min())

    def psnr(a):
        return 10 * np.log10(rng**2 / float((a - x0).square().mean()))

    assert psnr(est) > psnr(x_t / math.sqrt(ab)) + 6.0, (psnr(est), psnr(x_t / math.sqrt(ab)))
