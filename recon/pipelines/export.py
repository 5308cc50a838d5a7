"""``recon export`` / ``recon ct export``: a run's result as files other tools read.

The run's kind decides what can be written (``run.json``'s ``kind``):

=========  ========  ======================================================================  =========================
kind       format    what                                                                    default ``--out``
=========  ========  ======================================================================  =========================
capture    ply       the Gaussians, 3DGS PLY layout (``splat.ply``, or the newest            ``RUN/export/splat.ply``
                     checkpoint's Gaussians for an unfinished run)
capture    mesh      TSDF fusion of rendered RGB-D (:func:`recon.splat.mesh.splat_mesh`),    ``RUN/export/mesh.ply``
                     coloured; .ply / .obj / .glb / .stl by the suffix
capture    points    the Gaussians' centres with colours and normals, outliers removed      ``RUN/export/points.ply``
ct         dicom     a CT series in HU (:func:`recon.io.dicom.write_dicom_series`) that      ``RUN/export/dicom/``
                     lies where ``volume.nii.gz`` lies
ct         mesh      marching cubes at ``--iso`` HU (:func:`recon.ct.mesh.iso_surface`),     ``RUN/export/mesh.stl``
                     mm in the scanner frame; .stl / .ply / .obj / .glb
ct         nifti     the volume in HU with ``volume.nii.gz``'s affine                        ``RUN/export/volume_hu.nii.gz``
=========  ========  ======================================================================  =========================

Everything that can fail on bad input (the run folder, its files, the options, the output
path) is checked before any work; outputs are written atomically. The run folder's own files
are only read.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from recon.errors import InputError
from recon.io.ply import read_splat_ply, write_points_ply, write_splat_ply
from recon.io.run import GEOMETRY_FILE, RunDir, read_json
from recon.train import read_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "CTExportConfig",
    "CTRun",
    "ExportConfig",
    "ExportResult",
    "export_run",
    "load_ct_run",
    "load_run_params",
    "run_background",
    "run_kind",
    "run_train_cameras",
]

FORMATS: dict[str, tuple[str, ...]] = {"capture": ("ply", "mesh", "points"), "ct": ("dicom", "mesh", "nifti")}
"""What each kind of run exports; the first is the default."""

_DEFAULT_OUT = {
    ("capture", "ply"): "splat.ply", ("capture", "mesh"): "mesh.ply", ("capture", "points"): "points.ply",
    ("ct", "dicom"): "dicom", ("ct", "mesh"): "mesh.stl", ("ct", "nifti"): "volume_hu.nii.gz",
}  # fmt: skip

StepFn = Callable[[int, int], None]

_FILE_SUFFIXES = (".ply", ".obj", ".glb", ".stl", ".nii", ".gz", ".npy", ".mp4", ".gif", ".json", ".dcm")
"""Suffixes a DICOM output folder cannot have (a file meant for another format)."""


# ---------------------------------------------------------------------------------- configs
@dataclass
class _ExportOptions:
    """Options both spellings (``recon export``, ``recon ct export``) take."""

    run_dir: tyro.conf.Positional[Path]
    """A run folder written by recon fit / recon ct fit."""
    out: Path | None = None
    """Output file (a folder for dicom); default RUN/export/<splat.ply | mesh.ply | points.ply |
    dicom | mesh.stl | volume_hu.nii.gz>. A mesh's file type follows the suffix: .ply, .obj,
    .glb, .stl."""
    iso: str = "bone"
    """CT mesh: iso value in HU, or a preset: bone (300), skin (-500)."""
    smooth: int = 10
    """CT mesh: Taubin smoothing iterations (0: none)."""
    target_faces: int = 200_000
    """Meshes: decimate to at most this many faces (0: keep every face)."""
    components: int | None = None
    """Meshes: keep the N largest connected pieces (0: all; default 1 for captures, all for CT)."""


@dataclass
class ExportConfig(_ExportOptions):
    """Export a run to files other tools read: a capture run as splats (ply), a mesh or a point
    cloud; a CT run as a DICOM series, an iso-surface mesh or NIfTI in HU."""

    format: Literal["ply", "mesh", "points", "dicom", "nifti"] | None = None
    """What to write. Capture runs: ply (default), mesh, points. CT runs: dicom (default), mesh, nifti."""
    resolution: int = 256
    """Capture mesh: TSDF voxels across the longest side of the scene."""
    ring_views: int = 24
    """Capture mesh: views rendered on a ring around the training cameras, besides them (0: none)."""
    tsdf: Literal["auto", "scalable", "voxel-block-grid"] = "auto"
    """Capture mesh: the Open3D TSDF fused into: scalable (ScalableTSDFVolume), voxel-block-grid
    (VoxelBlockGrid), or auto: scalable where the installed Open3D integrates with it (not 0.20.0),
    else voxel-block-grid."""
    min_opacity: float = 0.1
    """Capture points: leave out Gaussians fainter than this."""
    outlier_std: float = 2.0
    """Capture points: remove statistical outliers, mean k-NN distance above mean + this many std (0: keep all)."""

    kinds: tuple[str, ...] = field(default=("capture", "ct"), init=False, repr=False)

    def run(self, progress: StepFn | None = None) -> ExportResult:
        """Check everything, then write the export; returns what was written."""
        return _export(self, progress)


@dataclass
class CTExportConfig(_ExportOptions):
    """Export a CT run: a DICOM series in HU (default), an iso-surface mesh (STL, PLY) in mm in
    the scanner frame, or NIfTI in HU."""

    format: Literal["dicom", "mesh", "nifti"] = "dicom"
    """What to write."""

    kinds: tuple[str, ...] = field(default=("ct",), init=False, repr=False)

    def run(self, progress: StepFn | None = None) -> ExportResult:
        """Check everything, then write the export; returns what was written."""
        return _export(self, progress)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    kind: str
    format: str
    info: dict[str, Any]
    """Counts and checks: faces, vertices, watertight, volume_ml, points, slices, ..."""


def export_run(run_dir: Path, fmt: str | None = None, out: Path | None = None, **options: Any) -> Path:
    """Write the run's export ``fmt`` (default: splats for capture runs, DICOM for CT runs) to
    ``out`` (default under ``RUN/export/``); ``options`` are :class:`ExportConfig` fields.
    Returns the path written."""
    return ExportConfig(Path(run_dir), out=out, format=fmt, **options).run().path  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- dispatch
def run_kind(run_dir: Path) -> tuple[RunDir, str]:
    """The run folder and its kind; a folder that is not a run is an :class:`InputError`."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise InputError(run_dir, "run folder not found")
    status = run.status()
    if not status:
        raise InputError(run_dir, "no run.json (not a recon run folder)")
    kind = status.get("kind", "capture")
    if kind not in FORMATS:
        raise InputError(run.path("run.json"), f"unknown kind {kind!r} (expected capture or ct)")
    return run, kind


def _check_out(path: Path, kind: str, fmt: str) -> None:
    from recon.io.mesh import MESH_FORMATS

    name = path.name.lower()
    if fmt == "mesh" and path.suffix.lower() not in MESH_FORMATS:
        raise InputError(path, f"unknown mesh type {path.suffix or '(no suffix)'!r} (expected {', '.join(MESH_FORMATS)})")
    if fmt in ("ply", "points") and not name.endswith(".ply"):
        raise InputError(path, f"a {fmt} export is a .ply file")
    if fmt == "nifti" and not name.endswith((".nii", ".nii.gz")):
        raise InputError(path, "a nifti export is a .nii or .nii.gz file")
    if fmt == "dicom" and path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder (a DICOM series is a folder of slices)")
    if fmt == "dicom" and path.suffix.lower() in _FILE_SUFFIXES:
        raise InputError(path, f"names a {path.suffix} file, but a DICOM series is a folder of slices (give a folder, or --format)")
    if fmt != "dicom" and path.is_dir():
        raise InputError(path, "is a folder (expected a file path)")


def _export(cfg: ExportConfig | CTExportConfig, progress: StepFn | None) -> ExportResult:
    run, kind = run_kind(cfg.run_dir)
    if kind not in cfg.kinds:
        raise InputError(cfg.run_dir, f"is a {kind} run; 'recon ct export' exports CT runs (use 'recon export')")
    fmt = cfg.format or FORMATS[kind][0]
    if fmt not in FORMATS[kind]:
        name = "CT" if kind == "ct" else kind
        raise InputError("--format", f"{fmt!r} does not apply to a {name} run (expected one of {', '.join(FORMATS[kind])})")
    for name in ("target_faces", "smooth"):
        if getattr(cfg, name) < 0:
            raise InputError(f"--{name.replace('_', '-')}", f"must be >= 0, got {getattr(cfg, name)}")
    if cfg.components is not None and cfg.components < 0:
        raise InputError("--components", f"must be >= 0, got {cfg.components}")
    if 0 < cfg.target_faces < 4:
        raise InputError("--target-faces", f"must be 0 (keep all) or >= 4, got {cfg.target_faces}")
    if isinstance(cfg, ExportConfig):
        if cfg.resolution < 8:
            raise InputError("--resolution", f"must be >= 8, got {cfg.resolution}")
        if cfg.ring_views < 0:
            raise InputError("--ring-views", f"must be >= 0, got {cfg.ring_views}")
        if not 0.0 <= cfg.min_opacity < 1.0:
            raise InputError("--min-opacity", f"must be in [0, 1), got {cfg.min_opacity}")
        if kind == "capture" and fmt == "mesh":
            from recon.splat.mesh import tsdf_backend

            tsdf_backend(cfg.tsdf)  # an Open3D that cannot fuse into the TSDF asked for: one line, before any rendering
    if kind == "ct" and fmt == "mesh":
        from recon.ct.mesh import iso_hu

        iso_hu(cfg.iso)
    out = Path(cfg.out) if cfg.out is not None else run.path("export", _DEFAULT_OUT[(kind, fmt)])
    _check_out(out, kind, fmt)
    if kind == "capture":
        return _export_capture(run, fmt, out, cfg, progress)  # type: ignore[arg-type]
    return _export_ct(run, fmt, out, cfg)


# ---------------------------------------------------------------------------------- captures
def load_run_params(run_dir: Path) -> dict:
    """Model parameters of a capture run: ``splat.ply`` when complete, else the newest
    checkpoint (an anchored fit's checkpoint is decoded into its Gaussians, as ``splat.ply``
    would hold them)."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise InputError(run_dir, "run folder not found")
    kind = run.status().get("kind", "capture")
    if kind != "capture":
        raise InputError(run_dir, f"a {kind.upper()} run has no splats to export (expected a capture run of 'recon fit'; "
                                  "a CT run's volume is volume.nii.gz)")  # fmt: skip
    if run.is_complete() and run.path("splat.ply").is_file():
        return read_splat_ply(run.path("splat.ply"))
    ckpt = read_checkpoint(run)
    if ckpt is None:
        raise InputError(run_dir, "no splat.ply and no checkpoint to export from")
    state = ckpt.get("trainer")
    if not isinstance(state, dict) or not isinstance(state.get("fields"), list) or not state["fields"]:
        raise InputError(run.latest_checkpoint() or run_dir, "not a checkpoint of 'recon fit' (no model state)")
    model_state = state["fields"][0]["model"]
    if state.get("model_kind") == "anchored":
        return _decode_anchored(run, model_state)
    return {k.removeprefix("params."): v for k, v in model_state.items() if k.startswith("params.")}


def _decode_anchored(run: RunDir, model_state: dict) -> dict:
    """The Gaussians an anchored checkpoint decodes into (its config from ``config.json``)."""
    from recon.splat.anchored import AnchoredConfig, AnchoredGaussians

    config = read_json(run.path("config.json"))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["anchored"].items()}
    model = AnchoredGaussians.from_state_dict(model_state, AnchoredConfig(**fields), sh_degree=int(config["sh_degree"]))
    return {k: v.detach() for k, v in model.to_gaussian_model().params.items()}


def run_background(run: RunDir) -> tuple[float, float, float]:
    """The background colour the run rendered with (``metrics.json``, else ``config.json``,
    else black)."""
    for name in ("metrics.json", "config.json"):
        if run.path(name).is_file():
            data = read_json(run.path(name))
            bg = data.get("background") if isinstance(data, dict) else None
            if isinstance(bg, (list, tuple)) and len(bg) == 3 and all(isinstance(c, (int, float)) for c in bg):
                return tuple(float(c) for c in bg)  # type: ignore[return-value]
    return (0.0, 0.0, 0.0)


def run_train_cameras(run: RunDir):
    """The run's training cameras (``cameras.json``); a run without them is an :class:`InputError`."""
    splits = run.read_cameras()
    if "train" not in splits:
        raise InputError(run.path("cameras.json"), f"no training cameras (splits: {', '.join(sorted(splits)) or 'none'})")
    return splits["train"][1]


def _export_capture(run: RunDir, fmt: str, out: Path, cfg: ExportConfig, progress: StepFn | None) -> ExportResult:
    import torch

    params = load_run_params(run.root)
    n = int(params["means"].shape[0])
    if fmt == "ply":
        write_splat_ply(out, params)
        return ExportResult(out, "capture", fmt, {"gaussians": n})
    from recon.splat.model import GaussianModel

    try:
        model = GaussianModel.from_params(params)
    except ValueError as err:
        raise InputError(run.root, f"the run's Gaussians are malformed ({err})") from None
    cameras = run_train_cameras(run)
    if fmt == "points":
        from recon.splat.mesh import gaussian_points

        pts, rgb, normals = gaussian_points(model, cameras, min_opacity=cfg.min_opacity, outlier_std=cfg.outlier_std)
        if len(pts) == 0:
            raise InputError(run.root, f"no Gaussian is at least {cfg.min_opacity} opaque; nothing to export (lower --min-opacity)")
        write_points_ply(out, pts, rgb, normals)
        return ExportResult(out, "capture", fmt, {"points": len(pts), "gaussians": n})
    from recon.geometry.mesh import boundary_edges, is_watertight
    from recon.io.mesh import write_mesh
    from recon.splat.mesh import MeshConfig, splat_mesh

    components = 1 if cfg.components is None else (cfg.components or None)
    mesh_cfg = MeshConfig(resolution=cfg.resolution, ring_views=cfg.ring_views, components=components, target_faces=cfg.target_faces or None,
                          tsdf=cfg.tsdf)  # fmt: skip
    background = torch.tensor(run_background(run), dtype=torch.float32)
    mesh, info = splat_mesh(model, cameras, background, mesh_cfg, progress=progress)
    if mesh.n_faces == 0:
        raise InputError(run.root, "the fused mesh is empty: no rendered pixel reached the opacity threshold")
    write_mesh(out, mesh)
    info.update(faces=mesh.n_faces, vertices=mesh.n_vertices, watertight=is_watertight(mesh), boundary_edges=boundary_edges(mesh),
                coloured=mesh.colours is not None)  # fmt: skip
    return ExportResult(out, "capture", fmt, info)


# ---------------------------------------------------------------------------------- CT
@dataclass(frozen=True)
class CTRun:
    """What a complete CT run folder holds for export."""

    run: RunDir
    volume: np.ndarray  # [Z, Y, X] attenuation, 1/mm
    geometry: Any  # CTGeometry
    mu_water_per_mm: float
    metrics: dict
    status: dict

    def origin_mm(self) -> tuple[float, float, float]:
        """World position (z, y, x) of voxel 0's centre, as ``volume.nii.gz`` has it."""
        zc, yc, xc = self.geometry.voxel_centres_mm()
        return (float(zc[0]), float(yc[0]), float(xc[0]))


def load_ct_run(run_dir: Path) -> CTRun:
    """Read and check a complete CT run (volume.npy, geometry.json, metrics.json)."""
    from recon.geometry.ct import CTGeometry

    run = RunDir(run_dir)
    problems = run.problems()
    if problems:
        raise InputError(run_dir, f"not a complete CT run ({'; '.join(problems)})")
    path = run.path("volume.npy")
    try:
        volume = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # what numpy raises for bad .npy files
        raise InputError(path, f"not a readable .npy array ({type(err).__name__}: {err})") from None
    if volume.ndim != 3 or not np.issubdtype(volume.dtype, np.floating):
        raise InputError(path, f"expected a float [Z, Y, X] volume, got {volume.dtype} {list(volume.shape)}")
    if not np.all(np.isfinite(volume)):
        raise InputError(path, "holds NaN or infinite values")
    geo_path = run.path(GEOMETRY_FILE)
    data = read_json(geo_path)
    if not isinstance(data, dict):
        raise InputError(geo_path, "expected a JSON object")
    geometry = CTGeometry.from_dict(data, where=geo_path)
    if tuple(volume.shape) != tuple(geometry.n_voxel):
        raise InputError(path, f"volume is {list(volume.shape)} but {GEOMETRY_FILE} has a {list(geometry.n_voxel)} grid (z, y, x)")
    metrics = read_json(run.path("metrics.json"))
    mu = metrics.get("mu_water_per_mm") if isinstance(metrics, dict) else None
    if not isinstance(mu, (int, float)) or not mu > 0:
        raise InputError(run.path("metrics.json"), f"mu_water_per_mm is {mu!r} (expected the positive water value in 1/mm)")
    return CTRun(run, volume.astype(np.float32, copy=False), geometry, float(mu), metrics, run.status())


def _rescale_for(hu: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) that store ``hu`` in int16: (1, -1024) when it fits, else a slope
    spreading the range over the int16 values."""
    lo, hi = float(hu.min()), float(hu.max())
    if -32768 <= round(lo + 1024) and round(hi + 1024) <= 32767:
        return 1.0, -1024.0
    slope = float(f"{(hi - lo) / 65000.0:.3g}")
    return slope, float(round((hi + lo) / 2.0))


def _run_date(status: dict) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(str(status.get("created")), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def _export_ct(run: RunDir, fmt: str, out: Path, cfg: _ExportOptions) -> ExportResult:
    from recon.io.units import mu_to_hu

    ct = load_ct_run(run.root)
    geo = ct.geometry
    if fmt == "mesh":
        from recon.ct.mesh import iso_hu, iso_surface
        from recon.geometry.mesh import is_watertight, signed_volume
        from recon.io.mesh import write_mesh

        iso = iso_hu(cfg.iso)
        components = None if not cfg.components else cfg.components
        mesh = iso_surface(ct.volume, geo.voxel_mm, iso, mu_water_per_mm=ct.mu_water_per_mm, origin_mm=ct.origin_mm(),
                           smooth_iterations=cfg.smooth, target_faces=cfg.target_faces or None, components=components)  # fmt: skip
        write_mesh(out, mesh)
        closed = is_watertight(mesh)
        info = {"iso_hu": iso, "faces": mesh.n_faces, "vertices": mesh.n_vertices, "watertight": closed}
        if closed:
            info["volume_ml"] = round(signed_volume(mesh) / 1000.0, 3)
        return ExportResult(out, "ct", fmt, info)
    hu = mu_to_hu(ct.volume, ct.mu_water_per_mm)
    if fmt == "nifti":
        from recon.io.nifti import write_nifti

        write_nifti(out, hu, geo.voxel_mm, origin_mm=ct.origin_mm())
        return ExportResult(out, "ct", fmt, {"shape": list(hu.shape), "voxel_mm": list(geo.voxel_mm)})
    from pydicom.uid import generate_uid

    from recon.io.dicom import write_dicom_series

    method = str(ct.metrics.get("method", ct.status.get("method", "?")))
    views = int(ct.metrics.get("n_views", geo.n_views))
    slope, intercept = _rescale_for(hu)
    created = str(ct.status.get("created", ""))
    key = [str(run.root.resolve()), created]
    description = (f"sparse-recon '{method}' reconstruction from {views} {geo.mode}-beam views "
                   f"(run {run.root.name}, created {created or '?'}); HU = 1000 (mu / {ct.mu_water_per_mm:g} per mm - 1). "
                   "Scanner frame: z is the rotation axis; x, y, z are labelled RAS as in the run's volume.nii.gz "
                   "(the run folder holds no patient orientation).")  # fmt: skip
    write_dicom_series(
        out, hu, geo.voxel_mm, origin_mm=ct.origin_mm(), frame="RAS", rescale_slope=slope, rescale_intercept=intercept,
        series_description=f"recon {method} {views} views", description=description,
        study_uid=generate_uid(entropy_srcs=key + ["study"]), series_uid=generate_uid(entropy_srcs=key + ["series", "dicom"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=key + ["frame"]), date=_run_date(ct.status),
    )  # fmt: skip
    info = {"slices": int(hu.shape[0]), "rows": int(hu.shape[1]), "columns": int(hu.shape[2]), "voxel_mm": list(geo.voxel_mm),
            "rescale_slope": slope, "rescale_intercept": intercept, "hu_range": [round(float(hu.min()), 1), round(float(hu.max()), 1)]}  # fmt: skip
    return ExportResult(out, "ct", fmt, info)
