"""Full-image datamanager for ``recon-ct``: X-ray projections served from memory.

nerfstudio's ``FullImageDatamanager`` (one camera and its full image per step) with
:class:`ProjectionDataset`, which returns the normalised projections that ``recon-ct-data`` keeps
in ``metadata["ct"]`` as ``[H, W, 1]`` float32 images (no files, no uint8, no undistortion), and
the CPU-safe caching of :class:`.datamanager.DeviceCacheMixin`.

In inference mode (a checkpoint is about to be loaded) it sets ``metadata["ct_initialise"] =
False``, so the model skips recon's FDK / SART initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Literal, Type, Union

import torch
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

from .ct_dataparser import CTDataParserConfig, CTViews
from .datamanager import DeviceCacheMixin

__all__ = ["ProjectionDataset", "ReconCTDatamanagerConfig", "ReconCTDatamanager"]


class ProjectionDataset(InputDataset):
    """The parse's projections (``metadata["ct"]``, :class:`.ct_dataparser.CTViews`) as images."""

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        if scale_factor != 1.0:
            raise ValueError(
                f"camera_res_scale_factor: projections are not resampled, expected 1.0, given {scale_factor}"
            )
        super().__init__(dataparser_outputs, scale_factor)
        ct = self.metadata.get("ct")
        if not isinstance(ct, CTViews):
            raise ValueError("dataparser: recon-ct needs the recon-ct-data parser (metadata['ct'] with the projections)")
        self._images = torch.from_numpy(ct.images())  # [V, H, W]

    def get_data(self, image_idx: int, image_type: Literal["uint8", "float32"] = "float32") -> Dict:
        """``{"image_idx", "image": [H, W, 1] float32}``; projections are never quantised to uint8."""
        if image_type != "float32":
            raise ValueError(f"cache_images_type: projections are float32 only, given {image_type!r}")
        return {"image_idx": image_idx, "image": self._images[image_idx][..., None].clone()}


@dataclass
class ReconCTDatamanagerConfig(FullImageDatamanagerConfig):
    """nerfstudio's full-image datamanager over CT projections (CPU-safe caching)."""

    _target: Type = field(default_factory=lambda: ReconCTDatamanager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=CTDataParserConfig)
    cache_images_type: Literal["uint8", "float32"] = "float32"
    """Projections are float32 (uint8 is refused)."""


class ReconCTDatamanager(DeviceCacheMixin, FullImageDatamanager[ProjectionDataset]):
    """See the module docstring."""

    config: ReconCTDatamanagerConfig

    def __init__(
        self,
        config: ReconCTDatamanagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)
        self.train_dataset.metadata["ct_initialise"] = test_mode != "inference"
