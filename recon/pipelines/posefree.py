"""``recon fit PHOTOS_DIR``: register a folder of photos without poses, then fit them all.

:func:`is_photo_folder` tells a plain folder of photos (no ``transforms.json``, no COLMAP
``sparse/``, no ``poses_bounds.npy``) from a posed capture. :func:`register_photo_folder` runs
:func:`recon.poses.sparse_registration.register_views` into a temporary folder (setup writes
nothing to the run folder) and reads the result back as a capture; anything short of every photo
registered with its checks passed is an InputError naming the views (exit 2), never a fit on
part of them. :func:`write_registration` copies ``transforms.json`` (paths relative to the run),
``sparse_pc.ply`` and the per-view ``registration.json`` into the run folder;
:func:`record_pose_rounds` adds what the photometric rounds (``--pose-rounds``) changed to
``registration.json`` and puts the registered poses and focal length into ``transforms.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from recon.geometry.cameras import CameraSet, w2c_to_opengl_c2w
from recon.io.atomic import atomic_write_json
from recon.io.capture import IMAGE_EXTENSIONS, Capture
from recon.io.formats import load_capture
from recon.poses.sparse_registration import RegistrationReport, register_views

__all__ = ["is_photo_folder", "record_pose_rounds", "register_photo_folder", "write_registration"]

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


def record_pose_rounds(run_path: Path, rounds: list[dict], names: list[str], cameras: CameraSet) -> None:
    """After a fit with ``--pose-rounds``: ``registration.json`` gains ``photometric_rounds`` (per
    round: per-view rotation change in degrees, centre shift in units of the cameras' spread,
    focal factor, L1 before / after), the registered ``focal_px_sfm`` and the final
    ``focal_px``; the frames of ``transforms.json`` named in ``names`` get the poses of
    ``cameras`` (training resolution; poses do not depend on it) and its focal lengths the
    product of the rounds' factors."""
    run_path = Path(run_path)
    scale = 1.0
    for r in rounds:
        scale *= float(r["focal_scale"])
    reg_path = run_path / "registration.json"
    reg = json.loads(reg_path.read_text(encoding="utf-8"))
    reg.setdefault("focal_px_sfm", reg["focal_px"])
    reg["focal_px"] = float(reg["focal_px_sfm"]) * scale
    reg["photometric_rounds"] = [{**r, "views": list(names)} for r in rounds]
    meta = json.loads((run_path / "transforms.json").read_text(encoding="utf-8"))
    c2w = w2c_to_opengl_c2w(cameras.w2c.detach().cpu().double())
    index = {n: i for i, n in enumerate(names)}
    for frame in meta["frames"]:
        i = index.get(Path(frame["file_path"]).name)
        if i is not None:
            frame["transform_matrix"] = c2w[i].tolist()
        for key in ("fl_x", "fl_y"):
            if key in frame:
                frame[key] = float(frame[key]) * scale
    for key in ("fl_x", "fl_y"):
        if key in meta:
            meta[key] = float(meta[key]) * scale
    atomic_write_json(run_path / "transforms.json", meta)
    atomic_write_json(reg_path, reg)
