"""Full-image datamanager for recon models: device-aware image caching and seed points.

Two differences from nerfstudio's ``FullImageDatamanager``:

* images cached "on cpu" are pinned by nerfstudio, which needs a CUDA driver; when the training
  device is not CUDA they are simply kept on that device (``pin_memory`` would raise);
* when the parser gives no SfM points (``points3D_xyz``), it computes initial centres with
  :func:`recon.splat.init.photo_consistent_points` from the training views and hands them to
  the model the way nerfstudio hands SfM points (``points3D_xyz`` / ``points3D_rgb`` in the
  training parse's metadata, read by ``VanillaPipeline``). Skipped in inference mode
  (``ns-export``, ``ns-viewer`` load a checkpoint and do not open images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Type, Union

import torch
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE

from recon.splat.points import photo_consistent_points

from .convert import camera_set_from_nerfstudio
from .dataparser import FewViewDataParserConfig
from .recon_defaults import capture_fit_default

__all__ = ["ReconDatamanagerConfig", "ReconDatamanager", "DeviceCacheMixin"]


@dataclass
class ReconDatamanagerConfig(FullImageDatamanagerConfig):
    """nerfstudio's full-image datamanager, CPU-safe, with recon's initialisation."""

    _target: Type = field(default_factory=lambda: ReconDatamanager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=FewViewDataParserConfig)
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    """Type of the cached images (uint8 uses a quarter of the memory)."""
    init: Literal["auto", "photo", "random"] = "auto"
    """Initial centres: the parser's SfM points if any ('auto'), photo-consistent points from the training views, or uniform in the scene box."""
    init_points: int = field(default_factory=lambda: capture_fit_default("init_points"))
    """Number of photo-consistent initial points."""
    init_seed: int = field(default_factory=lambda: capture_fit_default("seed"))
    """Seed of the photo-consistent sampling."""


class DeviceCacheMixin:
    """Caches images on the training device unless it is CUDA (no pinned memory without a GPU).

    nerfstudio's "gpu" branch keeps images on ``self.device``; its "cpu" branch pins memory,
    which needs a CUDA driver. Put before ``FullImageDatamanager`` in the bases.
    """

    device: Union[torch.device, str]

    def _load_images(self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]):
        if cache_images_device == "cpu" and torch.device(self.device).type != "cuda":
            cache_images_device = "gpu"
        return super()._load_images(split, cache_images_device)  # type: ignore[misc]


class ReconDatamanager(DeviceCacheMixin, FullImageDatamanager[InputDataset]):
    """See the module docstring."""

    config: ReconDatamanagerConfig

    def __init__(
        self,
        config: ReconDatamanagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        if config.init_points < 2:
            raise ValueError(f"init_points: expected >= 2, given {config.init_points}")
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)
        if test_mode != "inference":
            self._set_seed_points()

    def _set_seed_points(self) -> None:
        outputs = self.train_dataparser_outputs
        metadata = dict(outputs.metadata)
        has_sfm = "points3D_xyz" in metadata and len(metadata["points3D_xyz"]) > 0
        mode = self.config.init
        if mode == "random":
            metadata.pop("points3D_xyz", None)
            metadata.pop("points3D_rgb", None)
            CONSOLE.log("recon init: uniform random Gaussians in the scene box")
        elif mode == "auto" and has_sfm:
            CONSOLE.log(f"recon init: {len(metadata['points3D_xyz'])} SfM points from the capture")
        else:
            points, colours = self._photo_consistent_points()
            metadata["points3D_xyz"] = points
            metadata["points3D_rgb"] = (colours * 255).round().to(torch.uint8)  # nerfstudio's convention
            CONSOLE.log(f"recon init: {len(points)} photo-consistent points from {len(self.train_dataset)} views")
        outputs.metadata = metadata

    @torch.no_grad()
    def _photo_consistent_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[P, 3]`` points in nerfstudio's world frame and ``[P, 3]`` colours in 0..1."""
        cached = self.cached_train  # loads and undistorts; the cameras are updated to match
        images = []
        for data in cached:
            img = data["image"].cpu()
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            if img.shape[-1] == 4:  # RGBA: premultiply (transparent -> black)
                img = img[..., :3] * img[..., 3:]
            images.append(img[..., :3])
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) != 1:
            raise ValueError(
                f"training images: photo-consistent initialisation needs one image size, given {sorted(sizes)} "
                "(use --pipeline.datamanager.init random, or give the capture SfM points)"
            )
        # nerfstudio undistorted the cached images and updated fx, fy, cx, cy, not the coefficients
        cameras = camera_set_from_nerfstudio(self.train_dataset.cameras).without_distortion()
        gen = torch.Generator().manual_seed(self.config.init_seed)
        return photo_consistent_points(cameras, torch.stack(images), self.config.init_points, generator=gen)
