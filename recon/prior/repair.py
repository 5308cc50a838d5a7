"""Repairers: models that turn flawed renders of unseen views into plausible photos.

A repairer is any callable ``repairer(images, seed) -> repaired`` on ``[B, H, W, 3]`` float
images in [0, 1] (:class:`Repairer`); :mod:`recon.prior.guidance` feeds it renders of pseudo
views and trains on what comes back. ``seed`` makes a stochastic repairer repeatable.

:class:`PretrainedImg2Img` wraps a diffusers image-to-image pipeline that the user has on disk
(``recon fit --prior pretrained --prior.pretrained DIR``), saved with ``save_pretrained``:

- any pipeline whose ``__call__`` takes ``image`` and ``strength`` (StableDiffusionImg2Img,
  its ControlNet and SDXL variants, ...); a text-to-image pipeline that diffusers'
  ``AutoPipelineForImage2Image.from_pipe`` maps to an image-to-image one is converted (same
  weights);
- a ControlNet: a ``DIR/controlnet`` folder that the pipeline does not list itself is loaded
  (``ControlNetModel``) and the pipeline is switched to its ControlNet image-to-image variant;
  the render is the control image;
- LoRA weights (``peft``): ``DIR/lora`` when present, or an explicit folder/file, loaded with
  ``pipeline.load_lora_weights``.

Nothing is downloaded: loading runs with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``.
Every problem with the folder is an :class:`recon.errors.InputError`, one line naming the
folder and what is wrong. ``transformers`` (text encoders, tokenizers) and ``peft`` (LoRA) come
with the optional extra ``pip install 'sparse-recon[prior]'``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.checks import check_shape
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["EXTRA_HINT", "PretrainedImg2Img", "Repairer", "check_images", "load_img2img_pipeline"]

EXTRA_HINT = "pip install 'sparse-recon[prior]'"
"""How to install what pretrained pipelines need beyond recon's own dependencies."""


@runtime_checkable
class Repairer(Protocol):
    """``repairer(images [B, H, W, 3] in [0, 1], seed) -> repaired [B, H, W, 3] in [0, 1]``."""

    def __call__(self, images: Tensor, seed: int) -> Tensor: ...


def check_images(images: Any, name: str = "images") -> Tensor:
    """``images`` as float ``[B, H, W, 3]`` (B >= 1) or ``ValueError`` naming the problem."""
    check_shape(name, images, (None, None, None, 3), floating=True)
    if images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{name}: expected a non-empty batch [B, H, W, 3], given {list(images.shape)}")
    return images


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` while inside (huggingface_hub reads it per call)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:240]


def _is_img2img(pipe: Any) -> bool:
    params = inspect.signature(pipe.__call__).parameters
    mask = params.get("mask_image")
    needs_mask = mask is not None and mask.default is inspect.Parameter.empty
    return "image" in params and "strength" in params and not needs_mask


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise InputError(folder, "not a diffusers pipeline folder: no model_index.json (write one with pipeline.save_pretrained(DIR))")
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(index, f"not readable JSON ({_first_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise InputError(index, "has no _class_name (not written by a diffusers pipeline's save_pretrained)")
    return data


def load_img2img_pipeline(
    folder: str | Path,
    *,
    lora: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A diffusers image-to-image pipeline from a local ``save_pretrained`` folder (module docstring).

    Args:
        folder: the pipeline folder (``model_index.json`` and one subfolder per component).
        lora: LoRA weights (a folder or a ``.safetensors`` file); None uses ``folder/lora`` if present.
        device, dtype: where and in what precision the pipeline runs.

    Returns:
        the pipeline, its progress bars off.

    Raises:
        InputError: the folder is missing, not a pipeline, not loadable, not image-to-image, or
            needs a package that is not installed.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such folder (--prior.pretrained expects a diffusers pipeline saved with save_pretrained)")
    if not folder.is_dir():
        raise InputError(folder, "is not a folder (--prior.pretrained expects a diffusers pipeline saved with save_pretrained)")
    index = _read_index(folder)
    if any(isinstance(v, list) and v and v[0] == "transformers" for v in index.values()):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise InputError(folder, f"its {index['_class_name']} needs the transformers package ({EXTRA_HINT})") from None
    from diffusers import AutoPipelineForImage2Image, ControlNetModel, DiffusionPipeline

    with _offline():
        try:
            pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any loading failure is a bad folder for the user
            raise InputError(folder, f"could not load the {index['_class_name']} in it ({_first_line(err)})") from None
        cn_dir = folder / "controlnet"
        if cn_dir.is_dir() and getattr(pipe, "controlnet", None) is None:
            try:
                controlnet = ControlNetModel.from_pretrained(cn_dir, local_files_only=True)
                pipe = AutoPipelineForImage2Image.from_pipe(pipe, controlnet=controlnet)
            except Exception as err:  # noqa: BLE001
                raise InputError(cn_dir, f"could not add this ControlNet to the {type(pipe).__name__} ({_first_line(err)})") from None
        if not _is_img2img(pipe):
            name = type(pipe).__name__
            try:
                pipe = AutoPipelineForImage2Image.from_pipe(pipe)
            except Exception:  # noqa: BLE001 - diffusers knows no image-to-image twin of this class
                pipe = None
            if pipe is None or not _is_img2img(pipe):
                raise InputError(folder, f"holds a {name}, which is not an image-to-image pipeline and has no image-to-image "
                                         "variant in diffusers (expected e.g. StableDiffusionImg2ImgPipeline)")  # fmt: skip
            logger.info("%s: using %s (the image-to-image variant of the saved %s)", folder, type(pipe).__name__, name)
        lora_path = Path(lora) if lora is not None else (folder / "lora" if (folder / "lora").is_dir() else None)
        if lora_path is not None:
            _load_lora(pipe, lora_path)
    pipe.to(device, dtype)  # loaded in float32 (the argument's name changed across diffusers versions)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_lora(pipe: Any, path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such LoRA folder or file (--prior.lora)")
    if not hasattr(pipe, "load_lora_weights"):
        raise InputError(path, f"a {type(pipe).__name__} cannot load LoRA weights")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise InputError(path, f"LoRA weights need the peft package ({EXTRA_HINT})") from None
    try:
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        else:
            pipe.load_lora_weights(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"could not load LoRA weights into the {type(pipe).__name__} ({_first_line(err)})") from None
    logger.info("loaded LoRA weights %s", path)


def _snap(size: int, multiple: int) -> int:
    return max(multiple, round(size / multiple) * multiple)


class PretrainedImg2Img:
    """A :class:`Repairer` from a local diffusers image-to-image pipeline (module docstring).

    Each batch of renders is resized so that its long side is ``resolution`` (0: as given) and
    both sides are multiples of the pipeline's VAE factor, run through the pipeline with
    ``strength`` (how much noise is added: 0 keeps the render, 1 ignores it), then resized back.
    A view the pipeline's safety checker blanks keeps its render.

    Args:
        folder: the pipeline folder (:func:`load_img2img_pipeline`).
        prompt, negative_prompt: text conditioning ("" for none).
        strength: in (0, 1]; ``int(steps * strength)`` denoising steps are run.
        steps: the scheduler's number of steps for strength 1.
        guidance_scale: classifier-free guidance (<= 1 turns it off: one UNet pass per step).
        resolution: long side in pixels the pipeline works at (0: the render's own).
        batch_size: images per pipeline call.
        lora: LoRA weights (default ``folder/lora`` when present).
        device: where to run; ``dtype``: float16 on CUDA and float32 on the CPU when None.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        strength: float = 0.3,
        steps: int = 20,
        guidance_scale: float = 1.0,
        resolution: int = 0,
        batch_size: int = 4,
        lora: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 0.0 < strength <= 1.0:
            raise InputError("--prior.strength", f"must be in (0, 1], got {strength}")
        if steps < 1 or int(steps * strength) < 1:
            raise InputError("--prior.steps", f"steps x strength must be >= 1 denoising step, got {steps} x {strength}")
        if resolution < 0 or batch_size < 1:
            raise InputError("--prior.resolution/--prior.batch-size", f"must be >= 0 and >= 1, got {resolution}, {batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.folder = Path(folder)
        self.pipe = load_img2img_pipeline(folder, lora=lora, device=self.device, dtype=self.dtype)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.strength, self.steps, self.guidance_scale = float(strength), int(steps), float(guidance_scale)
        self.resolution, self.batch_size = int(resolution), int(batch_size)
        params = inspect.signature(self.pipe.__call__).parameters
        self._control = "control_image" in params
        self._negative = "negative_prompt" in params

    @property
    def description(self) -> str:
        return f"{type(self.pipe).__name__} from {self.folder} (strength {self.strength}, {self.steps} steps)"

    def _size(self, height: int, width: int) -> tuple[int, int]:
        multiple = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        scale = self.resolution / max(height, width) if self.resolution else 1.0
        return _snap(round(height * scale), multiple), _snap(round(width * scale), multiple)

    @torch.no_grad()
    def __call__(self, images: Tensor, seed: int) -> Tensor:
        """``images [B, H, W, 3]`` in [0, 1] -> repaired ``[B, H, W, 3]`` in [0, 1] (CPU float32)."""
        check_images(images)
        b, h, w, _ = images.shape
        size = self._size(h, w)
        out = []
        for start in range(0, b, self.batch_size):
            chunk = images[start : start + self.batch_size].detach().to(self.device, torch.float32).clamp(0, 1)
            x = chunk.permute(0, 3, 1, 2)
            x_in = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False) if size != (h, w) else x
            kwargs: dict[str, Any] = {
                "prompt": [self.prompt] * len(x), "image": x_in.to(self.dtype), "strength": self.strength,
                "num_inference_steps": self.steps, "guidance_scale": self.guidance_scale, "output_type": "pt",
                "generator": torch.Generator(device=self.device).manual_seed(int(seed) + start),
            }  # fmt: skip
            if self._negative and self.negative_prompt:
                kwargs["negative_prompt"] = [self.negative_prompt] * len(x)
            if self._control:
                kwargs["control_image"] = x_in.to(self.dtype)
            with _offline():
                result = self.pipe(**kwargs)
            y = result.images.to(torch.float32)
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            blanked = getattr(result, "nsfw_content_detected", None) or [False] * len(x)
            for i, flag in enumerate(blanked):
                if flag:
                    logger.warning("the pipeline's safety checker blanked pseudo view %d; keeping its render", start + i)
                    y[i] = x[i]
            out.append(y.clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(out)
