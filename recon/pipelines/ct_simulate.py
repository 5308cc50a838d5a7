"""``recon ct simulate``: a noisy sparse-view scan of a CT volume, written as an R2-Gaussian
dataset folder (``meta_data.json``, ``proj_train/``, ``proj_test/``, ``vol_gt.npy``).

Not a run folder: the output is a dataset that ``recon ct fit`` reads. It is written into a
temporary sibling folder and renamed at the end, so an interrupted simulation leaves nothing
that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from recon.ct.simulate import resample_volume, write_r2gaussian_dataset
from recon.errors import InputError
from recon.geometry.ct import CTGeometry, circular_angles
from recon.io.formats import load_volume_file
from recon.io.run import RunDir
from recon.io.units import hu_to_mu
from recon.pipelines.job import ProgressFn

__all__ = ["CTSimulateConfig"]


@dataclass
class CTSimulateConfig:
    """Simulate a sparse-view cone-beam dataset (R2-Gaussian layout) from a CT volume."""

    volume: tyro.conf.Positional[Path]
    """Volume: .npz with a 'volume' key (and 'spacing_mm_zyx'), .npy, NIfTI, TIFF or a DICOM folder; [z, y, x]."""
    views: int = 25
    """Training projections, evenly over --total-angle-deg."""
    out: Path = Path("data/ct_sim")
    """Dataset folder to write (meta_data.json, proj_train/, proj_test/, vol_gt.npy)."""
    n_test: int = 20
    """Noise-free test projections at random angles (R2-Gaussian's protocol)."""
    units: Literal["auto", "hu", "mu"] = "auto"
    """Values of the volume: Hounsfield units (converted mu = mu_water (1 + HU/1000)), attenuation in 1/mm, or auto (HU when the minimum is below -500)."""
    voxel_mm: tuple[float, float, float] | None = None
    """Voxel size (z, y, x) in mm when the file has none (.npy); overrides the file's when given."""
    size: int | None = None
    """Resample to size^3 voxels (area averaging, same physical extent) before simulating."""
    mode: Literal["cone", "parallel"] = "cone"
    """Beam geometry."""
    detector: int = 256
    """Detector pixels per side; pitch 2 x the volume's largest extent / detector (R2-Gaussian: sDetector = 2 sVoxel)."""
    dso_extent: float = 2.5
    """Source-to-axis distance in units of the volume's largest extent (R2-Gaussian: DSO 5 for sVoxel 2)."""
    dsd_extent: float = 3.5
    """Source-to-detector distance in units of the volume's largest extent (R2-Gaussian: DSD 7)."""
    total_angle_deg: float = 360.0
    """Angular range of the training views."""
    noise: bool = True
    """Add Poisson + Gaussian detector noise to the training projections."""
    noise_protocol: Literal["physical", "r2gaussian"] = "physical"
    """'physical': counts ~ Poisson(I0 exp(-p)) + N(0, sigma); 'r2gaussian': TIGRE's model on p / max(p) (recon.ct.simulate)."""
    photons: float = 1e5
    """I0, photons per unattenuated pixel."""
    electronic_noise: float = 10.0
    """Electronic noise standard deviation, photons."""
    seed: int = 0
    """Noise and test-angle seed."""
    overwrite: bool = False
    """Replace an existing dataset folder."""

    def _validate(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        if self.views < 1:
            raise InputError("--views", f"must be >= 1, got {self.views}")
        if self.n_test < 0:
            raise InputError("--n-test", f"must be >= 0, got {self.n_test}")
        if self.detector < 1:
            raise InputError("--detector", f"must be >= 1, got {self.detector}")
        if self.size is not None and self.size < 2:
            raise InputError("--size", f"must be >= 2, got {self.size}")
        if not 0 < self.total_angle_deg <= 360:
            raise InputError("--total-angle-deg", f"must be in (0, 360], got {self.total_angle_deg}")
        if self.mode == "cone" and not 0 < self.dso_extent < self.dsd_extent:
            raise InputError("--dso-extent", f"need 0 < dso_extent < dsd_extent, got {self.dso_extent}, {self.dsd_extent}")
        if not self.photons > 0 or self.electronic_noise < 0:
            raise InputError("--photons", f"need photons > 0 and electronic_noise >= 0, got {self.photons}, {self.electronic_noise}")
        vol, spacing = load_volume_file(self.volume)
        if self.voxel_mm is not None:
            if len(self.voxel_mm) != 3 or any(not v > 0 for v in self.voxel_mm):
                raise InputError("--voxel-mm", f"must be 3 positive numbers, got {self.voxel_mm}")
            spacing = tuple(float(v) for v in self.voxel_mm)
        if spacing is None:
            raise InputError(self.volume, "has no voxel spacing; pass --voxel-mm Z Y X")
        units = self.units
        if units == "auto":
            units = "hu" if float(vol.min()) < -500.0 else "mu"
        if units == "hu":
            vol = hu_to_mu(vol)
        elif float(vol.min()) < 0:
            raise InputError(self.volume, f"attenuation values must be >= 0, found {float(vol.min()):.4g} (pass --units hu for Hounsfield units)")
        if self.size is not None:
            vol, spacing = resample_volume(vol, spacing, self.size)
        RunDir(self.out).check_resumable(False, self.overwrite)
        return np.ascontiguousarray(vol, dtype=np.float32), spacing  # type: ignore[return-value]

    def geometry(self, n_voxel: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> CTGeometry:
        """The scanner: R2-Gaussian's proportions scaled to the volume's largest extent."""
        extent = max(n * d for n, d in zip(n_voxel, voxel_mm))
        pitch = 2.0 * extent / self.detector
        kw: dict[str, Any] = {
            "mode": self.mode,
            "n_detector": (self.detector, self.detector),
            "detector_pixel_mm": (pitch, pitch),
            "n_voxel": tuple(n_voxel),
            "voxel_mm": tuple(voxel_mm),
            "angles_rad": circular_angles(self.views, self.total_angle_deg),
        }
        if self.mode == "cone":
            kw.update(dso_mm=self.dso_extent * extent, dsd_mm=self.dsd_extent * extent)
        return CTGeometry(**kw)

    def run(self, progress: ProgressFn | None = None) -> dict:
        """Validate, simulate and write the dataset (into a temporary sibling folder, renamed at
        the end: an interrupted run leaves no partial dataset). Returns a summary dict."""
        vol, spacing = self._validate()
        geo = self.geometry(vol.shape, spacing)
        geo.fov_check(shape="cylinder")
        out = Path(self.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if progress is not None:
                progress(0, 1, {})
            write_r2gaussian_dataset(
                tmp, vol, geo, self.views, self.n_test, total_angle_deg=self.total_angle_deg, noise=self.noise,
                photons_i0=self.photons, electronic_noise_std=self.electronic_noise, protocol=self.noise_protocol, seed=self.seed,
            )  # fmt: skip
            summary = {
                "source": str(self.volume),
                "n_views": self.views,
                "n_test": self.n_test,
                "volume_shape": list(vol.shape),
                "voxel_mm": [round(v, 6) for v in spacing],
                "geometry": {k: v for k, v in geo.to_dict().items() if k != "angles_rad"},
                "noise": {"enabled": self.noise, "protocol": self.noise_protocol, "photons": self.photons, "electronic_noise": self.electronic_noise},
                "mu_range_per_mm": [float(vol.min()), float(vol.max())],
            }
            (tmp / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if progress is not None:
            progress(1, 1, {})
        return summary
