"""A textured square on the plane z = 0 seen by pinhole cameras: images with an exact geometry,
shared by the triangulation and plane-sweep tests."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from recon.geometry.cameras import CameraSet, Intrinsics

W, H, F = 320, 240, 300.0


def w2c_looking_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``[4, 4]`` of a camera at ``centre`` looking at ``target``."""
    fwd = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(fwd, [0.0, -1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, -rot @ centre
    return m


def calibration() -> np.ndarray:
    return np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])


def cameras_at(centres: list[list[float]]) -> CameraSet:
    """Cameras at ``centres`` looking at the origin, ``W x H`` pixels, focal ``F``."""
    w2c = torch.tensor(np.stack([w2c_looking_at(np.array(c, float), np.zeros(3)) for c in centres]))
    intr = [Intrinsics(fx=F, fy=F, cx=W / 2, cy=H / 2, width=W, height=H) for _ in centres]
    return CameraSet(w2c, intr)


def random_texture(seed: int, size: int = 400) -> np.ndarray:
    """Blurred RGB noise ``[size, size, 3]`` uint8 (well textured for matching)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 1.5)


def render_plane(cameras: CameraSet, texture: np.ndarray, half: float) -> torch.Tensor:
    """Views ``[V, H, W, 3]`` in [0, 1] of the textured square z = 0, |x|, |y| <= half (black outside)."""
    th, tw = texture.shape[:2]
    tex_to_plane = np.array([[2 * half / tw, 0, -half], [0, 2 * half / th, -half], [0, 0, 1.0]])
    views = []
    for m in cameras.w2c.double().numpy():
        P = calibration() @ m[:3]
        Hmat = P[:, [0, 1, 3]] @ tex_to_plane  # texture pixel -> image pixel
        views.append(cv2.warpPerspective(texture, Hmat, (W, H), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)))
    return torch.from_numpy(np.stack(views).astype(np.float32) / 255.0)
