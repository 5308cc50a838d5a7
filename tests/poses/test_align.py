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


def test_rotation_errors_without_centres_known_answer():
    from recon.poses.align import rotation_errors_without_centres
    from recon.poses.refine import exp_so3, perturb_poses

    g = torch.Generator().manual_seed(0)
    ref = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    ref[:, :3, :3] = exp_so3(torch.randn(4, 3, generator=g, dtype=torch.float64))
    ref[:, :3, 3] = torch.randn(4, 3, generator=g, dtype=torch.float64)
    # another world frame (rotation + translation + scale) and wrong centres: no error at all
    frame = torch.eye(4, dtype=torch.float64)
    frame[:3, :3] = exp_so3(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    frame[:3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    est = ref @ frame
    est[:, :3, 3] = 5.0 * est[:, :3, 3] + torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = rotation_errors_without_centres(est, ref)
    assert max(out["rot_deg"]) < 1e-5 and max(out["pair_deg"]) < 1e-5 and len(out["pair_deg"]) == 6
    # one view rotated by 2 deg about its centre: its pairs are 2 deg off, the others exact
    bad = est.clone()
    bad[:1] = perturb_poses(est[:1], rot_deg=2.0, trans_frac=0.0, seed=1)
    out = rotation_errors_without_centres(bad, ref)
    assert sorted(out["pair_deg"])[-3:] == pytest.approx([2.0, 2.0, 2.0], abs=1e-6)
    assert max(sorted(out["pair_deg"])[:3]) < 1e-5  # arccos near 1: ~1e-6 deg of rounding
    assert 0.5 < out["rot_deg"][0] < 2.0
    with pytest.raises(ValueError, match="N >= 2"):
        rotation_errors_without_centres(ref[:1], ref[:1])
