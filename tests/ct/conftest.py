"""Small CT fixtures (<= 32^3 volumes). Tests run single-threaded torch: on the shared 2-core
machine OpenMP spin-waiting makes small parallel ops far slower than one thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ct.phantoms import shepp_logan_3d
from recon.geometry.ct import CTGeometry, circular_angles

MU = 0.02  # 1/mm, scale of the test phantoms
CT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct"  # real data, read-only


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (tests/conftest.py ``one_thread``)."""


def cone_geometry(n_views: int = 8, n: int = 16, det: tuple[int, int] = (24, 34), **kw) -> CTGeometry:
    args = dict(
        mode="cone",
        dsd_mm=400.0,
        dso_mm=250.0,
        n_detector=det,
        detector_pixel_mm=(1.2, 1.2),
        n_voxel=(n, n, n),
        voxel_mm=(1.0, 1.0, 1.0),
        angles_rad=circular_angles(n_views),
    )
    args.update(kw)
    return CTGeometry(**args)


@pytest.fixture
def cone_geo() -> CTGeometry:
    return cone_geometry()


@pytest.fixture(scope="session")
def shepp32() -> torch.Tensor:
    return torch.from_numpy(shepp_logan_3d((32, 32, 32))) * MU


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10((b.max() - b.min()) ** 2 / np.mean((a - b) ** 2)))
