"""Camera poses for uncalibrated photos (pycolmap SfM) and how to score them against a reference.

:func:`estimate_poses` runs COLMAP's classic pipeline through pycolmap on the CPU: SIFT
extraction, exhaustive (or sequential) matching with guided matching, one shared camera, and
incremental mapping tuned for few views. It writes a nerfstudio-layout ``transforms.json``
(OpenGL camera-to-world, intrinsics with distortion, ``file_path`` relative to the json) and
the sparse points as ``sparse_pc.ply`` beside it (named by the json's ``ply_file_path``, as
nerfstudio does), and returns a :class:`PoseReport`.

Estimated poses live in an arbitrary similarity frame. :func:`align_sim3` (Umeyama) finds the
similarity that maps estimated camera centres onto reference ones, and :func:`pose_errors`
scores rotations (degrees) and centres (fraction of scene scale) after that alignment.

Everything here uses the internal convention of :mod:`recon.geometry.cameras` (OpenCV world-to-camera);
COLMAP's camera axes are OpenCV's, so its ``cam_from_world`` is used as it is.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from recon.geometry.cameras import CameraSet, check_pose
from recon.errors import InputError
from recon.io.atomic import atomic_write_json
from recon.io.capture import IMAGE_EXTENSIONS, SUPPORTED_CAMERA_MODELS
from recon.io.colmap import intrinsics_from_colmap
from recon.io.transforms import write_transforms_json
from recon.io.images import image_size
from recon.io.ply import write_points_ply

logger = logging.getLogger(__name__)

__all__ = ["PoseReport", "collect_images", "estimate_poses"]

MATCHERS = ("exhaustive", "sequential")
"""Matchers :func:`estimate_poses` accepts (exhaustive for the small sets this project targets;
sequential for ordered video frames)."""

PLY_NAME = "sparse_pc.ply"
"""File name of the sparse points written beside ``transforms.json`` (nerfstudio's name)."""

DEFAULT_FOCAL_FACTOR = 1.2
"""Focal length guess without EXIF, as a multiple of the larger image side (COLMAP's default)."""


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class PoseReport:
    """What :func:`estimate_poses` found and wrote."""

    n_images: int
    """Images given."""
    n_registered: int
    """Images with a pose in the chosen (largest) model."""
    unregistered: list[str]
    """Names (relative to the image folder) of the images left without a pose."""
    mean_reproj_error_px: float
    """Mean reprojection error of the model's 3D points, pixels at full image resolution."""
    n_points: int
    """Number of triangulated 3D points in the model."""
    seconds: float
    """Wall time of the whole call."""
    transforms_path: Path
    """The ``transforms.json`` written (registered images only)."""
    ply_path: Path | None
    """The sparse point cloud written beside it, or ``None`` when the model has no points."""
    image_paths: list[Path] = field(default_factory=list)
    """Registered images, in the order of :attr:`cameras` (sorted by name)."""
    cameras: CameraSet | None = None
    """Registered cameras (OpenCV world-to-camera, full-resolution intrinsics)."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model that was fitted."""
    n_models: int = 1
    """Number of separate models the first mapping pass produced (only the largest is kept)."""
    method: str = "colmap"
    """Estimator that produced it (:mod:`recon.poses.estimate`): ``"colmap"`` or ``"sparse"``."""
    registration: dict[str, Any] | None = None
    """The sparse method's per-view report (:meth:`RegistrationReport.to_dict
    <recon.poses.sparse_registration.RegistrationReport.to_dict>`), else ``None``."""

    @property
    def all_registered(self) -> bool:
        """Whether every image got a pose."""
        return self.n_registered == self.n_images

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {
            "n_images": self.n_images,
            "n_registered": self.n_registered,
            "unregistered": list(self.unregistered),
            "mean_reproj_error_px": self.mean_reproj_error_px,
            "n_points": self.n_points,
            "seconds": self.seconds,
            "transforms_path": str(self.transforms_path),
            "ply_path": None if self.ply_path is None else str(self.ply_path),
            "camera_model": self.camera_model,
            "n_models": self.n_models,
            "method": self.method,
        }


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def collect_images(
    image_dir_or_paths: str | Path | Sequence[str | Path],
) -> tuple[Path, Path, list[str]]:
    """-> (where to blame, common image root, names relative to it, sorted).

    A folder is listed non-recursively for ``IMAGE_EXTENSIONS`` (other files are skipped); an
    explicit list must name image files only.
    """
    if isinstance(image_dir_or_paths, (str, os.PathLike)):
        folder = Path(image_dir_or_paths)
        if not folder.exists():
            raise InputError(folder, "does not exist (expected a folder of photos)")
        if not folder.is_dir():
            raise InputError(folder, "is not a folder (expected a folder of photos or a list)")
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise InputError(
                folder, f"contains no images (expected {', '.join(IMAGE_EXTENSIONS)} files)"
            )
        return folder, folder, [p.name for p in files]
    try:
        files = [Path(p) for p in image_dir_or_paths]
    except TypeError:
        raise InputError(
            "image_dir_or_paths",
            f"is {image_dir_or_paths!r} (expected a folder or a list of image paths)",
        ) from None
    if not files:
        raise InputError("image_dir_or_paths", "is an empty list (expected image paths)")
    for p in files:
        if not p.is_file():
            raise InputError(p, "image file not found")
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(p, f"is not an image (expected {', '.join(IMAGE_EXTENSIONS)})")
    resolved = [p.resolve() for p in files]
    if len(set(resolved)) != len(resolved):
        dup = next(p for p in files if resolved.count(p.resolve()) > 1)
        raise InputError(dup, "is listed twice (expected distinct images)")
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = sorted(p.relative_to(root).as_posix() for p in resolved)
    return root, root, names


def _exif_focal_px(path: Path, width: int, height: int) -> float | None:
    """Focal length in pixels from EXIF, or ``None`` when the file does not say.

    Uses ``FocalLengthIn35mmFilm`` (35 mm equivalent, defined on the 43.27 mm diagonal), else
    ``FocalLength`` with ``FocalPlaneXResolution`` (pixels per unit on the sensor, scaled to
    this image's width when ``ExifImageWidth`` differs).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = dict(exif.get_ifd(0x8769))
    except Exception:  # a broken EXIF block is not worth failing a reconstruction over
        return None
    tags = {**dict(exif), **sub}
    f35 = tags.get(0xA405)  # FocalLengthIn35mmFilm
    try:
        if f35 and float(f35) > 0:
            return float(f35) / 43.2666 * math.hypot(width, height)
        f_mm = tags.get(0x920A)  # FocalLength
        xres = tags.get(0xA20E)  # FocalPlaneXResolution
        unit = tags.get(0xA210, 2)  # FocalPlaneResolutionUnit: 2 inch, 3 cm, 4 mm
        if f_mm and xres and float(f_mm) > 0 and float(xres) > 0:
            mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}.get(int(unit))
            if mm_per_unit is None:
                return None
            f_px = float(f_mm) * float(xres) / mm_per_unit
            exif_w = tags.get(0xA002)  # ExifImageWidth (the sensor's read-out width)
            if exif_w and int(exif_w) > 0:
                f_px *= max(width, height) / max(int(exif_w), int(tags.get(0xA003) or 0))
            return f_px
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


# --------------------------------------------------------------------------------------------
# pycolmap plumbing
# --------------------------------------------------------------------------------------------


@contextmanager
def _work_folder(work_dir: str | Path | None) -> Iterator[Path]:
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="recon-poses-") as tmp:
            yield Path(tmp)
    else:
        path = Path(work_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path


@contextmanager
def _quiet_colmap() -> Iterator[None]:
    """Silence COLMAP's INFO log (glog, to stderr) unless this module logs at DEBUG."""
    import pycolmap

    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1  # WARNING
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _mapper_options(seed: int) -> Any:
    """Incremental-mapping options for 3-20 photos (COLMAP's defaults assume hundreds).

    * ``min_model_size = 2``: the default (10) discards every model of a few-photo capture;
    * keep two-view tracks: with a handful of wide-baseline views most points are seen twice;
    * ``init_min_num_inliers`` 100 -> 50, ``init_min_tri_angle`` 16 -> 8 deg,
      ``abs_pose_min_num_inliers`` 30 -> 15: wide baselines give few verified matches.

    On 6 far-apart fox views (1000 px) these register 6/6 where the defaults register 3/6.
    """
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_model_size = 2
    opts.random_seed = opts.mapper.random_seed = opts.triangulation.random_seed = seed
    opts.triangulation.ignore_two_view_tracks = False
    opts.mapper.init_min_num_inliers = 50
    opts.mapper.init_min_tri_angle = 8.0
    opts.mapper.abs_pose_min_num_inliers = 15
    return opts


def _set_focal_priors(db_path: Path, image_root: Path, use_exif_focal: bool) -> bool:
    """Make each camera's initial focal length explicit: EXIF (a prior) or the default guess.

    Returns:
        Whether every camera now has a focal-length prior.
    """
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    all_prior = True
    try:
        names_by_cam: dict[int, list[str]] = {}
        for im in db.read_all_images():
            names_by_cam.setdefault(im.camera_id, []).append(im.name)
        for cam in db.read_all_cameras():
            names = names_by_cam.get(cam.camera_id, [])
            w, h = int(cam.width), int(cam.height)
            focals = [
                f
                for f in (_exif_focal_px(image_root / n, w, h) for n in names)
                if f is not None and math.isfinite(f) and f > 0
            ]
            params = np.asarray(cam.params, dtype=np.float64).copy()
            if use_exif_focal and focals:
                focal, prior = statistics.median(focals), True
                logger.info("camera %d: EXIF focal length %.1f px (prior)", cam.camera_id, focal)
            elif use_exif_focal and cam.has_prior_focal_length:
                continue  # COLMAP found one we could not (its sensor database)
            else:
                all_prior = False
                focal, prior = DEFAULT_FOCAL_FACTOR * max(w, h), False
                logger.info(
                    "camera %d: no focal prior, starting from %.1f px (%.1f x larger side)",
                    cam.camera_id,
                    focal,
                    DEFAULT_FOCAL_FACTOR,
                )
            for i in cam.focal_length_idxs():
                params[i] = focal
            cam.params = params
            cam.has_prior_focal_length = prior
            db.update_camera(cam)
    finally:
        db.close()
    return all_prior


def _largest(models: dict[int, Any]) -> Any | None:
    """The model with the most registered images (then the most points), or ``None``."""
    return max(
        models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None
    )


def _calibrated_pass(
    db_path: Path, image_root: Path, out: Path, first: Any, verification: Any, seed: int
) -> Any | None:
    """Second pass for photos without a focal prior: re-verify and re-map as calibrated.

    Two-view verification without a known focal length fits fundamental matrices, which
    planar-dominated scenes (an object on a textured table) make ambiguous; on the fox capture
    this gave an 8-view model with 0.8 px reprojection error whose cameras were 90 deg off.
    The first model's intrinsics are written back as priors, the raw matches re-verified with
    essential matrices (no re-matching; seconds) and the images mapped again.
    """
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        for cam in db.read_all_cameras():
            if cam.camera_id in first.cameras:
                cam.params = np.asarray(first.cameras[cam.camera_id].params, dtype=np.float64)
                cam.has_prior_focal_length = True
                db.update_camera(cam)
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, _ = db.read_all_matches()
        pairs = [pycolmap.pair_id_to_image_pair(int(p)) for p in pair_ids]
        db.clear_two_view_geometries()
    finally:
        db.close()
    pairs_file = out.parent / "pairs.txt"
    pairs_file.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in pairs), encoding="utf-8")
    pycolmap.verify_matches(db_path, pairs_file, verification)
    out.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(seed)
    return _largest(pycolmap.incremental_mapping(db_path, image_root, out, _mapper_options(seed)))


def _w2c_of(image: Any) -> np.ndarray:  # -> [4, 4] float64
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose  # a method since pycolmap 3.12
    return np.concatenate([np.asarray(pose.matrix(), dtype=np.float64), [[0.0, 0.0, 0.0, 1.0]]])


def _write_json_with_ply(
    cameras: CameraSet, out: Path, file_paths: list[str], ply_name: str | None
) -> None:
    write_transforms_json(cameras, out, file_paths=file_paths)
    if ply_name is None:
        return
    meta = json.loads(out.read_text(encoding="utf-8"))
    meta["ply_file_path"] = ply_name
    atomic_write_json(out, meta)


# --------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------


def estimate_poses(
    image_dir_or_paths: str | Path | Sequence[str | Path],
    out_transforms: str | Path,
    *,
    max_image_size: int = 1600,
    shared_intrinsics: bool = True,
    use_exif_focal: bool = True,
    matcher: str = "exhaustive",
    camera_model: str = "SIMPLE_RADIAL",
    work_dir: str | Path | None = None,
    seed: int = 0,
) -> PoseReport:
    """Estimate camera poses and intrinsics of a few photos with pycolmap (CPU) and write them.

    Pipeline: SIFT on images downscaled to ``max_image_size`` (keypoints are in full-resolution
    pixels), exhaustive matching with guided matching (recovers wide-baseline pairs), one shared
    camera, focal prior from EXIF when present, incremental mapping with few-view settings
    (:func:`_mapper_options`). Of the models the mapper makes, the one with the most registered
    images (then the most points) is kept. Without a focal prior, and when that model has at
    least 3 images, a second pass re-verifies the matches as calibrated with its intrinsics
    and maps again (:func:`_calibrated_pass`); its model is kept unless it registers fewer
    images. Images left out are named in a warning and in the report; the run continues with
    those that registered.

    Writes ``out_transforms`` (nerfstudio layout: shared ``camera_model: OPENCV`` intrinsics
    incl. ``k1, k2, p1, p2``, per-frame OpenGL ``transform_matrix``, ``file_path`` relative to
    the json, ``ply_file_path``) and the sparse points ``sparse_pc.ply`` (x, y, z, RGB; same
    world frame) beside it. Both are written atomically. The world frame is COLMAP's (arbitrary
    similarity); :func:`recon.io.capture.load_capture` reads the json back.

    Args:
        image_dir_or_paths: a folder (its ``.png/.jpg/.jpeg`` files, not recursive) or a list
            of image files.
        out_transforms: the ``transforms.json`` to write.
        max_image_size: longest side, pixels, the images are downscaled to for SIFT.
        shared_intrinsics: one camera for all images (all must have the same size); else one
            camera per image.
        use_exif_focal: start from the EXIF focal length as a prior when the files have one;
            otherwise (or without EXIF) start from 1.2 x the larger side, not as a prior.
        matcher: ``"exhaustive"`` (all pairs) or ``"sequential"`` (ordered frames).
        camera_model: ``"SIMPLE_RADIAL"`` (f, cx, cy, k1; robust for few views) or another of
            ``SIMPLE_PINHOLE, PINHOLE, RADIAL, OPENCV``.
        work_dir: keep COLMAP's ``database.db``, ``sparse/`` and ``sparse_calibrated/`` here
            (rebuilt on every call); default: a temporary folder, removed afterwards.
        seed: random seed for COLMAP's two-view RANSAC and mapper (same seed, same input:
            same result on the same machine).

    Returns:
        :class:`PoseReport`.

    Raises:
        InputError: missing folder, no images, fewer than 2 images, a file that is not a
            readable image, mixed sizes with ``shared_intrinsics``, a bad option, or fewer than
            2 images registered (naming the folder).
    """
    import pycolmap

    t0 = time.perf_counter()
    if matcher not in MATCHERS:
        raise InputError("matcher", f"is {matcher!r} (expected one of {', '.join(MATCHERS)})")
    if camera_model not in SUPPORTED_CAMERA_MODELS:
        raise InputError(
            "camera_model",
            f"is {camera_model!r} (expected one of {', '.join(SUPPORTED_CAMERA_MODELS)})",
        )
    if (
        isinstance(max_image_size, bool)
        or not isinstance(max_image_size, int)
        or max_image_size < 64
    ):
        raise InputError("max_image_size", f"is {max_image_size!r} (expected an integer >= 64)")
    out_transforms = Path(out_transforms)
    where, image_root, names = collect_images(image_dir_or_paths)
    if len(names) < 2:
        raise InputError(
            where, f"has {len(names)} image ({names[0]}); pose estimation needs at least 2"
        )
    sizes = {n: image_size(image_root / n) for n in names}  # InputError for non-images
    if shared_intrinsics and len(set(sizes.values())) > 1:
        first = sizes[names[0]]
        odd = next(n for n in names if sizes[n] != first)
        raise InputError(
            image_root / odd,
            f"is {sizes[odd][0]}x{sizes[odd][1]} but {names[0]} is {first[0]}x{first[1]} "
            "(expected one size for shared intrinsics; pass shared_intrinsics=False)",
        )
    logger.info("estimating poses of %d images in %s", len(names), image_root)

    pycolmap.set_random_seed(seed)  # COLMAP's global RNG (thread-local, seeded per thread)
    with _work_folder(work_dir) as wd, _quiet_colmap():
        db_path, sparse = wd / "database.db", wd / "sparse"
        for stale in (db_path, wd / "database.db-wal", wd / "database.db-shm"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(sparse, ignore_errors=True)
        shutil.rmtree(wd / "sparse_calibrated", ignore_errors=True)
        sparse.mkdir(parents=True)

        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera_model
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = max_image_size
        extraction.use_gpu = False
        mode = pycolmap.CameraMode.SINGLE if shared_intrinsics else pycolmap.CameraMode.PER_IMAGE
        t = time.perf_counter()
        # Import first so image ids follow the sorted names: threaded extraction writes images
        # in completion order, and the ids steer pair order, RANSAC draws and the initial pair.
        pycolmap.Database.open(str(db_path)).close()  # import_images wants an existing file
        pycolmap.import_images(db_path, image_root, mode, names, reader)
        pycolmap.extract_features(
            db_path,
            image_root,
            image_names=names,
            camera_mode=mode,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        logger.info("SIFT extraction: %.1f s", time.perf_counter() - t)
        have_priors = _set_focal_priors(db_path, image_root, use_exif_focal)

        matching = pycolmap.FeatureMatchingOptions()
        matching.use_gpu = False
        matching.guided_matching = True
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = seed  # unseeded, reruns give different models
        match = pycolmap.match_exhaustive if matcher == "exhaustive" else pycolmap.match_sequential
        t = time.perf_counter()
        match(
            db_path,
            matching_options=matching,
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )
        logger.info("%s matching: %.1f s", matcher, time.perf_counter() - t)

        t = time.perf_counter()
        pycolmap.set_random_seed(seed)  # extraction/matching threads draw from it unevenly
        models = pycolmap.incremental_mapping(db_path, image_root, sparse, _mapper_options(seed))
        rec, n_models = _largest(models), len(models)
        logger.info("incremental mapping: %.1f s, %d model(s)", time.perf_counter() - t, n_models)

        if not have_priors and rec is not None and rec.num_reg_images() >= 3:
            t = time.perf_counter()
            second = _calibrated_pass(
                db_path, image_root, wd / "sparse_calibrated", rec, verification, seed
            )
            n2 = 0 if second is None else second.num_reg_images()
            logger.info(
                "calibrated second pass: %.1f s, %d images registered (first pass: %d)",
                time.perf_counter() - t,
                n2,
                rec.num_reg_images(),
            )
            if n2 >= rec.num_reg_images():
                rec = second

    registered = sorted(
        (im for im in rec.images.values() if im.has_pose), key=lambda im: im.name
    ) if rec is not None else []
    if len(registered) < 2:
        raise InputError(
            where,
            f"only {len(registered)} of {len(names)} images could be registered "
            "(expected at least 2; the photos need more overlap or texture)",
        )
    reg_names = {im.name for im in registered}
    unregistered = [n for n in names if n not in reg_names]
    if unregistered:
        logger.warning(
            "%s: %d of %d images could not be registered and are left out: %s",
            where,
            len(unregistered),
            len(names),
            ", ".join(unregistered),
        )
    if n_models > 1:
        logger.warning(
            "%s: the images split into %d separate models; keeping the largest (%d images)",
            where,
            n_models,
            len(registered),
        )

    w2cs, intrinsics, image_paths = [], [], []
    for im in registered:
        w2c = _w2c_of(im)
        check_pose(w2c, f"{where} (COLMAP pose of {im.name})")
        w2cs.append(w2c)
        intrinsics.append(intrinsics_from_colmap(rec.cameras[im.camera_id], where))
        image_paths.append(image_root / im.name)
    cameras = CameraSet(torch.from_numpy(np.stack(w2cs)), intrinsics)

    points = list(rec.points3D.values())
    ply_path = None
    if points:
        ply_path = out_transforms.parent / PLY_NAME
        xyz = np.stack([p.xyz for p in points]).astype(np.float32)
        rgb = np.stack([p.color for p in points]).astype(np.uint8)
        write_points_ply(ply_path, xyz, rgb)
    file_paths = [Path(os.path.relpath(p, out_transforms.parent)).as_posix() for p in image_paths]
    if any(f.startswith("../") for f in file_paths):
        logger.warning("%s lists images outside its folder (%s); readers refuse that unless given --allow-outside-paths "
                       "(or write --out inside the capture folder)", out_transforms, file_paths[0])  # fmt: skip
    _write_json_with_ply(cameras, out_transforms, file_paths, PLY_NAME if points else None)

    report = PoseReport(
        n_images=len(names),
        n_registered=len(registered),
        unregistered=unregistered,
        mean_reproj_error_px=float(rec.compute_mean_reprojection_error()),
        n_points=len(points),
        seconds=time.perf_counter() - t0,
        transforms_path=out_transforms,
        ply_path=ply_path,
        image_paths=image_paths,
        cameras=cameras,
        camera_model=camera_model,
        n_models=n_models,
    )
    logger.info(
        "registered %d/%d images, %d points, reprojection error %.2f px, %.1f s -> %s",
        report.n_registered,
        report.n_images,
        report.n_points,
        report.mean_reproj_error_px,
        report.seconds,
        out_transforms,
    )
    return report
