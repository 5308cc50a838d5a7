"""Our circular cone-beam geometry in mbirjax's terms (``mbirjax.ConeBeamModel``), for comparisons.

mbirjax (Purdue's MBIR in JAX) is not a dependency: this module only converts conventions, with
numpy, and imports mbirjax when :meth:`MbirjaxCone.model` builds a model. It also runs in an
interpreter that has mbirjax but not torch (``scripts/bench_ct_mbir.py`` uses it from a separate
venv, because mbirjax needs numpy 2).

Conventions, ours (:mod:`recon.geometry.ct`) -> mbirjax:

* lengths: mbirjax measures them in ALU; here 1 ALU = one detector column pitch
  (``detector_pixel_mm[1]``). Attenuation is then in 1/ALU: ``x = mu * alu_mm``; line integrals
  are the same numbers in both.
* volume: ours ``[z, y, x]`` with ``z`` up; mbirjax ``(rows, columns, slices)`` with slice 0 at
  the top ("z points down") and rows running the other way from our ``y``:
  ``x_mbirjax[r, c, s] = mu[Z-1-s, Y-1-r, c] * alu_mm``.
* angles: mbirjax's angle is ours + pi/2.
* projections: ``[views, rows, channels]``, the same layout and orientation as our ``[views, v, u]``.

Checked by forward-projecting real chest CTs (128^3, 25 views) with both projectors: they
differ by 0.20 % and 0.25 % (relative L2; mbirjax's region-of-reconstruction mask off), against
2.1 % and 0.86 % for the simulated noise (docs/benchmarks.md, "CT: the whole TV command, and
mbirjax's MBIR beside it"). With the slices or rows the other way round it is 33 % and more.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recon.errors import InputError
from recon.geometry.ct import CTGeometry

__all__ = ["MbirjaxCone", "volume_from_mbirjax", "volume_to_mbirjax"]

ANGLE_OFFSET_RAD = math.pi / 2
"""mbirjax's view angle minus ours."""


@dataclass(frozen=True)
class MbirjaxCone:
    """The arguments of ``mbirjax.ConeBeamModel`` and its ``set_params`` for one scan (lengths in ALU)."""

    sinogram_shape: tuple[int, int, int]
    """(views, detector rows, detector channels)."""
    angles_rad: tuple[float, ...]
    """mbirjax's view angles (ours + pi/2)."""
    source_detector_dist_alu: float
    source_iso_dist_alu: float
    recon_shape: tuple[int, int, int]
    """(rows, columns, slices) = our (Y, X, Z)."""
    delta_voxel_alu: float
    """Voxel pitch along the columns (our x)."""
    voxel_row_aspect: float
    """Row pitch (our y) / column pitch."""
    voxel_slice_aspect: float
    """Slice pitch (our z) / column pitch."""
    delta_det_row_alu: float
    delta_det_channel_alu: float
    alu_mm: float
    """Millimetres per ALU (the detector column pitch)."""

    @classmethod
    def from_geometry(cls, geometry: CTGeometry) -> MbirjaxCone:
        """The mbirjax description of a circular cone-beam ``geometry``. Raises :class:`InputError`
        for what this mapping has not been checked on: other modes, per-view vectors, offsets."""
        g = geometry
        if g.mode != "cone":
            raise InputError("geometry", f"mbirjax comparison supports cone-beam scans only, got mode {g.mode!r}")
        if g.vectors is not None:
            raise InputError("geometry", "per-view vectors are not supported by the mbirjax mapping; expected a circular scan")
        if any(o != 0.0 for o in (*g.offset_origin_mm, *g.offset_detector_mm)):
            raise InputError("geometry", f"volume / detector offsets {g.offset_origin_mm} / {g.offset_detector_mm} are not supported by the mbirjax mapping; expected zeros")
        alu = float(g.detector_pixel_mm[1])
        dz, dy, dx = (float(v) for v in g.voxel_mm)
        Z, Y, X = g.n_voxel
        return cls(
            sinogram_shape=(g.n_views, g.n_detector[0], g.n_detector[1]),
            angles_rad=tuple(float(a) + ANGLE_OFFSET_RAD for a in g.angles),
            source_detector_dist_alu=g.dsd_mm / alu,
            source_iso_dist_alu=g.dso_mm / alu,
            recon_shape=(Y, X, Z),
            delta_voxel_alu=dx / alu,
            voxel_row_aspect=dy / dx,
            voxel_slice_aspect=dz / dx,
            delta_det_row_alu=float(g.detector_pixel_mm[0]) / alu,
            delta_det_channel_alu=1.0,
            alu_mm=alu,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MbirjaxCone:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def set_params_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ConeBeamModel.set_params`` for the volume grid and detector pitch."""
        return {
            "recon_shape": self.recon_shape,
            "delta_voxel": self.delta_voxel_alu,
            "voxel_row_aspect": self.voxel_row_aspect,
            "voxel_slice_aspect": self.voxel_slice_aspect,
            "delta_det_row": self.delta_det_row_alu,
            "delta_det_channel": self.delta_det_channel_alu,
        }

    def model(self, *, ror_mask: bool = True) -> Any:
        """An ``mbirjax.ConeBeamModel`` of this scan (imports mbirjax; raises ImportError with the
        install hint when it is missing). ``ror_mask=False`` turns off mbirjax's default region of
        reconstruction (the cylinder inscribed in the rows x columns grid: voxels outside it are
        neither projected nor reconstructed); a projector comparison needs it off."""
        try:
            import mbirjax
        except ImportError as err:
            raise ImportError(
                "mbirjax is not installed in this interpreter; it needs numpy 2, so put it in its own venv: "
                "python3.11 -m venv /tmp/mbir-venv && /tmp/mbir-venv/bin/pip install mbirjax"
            ) from err
        model = mbirjax.ConeBeamModel(self.sinogram_shape, np.asarray(self.angles_rad),
                                      source_detector_dist=self.source_detector_dist_alu, source_iso_dist=self.source_iso_dist_alu)  # fmt: skip
        model.set_params(no_warning=True, use_ror_mask=ror_mask, **self.set_params_kwargs())
        return model


def volume_to_mbirjax(
    volume: np.ndarray,  # [Z, Y, X] attenuation, 1/mm
    alu_mm: float,
) -> np.ndarray:  # [Y, X, Z] (rows, columns, slices), 1/ALU
    """Our ``[z, y, x]`` volume in 1/mm as an mbirjax recon array (module docstring)."""
    if volume.ndim != 3:
        raise InputError("volume", f"expected a [z, y, x] volume, got shape {list(volume.shape)}")
    return np.ascontiguousarray(np.transpose(volume, (1, 2, 0))[::-1, :, ::-1] * np.float32(alu_mm), dtype=np.float32)


def volume_from_mbirjax(
    recon: np.ndarray,  # [Y, X, Z] (rows, columns, slices), 1/ALU
    alu_mm: float,
) -> np.ndarray:  # [Z, Y, X] attenuation, 1/mm
    """An mbirjax recon array back to our ``[z, y, x]`` volume in 1/mm (inverse of :func:`volume_to_mbirjax`)."""
    recon = np.asarray(recon)
    if recon.ndim != 3:
        raise InputError("recon", f"expected an mbirjax (rows, columns, slices) array, got shape {list(recon.shape)}")
    return np.ascontiguousarray(np.transpose(recon[::-1, :, ::-1], (2, 0, 1)) / np.float32(alu_mm), dtype=np.float32)
