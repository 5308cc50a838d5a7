"""``recon fit PHOTOS_DIR``: register a folder of photos without poses, then fit them all.

:func:`is_photo_folder` tells a plain folder of photos (no ``transforms.json``, no COLMAP
``sparse/``, no ``poses_bounds.npy``) from a posed capture. :func:`register_photo_folder` runs
:func:`recon.poses.sparse_registration.register_views` into a temporary folder (setup writes
nothing to the run folder) and reads the result back as a capture; anything short of every photo
registered with its checks passed is an InputError naming the views (exit 2), never a fit on
part of them. :func:`write_registration` copies ``transforms.json`` (paths relative to the run),
``sparse_pc.ply`` and the per-view ``registration.json`` into the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from recon.io.atomic import atomic_write_json
from recon.io.capture import IMAGE_EXTENSIONS, Capture
from recon.io.formats import load_capture
from recon.poses.sparse_registration import RegistrationReport, register_views

__all__ = ["is_photo_folder", "register_photo_folder", "write_registration"]

_CAPTURE_MARKERS = ("transforms.json", "sparse", "poses_bounds.npy")


def is_photo_folder(path: Path) -> bool:
    """A folder with photos in it and none of the files that make it a posed capture."""
    path = Path(path)
    if not path.is_dir() or any((path / m).exists() for m in _CAPTURE_MARKERS):
        return False
    if any(path.glob("transforms_*.json")):
        return False
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())


def register_photo_folder(
    path: Path, *, max_image_size: int = 1000, seed: int = 0
) -> tuple[Capture, RegistrationReport, Path]:
    """Register every photo of ``path`` -> (capture, report, temporary folder holding the json).

    Raises:
        InputError: bad photos, mixed cameras, or not every photo registered (one line naming
            each view and why).
    """
    tmp = Path(tempfile.mkdtemp(prefix="recon-posefree-"))
    try:
        report = register_views(path, tmp / "transforms.json", max_image_size=max_image_size, seed=seed)
        capture = load_capture(tmp / "transforms.json", allow_outside_paths=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return capture, report, tmp


def write_registration(run_path: Path, report: RegistrationReport, tmp: Path) -> None:
    """Copy the estimated cameras into the run: ``transforms.json`` (image paths relative to the
    run folder), ``sparse_pc.ply`` and ``registration.json``; removes ``tmp``."""
    meta = json.loads((tmp / "transforms.json").read_text(encoding="utf-8"))
    for frame in meta["frames"]:
        image = (tmp / frame["file_path"]).resolve()
        frame["file_path"] = Path(os.path.relpath(image, run_path.resolve())).as_posix()
    atomic_write_json(run_path / "transforms.json", meta)
    if (tmp / "sparse_pc.ply").exists():
        shutil.copyfile(tmp / "sparse_pc.ply", run_path / "sparse_pc.ply")
    atomic_write_json(run_path / "registration.json", report.to_dict())
    shutil.rmtree(tmp, ignore_errors=True)
