"""``recon poses``: one entry point over the two pose estimators, chosen by the number of photos.

* ``"sparse"`` — :func:`recon.poses.sparse_registration.register_views`: built for 3-10
  wide-baseline photos (affine DSP-SIFT, focal length from the triplet search, self-checks);
  anything short of every photo registered with every check passed is a one-line
  :class:`~recon.poses.sparse_registration.RegistrationError` (exit 2) naming each view and why,
  and nothing is written. Writes ``registration.json`` (the per-view report) beside
  ``transforms.json``.
* ``"colmap"`` — :func:`recon.poses.colmap.estimate_poses`: COLMAP's incremental pipeline for
  larger sets and video frames (sequential matching, other camera models); views it cannot place
  are left out with a warning.

``"auto"`` (the default) takes ``"sparse"`` for at most :data:`SPARSE_MAX_PHOTOS` photos with
exhaustive matching and the ``SIMPLE_RADIAL`` camera, which is what ``sparse`` fits, else
``"colmap"``. Both return a :class:`recon.poses.colmap.PoseReport` and write the same
``transforms.json`` + ``sparse_pc.ply`` layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from recon.errors import InputError
from recon.io.atomic import atomic_write_json
from recon.poses.colmap import PoseReport, collect_images, estimate_poses
from recon.poses.sparse_registration import register_views

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "SPARSE_MAX_PHOTOS", "choose_method", "estimate_camera_poses"]

METHODS = ("auto", "sparse", "colmap")
"""Estimators :func:`estimate_camera_poses` accepts (module docstring)."""

SPARSE_MAX_PHOTOS = 10
"""``auto`` uses the few-view registration up to this many photos (what it was built and
measured for: 3-6 fox views, docs/benchmarks.md)."""

SPARSE_MAX_IMAGE_SIZE = 1000
"""Default feature resolution of the few-view registration (its benchmarks ran at 1000 px)."""

COLMAP_MAX_IMAGE_SIZE = 1600
"""Default feature resolution of the COLMAP path."""


def choose_method(n_photos: int, method: str = "auto", matcher: str = "exhaustive",
                  camera_model: str = "SIMPLE_RADIAL") -> str:  # fmt: skip
    """The estimator for ``n_photos`` photos: ``method`` itself unless ``"auto"``.

    Raises:
        InputError: an unknown method, or ``"sparse"`` with options it does not support.
    """
    if method not in METHODS:
        raise InputError("--method", f"is {method!r} (expected one of {', '.join(METHODS)})")
    fits_sparse = matcher == "exhaustive" and camera_model == "SIMPLE_RADIAL"
    if method == "sparse" and not fits_sparse:
        raise InputError("--method", f"sparse matches every pair and fits one SIMPLE_RADIAL camera (given --matcher {matcher}, "
                                     f"--camera-model {camera_model}; use --method colmap for those)")  # fmt: skip
    if method != "auto":
        return method
    return "sparse" if n_photos <= SPARSE_MAX_PHOTOS and fits_sparse else "colmap"


def estimate_camera_poses(
    image_dir_or_paths: str | Path | Sequence[str | Path],
    out_transforms: str | Path,
    *,
    method: str = "auto",
    max_image_size: int | None = None,
    matcher: str = "exhaustive",
    camera_model: str = "SIMPLE_RADIAL",
    seed: int = 0,
) -> PoseReport:
    """Estimate the poses of a folder (or list) of photos and write ``transforms.json``.

    Args:
        image_dir_or_paths: a folder of photos (not recursive) or a list of image files.
        out_transforms: the ``transforms.json`` to write (``sparse_pc.ply`` beside it; with the
            sparse method also ``registration.json``).
        method: ``"auto"``, ``"sparse"`` or ``"colmap"`` (module docstring).
        max_image_size: longest side for feature extraction; default
            :data:`SPARSE_MAX_IMAGE_SIZE` / :data:`COLMAP_MAX_IMAGE_SIZE` by method.
        matcher, camera_model: COLMAP options (the sparse method needs the defaults).
        seed: seed of every random choice.

    Returns:
        :class:`PoseReport` with ``method`` set and, for ``"sparse"``, ``registration`` (the
        per-view report as a dict).

    Raises:
        InputError: bad input (see the two estimators); with ``"sparse"``, any photo not
            registered or any failed check (one line naming the views; nothing written).
    """
    _, _, names = collect_images(image_dir_or_paths)
    chosen = choose_method(len(names), method, matcher, camera_model)
    logger.info("%d photos: %s pose estimation%s", len(names), chosen, " (auto)" if method == "auto" else "")
    out_transforms = Path(out_transforms)
    if chosen == "colmap":
        report = estimate_poses(image_dir_or_paths, out_transforms, max_image_size=max_image_size or COLMAP_MAX_IMAGE_SIZE,
                                matcher=matcher, camera_model=camera_model, seed=seed)  # fmt: skip
        report.method = "colmap"
        return report
    rep = register_views(image_dir_or_paths, out_transforms, max_image_size=max_image_size or SPARSE_MAX_IMAGE_SIZE, seed=seed)
    registration = rep.to_dict()
    atomic_write_json(out_transforms.parent / "registration.json", registration)
    assert rep.transforms_path is not None  # register_views raises unless every view registered
    return PoseReport(
        n_images=rep.n_images, n_registered=rep.n_registered,
        unregistered=[v.name for v in rep.views if not v.registered],
        mean_reproj_error_px=rep.mean_reproj_error_px, n_points=rep.n_points, seconds=rep.seconds,
        transforms_path=rep.transforms_path, ply_path=rep.ply_path, image_paths=rep.image_paths,
        cameras=rep.cameras, camera_model="SIMPLE_RADIAL", n_models=1, method="sparse", registration=registration,
    )  # fmt: skip
