"""Compile recon's numba CPU kernels into numba's on-disk cache once (float32 and float64), and
print how long each group took.

``make test`` runs this before pytest: on a fresh clone the cache is empty, and the two
pytest-xdist workers and the worker processes of the batch tests would otherwise each compile
the same kernels side by side (minutes of CPU on 2 cores). Later processes load the kernels from
the cache in well under a second. Run it after changing a kernel to pay the compile once.

    python scripts/warm_numba_cache.py
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch


def warm_splat() -> float:
    """The capture kernels: fused projection + SH, the rasteriser, fused D-SSIM, fused Adam."""
    from recon.splat import adam, fused_cpu, raster_cpu, ssim_cpu

    return sum(module.warmup() for module in (fused_cpu, raster_cpu, ssim_cpu, adam))


def warm_ct() -> float:
    """The CT kernels: the numba projector pair (cone, fan, parallel beam; float32 and float64),
    the Gaussians' activations and voxeliser, forward and backward, and the TV kernel."""
    from recon.ct.gaussians import RadiativeGaussians
    from recon.ct.project import Projector
    from recon.ct.voxelize import tv_3d
    from recon.geometry.ct import CTGeometry, circular_angles

    t0 = time.perf_counter()
    common = {"detector_pixel_mm": (2.0, 2.0), "voxel_mm": (2.0, 2.0, 2.0), "angles_rad": circular_angles(2)}
    cone = CTGeometry(mode="cone", dsd_mm=400.0, dso_mm=250.0, n_detector=(8, 8), n_voxel=(6, 6, 6), **common)
    fan = CTGeometry(mode="fan", dsd_mm=400.0, dso_mm=250.0, n_detector=(1, 8), n_voxel=(1, 6, 6), **common)
    parallel = CTGeometry(mode="parallel", n_detector=(8, 8), n_voxel=(6, 6, 6), **common)
    for dtype in (torch.float32, torch.float64):
        for geo in (cone, fan, parallel):
            proj = Projector(geo, backend="numba")
            proj.backproject(proj(torch.rand(geo.n_voxel, dtype=dtype)))
    vol = torch.zeros(cone.n_voxel)
    vol[2:4, 2:4, 2:4] = 0.02
    RadiativeGaussians.from_volume(vol, cone, 8, seed=0).voxelize(cone).sum().backward()
    for dtype in (torch.float32, torch.float64):
        tv_3d(torch.rand(4, 5, 6, dtype=dtype, requires_grad=True)).backward()
    return time.perf_counter() - t0


def _warm(name: str) -> str:
    torch.set_num_threads(1)
    warm = {"capture kernels": warm_splat, "CT kernels": warm_ct}[name]
    try:
        return f"numba cache: {name} ready in {warm():.1f} s"
    except Exception as err:  # noqa: BLE001 - a warm-up failure must not hide the tests' own report
        return f"numba cache: {name} not warmed ({type(err).__name__}: {err}); the tests will compile them"


def main() -> None:
    """The two groups in two processes side by side (~100 s and ~35 s cold on one core each)."""
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for line in pool.map(_warm, ("capture kernels", "CT kernels")):
            print(line, flush=True)


if __name__ == "__main__":
    main()
