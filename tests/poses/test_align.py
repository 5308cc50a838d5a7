"""Tests for recon.poses.align.sim3_transform_w2c (align_sim3 / pose_errors: tests/poses/test_colmap.py)."""

from __future__ import annotations

import pytest
import torch

from recon.geometry.cameras import camera_centres
from recon.poses.align import align_sim3, pose_errors, sim3_transform_w2c
from recon.poses.refine import exp_so3, perturb_poses

IDENTITY = (1.0, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def _cameras(n: int = 6) -> torch.Tensor:
    """``n`` cameras on a ring around the origin, looking roughly inward."""
    ref = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    ref[:, :3, 3] = torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    return perturb_poses(ref, rot_deg=40.0, trans_frac=0.3, seed=3)


SIM3 = (2.5, exp_so3(torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)), torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64))


def test_sim3_transform_w2c_known_answer():
    """A world point seen by a camera projects to the same image point after both move."""
    w2c = _cameras()
    s, rot, t = SIM3
    moved = sim3_transform_w2c(w2c, SIM3)
    x = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    cam = (w2c[:, :3, :3] @ x + w2c[:, :3, 3])  # [N, 3]
    cam_moved = (moved[:, :3, :3] @ (s * rot @ x + t) + moved[:, :3, 3])
    torch.testing.assert_close(cam_moved, s * cam, rtol=1e-10, atol=1e-10)  # same ray, depth x s
    torch.testing.assert_close(camera_centres(moved), s * camera_centres(w2c) @ rot.T + t)
    eye = torch.eye(3, dtype=torch.float64).expand(len(w2c), 3, 3)
    torch.testing.assert_close(moved[:, :3, :3] @ moved[:, :3, :3].transpose(1, 2), eye)
    assert moved.dtype == w2c.dtype and moved[:, 3].tolist() == [[0, 0, 0, 1]] * len(w2c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sim3_alignment_recovers_the_cameras(dtype):
    """Cameras expressed in a similarity frame come back to the reference by align_sim3 on the
    centres + sim3_transform_w2c (float32: arccos of a rounded trace limits the angle to ~0.03 deg)."""
    ref = _cameras(5).to(dtype)
    other = sim3_transform_w2c(ref, SIM3)  # the same cameras in another frame
    back = sim3_transform_w2c(other, align_sim3(camera_centres(other), camera_centres(ref)))
    err = pose_errors(back, ref, IDENTITY)
    rot_tol, centre_tol = (0.05, 1e-5) if dtype == torch.float32 else (1e-5, 1e-9)
    assert err["rot_deg_max"] < rot_tol and err["centre_err_max"] < centre_tol
    assert not (sim3_transform_w2c(other, IDENTITY) - ref).abs().max() < 0.1  # the frames did differ


@pytest.mark.parametrize(
    "w2c,sim3,match",
    [
        (torch.eye(4), IDENTITY, r"\[N, 4, 4\]"),
        (torch.eye(4)[None], (1.0, torch.eye(2), torch.zeros(3)), "R"),
        (torch.eye(4)[None], (0.0, torch.eye(3), torch.zeros(3)), "positive"),
        (torch.eye(4)[None], (float("nan"), torch.eye(3), torch.zeros(3)), "positive"),
    ],
)
def test_sim3_transform_w2c_bad_input(w2c, sim3, match):
    with pytest.raises(ValueError, match=match):
        sim3_transform_w2c(w2c, sim3)
