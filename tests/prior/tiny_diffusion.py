"""Tiny randomly initialised diffusers pipelines of the real classes, saved with save_pretrained,
for driving recon.prior.repair and `recon fit --prior pretrained` without any download.

A Stable Diffusion image-to-image pipeline: UNet2DConditionModel and AutoencoderKL with 8/16
channels (VAE factor 2), a one-layer CLIPTextModel of width 16, a CLIPTokenizer over a
character vocabulary written here, and a DDIM scheduler (about 0.5 MB on disk).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=16)  # reads the files in transformers 4 and 5 alike


def tiny_components(scratch: Path, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(scratch / "vocab")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, vocab_size=len(tokenizer.get_vocab()), max_position_embeddings=16,
    ))  # fmt: skip
    return {"vae": vae, "text_encoder": text, "tokenizer": tokenizer, "unet": unet, "scheduler": DDIMScheduler(clip_sample=False, steps_offset=1)}


def save_tiny_pipeline(folder: Path, kind: str = "img2img", *, controlnet: bool = False, lora: bool = False, seed: int = 0) -> Path:
    """Save a tiny pipeline to ``folder``: ``kind`` 'img2img' (StableDiffusionImg2ImgPipeline) or
    'text2img' (StableDiffusionPipeline); with ``controlnet`` a ControlNetModel in
    ``folder/controlnet`` (not listed in model_index.json); with ``lora`` random (non-zero) LoRA
    weights of the UNet's attention in ``folder/lora``."""
    from diffusers import (
        ControlNetModel,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
    )

    parts = tiny_components(folder.parent / f".{folder.name}_scratch", seed)
    cls = {"img2img": StableDiffusionImg2ImgPipeline, "text2img": StableDiffusionPipeline}[kind]
    pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    if controlnet:
        torch.manual_seed(seed + 1)
        cn = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(4, 8))
        with torch.no_grad():  # from_unet zero-initialises the output convolutions: make them count
            for p in cn.parameters():
                p.add_(0.05 * torch.randn_like(p))
        cn.save_pretrained(folder / "controlnet")
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        unet = parts["unet"]
        torch.manual_seed(seed + 2)
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionImg2ImgPipeline.save_lora_weights(folder / "lora", unet_lora_layers=layers, safe_serialization=True)
    return folder
