"""``recon render``: a video of a run, for reports and slides.

- Capture runs: the Gaussians rendered along a camera path (:mod:`recon.splat.camera_paths`):
  ``orbit`` (a circle at the training cameras' mean height), ``spiral``, ``interp`` (through the
  training cameras), or a nerfstudio camera-path ``.json`` (:mod:`recon.io.camera_path`). The
  path is also written beside the video (``<out stem>.json``, the nerfstudio layout), to edit
  and render again with ``--path``.
- CT runs: ``mip``, a maximum-intensity projection turning about the rotation axis, or a sweep
  through the ``axial`` / ``coronal`` / ``sagittal`` slices (:mod:`recon.ct.render`), in HU.

Videos are written by :func:`recon.io.video.write_video`: ``.mp4`` (H.264 through
imageio-ffmpeg; a GIF beside it when that is missing) or ``.gif``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from recon.errors import InputError
from recon.pipelines.export import (
    load_ct_run,
    load_run_params,
    run_background,
    run_kind,
    run_train_cameras,
)

logger = logging.getLogger(__name__)

__all__ = ["CAPTURE_PATHS", "CT_PATHS", "RenderConfig", "RenderResult"]

CAPTURE_PATHS = ("orbit", "spiral", "interp")
CT_PATHS = ("mip", "axial", "coronal", "sagittal")

StepFn = Callable[[int, int], None]


@dataclass
class RenderConfig:
    """Render a video of a run: a camera path around a capture (orbit, spiral, through the
    training cameras, or a nerfstudio camera-path JSON), or a turning MIP / slice sweep of a CT volume."""

    run_dir: tyro.conf.Positional[Path]
    """A run folder written by recon fit / recon ct fit."""
    path: str | None = None
    """Capture runs: orbit (default), spiral, interp, or a nerfstudio camera-path FILE.json.
    CT runs: mip (default; a turning maximum-intensity projection), axial, coronal or sagittal (a slice sweep)."""
    out: Path | None = None
    """Video to write, .mp4 or .gif (default RUN/export/<path>.mp4)."""
    frames: int | None = None
    """Number of frames (default 120 for camera paths, 60 for mip, every slice for a sweep);
    a camera-path file has its own."""
    fps: float | None = None
    """Frames per second (default 30, 10 for a slice sweep, or the camera-path file's)."""
    scale: float = 1.0
    """Capture runs: image size relative to the training resolution."""
    window: tuple[float, float] | None = None
    """CT runs: grey-level window in HU, LOW HIGH (default: the 0.5-99.5 percentiles)."""

    def run(self, progress: StepFn | None = None) -> RenderResult:
        """Check everything, then render and write the video; returns what was written."""
        return _render(self, progress)


@dataclass(frozen=True)
class RenderResult:
    """What ``recon render`` wrote."""

    path: Path
    """The video (a .gif beside the requested .mp4 when imageio-ffmpeg is missing)."""
    frames: int
    width: int
    height: int
    fps: float
    camera_path: Path | None
    """The camera path written beside the video (capture runs with a named path)."""


def _check(cfg: RenderConfig, kind: str) -> tuple[str, Path]:
    from recon.io.video import VIDEO_FORMATS

    paths = CAPTURE_PATHS if kind == "capture" else CT_PATHS
    name = cfg.path or paths[0]
    is_file = kind == "capture" and name.lower().endswith(".json")
    if not is_file and name not in paths:
        extra = " or a camera-path .json file" if kind == "capture" else ""
        raise InputError("--path", f"{name!r} does not apply to a {kind} run (expected one of {', '.join(paths)}{extra})")
    if is_file and not Path(name).is_file():
        raise InputError(name, "camera-path file not found")
    if is_file and cfg.frames is not None:
        raise InputError("--frames", "a camera-path file sets its own frames; leave --frames out")
    if cfg.frames is not None and cfg.frames < 1:
        raise InputError("--frames", f"must be >= 1, got {cfg.frames}")
    if cfg.fps is not None and not cfg.fps > 0:
        raise InputError("--fps", f"must be > 0, got {cfg.fps}")
    if not (0.0 < cfg.scale <= 4.0):
        raise InputError("--scale", f"must be in (0, 4], got {cfg.scale}")
    if cfg.window is not None and not cfg.window[1] > cfg.window[0]:
        raise InputError("--window", f"expected LOW HIGH with LOW < HIGH, got {cfg.window[0]} {cfg.window[1]}")
    out = Path(cfg.out) if cfg.out is not None else cfg.run_dir / "export" / f"{Path(name).stem}.mp4"
    if out.suffix.lower() not in VIDEO_FORMATS:
        raise InputError(out, f"unknown video type {out.suffix or '(no suffix)'!r} (expected {', '.join(VIDEO_FORMATS)})")
    if out.is_dir():
        raise InputError(out, "is a folder (expected a video file path)")
    return name, out


def _render(cfg: RenderConfig, progress: StepFn | None) -> RenderResult:
    from recon.io.video import write_video

    run, kind = run_kind(cfg.run_dir)
    name, out = _check(cfg, kind)
    camera_path = None
    if kind == "capture":
        frames, fps, camera_path = _capture_frames(cfg, run, name, out, progress)
    else:
        frames, fps = _ct_frames(cfg, run, name, progress)
    written = write_video(out, frames, fps)
    if camera_path is not None:
        from recon.io.camera_path import write_camera_path

        write_camera_path(out.with_suffix(".json"), camera_path, fps)
    n, h, w, _ = frames.shape
    if written.suffix == ".mp4":  # H.264 in yuv420p: even sizes (write_video pads)
        h, w = h + h % 2, w + w % 2
    return RenderResult(written, n, w, h, fps, out.with_suffix(".json") if camera_path is not None else None)


def _capture_frames(cfg: RenderConfig, run, name: str, out: Path, progress: StepFn | None):
    import torch

    from recon.geometry.cameras import Intrinsics
    from recon.splat.model import GaussianModel
    from recon.splat.render import render

    fps = cfg.fps
    if name.lower().endswith(".json"):
        from recon.io.camera_path import read_camera_path

        cameras, file_fps = read_camera_path(Path(name))
        fps = fps or file_fps
        keep = None
    else:
        from recon.splat.camera_paths import path_by_name

        train = run_train_cameras(run)
        if name == "interp" and len(train) < 2:
            raise InputError(run.path("cameras.json"), "the interp path needs at least 2 training cameras")
        k = train.intrinsics[0]
        size = (max(2, round(k.width * cfg.scale)), max(2, round(k.height * cfg.scale)))
        s = (size[0] / k.width, size[1] / k.height)
        intr = Intrinsics(k.fx * s[0], k.fy * s[1], k.cx * s[0], k.cy * s[1], size[0], size[1])
        cameras = path_by_name(name, train, cfg.frames or 120, intrinsics=intr)
        keep = cameras
    params = load_run_params(run.root)
    try:
        model = GaussianModel.from_params(params)
    except ValueError as err:
        raise InputError(run.root, f"the run's Gaussians are malformed ({err})") from None
    background = torch.tensor(run_background(run), dtype=torch.float32)
    k0 = cameras.intrinsics[0]
    frames = np.empty((len(cameras), k0.height, k0.width, 3), np.uint8)
    with torch.no_grad():
        for i in range(len(cameras)):
            k = cameras.intrinsics[i]
            if (k.width, k.height) != (k0.width, k0.height):
                raise InputError(cfg.path, f"camera {i} is {k.width}x{k.height}, the first {k0.width}x{k0.height}: one size per video")
            img, _, _ = render(model, cameras, k0.width, k0.height, model.sh_degree, background, [i])
            frames[i] = (img[0, ..., :3].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            if progress is not None:
                progress(i + 1, len(cameras))
    return frames, float(fps or 30.0), keep


def _ct_frames(cfg: RenderConfig, run, name: str, progress: StepFn | None):
    from recon.ct.render import rotating_mip, slice_sweep
    from recon.io.units import mu_to_hu

    ct = load_ct_run(run.root)
    hu = mu_to_hu(ct.volume, ct.mu_water_per_mm)
    voxel = ct.geometry.voxel_mm
    if name == "mip":
        frames = rotating_mip(hu, voxel, cfg.frames or 60, window=cfg.window, progress=progress)
    else:
        frames = slice_sweep(hu, voxel, name, window=cfg.window, n_frames=cfg.frames, progress=progress)
    return frames, float(cfg.fps or (30.0 if name == "mip" else 10.0))
