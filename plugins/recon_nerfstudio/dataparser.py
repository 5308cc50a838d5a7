"""``recon-fewview``: a nerfstudio capture cut down to K training views spread over the capture.

It runs nerfstudio's own ``Nerfstudio`` parser (``transforms.json``: nerfstudio, instant-ngp and
``ns-process-data`` COLMAP output) with ``eval_mode="all"``, so the orientation, centring and
scale nerfstudio applies are computed once from every camera and are the same for both splits;
then it keeps

* training: K views by :func:`recon.geometry.view_selection.split_views` (farthest-point sampling on camera
  centres, the same choice ``recon fit --train-views K`` makes; it does not change under
  nerfstudio's rigid motion and uniform scale of the world);
* evaluation: every other view (``--eval-views -1``) or N of them spread the same way.

The world frame, SfM points (``load_3D_points``) and the dataparser transform are nerfstudio's,
unchanged, so exports and ``dataparser_transforms.json`` mean what they mean for splatfacto.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import torch
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from recon.errors import InputError
from recon.geometry.view_selection import split_views

from .convert import camera_set_from_nerfstudio

__all__ = ["FewViewDataParserConfig", "FewViewDataParser", "recon_fewview", "select_outputs"]


@dataclass
class FewViewDataParserConfig(DataParserConfig):
    """A nerfstudio ``transforms.json`` capture with K training views chosen spread out."""

    _target: Type = field(default_factory=lambda: FewViewDataParser)
    data: Path = Path()
    """Capture folder holding ``transforms.json``, or the json file itself."""
    train_views: int = 8
    """K: number of training views, chosen by farthest-point sampling on camera centres."""
    eval_views: int = -1
    """Evaluation views among the others: -1 for all of them, N for N spread the same way, 0 for none."""
    downscale_factor: Optional[int] = None
    """Image downscale: reads ``images_<d>/`` as nerfstudio does (None: nerfstudio's automatic choice)."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    """How nerfstudio orients the world (computed from all cameras)."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """How nerfstudio centres the world (computed from all cameras)."""
    auto_scale_poses: bool = True
    """Scale the world so all camera centres fit in +/-1, as nerfstudio does."""
    train_names: tuple[str, ...] = ()
    """Explicit training images by file name (overrides --train-views), e.g. to match ``recon fit --train-views i j k``."""
    eval_names: tuple[str, ...] = ()
    """Explicit evaluation images by file name (overrides --eval-views); must not overlap the training images."""
    load_3D_points: bool = True
    """Pass the capture's SfM point cloud (``ply_file_path``) on for initialisation when it has one."""

    def inner_config(self) -> NerfstudioDataParserConfig:
        """The nerfstudio parser config that reads every view of the capture."""
        return NerfstudioDataParserConfig(
            data=self.data,
            downscale_factor=self.downscale_factor,
            orientation_method=self.orientation_method,
            center_method=self.center_method,
            auto_scale_poses=self.auto_scale_poses,
            load_3D_points=self.load_3D_points,
            eval_mode="all",
        )


def select_outputs(outputs: DataparserOutputs, indices: list[int]) -> DataparserOutputs:
    """The same parse restricted to ``indices`` (cameras, files, per-image metadata).

    World-level data (scene box, dataparser transform and scale, SfM points) is kept as is.
    """
    idx = torch.tensor(indices, dtype=torch.long)
    metadata = dict(outputs.metadata)
    for key in ("depth_filenames", "semantics"):  # per-image lists nerfstudio may put here
        if isinstance(metadata.get(key), list):
            metadata[key] = [metadata[key][i] for i in indices]
    return DataparserOutputs(
        image_filenames=[outputs.image_filenames[i] for i in indices],
        cameras=outputs.cameras[idx],
        alpha_color=outputs.alpha_color,
        scene_box=outputs.scene_box,
        mask_filenames=[outputs.mask_filenames[i] for i in indices] if outputs.mask_filenames else None,
        metadata=metadata,
        dataparser_transform=outputs.dataparser_transform,
        dataparser_scale=outputs.dataparser_scale,
    )


@dataclass
class FewViewDataParser(DataParser):
    """Runs nerfstudio's parser on all views, then keeps the split's views (module docstring)."""

    config: FewViewDataParserConfig
    downscale_factor: Optional[int] = None
    """Set by nerfstudio's datamanager (1 in inference mode, so no image is opened); forwarded."""

    def __init__(self, config: FewViewDataParserConfig):
        super().__init__(config=config)
        self.config = config
        self.downscale_factor = None
        self._inner = config.inner_config().setup()

    def split_indices(self, outputs: DataparserOutputs) -> tuple[list[int], list[int]]:
        """(train, eval) indices into ``outputs`` (all views, nerfstudio's file-name order)."""
        cfg = self.config
        n = len(outputs.image_filenames)
        if cfg.train_names or cfg.eval_names:
            return self._named_indices(outputs)
        if isinstance(cfg.eval_views, bool) or not isinstance(cfg.eval_views, int) or cfg.eval_views < -1:
            raise InputError("--eval-views", f"is {cfg.eval_views!r} (expected -1 for all others, 0, or a count)")
        if isinstance(cfg.train_views, bool) or not isinstance(cfg.train_views, int) or not 1 <= cfg.train_views <= n:
            raise InputError("--train-views", f"asks for {cfg.train_views!r} views but the capture has {n} (expected 1..{n})")
        n_eval = n - cfg.train_views if cfg.eval_views == -1 else cfg.eval_views
        return split_views(camera_set_from_nerfstudio(outputs.cameras), cfg.train_views, n_eval)

    def _named_indices(self, outputs: DataparserOutputs) -> tuple[list[int], list[int]]:
        cfg = self.config
        position = {p.name: i for i, p in enumerate(outputs.image_filenames)}
        if not cfg.train_names:
            raise InputError("--train-names", "is empty but --eval-names is given (expected both, or neither)")
        for flag, names in (("--train-names", cfg.train_names), ("--eval-names", cfg.eval_names)):
            unknown = [n for n in names if n not in position]
            if unknown:
                raise InputError(flag, f"{unknown[0]} is not an image of {cfg.data} (expected names like {next(iter(position))})")
        overlap = set(cfg.train_names) & set(cfg.eval_names)
        if overlap:
            raise InputError("--eval-names", f"{sorted(overlap)[0]} is also a training image (expected disjoint sets)")
        train = [position[n] for n in cfg.train_names]
        evals = [position[n] for n in cfg.eval_names] or [i for i in range(len(position)) if i not in set(train)]
        return sorted(train), sorted(evals)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', given {split!r}")
        if self.downscale_factor is not None:
            self._inner.downscale_factor = self.downscale_factor
        outputs = self._inner.get_dataparser_outputs(split="train")  # every view, eval_mode="all"
        self._check_all_views(outputs)
        train, evals = self.split_indices(outputs)
        chosen = train if split == "train" else evals
        names = ", ".join(outputs.image_filenames[i].name for i in chosen)
        CONSOLE.log(f"recon-fewview: {split} views ({len(chosen)} of {len(outputs.image_filenames)}): {names}")
        return select_outputs(outputs, chosen)

    def _check_all_views(self, outputs: DataparserOutputs) -> None:
        # nerfstudio honours explicit train/val/test file lists in transforms.json over eval_mode;
        # this parser chooses views itself, so it needs every view.
        path = self.config.data
        meta_path = path if path.suffix == ".json" else path / "transforms.json"
        meta = json.loads(meta_path.read_text())
        lists = [k for k in ("train_filenames", "val_filenames", "test_filenames") if k in meta]
        if lists:
            raise InputError(
                meta_path,
                f"lists fixed splits ({', '.join(lists)}); recon-fewview chooses its own views "
                "(expected no split lists; use the nerfstudio-data parser for fixed splits)",
            )
        missing = [p for p in outputs.image_filenames if not p.exists()]
        if missing and self._inner.downscale_factor not in (None, 1):
            d = self._inner.downscale_factor
            raise InputError(
                missing[0],
                f"not found: {len(missing)} images missing from images_{d}/ (expected pre-downscaled copies, "
                f"as ns-process-data writes; or use --downscale-factor 1 with "
                f"--pipeline.datamanager.camera-res-scale-factor {1 / d:g})",
            )


recon_fewview = DataParserSpecification(
    config=FewViewDataParserConfig(),
    description="few-view split of a nerfstudio capture: K training views spread by farthest-point sampling (recon)",
)
