"""PretrainedImg2Img: tiny real diffusers pipelines saved to tmp_path, loaded and run through the
real code path; one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from recon.errors import InputError
from recon.prior.repair import (
    PretrainedImg2Img,
    Repairer,
    check_images,
    load_img2img_pipeline,
)
from tests.prior.tiny_diffusion import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "img2img": save_tiny_pipeline(root / "img2img"),
        "text2img": save_tiny_pipeline(root / "text2img", "text2img"),
        "controlnet": save_tiny_pipeline(root / "controlnet", controlnet=True),
        "lora": save_tiny_pipeline(root / "lora", lora=True),
    }


def _images(b=2, h=30, w=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g)


def test_runs_the_saved_pipeline_exactly(pipelines):
    rep = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=4, batch_size=8)
    assert isinstance(rep, Repairer)
    assert type(rep.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    x = _images(h=32, w=48)  # multiples of the VAE factor 2: no resizing
    y = rep(x, seed=7)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all() and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # the same call made directly on the diffusers pipeline gives the same images
    direct = rep.pipe(prompt=["", ""], image=x.permute(0, 3, 1, 2), strength=0.5, num_inference_steps=4, guidance_scale=1.0,
                      output_type="pt", generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    assert torch.allclose(y, direct.permute(0, 2, 3, 1).clamp(0, 1), atol=1e-6)
    assert torch.equal(rep(x, seed=7), y)  # repeatable
    assert not torch.allclose(rep(x, seed=8), y, atol=1e-3)  # the seed matters
    assert not torch.allclose(y, x, atol=0.05)  # a random pipeline changes the images


def test_odd_sizes_batches_and_resolution(pipelines):
    rep = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=2, batch_size=2, resolution=20)
    assert rep._size(31, 45) == (14, 20)  # long side 20, multiples of 2
    x = _images(b=3, h=31, w=45)
    y = rep(x, seed=0)
    assert y.shape == (3, 31, 45, 3)
    # batches of 2 + 1: the third image is the first of its own call (seed + 2)
    alone = rep(x[2:], seed=2)
    assert torch.allclose(y[2:], alone, atol=1e-6)


def test_text_to_image_folder_is_turned_into_image_to_image(pipelines):
    rep = PretrainedImg2Img(pipelines["text2img"], strength=0.5, steps=2)
    assert type(rep.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert rep(_images(b=1), seed=0).shape == (1, 30, 44, 3)


def test_controlnet_subfolder_is_used_with_the_render_as_control(pipelines):
    rep = PretrainedImg2Img(pipelines["controlnet"], strength=0.5, steps=2)
    assert type(rep.pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    plain = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=2)  # same seed: same UNet, VAE, text encoder
    x = _images(h=32, w=48)
    assert not torch.allclose(rep(x, seed=0), plain(x, seed=0), atol=1e-4)


def test_lora_folder_is_loaded_and_changes_the_output(pipelines, tmp_path):
    with_lora = PretrainedImg2Img(pipelines["lora"], strength=0.5, steps=2)
    assert with_lora.pipe.get_active_adapters()  # peft adapter in the UNet
    bare = tmp_path / "bare"
    shutil.copytree(pipelines["lora"], bare, ignore=shutil.ignore_patterns("lora"))
    without = PretrainedImg2Img(bare, strength=0.5, steps=2)
    x = _images(h=32, w=48)
    assert not torch.allclose(with_lora(x, seed=0), without(x, seed=0), atol=1e-4)
    explicit = PretrainedImg2Img(bare, strength=0.5, steps=2, lora=pipelines["lora"] / "lora" / "pytorch_lora_weights.safetensors")
    assert torch.allclose(explicit(x, seed=0), with_lora(x, seed=0), atol=1e-5)


def _one_line(err: InputError, where) -> str:
    text = str(err)
    assert "\n" not in text and text.startswith(str(where)), text
    return text


def test_bad_folders_are_one_line_errors(pipelines, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="no such folder") as e:
        load_img2img_pipeline(missing)
    _one_line(e.value, missing)
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(InputError, match="is not a folder") as e:
        load_img2img_pipeline(a_file)
    _one_line(e.value, a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no model_index.json") as e:
        load_img2img_pipeline(empty)
    _one_line(e.value, empty)
    (empty / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(InputError, match="has no _class_name"):
        load_img2img_pipeline(empty)
    broken = tmp_path / "broken"
    shutil.copytree(pipelines["img2img"], broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(InputError, match="could not load the StableDiffusionImg2ImgPipeline") as e:
        load_img2img_pipeline(broken)
    _one_line(e.value, broken)
    with pytest.raises(InputError, match="no such LoRA"):
        load_img2img_pipeline(pipelines["img2img"], lora=tmp_path / "no_lora")


def test_wrong_pipeline_class_is_a_one_line_error(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    folder = tmp_path / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    with pytest.raises(InputError, match="holds a DDPMPipeline, which is not an image-to-image pipeline") as e:
        PretrainedImg2Img(folder)
    _one_line(e.value, folder)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"strength": 0.0}, "--prior.strength"), ({"strength": 0.1, "steps": 5}, "--prior.steps"), ({"batch_size": 0}, "batch-size")],
)
def test_bad_options(pipelines, kwargs, match):
    with pytest.raises(InputError, match=match):
        PretrainedImg2Img(pipelines["img2img"], **kwargs)


def test_check_images():
    assert check_images(torch.zeros(1, 2, 2, 3)).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match=r"images: expected shape \[N, M, K, 3\]"):
        check_images(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="floating-point"):
        check_images(torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        check_images(torch.zeros(0, 2, 2, 3))
