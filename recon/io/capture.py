"""Photo captures (posed images) in one type, :class:`Capture`, whatever layout they came in.

Readers, one module per layout, each returning a :class:`Capture` (cameras in the internal
convention of :mod:`recon.geometry.cameras`, validated; bad input raises
:class:`~recon.errors.InputError` naming the file):

* :mod:`recon.io.transforms`: nerfstudio / instant-ngp ``transforms.json`` and Blender
  ``transforms_{train,val,test}.json`` (read and written);
* :mod:`recon.io.colmap`: COLMAP sparse models;
* :mod:`recon.io.llff`: LLFF ``poses_bounds.npy``.

:func:`recon.io.formats.load_capture` detects the layout of a path and calls the right one.
Frames are sorted by their image path (plain string order, which is also the order LLFF's
``poses_bounds.npy`` rows follow).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, as_index_list

__all__ = ["IMAGE_EXTENSIONS", "SUPPORTED_CAMERA_MODELS", "Capture", "check_files_exist", "unique_names"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""Image file extensions recognised when listing folders or completing extension-less paths."""
SUPPORTED_CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
"""Camera models the readers accept (COLMAP names; transforms.json's ``camera_model`` too)."""


@dataclass
class Capture:
    """Posed images of one scene, cameras in the internal convention (:mod:`recon.geometry.cameras`)."""

    root: Path
    """Folder the capture was read from (relative paths in its files are relative to it)."""
    image_paths: list[Path]
    """One image file per view, sorted by path."""
    cameras: CameraSet
    """Cameras of the views, at the images' full resolution, with distortion if the file has it."""
    mask_paths: list[Path | None]
    """Per-view mask image (white = keep), or ``None``."""
    names: list[str]
    """Unique per-view names (the image file name; the path relative to :attr:`root` if file
    names repeat), used to name renders."""
    format: str
    """``"nerfstudio"``, ``"blender"``, ``"colmap"`` or ``"llff"``."""
    points: Tensor | None = None  # [P, 3]
    """SfM points in world coordinates, float32 [P, 3], when the format has them."""
    point_colours: Tensor | None = None  # [P, 3]
    """Colours of :attr:`points`, float32 in 0..1 [P, 3]."""
    scene_aabb: Tensor | None = None  # [2, 3]
    """Box around the scene, ``[min_xyz, max_xyz]`` float32 [2, 3], when the format gives one."""
    source: Path | None = None
    """The file the cameras were read from (for error messages)."""

    def __post_init__(self) -> None:
        n = len(self.cameras)
        for name in ("image_paths", "mask_paths", "names"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Capture.{name} has {len(getattr(self, name))} entries for {n} cameras"
                )
        if self.points is not None:
            if self.points.ndim != 2 or self.points.shape[1] != 3:
                raise ValueError(f"Capture.points must be [P, 3], got {tuple(self.points.shape)}")
            if self.point_colours is not None and self.point_colours.shape != self.points.shape:
                raise ValueError(
                    f"Capture.point_colours {tuple(self.point_colours.shape)} does not match "
                    f"points {tuple(self.points.shape)}"
                )
        if self.scene_aabb is not None and tuple(self.scene_aabb.shape) != (2, 3):
            raise ValueError(
                f"Capture.scene_aabb must be [2, 3], got {tuple(self.scene_aabb.shape)}"
            )

    def __len__(self) -> int:
        return len(self.cameras)

    def subset(self, indices: Sequence[int]) -> Capture:
        """The views at ``indices`` (in that order); points and box are kept whole."""
        idx = as_index_list(indices, len(self))
        return Capture(
            root=self.root,
            image_paths=[self.image_paths[i] for i in idx],
            cameras=self.cameras.subset(idx),
            mask_paths=[self.mask_paths[i] for i in idx],
            names=[self.names[i] for i in idx],
            format=self.format,
            points=self.points,
            point_colours=self.point_colours,
            scene_aabb=self.scene_aabb,
            source=self.source,
        )


def check_files_exist(paths: list[Path], kind: str, listed_in: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            missing[0],
            f"{kind} file not found ({len(missing)} of {len(paths)} {kind}s listed in {listed_in.name} are missing)",
        )


def unique_names(paths: list[Path], root: Path) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    rel = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    if len(set(rel)) != len(rel):
        dup = next(r for r in rel if rel.count(r) > 1)
        raise InputError(root, f"image {dup} is listed more than once")
    return rel


