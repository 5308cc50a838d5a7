"""Register 3-10 wide-baseline photos without calibration, with self-checks and a per-view report.

:func:`register_views` is :func:`recon.poses.colmap.estimate_poses` rebuilt for few views:

1. features: SIFT with affine-covariant shapes and domain-size pooling (twice the correct
   matches of plain SIFT on the fox's 45-100 deg pairs), at ``max_image_size``;
2. exhaustive matching with cross-check and guided matching; the candidate matches of a pair
   are the raw matches plus the guided, verified ones;
3. one shared camera; its focal length from EXIF when present, else from
   :func:`recon.poses.focal.search_focal` (the focal length at which the pairs' rotations
   compose around view triplets), held fixed while mapping;
4. incremental mapping with few-view settings; if it leaves views out, global mapping (rotation
   averaging + global positioning) from the pairs' calibrated poses is tried and the better
   model kept;
5. :mod:`recon.poses.checks`: a view that sees too few points, reprojects badly, has its points
   behind it, sits inside the points or disagrees with every two-view estimate fails, as does an
   implausible focal length, and so does a set in which no three photos match each other
   pairwise (fewer than 3 share content: nothing could check the focal length or the poses).

Unless ``allow_partial``, anything short of every view registered and every check passing is
a :class:`RegistrationError` (an :class:`~recon.errors.InputError`: one line, exit 2 from the
CLI) that names each view left out and why; nothing is written then.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, check_pose
from recon.io.colmap import intrinsics_from_colmap
from recon.io.images import image_size
from recon.io.ply import write_points_ply
from recon.poses.checks import CheckLimits, reconstruction_problems, view_stats
from recon.poses.colmap import (
    PLY_NAME,
    collect_images,
    _exif_focal_px,
    _largest,
    _quiet_colmap,
    _w2c_of,
    _work_folder,
    _write_json_with_ply,
)
from recon.poses.focal import PairGeometry, consistent_pairs, cycle_errors_deg, relative_poses, search_focal

logger = logging.getLogger(__name__)

__all__ = ["ViewReport", "RegistrationReport", "RegistrationError", "register_views"]


@dataclass
class ViewReport:
    """One photo's outcome."""

    name: str
    registered: bool
    n_points: int = 0
    """Triangulated points the view observes (its 2D-3D inliers)."""
    reproj_px: float = math.nan
    """Mean reprojection error of those, full-resolution pixels."""
    confidence: float = 0.0
    """0..1, see :attr:`recon.poses.checks.ViewStats.confidence`."""
    pair_disagreement_deg: float = math.nan
    """Smallest disagreement with a two-view rotation estimate, degrees."""
    reason: str | None = None
    """Why the view is not registered or failed a check; ``None`` when it is fine."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}  # fmt: skip


@dataclass
class RegistrationReport:
    """What :func:`register_views` found (and wrote, when it succeeded)."""

    views: list[ViewReport]
    focal_px: float
    """Shared focal length, full-resolution pixels."""
    focal_source: str
    """``"given"``, ``"exif"``, ``"triplet search"`` or ``"bundle adjustment"``."""
    method: str
    """``"incremental"`` or ``"global"`` (the mapper whose model was kept)."""
    mean_reproj_error_px: float
    n_points: int
    seconds: float
    problems: dict[str, str] = field(default_factory=dict)
    """Failed checks: view name (or ``"*"``) -> reason."""
    transforms_path: Path | None = None
    """Written ``transforms.json`` (``None`` when nothing was written)."""
    ply_path: Path | None = None
    image_paths: list[Path] = field(default_factory=list)
    """Registered images in the order of :attr:`cameras`."""
    cameras: CameraSet | None = None
    focal_scores: list[tuple[float, float]] = field(default_factory=list)
    """``(focal px, median triplet cycle error deg)`` of the focal search, if one ran."""

    @property
    def n_images(self) -> int:
        return len(self.views)

    @property
    def n_registered(self) -> int:
        return sum(v.registered for v in self.views)

    @property
    def ok(self) -> bool:
        """Every view registered and every check passed."""
        return self.n_registered == self.n_images and not self.problems

    def summary(self) -> str:
        """One line: which views did not register or failed, and why."""
        bad = [f"{v.name} ({v.reason})" for v in self.views if v.reason]
        if "*" in self.problems:
            bad.insert(0, self.problems["*"])
        return (f"{self.n_registered} of {self.n_images} photos registered; "
                + ("; ".join(bad) if bad else "all checks passed"))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "n_images": self.n_images,
            "n_registered": self.n_registered,
            "focal_px": self.focal_px,
            "focal_source": self.focal_source,
            "method": self.method,
            "mean_reproj_error_px": self.mean_reproj_error_px,
            "n_points": self.n_points,
            "seconds": self.seconds,
            "problems": dict(self.problems),
            "views": [v.to_dict() for v in self.views],
            "transforms_path": None if self.transforms_path is None else str(self.transforms_path),
        }


class RegistrationError(InputError):
    """The photos could not all be registered, or the model failed its checks (exit 2)."""

    def __init__(self, where: str | Path, report: RegistrationReport):
        self.report = report
        super().__init__(where, report.summary())


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _camera_name(path: Path) -> str | None:
    """EXIF ``Make Model`` of a photo, or ``None``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except Exception:
        return None
    name = " ".join(str(exif.get(t, "")).strip("\x00 ") for t in (0x010F, 0x0110)).strip()
    return name or None


def _check_one_camera(root: Path, names: list[str]) -> tuple[int, int]:
    """-> shared (width, height); InputError for mixed sizes or mixed EXIF cameras."""
    sizes = {n: image_size(root / n) for n in names}
    first = names[0]
    for n in names[1:]:
        if sizes[n] != sizes[first]:
            raise InputError(
                root / n,
                f"is {sizes[n][0]}x{sizes[n][1]} but {first} is {sizes[first][0]}x{sizes[first][1]} "
                "(expected photos from one camera at one size: mixed cameras cannot share intrinsics)",
            )
    models = {n: _camera_name(root / n) for n in names}
    known = {m for m in models.values() if m}
    if len(known) > 1:
        a, b = sorted(known)[:2]
        na = next(n for n in names if models[n] == a)
        nb = next(n for n in names if models[n] == b)
        raise InputError(
            root / nb,
            f"was taken with {b!r} but {na} with {a!r} (expected photos from one camera: "
            "mixed cameras cannot share intrinsics)",
        )
    return sizes[first]


# --------------------------------------------------------------------------------------------
# pycolmap steps
# --------------------------------------------------------------------------------------------


def _extract_and_match(
    db_path: Path, root: Path, names: list[str], max_image_size: int, seed: int, threads: int
) -> None:
    """Affine-covariant DSP-SIFT, exhaustive matching with cross-check and guided matching."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    ex = pycolmap.FeatureExtractionOptions()
    ex.max_image_size = max_image_size
    ex.use_gpu = False
    ex.num_threads = threads
    ex.sift.estimate_affine_shape = True
    ex.sift.domain_size_pooling = True
    ex.sift.max_num_features = 16384
    mode = pycolmap.CameraMode.SINGLE
    pycolmap.Database.open(str(db_path)).close()
    pycolmap.import_images(db_path, root, mode, names, reader)
    pycolmap.extract_features(
        db_path, root, image_names=names, camera_mode=mode, reader_options=reader,
        extraction_options=ex, device=pycolmap.Device.cpu,
    )  # fmt: skip
    matching = pycolmap.FeatureMatchingOptions()
    matching.use_gpu = False
    matching.num_threads = threads
    matching.guided_matching = True
    matching.sift.cross_check = True
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    pycolmap.match_exhaustive(
        db_path, matching_options=matching, verification_options=verification,
        device=pycolmap.Device.cpu,
    )  # fmt: skip


def _read_matches(
    db_path: Path, names: list[str]
) -> tuple[list[np.ndarray], dict[tuple[int, int], np.ndarray], dict[tuple[int, int], int]]:
    """-> (keypoints [Ni, 2] per view, candidate matches per pair, verified counts per pair)."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        index = {im.image_id: names.index(im.name) for im in db.read_all_images()}
        kps: list[np.ndarray] = [np.zeros((0, 2))] * len(names)
        for iid, i in index.items():
            kps[i] = np.asarray(db.read_keypoints(iid))[:, :2].astype(np.float64)
        cand: dict[tuple[int, int], list[np.ndarray]] = {}
        verified: dict[tuple[int, int], int] = {}

        def key(pid: int, m: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
            ia, ib = pycolmap.pair_id_to_image_pair(int(pid))
            a, b = index[ia], index[ib]
            m = np.asarray(m, dtype=np.int64).reshape(-1, 2)
            return ((a, b), m) if a < b else ((b, a), m[:, ::-1])

        ids, ms = db.read_all_matches()
        for pid, m in zip(ids, ms):
            k, m = key(pid, m)
            cand.setdefault(k, []).append(m)
        ids, tvgs = db.read_two_view_geometries()
        for pid, g in zip(ids, tvgs):
            k, m = key(pid, g.inlier_matches)
            cand.setdefault(k, []).append(m)
            verified[k] = len(m)
    finally:
        db.close()
    matches = {k: np.unique(np.concatenate(v), axis=0) for k, v in cand.items()}
    return kps, matches, verified


def _set_focal(db_path: Path, focal_px: float) -> None:
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        for cam in db.read_all_cameras():
            params = np.asarray(cam.params, dtype=np.float64).copy()
            for i in cam.focal_length_idxs():
                params[i] = focal_px
            cam.params = params
            cam.has_prior_focal_length = True
            db.update_camera(cam)
    finally:
        db.close()


def _incremental(
    db_path: Path, root: Path, out: Path, seed: int, threads: int, fix_focal: bool
) -> Any | None:
    """Incremental mapping relaxed for few views; the largest model or ``None``."""
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_model_size = 2
    opts.num_threads = threads
    opts.random_seed = opts.mapper.random_seed = opts.triangulation.random_seed = seed
    opts.triangulation.ignore_two_view_tracks = False
    opts.mapper.init_min_num_inliers = 30
    opts.mapper.init_min_tri_angle = 4.0
    opts.mapper.abs_pose_min_num_inliers = 10
    opts.mapper.abs_pose_min_inlier_ratio = 0.1
    if fix_focal:
        opts.ba_refine_focal_length = False
        opts.mapper.abs_pose_refine_focal_length = False
    out.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(seed)
    return _largest(pycolmap.incremental_mapping(db_path, root, out, opts))


def _global(
    db_path: Path,
    root: Path,
    out: Path,
    names: list[str],
    pairs: dict[tuple[int, int], PairGeometry],
    seed: int,
    threads: int,
) -> Any | None:
    """Global mapping (rotation averaging + positioning) from the calibrated pair poses."""
    import pycolmap

    gdb = out / "database_global.db"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(db_path, gdb)
    db = pycolmap.Database.open(str(gdb))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        db.clear_two_view_geometries()
        for (a, b), g in pairs.items():
            tvg = pycolmap.TwoViewGeometry()
            tvg.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            tvg.inlier_matches = g.inliers.astype(np.uint32)
            tvg.cam2_from_cam1 = pycolmap.Rigid3d(
                pycolmap.Rotation3d(g.rot_b_from_a), g.trans_b_from_a
            )
            db.write_two_view_geometry(ids[names[a]], ids[names[b]], tvg)
    finally:
        db.close()
    opts = pycolmap.GlobalPipelineOptions()
    opts.min_model_size = 2
    opts.num_threads = threads
    opts.random_seed = seed
    opts.decompose_relative_pose = False
    opts.mapper.track_min_num_views_per_track = 2
    opts.mapper.bundle_adjustment.refine_focal_length = False
    pycolmap.set_random_seed(seed)
    try:
        return _largest(pycolmap.global_mapping(gdb, root, out, opts))
    except Exception as err:  # pycolmap raises on a failed model in some versions
        logger.info("global mapping failed: %s", err)
        return None


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def _why_unregistered(
    i: int, names: list[str], verified: dict[tuple[int, int], int], min_pair: int
) -> str:
    best, other = 0, None
    for (a, b), n in verified.items():
        if i in (a, b) and n > best:
            best, other = n, names[b if a == i else a]
    if best < min_pair:
        tail = f"; best: {best} with {other}" if other else ""
        return f"shares fewer than {min_pair} verified matches with any other photo{tail}"
    return f"matched {other} ({best} verified matches) but could not be placed in the model"


def _triplet_problem(
    names: list[str], pairs: dict[tuple[int, int], PairGeometry], verified: dict[tuple[int, int], int], min_pair: int
) -> str | None:
    """The whole-model problem when no three photos match each other pairwise, else ``None``.

    Without a triplet neither the focal length (:func:`recon.poses.focal.search_focal`) nor any
    view's rotation (:mod:`recon.poses.checks`) can be checked: two photos always fit some
    relative pose, right or wrong, so the registration would be unverified.
    """
    if cycle_errors_deg(pairs):
        return None
    linked = sorted(((a, b) for (a, b), n in verified.items() if n >= min_pair), key=lambda ab: -verified[ab])
    shared = "; ".join(f"{names[a]}-{names[b]} ({verified[(a, b)]} verified matches)" for a, b in linked[:4])
    return (f"fewer than 3 photos share content (no three photos match each other pairwise; pairs with >= {min_pair} "
            f"verified matches: {shared or 'none'}); registration needs at least 3 overlapping photos to fix the "
            "focal length and check the poses")  # fmt: skip


def register_views(
    image_dir_or_paths: str | Path | Sequence[str | Path],
    out_transforms: str | Path | None,
    *,
    max_image_size: int = 1000,
    focal_px: float | None = None,
    use_exif_focal: bool = True,
    min_pair_inliers: int = 30,
    limits: CheckLimits = CheckLimits(),
    allow_partial: bool = False,
    work_dir: str | Path | None = None,
    seed: int = 0,
    num_threads: int = -1,
) -> RegistrationReport:
    """Register a few photos (one camera, no calibration) and write ``transforms.json``.

    Args:
        image_dir_or_paths: a folder of photos (not recursive) or a list of image files.
        out_transforms: the ``transforms.json`` to write (nerfstudio layout, with
            ``sparse_pc.ply`` beside it), or ``None`` to write nothing.
        max_image_size: longest side, pixels, the photos are downscaled to for SIFT (keypoints
            are in full-resolution pixels).
        focal_px: the focal length in full-resolution pixels when known (skips the search).
        use_exif_focal: search around the EXIF focal length when the photos have one.
        min_pair_inliers: a pair needs this many inliers to count in the focal search.
        limits: thresholds of the self-checks.
        allow_partial: return a report with views left out or failed checks (and write the
            registered ones) instead of raising.
        work_dir: keep COLMAP's database and models here; default a temporary folder.
        seed: seed of every RANSAC and of the mappers.
        num_threads: threads for pycolmap (-1: all cores).

    Returns:
        :class:`RegistrationReport`.

    Raises:
        InputError: no photos, fewer than 2, unreadable files, mixed image sizes or cameras.
        RegistrationError: (an InputError) not every view registered or a check failed, unless
            ``allow_partial``; its message names each view and why.
    """
    import pycolmap

    t0 = time.perf_counter()
    if isinstance(max_image_size, bool) or not isinstance(max_image_size, int) or max_image_size < 64:
        raise InputError("max_image_size", f"is {max_image_size!r} (expected an integer >= 64)")
    if focal_px is not None and not (isinstance(focal_px, (int, float)) and focal_px > 0):
        raise InputError("focal_px", f"is {focal_px!r} (expected a positive number of pixels)")
    where, root, names = collect_images(image_dir_or_paths)
    if len(names) < 2:
        raise InputError(where, f"has {len(names)} photo ({names[0]}); registration needs at least 2")
    width, height = _check_one_camera(root, names)
    logger.info("registering %d photos in %s", len(names), root)

    with _work_folder(work_dir) as wd, _quiet_colmap():
        db_path = wd / "database.db"
        for stale in (db_path, wd / "database.db-wal", wd / "database.db-shm"):
            stale.unlink(missing_ok=True)
        for sub in ("sparse", "global"):
            shutil.rmtree(wd / sub, ignore_errors=True)
        t = time.perf_counter()
        _extract_and_match(db_path, root, names, max_image_size, seed, num_threads)
        logger.info("features and matching: %.1f s", time.perf_counter() - t)
        kps, matches, verified = _read_matches(db_path, names)

        exif = [f for f in (_exif_focal_px(root / n, width, height) for n in names) if f]
        scores: list[tuple[float, float]] = []
        if focal_px is not None:
            focal, source = float(focal_px), "given"
        else:
            centre = float(np.median(exif)) if (exif and use_exif_focal) else None
            found = search_focal(kps, matches, width, height, centre_px=centre,
                                 min_inliers=min_pair_inliers, seed=seed)  # fmt: skip
            scores = found.scores
            if found.focal_px is not None:
                focal, source = found.focal_px, "triplet search"
            elif centre is not None:
                focal, source = centre, "exif"
            else:
                focal, source = 1.2 * max(width, height), "bundle adjustment"
        pairs = relative_poses(kps, matches, width, height, focal, min_inliers=min_pair_inliers, seed=seed)
        triplet_problem = _triplet_problem(names, pairs, verified, min_pair_inliers)
        _set_focal(db_path, focal)
        fix = source != "bundle adjustment"
        rec = _incremental(db_path, root, wd / "sparse", seed, num_threads, fix_focal=fix)
        method = "incremental"
        n_inc = 0 if rec is None else rec.num_reg_images()
        if n_inc < len(names) and len(pairs) >= 2:
            rec_g = _global(db_path, root, wd / "global", names, pairs, seed, num_threads)
            n_g = 0 if rec_g is None else rec_g.num_reg_images()
            logger.info("incremental mapping registered %d, global mapping %d", n_inc, n_g)
            if n_g > n_inc:
                rec, method = rec_g, "global"

    if rec is None:
        views = [ViewReport(n, False, reason=_why_unregistered(i, names, verified, min_pair_inliers))
                 for i, n in enumerate(names)]  # fmt: skip
        report = RegistrationReport(views, focal, source, method, math.nan, 0, time.perf_counter() - t0,
                                    {"*": triplet_problem} if triplet_problem else {}, focal_scores=scores)  # fmt: skip
        if not allow_partial:
            raise RegistrationError(where, report)
        return report

    cam0 = next(iter(rec.cameras.values()))
    focal = float(cam0.mean_focal_length())
    stats = view_stats(rec, names, consistent_pairs(pairs))
    problems = reconstruction_problems(stats, focal, width, height, limits)
    if triplet_problem and "*" not in problems:
        problems["*"] = triplet_problem
    views = []
    for i, n in enumerate(names):
        s = stats.get(n)
        if s is None:
            views.append(ViewReport(n, False, reason=_why_unregistered(i, names, verified, min_pair_inliers)))
        else:
            views.append(ViewReport(n, True, s.n_points, s.reproj_px, s.confidence,
                                    s.pair_disagreement_deg, problems.get(n)))  # fmt: skip
    registered = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    report = RegistrationReport(
        views, focal, source, method, float(rec.compute_mean_reprojection_error()),
        rec.num_points3D(), 0.0, problems, focal_scores=scores,
    )  # fmt: skip
    for v in views:
        logger.info("%s: %s", v.name, "registered" if v.registered else "NOT registered"
                    + (f" ({v.reason})" if v.reason else ""))  # fmt: skip
    if not report.ok and not allow_partial:
        report.seconds = time.perf_counter() - t0
        raise RegistrationError(where, report)
    if len(registered) >= 2:
        w2cs = []
        for im in registered:
            w2c = _w2c_of(im)
            check_pose(w2c, f"{where} (pose of {im.name})")
            w2cs.append(w2c)
        intr = [intrinsics_from_colmap(rec.cameras[im.camera_id], where) for im in registered]
        report.cameras = CameraSet(torch.from_numpy(np.stack(w2cs)), intr)
        report.image_paths = [root / im.name for im in registered]
        if out_transforms is not None:
            out_transforms = Path(out_transforms)
            out_transforms.parent.mkdir(parents=True, exist_ok=True)
            points = list(rec.points3D.values())
            if points:
                report.ply_path = out_transforms.parent / PLY_NAME
                write_points_ply(report.ply_path, np.stack([p.xyz for p in points]).astype(np.float32),
                                 np.stack([p.color for p in points]).astype(np.uint8))  # fmt: skip
            rel = [Path(os.path.relpath(p, out_transforms.parent)).as_posix() for p in report.image_paths]
            _write_json_with_ply(report.cameras, out_transforms, rel, PLY_NAME if points else None)
            report.transforms_path = out_transforms
    report.seconds = time.perf_counter() - t0
    logger.info("%s (focal %.1f px from %s, %s mapping, %.1f s)", report.summary(), focal,
                source, method, report.seconds)  # fmt: skip
    return report
