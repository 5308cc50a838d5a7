"""Peak-memory estimates of ``recon ct fit`` and ``recon fit``, checked before any work
(``setup()``): a job that would need more than the machine has available is refused in one
line with concrete advice, instead of being killed by the kernel hours later. ``--skip-memory-check``
overrides.

The estimates are sums of terms that scale with what the job holds (voxels, projection pixels,
Gaussians, image pixels) plus the runtime itself (Python, torch, numba kernels, fixed-size
chunks). The bytes per unit below come from ``scripts/bench_memory.py`` (peak RSS of the real
command): calibrated on the two smaller sizes, checked on the third (the table and the errors are
in ``docs/benchmarks.md``) -- re-measure when the code's memory use changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from recon.errors import InputError
from recon.memory import available_bytes, format_bytes

__all__ = ["MemoryEstimate", "capture_fit_estimate", "check_memory", "ct_fit_estimate"]

RUNTIME_BYTES = 1_018 * 2**20
"""Python + torch + numba kernels + recon + fixed-size chunks (FDK's 4M-voxel backprojection
chunk): the intercept of peak RSS over size (tv, 64^3 and 128^3)."""

CT_BYTES_PER_VOXEL = {"fdk": 552, "fbp": 552, "sart": 552, "tv": 552, "gaussian": 552}
"""Volume-sized arrays alive at once: the reconstruction, its gradient and optimiser state, the
TV and projector temporaries, the reference, the 3D metrics (float64 SSIM maps), the outputs
being written. Measured for tv (slope 64^3 -> 128^3); the other methods are not measured
separately and use tv's value as a bound."""
CT_BYTES_PER_PROJECTION_PIXEL = 130
"""Projections as read and stacked (float32 copies), plus the projector's cached ray tables
(~100 bytes per ray) for every view."""
GAUSSIAN_CT_BYTES = 200
"""Per radiative Gaussian (parameters, gradients, Adam state, voxelisation temporaries)."""
CAPTURE_BYTES_PER_IMAGE_PIXEL = 60
"""Per pixel of every loaded training / evaluation image at the fit's resolution: the image, its
mask, renders, comparisons, the rasteriser's per-pixel buffers."""
CAPTURE_BYTES_PER_GAUSSIAN = 1_200
"""Per Gaussian (SH degree 3: 59 numbers, with gradients and Adam state, plus projection, tile
intersection and densification temporaries)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a job, by part (bytes)."""

    parts: dict[str, int]
    advice: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items() if v)


def ct_fit_estimate(method: str, n_voxel: tuple[int, int, int], n_projection_pixels: int, *, n_gaussians: int = 0) -> MemoryEstimate:
    """Peak memory of ``recon ct fit`` for a grid of ``n_voxel`` (z, y, x) and ``n_projection_pixels``
    (train + test views x detector pixels)."""
    voxels = n_voxel[0] * n_voxel[1] * n_voxel[2]
    parts = {
        "runtime": RUNTIME_BYTES,
        "volume": voxels * CT_BYTES_PER_VOXEL.get(method, max(CT_BYTES_PER_VOXEL.values())),
        "projections and projector tables": n_projection_pixels * CT_BYTES_PER_PROJECTION_PIXEL,
        "gaussians": n_gaussians * GAUSSIAN_CT_BYTES if method == "gaussian" else 0,
    }
    advice = ("reconstruct a coarser grid (fewer voxels: a smaller nVoxel in the geometry), use fewer views "
              "(--views) or a downsampled detector" + (", fewer Gaussians (--gaussian.n-gaussians)" if method == "gaussian" else ""))  # fmt: skip
    return MemoryEstimate(parts, advice)


def capture_fit_estimate(n_image_pixels: int, max_gaussians: int) -> MemoryEstimate:
    """Peak memory of ``recon fit`` for ``n_image_pixels`` (every train and eval image at the
    fit's resolution) and at most ``max_gaussians``."""
    parts = {
        "runtime": RUNTIME_BYTES,
        "images": n_image_pixels * CAPTURE_BYTES_PER_IMAGE_PIXEL,
        "gaussians": max_gaussians * CAPTURE_BYTES_PER_GAUSSIAN,
    }
    return MemoryEstimate(parts, "downscale the images (--downscale), use fewer views, or cap the Gaussians (fewer --init-points / a lower densification cap)")


def check_memory(estimate: MemoryEstimate, where: str, *, skip: bool = False, available: int | None = None) -> None:
    """Refuse (:class:`InputError`) when ``estimate`` exceeds the memory available now, unless ``skip``."""
    if skip:
        return
    free = available_bytes() if available is None else available
    if estimate.total > free:
        raise InputError(where, f"needs about {format_bytes(estimate.total)} of memory ({estimate.describe()}) but "
                                f"{format_bytes(free)} is available: {estimate.advice}; --skip-memory-check runs anyway")  # fmt: skip
