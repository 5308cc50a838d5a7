"""``recon-ct-data``: any CT projection set recon reads, as nerfstudio cameras and images.

Reading is :func:`recon.pipelines.ct.load_ct_data` (R2-Gaussian folders, NAF / SAX-NeRF pickles,
``.npy`` / ``.tif`` stacks with a TIGRE or recon geometry file); the views become pinhole cameras
through :func:`recon.ct.gaussians.xray_cameras` (source = camera centre, detector = image plane)
and :func:`.convert.cameras_from_xray`.

* World: recon's (x, y, z in mm, z the rotation axis) times ``world_scale = 2 / (largest volume
  extent)``, so the reconstruction volume spans about [-1, 1] (nerfstudio's usual scale, for the
  viewer); no rotation or centring. ``dataparser_scale`` is ``world_scale`` and the scene box is
  the volume's box.
* Images: each projection, divided by the training projections' largest magnitude (recon's
  :class:`~recon.ct.gaussians.GaussianTrainer` normalisation), one channel. They are not files:
  ``metadata["ct"]`` (:class:`CTViews`) holds them, and :class:`.ct_datamanager.ProjectionDataset`
  serves them. ``image_filenames`` are placeholders ``<data>#view<k>`` (one per view).
* Splits: training = every projection, or ``--views N`` of them evenly spread (``recon ct fit
  --views N``); evaluation = the dataset's test projections (R2-Gaussian ``proj_test``, NAF
  ``val``), or the training views when it has none.

This module imports no nerfstudio datamanager or method config: nerfstudio loads dataparser entry
points while it is still building those tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

import numpy as np
import torch
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from recon.io.ct_data import CTData
from recon.geometry.ct import CTGeometry
from recon.ct.gaussians import xray_cameras
from recon.errors import InputError
from recon.io.formats import load_ct_data, load_volume_file

from .convert import cameras_from_xray

__all__ = ["CTDataParserConfig", "CTDataParser", "CTViews", "recon_ct_data", "world_scale_of"]


@dataclass(frozen=True)
class CTViews:
    """One split of a CT scan, as ``recon-ct-data`` hands it on in ``metadata["ct"]``."""

    geometry: CTGeometry
    """The split's views (recon geometry, mm)."""
    projections: np.ndarray  # [V, v, u] float32
    """Line integrals as read (not normalised)."""
    projection_scale: float
    """Largest magnitude of the training projections; images are ``projections / projection_scale``."""
    world_scale: float
    """nerfstudio world units per mm (``dataparser_scale``)."""
    volume: Optional[np.ndarray] = None  # [Z, Y, X] float32, 1/mm
    """Reference volume for 3D metrics, when the dataset or ``--reference`` gives one."""
    split: str = "train"
    """'train' or 'eval'."""

    def images(self) -> np.ndarray:  # [V, v, u] float32
        """Normalised projections (what the model is trained to render)."""
        return (self.projections / self.projection_scale).astype(np.float32)


def world_scale_of(geometry: CTGeometry) -> float:
    """``2 / largest extent of the volume`` (mm^-1): the volume spans about [-1, 1]."""
    return 2.0 / max(n * d for n, d in zip(geometry.n_voxel, geometry.voxel_mm))


def _scene_box(geometry: CTGeometry, world_scale: float) -> SceneBox:
    zc, yc, xc = geometry.voxel_centres_mm()
    dz, dy, dx = geometry.voxel_mm
    lo = [xc[0] - dx / 2, yc[0] - dy / 2, zc[0] - dz / 2]
    hi = [xc[-1] + dx / 2, yc[-1] + dy / 2, zc[-1] + dz / 2]
    return SceneBox(aabb=torch.tensor([lo, hi], dtype=torch.float32) * world_scale)


@dataclass
class CTDataParserConfig(DataParserConfig):
    """A CT scan read by recon (``recon ct fit``'s formats), as cameras and one-channel images."""

    _target: Type = field(default_factory=lambda: CTDataParser)
    data: Path = Path()
    """Projections: an R2-Gaussian folder (meta_data.json), a NAF .pickle, or a .npy/.tif stack with its
    geometry .json/.yaml beside it (same stem)."""
    views: Optional[int] = None
    """Train on N of the projections, evenly spread (sparse-view subset); all when unset."""
    reference: Optional[Path] = None
    """Reference volume for 3D PSNR (.npy/.npz/NIfTI/TIFF/DICOM, [z, y, x] in 1/mm); default: the dataset's volume."""


@dataclass
class CTDataParser(DataParser):
    """Reads the scan once; both splits share its world frame (module docstring)."""

    config: CTDataParserConfig
    downscale_factor: Optional[int] = None
    """Set by nerfstudio's datamanager in inference mode; projections have no resolution levels, so unused."""

    def __init__(self, config: CTDataParserConfig):
        super().__init__(config=config)
        self.config = config
        self.downscale_factor = None
        self._data: Optional[CTData] = None
        self._reference: Optional[np.ndarray] = None

    def scan(self) -> CTData:
        """The scan (training views after ``--views``), read on first use."""
        if self._data is None:
            data = load_ct_data(self.config.data)
            n = self.config.views
            if n is not None:
                total = data.geometry.n_views
                if not 1 <= n <= total:
                    raise InputError("--views", f"asked for {n} of the {total} projections; expected 1..{total}")
                idx = data.geometry.view_indices(n)
                data = dataclasses.replace(data, geometry=data.geometry.subset(idx), projections=data.projections[idx])
            reference = data.volume
            if self.config.reference is not None:
                reference, _spacing = load_volume_file(self.config.reference)
            if reference is not None and tuple(reference.shape) != data.geometry.n_voxel:
                raise InputError(
                    self.config.reference or self.config.data,
                    f"reference volume is {list(reference.shape)} but the geometry's grid is "
                    f"{list(data.geometry.n_voxel)} (z, y, x)",
                )
            self._data, self._reference = data, reference
        return self._data

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', given {split!r}")
        data = self.scan()
        scale = float(np.abs(data.projections).max()) or 1.0
        world_scale = world_scale_of(data.geometry)
        geometry, projections, name = data.geometry, data.projections, "train"
        if split != "train":
            if data.test_projections is not None and data.test_geometry is not None and len(data.test_projections):
                geometry, projections, name = data.test_geometry, data.test_projections, "eval"
            else:
                CONSOLE.log("recon-ct-data: the dataset has no test projections; evaluating on the training views")
        cams = xray_cameras(geometry)
        views = CTViews(geometry, np.asarray(projections, dtype=np.float32), scale, world_scale, self._reference, name)
        CONSOLE.log(
            f"recon-ct-data: {split} = {geometry.n_views} {geometry.mode}-beam projections "
            f"{geometry.n_detector[0]}x{geometry.n_detector[1]}, volume {list(geometry.n_voxel)} x {list(geometry.voxel_mm)} mm"
        )
        source = self.config.data
        return DataparserOutputs(
            image_filenames=[Path(f"{source}#{name}{k:04d}") for k in range(geometry.n_views)],
            cameras=cameras_from_xray(cams, world_scale),
            scene_box=_scene_box(data.geometry, world_scale),
            metadata={"ct": views},
            dataparser_transform=torch.eye(4)[:3],
            dataparser_scale=world_scale,
        )


recon_ct_data = DataParserSpecification(
    config=CTDataParserConfig(),
    description="CT projections recon reads (R2-Gaussian, NAF pickle, .npy/.tif + geometry) as X-ray pinhole cameras (recon)",
)
