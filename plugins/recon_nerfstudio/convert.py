"""Camera conversions between nerfstudio ``Cameras`` and recon's convention, at the boundary.

nerfstudio keeps OpenGL camera-to-world matrices ``[N, 3, 4]`` (camera looks down -z, y up) in its
normalised world frame; recon uses OpenCV world-to-camera ``[N, 4, 4]``. Both frames are the same
world: only the camera axes and the direction of the transform differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import CameraSet, Intrinsics, opengl_c2w_to_w2c

__all__ = ["viewmats_from_c2w", "camera_set_from_nerfstudio"]


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
    """nerfstudio pinhole ``Cameras`` (one batch dimension) -> :class:`recon.cameras.CameraSet`.

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
