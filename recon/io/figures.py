"""Figures written beside the numbers: loss curves and CT slice strips (PNG, atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.io.atomic import atomic_write_path
from recon.io.images import save_image

__all__ = ["central_slices", "plot_curve", "write_slice_pngs"]


def plot_curve(
    path: Path,
    steps: list[int],
    values: list[float],
    ylabel: str,
    extra: tuple[str, list[float]] | None = None,
) -> Path:
    """A curve over the steps (log scale when every value is positive), with an optional second
    axis (``extra = (label, values)``, e.g. the number of Gaussians), as PNG."""
    # The object-oriented API with the Agg canvas: no pyplot (its import and global figure
    # state), no backend switch; the same image.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, values, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel, color="tab:blue")
    if values and min(values) > 0:
        ax.set_yscale("log")
    if extra is not None:
        ax2 = ax.twinx()
        ax2.plot(steps, extra[1], color="tab:orange")
        ax2.set_ylabel(extra[0], color="tab:orange")
    fig.tight_layout()
    return atomic_write_path(path, lambda p: fig.savefig(p))


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:  # volume: [Z, Y, X]
    """Central axial (y, x), coronal (z, x) and sagittal (z, y) slices, superior (+z) at the top."""
    Z, Y, X = volume.shape
    return {
        "axial": volume[Z // 2],
        "coronal": volume[:, Y // 2, :][::-1],
        "sagittal": volume[:, :, X // 2][::-1],
    }


def write_slice_pngs(
    folder: Path,
    volume: np.ndarray,  # [Z, Y, X]
    reference: np.ndarray | None,  # [Z, Y, X]
    voxel_mm: tuple[float, float, float],
) -> list[Path]:
    """``axial/coronal/sagittal.png``: the volume's central slices, with the reference beside
    them (same grey window: the reference's range, else the volume's 0.5-99.5 percentiles);
    rows are stretched to the voxel aspect ratio."""
    src = reference if reference is not None else volume
    lo, hi = (float(src.min()), float(src.max())) if reference is not None else tuple(float(v) for v in np.percentile(volume, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    paths = []
    rec_s, ref_s = central_slices(volume), central_slices(reference) if reference is not None else None
    aspect = {"axial": voxel_mm[1] / voxel_mm[2], "coronal": voxel_mm[0] / voxel_mm[2], "sagittal": voxel_mm[0] / voxel_mm[1]}
    for name, img in rec_s.items():
        tiles = [img] if ref_s is None else [img, np.full((img.shape[0], 2), hi), ref_s[name]]
        strip = (np.concatenate(tiles, axis=1) - lo) / (hi - lo)
        rows = max(1, round(strip.shape[0] * aspect[name]))
        if rows != strip.shape[0]:
            idx = np.clip(((np.arange(rows) + 0.5) * strip.shape[0] / rows).astype(int), 0, strip.shape[0] - 1)
            strip = strip[idx]
        paths.append(save_image(folder / f"{name}.png", np.clip(strip, 0.0, 1.0).astype(np.float32)))
    return paths
