"""recon.splat.sh against gsplat's PyTorch reference ``_spherical_harmonics``."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics

from recon.splat.sh import MAX_SH_DEGREE, num_sh_bases, sh_basis, spherical_harmonics


@pytest.mark.parametrize("degree", range(MAX_SH_DEGREE + 1))
@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_matches_gsplat_forward_and_backward(degree, batch):
    K = 16  # more bases than used: the extra ones must be ignored
    dirs = torch.randn(*batch, 7, 3, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(*batch, 7, K, 3, dtype=torch.float64, requires_grad=True)
    ours = spherical_harmonics(degree, dirs, coeffs)
    ref = _spherical_harmonics(degree, dirs, coeffs)
    assert ours.shape == (*batch, 7, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    g_ours = torch.autograd.grad((ours * w).sum(), (dirs, coeffs), materialize_grads=True)
    g_ref = torch.autograd.grad((ref * w).sum(), (dirs, coeffs), materialize_grads=True)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_known_values():
    # Degree 0 is the constant 1 / (2 sqrt(pi)); degree 1 along +z picks coefficient 2.
    coeffs = torch.zeros(1, 4, 3, dtype=torch.float64)
    coeffs[0, 0] = 1.0
    coeffs[0, 2] = 2.0
    z = torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64)  # not normalised on purpose
    c0 = 0.28209479177387814
    torch.testing.assert_close(spherical_harmonics(0, z, coeffs), torch.full((1, 3), c0, dtype=torch.float64))
    torch.testing.assert_close(
        spherical_harmonics(1, z, coeffs), torch.full((1, 3), c0 + 2 * 0.4886025119029199, dtype=torch.float64)
    )
    # Real SH are orthonormal on the sphere: Monte-Carlo check of the Gram matrix.
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, dtype=torch.float64), dim=-1)
    Y = sh_basis(3, d)
    gram = 4 * torch.pi * (Y.T @ Y) / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_masks_zero_output_and_gradient():
    dirs = torch.randn(5, 3)
    coeffs = torch.randn(5, 9, 3, requires_grad=True)
    masks = torch.tensor([True, False, True, False, True])
    out = spherical_harmonics(2, dirs, coeffs, masks=masks)
    assert torch.all(out[~masks] == 0)
    out.sum().backward()
    assert torch.all(coeffs.grad[~masks] == 0) and torch.any(coeffs.grad[masks] != 0)


def test_num_sh_bases():
    assert [num_sh_bases(d) for d in range(4)] == [1, 4, 9, 16]


@pytest.mark.parametrize(
    "degree, dirs_shape, coeffs_shape, match",
    [
        (4, (5, 3), (5, 25, 3), "degrees_to_use"),
        (-1, (5, 3), (5, 1, 3), "degrees_to_use"),
        (1, (5, 2), (5, 4, 3), "dirs"),
        (1, (5, 3), (5, 4, 2), "coeffs"),
        (1, (5, 3), (4, 4, 3), "coeffs"),
        (2, (5, 3), (5, 4, 3), "K >= 9"),
    ],
)
def test_bad_input(degree, dirs_shape, coeffs_shape, match):
    with pytest.raises(ValueError, match=match):
        spherical_harmonics(degree, torch.randn(dirs_shape), torch.randn(coeffs_shape))
