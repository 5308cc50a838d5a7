"""recon.splat.phantoms: a sphere of flat Gaussians and cameras around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.geometry.cameras import quaternion_to_rotation
from recon.splat.phantoms import fibonacci_sphere, sphere_cameras, sphere_gaussians


def test_fibonacci_sphere_is_even():
    d = fibonacci_sphere(500)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.abs(d.mean(axis=0)).max() < 0.01
    with pytest.raises(ValueError):
        fibonacci_sphere(0)


def test_sphere_gaussians_lie_flat_on_the_sphere():
    m = sphere_gaussians(2.0, 1000, centre=(1.0, 0.0, -1.0))
    means = m.params["means"].detach() - torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(means.norm(dim=-1), torch.full((1000,), 2.0))
    rot = quaternion_to_rotation(m.params["quats"].detach())
    shortest = m.params["scales"].detach().argmin(dim=-1)
    assert (shortest == 2).all()
    normal = rot[:, :, 2]
    assert torch.einsum("ij,ij->i", normal, means / 2.0).min() > 0.999
    assert m.sh_degree == 0 and float(torch.sigmoid(m.params["opacities"].detach()).min()) == pytest.approx(0.98)


def test_sphere_cameras_look_at_the_centre():
    cams = sphere_cameras(10, 4.0, centre=(0.0, 1.0, 0.0), size=(40, 30))
    np.testing.assert_allclose((cams.centres() - torch.tensor([0.0, 1.0, 0.0])).norm(dim=-1).numpy(), 4.0, rtol=1e-5)
    x = cams.w2c @ torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.allclose(x[:, :2], torch.zeros(10, 2), atol=1e-5) and (x[:, 2] > 0).all()
    assert cams.intrinsics[0].width == 40 and cams.intrinsics[0].cx == 20.0
