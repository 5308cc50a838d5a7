"""Camera conversions between nerfstudio ``Cameras`` and recon's convention, at the boundary.

nerfstudio keeps OpenGL camera-to-world matrices ``[N, 3, 4]`` (camera looks down -z, y up) in its
normalised world frame; recon uses OpenCV world-to-camera ``[N, 4, 4]``. Both frames are the same
world: only the camera axes and the direction of the transform differ.

CT (``recon-ct``): recon expresses cone-beam views as pinhole cameras in world mm
(:class:`recon.ct.gaussians.XrayCameras`: source = camera centre, detector = image plane). The
nerfstudio world of ``recon-ct-data`` is that world scaled by ``world_scale`` (units per mm, the
parse's ``dataparser_scale``), axes unchanged; intrinsics are detector pixels in both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.geometry.cameras import CameraSet, Intrinsics, opengl_c2w_to_w2c, w2c_to_opengl_c2w
from recon.ct.gaussians import XrayCameras

__all__ = ["viewmats_from_c2w", "camera_set_from_nerfstudio", "cameras_from_xray", "xray_cameras_from_nerfstudio"]


def viewmats_from_c2w(c2w: Tensor) -> Tensor:  # c2w: [C, 3, 4] (or [C, 4, 4])
    """nerfstudio OpenGL camera-to-world ``[C, 3, 4]`` -> OpenCV world-to-camera ``[C, 4, 4]``.

    Differentiable, same dtype and device as ``c2w``.
    """
    if not isinstance(c2w, Tensor) or c2w.ndim != 3 or c2w.shape[1:] not in ((3, 4), (4, 4)):
        given = tuple(c2w.shape) if isinstance(c2w, Tensor) else type(c2w).__name__
        raise ValueError(f"c2w: expected a tensor [C, 3, 4] or [C, 4, 4], given {given}")
    if c2w.shape[1] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)
        c2w = torch.cat([c2w, bottom.expand(c2w.shape[0], 1, 4)], dim=1)
    return opengl_c2w_to_w2c(c2w)


def camera_set_from_nerfstudio(cameras) -> CameraSet:  # cameras: nerfstudio Cameras [N]
    """nerfstudio pinhole ``Cameras`` (one batch dimension) -> :class:`recon.geometry.cameras.CameraSet`.

    Intrinsics are taken as stored (after any ``rescale_output_resolution``); OpenCV distortion
    ``k1, k2, k3, p1, p2`` is carried over. Raises ``ValueError`` for other camera models or a
    non-zero ``k4`` (which recon's model does not have).
    """
    from nerfstudio.cameras.cameras import CameraType

    if len(cameras.shape) != 1:
        raise ValueError(f"cameras: expected one batch dimension [N], given shape {tuple(cameras.shape)}")
    n = cameras.shape[0]
    types = cameras.camera_type.reshape(-1).tolist()
    if any(t != CameraType.PERSPECTIVE.value for t in types):
        raise ValueError(f"cameras: only perspective (pinhole) cameras are supported, given types {sorted(set(types))}")
    dist = cameras.distortion_params
    if dist is not None and bool((dist[..., 3] != 0).any()):
        raise ValueError("cameras: distortion k4 is not supported (expected OpenCV k1, k2, k3, p1, p2)")
    intrinsics = []
    for i in range(n):
        d = [0.0] * 6 if dist is None else [float(v) for v in dist[i]]
        intrinsics.append(
            Intrinsics(
                fx=float(cameras.fx[i]), fy=float(cameras.fy[i]), cx=float(cameras.cx[i]), cy=float(cameras.cy[i]),
                width=int(cameras.width[i]), height=int(cameras.height[i]),
                k1=d[0], k2=d[1], k3=d[2], p1=d[4], p2=d[5],
            )  # fmt: skip
        )
    return CameraSet(viewmats_from_c2w(cameras.camera_to_worlds.detach().cpu().float()), intrinsics)


def cameras_from_xray(cameras: XrayCameras, world_scale: float):  # -> nerfstudio Cameras [C]
    """recon X-ray pinholes (OpenCV world-to-camera, mm) -> nerfstudio ``Cameras`` [C].

    Camera-to-world matrices are OpenGL, translations multiplied by ``world_scale`` (units per
    mm); ``fx, fy, cx, cy`` are copied (pixel centres at +0.5 in both conventions).
    """
    from nerfstudio.cameras.cameras import Cameras, CameraType

    if not isinstance(cameras, XrayCameras):
        raise ValueError(f"cameras: expected recon XrayCameras, given {type(cameras).__name__}")
    if not world_scale > 0:
        raise ValueError(f"world_scale: expected > 0, given {world_scale}")
    c2w = w2c_to_opengl_c2w(cameras.viewmats.double())  # [C, 4, 4] mm
    c2w[:, :3, 3] *= float(world_scale)
    Ks = cameras.Ks.double()  # [C, 3, 3]
    return Cameras(
        camera_to_worlds=c2w[:, :3, :].float(),
        fx=Ks[:, 0, 0:1].float(), fy=Ks[:, 1, 1:2].float(), cx=Ks[:, 0, 2:3].float(), cy=Ks[:, 1, 2:3].float(),
        width=int(cameras.width), height=int(cameras.height), camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip


def xray_cameras_from_nerfstudio(cameras, world_scale: float) -> XrayCameras:  # cameras: nerfstudio Cameras [C]
    """nerfstudio ``Cameras`` [C] (one image size) -> recon X-ray pinholes in world mm.

    The inverse of :func:`cameras_from_xray`; differentiable in the poses, on their device.
    ``views`` are the cameras' ``cam_idx`` (nerfstudio's metadata) when given, else 0..C-1.
    """
    if len(cameras.shape) != 1:
        raise ValueError(f"cameras: expected one batch dimension [C], given shape {tuple(cameras.shape)}")
    if not world_scale > 0:
        raise ValueError(f"world_scale: expected > 0, given {world_scale}")
    sizes = {(int(w), int(h)) for w, h in zip(cameras.width.reshape(-1), cameras.height.reshape(-1))}
    if len(sizes) != 1:
        raise ValueError(f"cameras: expected one image size, given {sorted(sizes)}")
    (width, height), n = sizes.pop(), cameras.shape[0]
    c2w = cameras.camera_to_worlds.float()  # [C, 3, 4]
    c2w_mm = torch.cat([c2w[:, :, :3], c2w[:, :, 3:] / float(world_scale)], dim=-1)
    idx = (cameras.metadata or {}).get("cam_idx")
    views = tuple(range(n)) if idx is None or n != 1 else (int(idx),)
    Ks = cameras.get_intrinsics_matrices().float()  # [C, 3, 3]
    return XrayCameras(viewmats_from_c2w(c2w_mm), Ks, c2w_mm[:, :, 3], width, height, views)
