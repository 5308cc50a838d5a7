"""Load (or compile) recon's numba CPU kernels on the main thread, before nerfstudio's viewer
starts its render thread.

numba loads a kernel from its on-disk cache, or compiles it, on the kernel's first call. Doing
that first call on the viewer's render thread failed inside numba's typing registry
(``RuntimeError: generator raised StopIteration``) and left an empty scene, while the training
thread was compiling the same kernels. The models call :func:`warm_up_cpu_kernels` from
``populate_modules`` (which runs on the main thread, before the viewer exists), so every kernel
the viewer will use is ready before any other thread calls it. It runs once per process; a lock
serialises concurrent first calls.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["warm_up_cpu_kernels"]

_lock = threading.Lock()
_done: set[str] = set()


def _splat() -> None:
    from recon.splat.rasterize import rasterization

    g = torch.Generator().manual_seed(0)
    n = 16
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.5
    means[:, 2] += 3.0
    inputs = {
        "means": means.requires_grad_(True),
        "quats": torch.nn.functional.normalize(torch.rand(n, 4, generator=g), dim=-1).requires_grad_(True),
        "scales": torch.full((n, 3), 0.05).requires_grad_(True),
        "opacities": torch.full((n,), 0.5).requires_grad_(True),
        "colors": torch.rand(n, 4, 3, generator=g).requires_grad_(True),
    }
    K = torch.tensor([[[20.0, 0.0, 8.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]]])
    for mode in ("RGB", "RGB+ED"):  # the viewer renders depth too
        out, alpha, _ = rasterization(**inputs, viewmats=torch.eye(4)[None], Ks=K, width=16, height=16, sh_degree=1,
                                      render_mode=mode, backend="cpu")  # fmt: skip
        (out.sum() + alpha.sum()).backward()


def _ct() -> None:
    from recon.ct.gaussians import RadiativeGaussians, render_xray, xray_cameras
    from recon.ct.project import Projector
    from recon.geometry.ct import CTGeometry, circular_angles

    geo = CTGeometry(mode="cone", dsd_mm=400.0, dso_mm=250.0, n_detector=(8, 8), detector_pixel_mm=(2.0, 2.0),
                     n_voxel=(6, 6, 6), voxel_mm=(2.0, 2.0, 2.0), angles_rad=circular_angles(2))  # fmt: skip
    vol = torch.zeros(geo.n_voxel)
    vol[2:4, 2:4, 2:4] = 0.02
    model = RadiativeGaussians.from_volume(vol, geo, 8, seed=0)
    act = model.activated()
    img, _ = render_xray(**act, cameras=xray_cameras(geo, [0]))
    vox = model.voxelize(geo)
    proj = Projector(geo)
    (img.sum() + proj.forward(vox, (0,)).sum()).backward()


def warm_up_cpu_kernels(kind: str, device: torch.device | str) -> None:
    """Call the CPU kernels a ``kind`` ("splat" or "ct") model renders with, once, on tiny
    inputs (forward and backward). Nothing to do on CUDA (gsplat's kernels are prebuilt)."""
    if torch.device(device).type != "cpu" or kind in _done:
        return
    with _lock:
        if kind in _done:
            return
        {"splat": _splat, "ct": _ct}[kind]()
        _done.add(kind)
