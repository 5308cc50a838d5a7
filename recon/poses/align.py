"""Aligning estimated cameras to reference ones (Sim(3), Umeyama) and measuring pose errors."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from recon.checks import check_shape
from recon.geometry.cameras import camera_centres

__all__ = ["align_sim3", "pose_errors", "rotation_errors_without_centres", "sim3_transform_w2c"]


def _check_points(name: str, x: Tensor) -> None:
    check_shape(name, x, (None, 3), floating=True)


def align_sim3(
    src_centres: Tensor,  # [N, 3]
    dst_centres: Tensor,  # [N, 3]
) -> tuple[float, Tensor, Tensor]:
    """Similarity ``dst ~ s * R @ src + t`` by least squares (Umeyama 1991), no reflection.

    Args:
        src_centres: Tensor [N, 3], e.g. estimated camera centres.
        dst_centres: Tensor [N, 3], the matching reference centres.

    Returns:
        ``(s, R, t)``: scale (float), rotation Tensor [3, 3] and translation Tensor [3], in
        float64 on the CPU.

    Raises:
        ValueError: shapes differ or are not [N, 3]; N < 3; non-finite values; the points are
            (nearly) collinear or coincident, so the rotation is not determined.
    """
    _check_points("src_centres", src_centres)
    _check_points("dst_centres", dst_centres)
    if src_centres.shape != dst_centres.shape:
        raise ValueError(
            f"src_centres {tuple(src_centres.shape)} and dst_centres "
            f"{tuple(dst_centres.shape)} must have the same shape"
        )
    n = src_centres.shape[0]
    if n < 3:
        raise ValueError(f"align_sim3 needs at least 3 point pairs, got {n}")
    src = src_centres.detach().cpu().double()
    dst = dst_centres.detach().cpu().double()
    if not (torch.isfinite(src).all() and torch.isfinite(dst).all()):
        raise ValueError("align_sim3: centres contain NaN or infinite values")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs * xs).sum() / n
    cov = xd.T @ xs / n  # [3, 3]
    u, sig, vt = torch.linalg.svd(cov)
    if var_s <= 0 or sig[1] <= 1e-9 * max(float(sig[0]), 1e-300):
        raise ValueError(
            "align_sim3: the points are collinear or coincident, so the rotation is not determined"
        )
    d = torch.ones(3, dtype=torch.float64)
    if torch.linalg.det(u) * torch.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ torch.diag(d) @ vt
    s = float((sig * d).sum() / var_s)
    t = mu_d - s * rot @ mu_s
    return s, rot, t


def _check_w2c_batch(name: str, w2c: Tensor) -> None:
    check_shape(name, w2c, (None, 4, 4))


def pose_errors(
    est_w2c: Tensor,  # [N, 4, 4]
    ref_w2c: Tensor,  # [N, 4, 4]
    sim3: tuple[float, Tensor, Tensor],
) -> dict[str, Any]:
    """Rotation and centre errors of estimated cameras after mapping them by ``sim3``.

    The similarity ``(s, R, t)`` (from :func:`align_sim3` on the centres) maps estimated world
    points to the reference world: a camera's centre goes to ``s R c + t`` and its
    camera-to-world rotation to ``R R_c2w``. Rotation error is the angle of
    ``R_ref_c2w^T R R_est_c2w``; centre error is the distance between aligned and reference
    centres divided by the scene scale, the mean distance of the reference centres from their
    centroid.

    Args:
        est_w2c: Tensor [N, 4, 4], estimated OpenCV world-to-camera.
        ref_w2c: Tensor [N, 4, 4], reference world-to-camera, same views in the same order.
        sim3: ``(s, R [3, 3], t [3])``.

    Returns:
        ``rot_deg`` and ``centre_err`` (per-view lists of floats), ``rot_deg_mean``,
        ``rot_deg_max``, ``centre_err_mean``, ``centre_err_max`` (fractions of scene scale) and
        ``scene_scale`` (reference units).
    """
    _check_w2c_batch("est_w2c", est_w2c)
    _check_w2c_batch("ref_w2c", ref_w2c)
    if est_w2c.shape != ref_w2c.shape:
        raise ValueError(
            f"est_w2c {tuple(est_w2c.shape)} and ref_w2c {tuple(ref_w2c.shape)} differ in shape"
        )
    s, rot, t = _sim3_parts(sim3)
    est = est_w2c.detach().cpu().double()
    ref = ref_w2c.detach().cpu().double()
    est_rc2w = est[:, :3, :3].transpose(1, 2)
    ref_rc2w = ref[:, :3, :3].transpose(1, 2)
    rel = ref_rc2w.transpose(1, 2) @ rot @ est_rc2w  # [N, 3, 3]
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    rot_deg = torch.rad2deg(torch.arccos(cos))
    c_est = float(s) * camera_centres(est) @ rot.T + t
    c_ref = camera_centres(ref)
    scale = float((c_ref - c_ref.mean(0)).norm(dim=-1).mean())
    if not scale > 0:
        scale = 1.0
    centre_err = (c_est - c_ref).norm(dim=-1) / scale
    return {
        "rot_deg": rot_deg.tolist(),
        "rot_deg_mean": float(rot_deg.mean()),
        "rot_deg_max": float(rot_deg.max()),
        "centre_err": centre_err.tolist(),
        "centre_err_mean": float(centre_err.mean()),
        "centre_err_max": float(centre_err.max()),
        "scene_scale": scale,
    }


def rotation_errors_without_centres(
    est_w2c: Tensor,  # [N, 4, 4]
    ref_w2c: Tensor,  # [N, 4, 4]
) -> dict[str, list[float]]:
    """Rotation errors that do not depend on the camera centres.

    :func:`pose_errors` after :func:`align_sim3` takes the frame's rotation from the centres, so
    with 3-4 cameras an error of the centres shows up as a common rotation error of every
    view. These two measures leave the centres out:

    * ``rot_deg``: per view, the angle left after the single rotation ``Q`` that best maps the
      estimated camera-to-world rotations onto the reference ones (chordal least squares:
      ``Q = polar(sum R_ref R_est^T)``);
    * ``pair_deg``: per pair ``(i < j)``, the angle between the estimated and the reference
      relative rotation ``R_j R_i^T`` (no alignment at all).

    Args:
        est_w2c: Tensor [N, 4, 4], estimated world-to-camera.
        ref_w2c: Tensor [N, 4, 4], reference world-to-camera of the same views, N >= 2.

    Returns:
        ``{"rot_deg": [N floats], "pair_deg": [N (N - 1) / 2 floats]}``.
    """
    _check_w2c_batch("est_w2c", est_w2c)
    _check_w2c_batch("ref_w2c", ref_w2c)
    if est_w2c.shape != ref_w2c.shape or est_w2c.shape[0] < 2:
        raise ValueError(f"est_w2c {tuple(est_w2c.shape)} and ref_w2c {tuple(ref_w2c.shape)} must match, N >= 2")
    est = est_w2c.detach().cpu().double()[:, :3, :3]
    ref = ref_w2c.detach().cpu().double()[:, :3, :3]
    m = (ref.transpose(1, 2) @ est).sum(0)  # sum R_ref_c2w R_est_c2w^T
    u, _, vt = torch.linalg.svd(m)
    d = torch.ones(3, dtype=torch.float64)
    d[2] = torch.sign(torch.linalg.det(u @ vt))
    q = u @ torch.diag(d) @ vt
    rel = ref @ q @ est.transpose(1, 2)  # R_ref_w2c Q R_est_c2w
    n = est.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pr = torch.stack([(ref[j] @ ref[i].T).T @ (est[j] @ est[i].T) for i, j in pairs])

    def angle(r: Tensor) -> Tensor:
        return torch.rad2deg(torch.arccos(((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)))

    return {"rot_deg": angle(rel).tolist(), "pair_deg": angle(pr).tolist()}


def sim3_transform_w2c(
    w2c: Tensor,  # [N, 4, 4]
    sim3: tuple[float, Tensor, Tensor],
) -> Tensor:  # [N, 4, 4]
    """Cameras moved by the similarity that maps world points ``x -> s R x + t``.

    A camera's centre ``c`` goes to ``s R c + t`` and its camera-to-world rotation ``R_c2w``
    to ``R R_c2w``, so the image it sees of the mapped scene is unchanged (this is how cameras
    given in one world frame are put into another, e.g. with ``align_sim3(src, dst)`` from the
    centres of views both frames share).

    Args:
        w2c: Tensor [N, 4, 4], OpenCV world-to-camera in the source frame.
        sim3: ``(s, R [3, 3], t [3])`` from source to destination world, ``s > 0``.

    Returns:
        Tensor [N, 4, 4], world-to-camera in the destination frame, dtype and device of ``w2c``.

    Raises:
        ValueError: ``w2c`` not [N, 4, 4]; ``R`` / ``t`` of the wrong shape; ``s`` not positive
            and finite.
    """
    _check_w2c_batch("w2c", w2c)
    s, rot, t = _sim3_parts(sim3)
    if not (math.isfinite(float(s)) and float(s) > 0):
        raise ValueError(f"sim3 scale must be positive and finite, got {s!r}")
    src = w2c.detach().cpu().double()
    rot_w2c = src[:, :3, :3] @ rot.T  # [N, 3, 3]: (R R_c2w)^T
    centres = float(s) * camera_centres(src) @ rot.T + t  # [N, 3]
    out = torch.zeros_like(src)
    out[:, :3, :3] = rot_w2c
    out[:, :3, 3] = -(rot_w2c @ centres[..., None])[..., 0]
    out[:, 3, 3] = 1.0
    return out.to(dtype=w2c.dtype, device=w2c.device)


def _sim3_parts(sim3) -> tuple[float, Tensor, Tensor]:
    """``(s, R, t)`` with R [3, 3] and t [3] as float64 tensors; ValueError naming the shapes."""
    s, rot, t = sim3
    rot = torch.as_tensor(rot, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64)
    if rot.shape != (3, 3) or t.shape != (3,):
        raise ValueError(
            f"sim3 must be (s, R [3, 3], t [3]), got R {tuple(rot.shape)}, t {tuple(t.shape)}"
        )
    return s, rot, t
