"""Learned refinement of sparse-view CT reconstructions on their non-air voxels.

A :class:`VolumeRefiner` is a small sparse U-Net (:class:`recon.sparse.nets.MinkUNet`) that
reads a reconstruction (FDK, or SART / Gaussians) and predicts a per-voxel residual that is
added to it. It only sees, and only changes, the voxels :func:`select_non_air` keeps:

1. smooth the volume (Gaussian, ``sigma_vox``) so that streaks and noise in the air do not
   pass the threshold;
2. threshold at ``threshold`` x ``value_scale_per_mm`` (by default 0.3 x mu_water);
3. fill holes slice by slice along each axis (lungs, sinuses and airways inside the body are
   kept: they are enclosed in at least one axial, coronal or sagittal slice);
4. dilate by ``margin_vox`` voxels (a cube), so the edges of the object are included.

Per-voxel input features, in units of ``value_scale_per_mm`` (water = 1 for the default
scale): the value itself and, when ``smooth_sigma_vox > 0``, the value smoothed by a Gaussian
of that width (a second, low-noise channel). The output residual is in the same units.

:func:`refine_volume` runs the network in cubic chunks (``chunk`` voxels a side) with a halo
of ``halo`` voxels; with the default halo (the network's receptive radius,
:meth:`VolumeRefiner.receptive_radius`) chunked and whole-volume inference agree to float
rounding. Voxels outside the mask are returned unchanged.

Weights ship in ``recon/prior/weights/ct_refiner/`` (diffusers layout: ``config.json`` and
``diffusion_pytorch_model.safetensors``); :func:`load_refiner` reads them, and
``scripts/train_ct_refiner.py`` trains them. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from scipy import ndimage
from torch import Tensor

from recon.io.units import MU_WATER_PER_MM
from recon.prior.local_weights import load_local
from recon.sparse.nets import MinkUNet
from recon.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS",
    "TRAIN_SCRIPT",
    "VolumeRefiner",
    "VolumeRefinerOutput",
    "load_refiner",
    "refine_volume",
    "select_non_air",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "ct_refiner"
"""The shipped weights folder (config.json + diffusion_pytorch_model.safetensors)."""
TRAIN_SCRIPT = "scripts/train_ct_refiner.py"
"""The script that trains (and writes) the shipped weights."""


def _as_volume(volume, where: str) -> np.ndarray:  # -> [Z, Y, X] float32
    if isinstance(volume, Tensor):
        volume = volume.detach().cpu().numpy()
    if not isinstance(volume, np.ndarray):
        raise ValueError(f"{where}: expected a [Z, Y, X] numpy array or torch tensor, given {type(volume).__name__}")
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"{where}: expected a [Z, Y, X] volume, given shape {tuple(volume.shape)}")
    if not np.issubdtype(volume.dtype, np.floating) and not np.issubdtype(volume.dtype, np.integer):
        raise ValueError(f"{where}: expected real numbers, given dtype {volume.dtype}")
    vol = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(vol).all():
        raise ValueError(f"{where}: contains {int((~np.isfinite(vol)).sum())} NaN/inf values (expected finite numbers)")
    return vol


def select_non_air(
    volume: np.ndarray | Tensor,  # [Z, Y, X]
    threshold: float,
    *,
    sigma_vox: float = 1.5,
    margin_vox: int = 3,
    fill_holes: bool = True,
) -> np.ndarray:  # [Z, Y, X] bool
    """Voxels of an object and its surroundings: ``gaussian(volume, sigma_vox) > threshold``,
    holes filled slice by slice along each axis (when ``fill_holes``), dilated by a cube of
    ``2 * margin_vox + 1`` voxels. ``threshold`` is in the volume's units. Returns a bool mask
    shaped like ``volume``."""
    vol = _as_volume(volume, "volume")
    if sigma_vox < 0 or margin_vox < 0:
        raise ValueError(f"sigma_vox/margin_vox: expected >= 0, given {sigma_vox}, {margin_vox}")
    smooth = ndimage.gaussian_filter(vol, sigma_vox, mode="nearest") if sigma_vox > 0 else vol
    core = smooth > threshold
    mask = core.copy()
    if fill_holes:
        for axis in range(3):
            filled = np.moveaxis(mask, axis, 0)  # a view: writes go to ``mask``
            src = np.moveaxis(core, axis, 0)
            for i in range(src.shape[0]):
                if src[i].any():
                    filled[i] |= ndimage.binary_fill_holes(src[i])
    if margin_vox > 0 and mask.any():
        mask = ndimage.maximum_filter(mask, size=2 * int(margin_vox) + 1, mode="constant", cval=False)
    return mask


@dataclass
class VolumeRefinerOutput(BaseOutput):
    """Output of :meth:`VolumeRefiner.forward`."""

    residual: Tensor  # [N]
    """Correction per input voxel, in units of ``value_scale_per_mm`` (add ``residual * scale``)."""


class VolumeRefiner(ModelMixin, ConfigMixin):
    """Sparse U-Net that refines a CT reconstruction on its non-air voxels (see the module
    docstring).

    Args:
        planes: MinkUNet channels per level, finest first.
        layers: MinkUNet residual blocks per level.
        value_scale_per_mm: attenuation (1/mm) that maps to 1 in the network's units.
        smooth_sigma_vox: width of the smoothed second input channel; 0 for one channel.
        threshold: non-air threshold, in units of ``value_scale_per_mm``.
        mask_sigma_vox: smoothing before the threshold (voxels).
        margin_vox: dilation of the mask (voxels).
        fill_holes: fill enclosed holes (per slice, each axis) in the mask.
        nonnegative: clamp refined voxels at 0 (attenuation is never negative).
        backend: sparse backend, ``"auto"``, ``"torch"`` or ``"minkowski"`` (not saved).
    """

    ignore_for_config = ["backend"]

    @register_to_config
    def __init__(
        self,
        planes: Sequence[int] = (16, 32, 64),
        layers: Sequence[int] = (1, 1, 1),
        value_scale_per_mm: float = MU_WATER_PER_MM,
        smooth_sigma_vox: float = 1.5,
        threshold: float = 0.3,
        mask_sigma_vox: float = 1.5,
        margin_vox: int = 3,
        fill_holes: bool = True,
        nonnegative: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if not value_scale_per_mm > 0:
            raise ValueError(f"value_scale_per_mm: expected > 0, given {value_scale_per_mm}")
        if smooth_sigma_vox < 0 or mask_sigma_vox < 0 or margin_vox < 0:
            raise ValueError(
                f"smooth_sigma_vox/mask_sigma_vox/margin_vox: expected >= 0, given {smooth_sigma_vox}, {mask_sigma_vox}, {margin_vox}"
            )
        self.in_channels = 2 if smooth_sigma_vox > 0 else 1
        self.unet = MinkUNet(self.in_channels, 1, planes=planes, layers=layers, backend=backend)
        with torch.no_grad():  # start as the identity: a zero residual
            self.unet.head.kernel.zero_()
            self.unet.head.bias.zero_()

    # ------------------------------------------------------------------ pieces
    def receptive_radius(self) -> int:
        """Voxels beyond which an input cannot change an output (an upper bound, per axis):
        the sum of every convolution's reach through the U-Net."""
        cfg = self.unet.config
        planes, layers = list(cfg.planes), list(cfg.layers)
        r = cfg.stem_kernel_size // 2
        for i, n in enumerate(layers):
            s = 2**i
            if i > 0:
                r += s // 2  # kernel-2 stride-2 down conv from stride s / 2
            r += 2 * n * s  # residual blocks: two 3^3 convs at stride s
        for i in range(len(planes) - 1, 0, -1):
            s = 2 ** (i - 1)
            r += s  # kernel-2 transposed conv onto stride s
            r += 2 * max(1, layers[i - 1]) * s
        return int(r)

    def select(self, volume: np.ndarray | Tensor) -> np.ndarray:  # [Z, Y, X] -> [Z, Y, X] bool
        """The non-air mask of ``volume`` (attenuation in 1/mm) with this model's settings."""
        c = self.config
        return select_non_air(
            volume, c.threshold * c.value_scale_per_mm, sigma_vox=c.mask_sigma_vox, margin_vox=c.margin_vox, fill_holes=c.fill_holes
        )

    def features(self, volume: np.ndarray | Tensor) -> np.ndarray:  # [Z, Y, X] -> [Z, Y, X, C] float32
        """Dense input features: the value (and its smoothed copy) in network units."""
        vol = _as_volume(volume, "volume") / np.float32(self.config.value_scale_per_mm)
        chans = [vol]
        if self.config.smooth_sigma_vox > 0:
            chans.append(ndimage.gaussian_filter(vol, self.config.smooth_sigma_vox, mode="nearest"))
        return np.stack(chans, axis=-1).astype(np.float32)

    def forward(self, x: SparseTensor) -> VolumeRefinerOutput:  # features [N, C] -> residual [N]
        """Residual per voxel of ``x`` (coordinates [N, 1 + 3], features [N, C] from
        :meth:`features`), in network units."""
        return VolumeRefinerOutput(residual=self.unet(x).F[:, 0])


# ====================================================================== inference
def _chunk_starts(n: int, chunk: int) -> list[int]:
    return list(range(0, n, chunk))


@torch.no_grad()
def refine_volume(
    volume: np.ndarray | Tensor,  # [Z, Y, X] attenuation, 1/mm
    model: VolumeRefiner,
    *,
    chunk: int = 128,
    halo: int | None = None,
    mask: np.ndarray | None = None,  # [Z, Y, X] bool
    device: torch.device | str | None = None,
) -> np.ndarray | Tensor:  # [Z, Y, X]
    """Refine ``volume`` with ``model``: voxels of the non-air mask get ``value + residual``
    (clamped at 0 if the model says so), every other voxel is returned unchanged.

    Args:
        volume: [Z, Y, X] reconstruction in 1/mm (numpy array or torch tensor).
        model: a :class:`VolumeRefiner` (run in eval mode).
        chunk: edge of the cubic blocks the volume is processed in (bounds memory: about
            3 GB per 128^3 block of solid voxels with the default model on the torch backend).
        halo: voxels of context around each block; default the receptive radius, which makes
            the result equal to whole-volume inference.
        mask: the voxels to refine; default ``model.select(volume)``.
        device: where the network runs (default: the model's device).

    Returns:
        The refined volume, same shape, dtype float32, same type as ``volume`` (a tensor comes
        back on its own device).
    """
    if not isinstance(model, VolumeRefiner):
        raise ValueError(f"model: expected a VolumeRefiner, given {type(model).__name__}")
    vol = _as_volume(volume, "volume")
    if chunk < 1:
        raise ValueError(f"chunk: expected >= 1, given {chunk}")
    halo = model.receptive_radius() if halo is None else int(halo)
    if halo < 0:
        raise ValueError(f"halo: expected >= 0, given {halo}")
    if mask is None:
        mask = model.select(vol)
    else:
        mask = np.asarray(mask)
        if mask.shape != vol.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask: expected a bool array shaped {vol.shape}, given {mask.dtype} {mask.shape}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = model.features(vol)
    out = vol.copy()
    scale = np.float32(model.config.value_scale_per_mm)
    shape = vol.shape
    try:
        for z0 in _chunk_starts(shape[0], chunk):
            for y0 in _chunk_starts(shape[1], chunk):
                for x0 in _chunk_starts(shape[2], chunk):
                    core = [(z0, min(z0 + chunk, shape[0])), (y0, min(y0 + chunk, shape[1])), (x0, min(x0 + chunk, shape[2]))]
                    if not mask[core[0][0] : core[0][1], core[1][0] : core[1][1], core[2][0] : core[2][1]].any():
                        continue
                    reg = [(max(a - halo, 0), min(b + halo, n)) for (a, b), n in zip(core, shape)]
                    sl = tuple(slice(a, b) for a, b in reg)
                    idx = np.argwhere(mask[sl])  # [N, 3] relative to the region
                    absolute = idx + np.array([a for a, _ in reg])
                    coords = torch.zeros(len(idx), 4, dtype=torch.int32)
                    coords[:, 1:] = torch.from_numpy(absolute.astype(np.int32))  # absolute: strides align
                    f = torch.from_numpy(feats[sl][mask[sl]])
                    x = SparseTensor(f.to(dev), coords.to(dev))
                    res = model(x).residual.float().cpu().numpy()
                    inside = np.all((absolute >= [a for a, _ in core]) & (absolute < [b for _, b in core]), axis=1)
                    zi, yi, xi = absolute[inside].T
                    new = vol[zi, yi, xi] + res[inside] * scale
                    if model.config.nonnegative:
                        new = np.maximum(new, 0.0)
                    out[zi, yi, xi] = new
    finally:
        model.train(was_training)
    if isinstance(volume, Tensor):
        return torch.from_numpy(out).to(volume.device)
    return out


# ====================================================================== weights
def load_refiner(path: str | Path | None = None, *, backend: str = "auto", device: torch.device | str = "cpu") -> VolumeRefiner:
    """Load a :class:`VolumeRefiner` from a local folder written by ``save_pretrained``
    (default: the shipped weights, :data:`DEFAULT_WEIGHTS`). Never downloads.

    Raises:
        InputError: the folder or one of its files is missing (naming the path and
            ``scripts/train_ct_refiner.py``, which writes them), or the files do not load.
    """
    folder = Path(path) if path is not None else DEFAULT_WEIGHTS
    return load_local(VolumeRefiner, folder, "CT refiner", TRAIN_SCRIPT, backend=backend).to(device).eval()
