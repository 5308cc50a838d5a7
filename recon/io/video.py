"""Videos of rendered frames (imageio): written and read.

- ``.mp4``: H.264 (``libx264``, ``yuv420p``, so every player opens it) through imageio-ffmpeg,
  which ships its own ffmpeg binary. yuv420p needs even sizes: a frame with an odd width or
  height gets one more column or row, a copy of its last one. When imageio-ffmpeg cannot be
  imported the video is written as a GIF beside the requested path (``video.gif`` for
  ``video.mp4``), with a warning.
- ``.gif``: Pillow, looping, 256 colours per frame; GIF stores frame times in 1/100 s.

Frames are ``[N, H, W, 3]`` uint8 (or floats in [0, 1]).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recon.errors import InputError
from recon.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

__all__ = ["VIDEO_FORMATS", "ffmpeg_available", "read_video", "write_video"]

VIDEO_FORMATS = (".mp4", ".gif")


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg (and so mp4 writing) can be imported."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except Exception:  # noqa: BLE001  ImportError, or OSError for a broken binary
        return False
    return True


def _as_frames(frames) -> np.ndarray:  # [N, H, W, 3] -> uint8
    arr = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames: expected shape [N, H, W, 3] with N >= 1, given {list(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr


def _even(frames: np.ndarray) -> np.ndarray:
    _n, h, w, _c = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: str | Path, frames, fps: float = 30.0) -> Path:  # frames: [N, H, W, 3]
    """Write ``frames`` as a video (format from the suffix: .mp4 or .gif), atomically. Returns the
    path written: ``path``, or the GIF beside it when mp4 cannot be written (see the module
    docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise InputError(path, f"unknown video type {suffix or '(no suffix)'!r} (expected {', '.join(VIDEO_FORMATS)})")
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, given {fps}")
    arr = _as_frames(frames)
    if suffix == ".mp4" and not ffmpeg_available():
        fallback = path.with_suffix(".gif")
        logger.warning("imageio-ffmpeg is not installed (pip install imageio-ffmpeg): writing %s instead of %s", fallback, path)
        path, suffix = fallback, ".gif"
    if suffix == ".mp4":
        import imageio.v2 as iio

        def write(p: Path) -> None:
            writer = iio.get_writer(p, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                    macro_block_size=1, ffmpeg_log_level="error")  # fmt: skip
            try:
                for frame in _even(arr):
                    writer.append_data(frame)
            finally:
                writer.close()

        return atomic_write_path(path, write)
    import imageio.v3 as iio3

    return atomic_write_path(path, lambda p: iio3.imwrite(p, arr, extension=".gif", duration=1000.0 / fps, loop=0))


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a video written by :func:`write_video` -> (frames ``[N, H, W, 3]`` uint8, fps)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise InputError(path, f"unknown video type {suffix or '(no suffix)'!r} (expected {', '.join(VIDEO_FORMATS)})")
    if not path.is_file():
        raise InputError(path, "not found (expected a video file)")
    try:
        if suffix == ".mp4":
            import imageio.v2 as iio

            reader = iio.get_reader(path, format="FFMPEG")
            try:
                fps = float(reader.get_meta_data()["fps"])
                frames = np.stack([np.asarray(f)[..., :3] for f in reader])
            finally:
                reader.close()
        else:
            import imageio.v3 as iio3
            from PIL import Image

            frames = np.asarray(iio3.imread(path, index=None, extension=".gif"))[..., :3]
            with Image.open(path) as im:
                fps = 1000.0 / float(im.info.get("duration", 100) or 100)
    except Exception as err:  # noqa: BLE001  imageio and ffmpeg raise several types for bad files
        raise InputError(path, f"not a readable {suffix[1:]} video ({type(err).__name__}: {err})") from None
    if frames.ndim == 3:  # a single GIF frame
        frames = frames[None]
    return frames.astype(np.uint8), fps
