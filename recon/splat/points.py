"""Point sets for initial Gaussians: where the cameras look, photo-consistent samples, outliers.

``photo_consistent_points`` samples candidate points in the region the training cameras look
at, keeps those seen by several views and ranks them by how well their colours agree across
those views (a cheap, soft space-carving). It needs only poses and images, so it works on
3-8 views where SfM often fails.

``statistical_outliers`` flags floaters (points far from their k nearest neighbours) in any set
of initial points or Gaussian centres. Visual-hull initialisation from masks lives in
:mod:`recon.splat.hull`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet

logger = logging.getLogger(__name__)


def look_at_centre(w2c: Tensor) -> Tensor:
    """Least-squares point closest to all optical axes.

    Args:
        w2c: ``[N, 4, 4]`` OpenCV world-to-camera matrices.

    Returns:
        ``[3]`` point; falls back to the mean camera centre when the axes are parallel.
    """
    c2w = torch.linalg.inv(w2c.double())
    origins = c2w[:, :3, 3]
    dirs = c2w[:, :3, 2]  # OpenCV: +z looks forward
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - dirs[:, :, None] * dirs[:, None, :]  # [N,3,3]
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if torch.linalg.matrix_rank(a) < 3:
        return origins.mean(0).float()
    return torch.linalg.solve(a, b).float()


def scene_bounds(cameras: CameraSet, margin: float = 1.0) -> Tensor:
    """Axis-aligned box ``[2, 3]`` around the look-at centre, sized by the camera distances."""
    centre = look_at_centre(cameras.w2c)
    dist = (cameras.centres() - centre).norm(dim=-1)
    half = float(dist.median()) * 0.5 * margin
    return torch.stack([centre - half, centre + half])


def sample_colours(points: Tensor, images: Tensor, w2c: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Colours of ``points [P,3]`` in each view and whether the view sees them.

    Returns:
        ``colours [V, P, 3]`` and ``visible [V, P]`` (in front of the camera and inside the image).
    """
    _, h, w, _ = images.shape
    cam = points[None] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [V,P,3]
    z = cam[..., 2]
    uv = (cam @ Ks.transpose(1, 2))[..., :2] / z.clamp_min(1e-6)[..., None]
    visible = (z > 1e-3) & (uv[..., 0] >= 0) & (uv[..., 0] <= w - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= h - 1)
    grid = torch.stack([uv[..., 0] / (w - 1) * 2 - 1, uv[..., 1] / (h - 1) * 2 - 1], dim=-1)  # [V,P,2]
    sampled = torch.nn.functional.grid_sample(
        images.permute(0, 3, 1, 2), grid[:, :, None], mode="bilinear", align_corners=True
    )  # [V,3,P,1]
    return sampled[..., 0].permute(0, 2, 1), visible


@torch.no_grad()
def photo_consistent_points(
    cameras: CameraSet,
    images: Tensor,  # [V, H, W, 3]
    n_points: int,
    bounds: Tensor | None = None,  # [2, 3]
    oversample: int = 4,
    min_views: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``n_points`` initial centres with colours from posed images.

    Args:
        cameras: the training cameras at the images' resolution.
        images: ``[V, H, W, 3]`` training images in [0, 1].
        n_points: number of points returned.
        bounds: ``[2, 3]`` box to sample in; default :func:`scene_bounds`.
        oversample: candidates drawn per returned point.
        min_views: a candidate must project inside at least this many views (capped at V).

    Returns:
        ``points [n_points, 3]`` and ``colours [n_points, 3]`` in [0, 1].
    """
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images for {len(cameras)} cameras")
    bounds = scene_bounds(cameras) if bounds is None else bounds
    w2c = cameras.w2c.float()
    Ks = cameras.Ks().float()
    n_cand = n_points * oversample
    cand = bounds[0] + torch.rand(n_cand, 3, generator=generator) * (bounds[1] - bounds[0])
    chunks_pts, chunks_score, chunks_col = [], [], []
    for part in cand.split(65536):
        colours, visible = sample_colours(part, images.float(), w2c, Ks)
        n_vis = visible.sum(0)
        weight = visible.float()[..., None]
        mean = (colours * weight).sum(0) / n_vis.clamp_min(1)[:, None]
        var = (((colours - mean) ** 2) * weight).sum(0).sum(-1) / n_vis.clamp_min(1)
        score = torch.where(n_vis >= min(min_views, len(cameras)), var, torch.full_like(var, float("inf")))
        chunks_pts.append(part)
        chunks_score.append(score)
        chunks_col.append(mean)
    pts, score, col = torch.cat(chunks_pts), torch.cat(chunks_score), torch.cat(chunks_col)
    order = torch.argsort(score)[:n_points]
    n_seen = int(torch.isfinite(score).sum())
    if n_seen < n_points:
        logger.warning("only %d of %d candidate points are seen by %d views", n_seen, n_cand, min_views)
    return pts[order], col[order].clamp(0, 1)


def statistical_outliers(
    points: Tensor,  # [N, 3]
    k: int = 16,
    std_ratio: float = 3.0,
) -> Tensor:  # [N] bool
    """Floaters: points whose mean distance to their ``k`` nearest neighbours is unusually large.

    Statistical outlier removal (Rusu et al., "Towards 3D point cloud based object maps for
    household environments", RAS 2008; Open3D's ``remove_statistical_outlier``): with ``d_i``
    the mean distance of point ``i`` to its ``k`` nearest other points, point ``i`` is an
    outlier when ``d_i > mean(d) + std_ratio * std(d)``. Used on initial points and, during
    training, on the Gaussians' centres (floaters far from everything else).

    Args:
        points: [N, 3] positions.
        k: neighbours per point (capped at N - 1).
        std_ratio: how many standard deviations above the mean distance is too far.

    Returns:
        bool tensor [N] on the points' device, True for outliers (all False when N <= 2).
    """
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [N, 3], given {getattr(points, 'shape', points)}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, given {k}")
    if not std_ratio >= 0:
        raise ValueError(f"std_ratio: expected >= 0, given {std_ratio}")
    n = points.shape[0]
    if n <= 2:
        return torch.zeros(n, dtype=torch.bool, device=points.device)
    import numpy as np
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # column 0 is the point itself
    mean_d = dist[:, 1:].mean(axis=1)
    limit = mean_d.mean() + std_ratio * mean_d.std()
    return torch.from_numpy(np.asarray(mean_d > limit)).to(points.device)
