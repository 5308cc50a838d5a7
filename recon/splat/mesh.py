"""Meshes and point clouds from fitted Gaussians, for tools outside recon (Blender, printers).

:func:`splat_mesh` follows nerfstudio's ``ns-export tsdf``: render colour and expected depth
(``render_mode="RGB+ED"``) from the training cameras and from a ring of cameras around them
(:func:`recon.splat.camera_paths.orbit_path`), fuse them into a sparse TSDF, extract the coloured
triangle mesh (marching cubes) and clean it (:func:`recon.geometry.mesh.clean_mesh`: largest
components, quadric decimation; :func:`recon.geometry.mesh.fill_small_holes`: the pinholes
marching cubes leaves, a few voxels across). Pixels whose accumulated opacity is under ``alpha_min`` carry
no depth (background). The mesh is in the run's world frame and units.

Two Open3D TSDFs can fuse (``MeshConfig.tsdf``, chosen in one place: :func:`tsdf_backend`):
``scalable``, the legacy ``open3d.pipelines.integration.ScalableTSDFVolume`` (hashed 16³-voxel
units, uint8 colour), the default; and ``voxel-block-grid``, the tensor API's
``open3d.t.geometry.VoxelBlockGrid``. Open3D 0.20.0's ``ScalableTSDFVolume`` integrates nothing
(every extraction is empty; 0.19.0's works), so ``auto`` probes it once
(:func:`scalable_tsdf_works`) and falls back to ``voxel-block-grid`` with a warning there.

:func:`gaussian_points` gives the Gaussians' centres as a point cloud: colour from the SH DC
term, normal along each Gaussian's shortest axis (turned towards the nearest camera), faint
Gaussians and statistical outliers (:func:`recon.splat.points.statistical_outliers`, the
algorithm of Open3D's ``remove_statistical_outlier``) removed.

Open3D is imported when fusing (:func:`recon.geometry.mesh.require_open3d`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, quaternion_to_rotation
from recon.geometry.mesh import Mesh, clean_mesh, fill_small_holes, from_open3d, require_open3d
from recon.splat.camera_paths import orbit_path
from recon.splat.model import GaussianModel, sh_to_rgb
from recon.splat.points import statistical_outliers
from recon.splat.render import rasterize_views

logger = logging.getLogger(__name__)

__all__ = [
    "TSDF_BACKENDS",
    "MeshConfig",
    "fuse_tsdf",
    "gaussian_points",
    "render_rgbd",
    "scalable_tsdf_works",
    "scene_extent",
    "splat_mesh",
    "tsdf_backend",
]

StepFn = Callable[[int, int], None]
"""``progress(done, total)`` called after each rendered view."""

TSDF_BACKENDS = ("scalable", "voxel-block-grid")
"""The TSDFs :func:`fuse_tsdf` can fuse into; ``MeshConfig.tsdf`` also takes ``auto``."""

TsdfName = Literal["auto", "scalable", "voxel-block-grid"]

PIXEL_OFFSET = {"voxel-block-grid": 0.0, "scalable": -0.5}
"""Added to the principal point handed to each Open3D TSDF. recon's intrinsics put pixel
``(i, j)``'s centre at ``(i + 0.5, j + 0.5)`` (gsplat samples there). ``VoxelBlockGrid`` reads
the pixel a voxel projects into by truncation, the same convention, so no shift; the legacy
``ScalableTSDFVolume`` rounds to the nearest pixel (centres at integers), so half a pixel less."""


@dataclass(frozen=True)
class MeshConfig:
    """How :func:`splat_mesh` fuses and cleans a mesh."""

    resolution: int = 256
    """TSDF voxels across the longest side of the scene's extent (:func:`scene_extent`)."""
    sdf_trunc_voxels: float = 4.0
    """TSDF truncation distance, in voxels."""
    ring_views: int = 24
    """Extra views on a circle around the scene at the training cameras' mean height and
    distance (0: the training views only)."""
    alpha_min: float = 0.5
    """Pixels with a lower accumulated opacity carry no depth."""
    components: int | None = 1
    """Keep this many largest connected components (None: all)."""
    target_faces: int | None = 200_000
    """Decimate to at most this many faces (None: keep every face)."""
    fill_holes: int = 48
    """Close holes outlined by at most this many edges (about as many voxels around, some 15
    voxels across; 0: none), before decimation and after it while ``target_faces`` allows: the
    pinholes fusion leaves where voxels are smaller than the pixels' footprint. Openings the
    views never saw are far larger and stay open."""
    tsdf: TsdfName = "auto"
    """The TSDF fused into (:func:`tsdf_backend`): ``scalable`` (Open3D's legacy
    ``ScalableTSDFVolume``), ``voxel-block-grid`` (``VoxelBlockGrid``), or ``auto``: scalable
    where the installed Open3D integrates with it, else voxel-block-grid."""

    def validate(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"resolution: expected >= 8, given {self.resolution}")
        if not self.sdf_trunc_voxels > 0:
            raise ValueError(f"sdf_trunc_voxels: expected > 0, given {self.sdf_trunc_voxels}")
        if self.ring_views < 0:
            raise ValueError(f"ring_views: expected >= 0, given {self.ring_views}")
        if not 0.0 < self.alpha_min < 1.0:
            raise ValueError(f"alpha_min: expected a value in (0, 1), given {self.alpha_min}")
        if self.fill_holes and self.fill_holes < 3:
            raise ValueError(f"fill_holes: expected 0 or >= 3, given {self.fill_holes}")
        if self.tsdf not in ("auto", *TSDF_BACKENDS):
            raise ValueError(f"tsdf: expected auto, {' or '.join(TSDF_BACKENDS)}, given {self.tsdf!r}")


@functools.cache
def scalable_tsdf_works() -> bool:
    """Whether the installed Open3D's ``ScalableTSDFVolume`` extracts what it integrated: a
    plane 1 unit in front of a 16² camera, fused once (milliseconds). False on Open3D 0.20.0."""
    o3d = require_open3d()
    integration = o3d.pipelines.integration
    volume = integration.ScalableTSDFVolume(voxel_length=0.05, sdf_trunc=0.2, color_type=integration.TSDFVolumeColorType.NoColor)
    depth = o3d.geometry.Image(np.ones((16, 16), np.float32))
    colour = o3d.geometry.Image(np.zeros((16, 16, 3), np.uint8))
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(colour, depth, depth_scale=1.0, depth_trunc=10.0,
                                                              convert_rgb_to_intensity=False)  # fmt: skip
    volume.integrate(rgbd, o3d.camera.PinholeCameraIntrinsic(16, 16, 16.0, 16.0, 8.0, 8.0), np.eye(4))
    return len(volume.extract_triangle_mesh().triangles) > 0


def tsdf_backend(name: str = "auto") -> str:
    """The TSDF that fuses (one of :data:`TSDF_BACKENDS`) for the requested ``name``: ``auto``
    is ``scalable`` where :func:`scalable_tsdf_works`, else ``voxel-block-grid`` (logged);
    ``scalable`` on an Open3D whose ``ScalableTSDFVolume`` integrates nothing is an
    :class:`InputError` naming the fix."""
    if name not in ("auto", *TSDF_BACKENDS):
        raise ValueError(f"tsdf: expected auto, {' or '.join(TSDF_BACKENDS)}, given {name!r}")
    if name == "voxel-block-grid" or scalable_tsdf_works():
        return "voxel-block-grid" if name == "voxel-block-grid" else "scalable"
    version = require_open3d().__version__
    if name == "scalable":
        raise InputError("--tsdf", f"scalable: Open3D {version}'s ScalableTSDFVolume integrates nothing (its extractions "
                                   "are empty); install open3d<0.20 (pip install 'open3d<0.20') or use --tsdf voxel-block-grid")  # fmt: skip
    _warn_fallback(version)
    return "voxel-block-grid"


@functools.cache
def _warn_fallback(version: str) -> None:
    """Say once per process that ``auto`` fell back (an export resolves the TSDF more than once)."""
    logger.warning("Open3D %s's ScalableTSDFVolume integrates nothing; fusing into VoxelBlockGrid instead", version)


def scene_extent(model: GaussianModel, min_opacity: float = 0.5, quantile: float = 0.01) -> Tensor:
    """``[2, 3]`` box holding the centres of the Gaussians with opacity >= ``min_opacity``
    between the ``quantile`` and ``1 - quantile`` quantiles per axis (floaters left out)."""
    with torch.no_grad():
        means = model.params["means"].detach().float().cpu()
        opaque = torch.sigmoid(model.params["opacities"].detach().float().cpu()) >= min_opacity
        pts = means[opaque] if int(opaque.sum()) >= 10 else means
        if len(pts) == 0:
            raise ValueError("model: no Gaussians")
        return torch.quantile(pts, torch.tensor([quantile, 1.0 - quantile]), dim=0)


def _rgbd_views(model: GaussianModel, cameras: CameraSet, background: Tensor, alpha_min: float, sh_degree: int | None):
    """Yield ``(colour [H, W, 3], depth [H, W])`` of each camera (see :func:`render_rgbd`)."""
    k0 = cameras.intrinsics[0]
    if any((k.width, k.height) != (k0.width, k0.height) for k in cameras.intrinsics):
        raise ValueError("cameras: expected one image size for every camera")
    d = model.sh_degree if sh_degree is None else sh_degree
    with torch.no_grad():
        inputs = model.activated(d)
        Ks = cameras.Ks()
        for i in range(len(cameras)):
            out, alpha, _ = rasterize_views(inputs, cameras.w2c[i : i + 1], Ks[i : i + 1], k0.width, k0.height, d, background, "RGB+ED")
            depth = torch.where(alpha[0, ..., 0] >= alpha_min, out[0, ..., 3], torch.zeros(()))
            yield out[0, ..., :3].clamp(0, 1).cpu(), depth.clamp(min=0).cpu()


def render_rgbd(
    model: GaussianModel,
    cameras: CameraSet,
    background: Tensor,  # [3]
    *,
    alpha_min: float = 0.5,
    sh_degree: int | None = None,
) -> tuple[Tensor, Tensor]:  # [V, H, W, 3], [V, H, W]
    """Colour ``[V, H, W, 3]`` in [0, 1] and expected depth ``[V, H, W]`` (camera z; 0 where the
    accumulated opacity is under ``alpha_min``) of every camera, one at a time, on the CPU.
    Every camera must have the first one's size."""
    rgbs, depths = zip(*_rgbd_views(model, cameras, background, alpha_min, sh_degree), strict=True)
    return torch.stack(rgbs), torch.stack(depths)


def fuse_tsdf(
    model: GaussianModel,
    cameras: CameraSet,
    background: Tensor,  # [3]
    voxel_size: float,
    *,
    sdf_trunc_voxels: float = 4.0,
    alpha_min: float = 0.5,
    depth_max: float = 1e6,
    tsdf: str = "auto",
    pixel_offset: float | None = None,
    progress: StepFn | None = None,
) -> Mesh:
    """Fuse the RGB-D renders of ``cameras`` into a sparse TSDF (voxel ``voxel_size`` in world
    units, truncation ``sdf_trunc_voxels`` voxels; ``tsdf`` names the Open3D TSDF, resolved by
    :func:`tsdf_backend`) and extract its coloured triangle mesh (marching cubes over voxels seen
    by at least one view), uncleaned. Depth beyond ``depth_max`` is ignored. ``pixel_offset`` is
    added to the principal point handed to Open3D (default :data:`PIXEL_OFFSET` of the TSDF)."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size: expected > 0, given {voxel_size}")
    backend = tsdf_backend(tsdf)
    offset = PIXEL_OFFSET[backend] if pixel_offset is None else float(pixel_offset)
    views = _rgbd_views(model, cameras, background, alpha_min, None)
    fuse = _fuse_scalable if backend == "scalable" else _fuse_voxel_block_grid
    return fuse(views, cameras, float(voxel_size), float(sdf_trunc_voxels), float(depth_max), offset, progress)


RGBDViews = Iterator[tuple[Tensor, Tensor]]


def _fuse_scalable(views: RGBDViews, cameras: CameraSet, voxel: float, trunc_voxels: float, depth_max: float, offset: float,
                   progress: StepFn | None) -> Mesh:  # fmt: skip
    """:func:`fuse_tsdf` into Open3D's legacy ``ScalableTSDFVolume`` (uint8 colour)."""
    o3d = require_open3d()
    integration = o3d.pipelines.integration
    volume = integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=trunc_voxels * voxel,
                                            color_type=integration.TSDFVolumeColorType.RGB8)  # fmt: skip
    w2c = cameras.w2c.double().cpu().numpy()
    for i, (rgb, depth) in enumerate(views):
        k = cameras.intrinsics[i]
        if bool((depth > 0).any()):
            colour = o3d.geometry.Image(np.ascontiguousarray((rgb.numpy() * 255.0 + 0.5).astype(np.uint8)))
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                colour, o3d.geometry.Image(np.ascontiguousarray(depth.numpy(), dtype=np.float32)), depth_scale=1.0,
                depth_trunc=depth_max, convert_rgb_to_intensity=False)  # fmt: skip
            intrinsic = o3d.camera.PinholeCameraIntrinsic(k.width, k.height, k.fx, k.fy, k.cx + offset, k.cy + offset)
            volume.integrate(rgbd, intrinsic, np.ascontiguousarray(w2c[i]))
        if progress is not None:
            progress(i + 1, len(cameras))
    return from_open3d(volume.extract_triangle_mesh())


def _fuse_voxel_block_grid(views: RGBDViews, cameras: CameraSet, voxel: float, trunc_voxels: float, depth_max: float,
                           offset: float, progress: StepFn | None) -> Mesh:  # fmt: skip
    """:func:`fuse_tsdf` into Open3D's tensor ``VoxelBlockGrid`` (8³-voxel blocks, float colour)."""
    o3d = require_open3d()
    o3c = o3d.core
    cpu = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)), voxel_size=voxel, block_resolution=8, block_count=4000, device=cpu,
    )  # fmt: skip
    w2c = cameras.w2c.double().cpu().numpy()
    for i, (rgb, depth) in enumerate(views):
        k = cameras.intrinsics[i]
        K = o3c.Tensor(np.array([[k.fx, 0.0, k.cx + offset], [0.0, k.fy, k.cy + offset], [0.0, 0.0, 1.0]]))
        extrinsic = o3c.Tensor(np.ascontiguousarray(w2c[i]))
        d = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth.numpy(), dtype=np.float32)))
        c = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb.numpy(), dtype=np.float32)))
        if bool((depth > 0).any()):
            blocks = grid.compute_unique_block_coordinates(d, K, extrinsic, 1.0, depth_max, trunc_voxels)
            grid.integrate(blocks, d, c, K, extrinsic, 1.0, depth_max, trunc_voxels)
        if progress is not None:
            progress(i + 1, len(cameras))
    if grid.hashmap().size() == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    return from_open3d(grid.extract_triangle_mesh(weight_threshold=0.5).to_legacy())


def splat_mesh(
    model: GaussianModel,
    cameras: CameraSet,
    background: Tensor,  # [3]
    config: MeshConfig | None = None,
    *,
    progress: StepFn | None = None,
) -> tuple[Mesh, dict]:
    """The cleaned TSDF mesh of ``model`` seen from ``cameras`` (the training cameras) and
    ``config.ring_views`` cameras around them, and a dict of what was done (the TSDF, voxel size,
    views, faces before cleaning, holes filled)."""
    cfg = config or MeshConfig()
    cfg.validate()
    box = scene_extent(model)
    voxel = float((box[1] - box[0]).max()) / cfg.resolution
    if not voxel > 0:
        raise ValueError("model: the Gaussians' extent is empty (every centre at one point)")
    views = cameras
    if cfg.ring_views:
        ring = orbit_path(cameras, cfg.ring_views)
        views = CameraSet(torch.cat([cameras.w2c, ring.w2c]), list(cameras.intrinsics) + ring.intrinsics)
    backend = tsdf_backend(cfg.tsdf)
    raw = fuse_tsdf(model, views, background, voxel, sdf_trunc_voxels=cfg.sdf_trunc_voxels, alpha_min=cfg.alpha_min, tsdf=backend,
                    progress=progress)  # fmt: skip
    info = {"tsdf": backend, "voxel_size": voxel, "views": len(views), "ring_views": cfg.ring_views, "raw_faces": raw.n_faces}
    if raw.n_faces == 0:
        return raw, {**info, "holes_filled": 0}
    mesh = clean_mesh(raw, components=cfg.components)
    mesh, holes = fill_small_holes(mesh, cfg.fill_holes) if cfg.fill_holes else (mesh, 0)
    if cfg.target_faces is not None and mesh.n_faces > cfg.target_faces:
        mesh = clean_mesh(mesh, components=None, target_faces=cfg.target_faces)
        if cfg.fill_holes:  # quadric decimation can open a few edges; closed while the face budget allows
            filled, more = fill_small_holes(mesh, cfg.fill_holes)
            if filled.n_faces <= cfg.target_faces:
                mesh, holes = filled, holes + more
    info["holes_filled"] = holes
    logger.info("TSDF mesh: %d faces from %d views (voxel %.4g), %d after cleaning, %d holes filled", raw.n_faces, len(views), voxel,
                mesh.n_faces, holes)  # fmt: skip
    return mesh, info


@torch.no_grad()
def gaussian_points(
    model: GaussianModel,
    cameras: CameraSet | None = None,
    *,
    min_opacity: float = 0.1,
    outlier_k: int = 16,
    outlier_std: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [P, 3], [P, 3], [P, 3]
    """Centres, colours in [0, 1] and unit normals of the Gaussians with opacity >=
    ``min_opacity`` that are not statistical outliers (``outlier_k`` neighbours,
    ``outlier_std`` standard deviations; ``outlier_std <= 0`` keeps them all). Normals run along
    each Gaussian's shortest axis, turned towards the nearest camera of ``cameras`` (when given)."""
    p = {k: v.detach().float().cpu() for k, v in model.params.items()}
    keep = torch.sigmoid(p["opacities"]) >= min_opacity
    means = p["means"][keep]
    if outlier_std > 0 and len(means) > outlier_k:
        inliers = ~statistical_outliers(means, outlier_k, outlier_std)
        idx = torch.nonzero(keep)[:, 0][inliers]
        keep = torch.zeros_like(keep)
        keep[idx] = True
        means = p["means"][keep]
    colours = sh_to_rgb(p["sh0"][keep, 0]).clamp(0, 1)
    rot = quaternion_to_rotation(p["quats"][keep])  # [P, 3, 3], columns: the Gaussian's axes
    shortest = p["scales"][keep].argmin(dim=-1)
    normals = torch.gather(rot, 2, shortest[:, None, None].expand(-1, 3, 1))[..., 0]
    if cameras is not None and len(cameras) and len(means):
        centres = cameras.centres().float()
        nearest = centres[torch.cdist(means, centres).argmin(dim=1)]
        flip = ((nearest - means) * normals).sum(-1) < 0
        normals = torch.where(flip[:, None], -normals, normals)
    return means.numpy(), colours.numpy(), normals.numpy()
