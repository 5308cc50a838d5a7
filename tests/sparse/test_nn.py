"""recon.sparse.nn: layer parameters (MinkowskiEngine layouts), feature-wise layers, pruning,
output-coordinate rules and input checks."""

from __future__ import annotations

import pytest
import torch

import recon.sparse as rs

from ._reference import random_sparse


def test_parameter_layouts_match_minkowski():
    conv = rs.MinkowskiConvolution(4, 8, 3, bias=True, dimension=3)
    assert conv.kernel.shape == (27, 4, 8) and conv.bias.shape == (1, 8)
    assert set(conv.state_dict()) == {"kernel", "bias"}
    assert rs.MinkowskiConvolution(4, 8, 1, dimension=3).kernel.shape == (4, 8)  # matmul kernel
    assert rs.MinkowskiConvolution(4, 8, 1, stride=2, dimension=3).kernel.shape == (1, 4, 8)
    assert rs.MinkowskiConvolutionTranspose(4, 8, (2, 2), stride=2, dimension=2).kernel.shape == (4, 4, 8)
    bound = 1 / (4 * 27) ** 0.5
    assert conv.kernel.abs().max() <= bound and conv.kernel.abs().max() > 0.5 * bound
    assert set(rs.MinkowskiBatchNorm(8).state_dict()) >= {"bn.weight", "bn.bias", "bn.running_mean"}
    assert set(rs.MinkowskiLinear(4, 8).state_dict()) == {"linear.weight", "linear.bias"}


def test_batchnorm_equals_batchnorm1d():
    x = random_sparse(batch=2, size=6, channels=4)
    bn = rs.MinkowskiBatchNorm(4).double()
    ref = torch.nn.BatchNorm1d(4).double()
    ref.load_state_dict(bn.bn.state_dict())
    with torch.no_grad():
        bn.bn.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(bn.bn.weight)
    y = bn(x)
    want = ref(x.F)
    assert y.coordinate_map_key == x.coordinate_map_key
    torch.testing.assert_close(y.F, want)
    torch.testing.assert_close(bn.bn.running_mean, ref.running_mean)
    g = torch.randn_like(want)
    ga = torch.autograd.grad((y.F * g).sum(), (x.F, bn.bn.weight))
    gb = torch.autograd.grad((want * g).sum(), (x.F, ref.weight))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    bn.eval(), ref.eval()
    torch.testing.assert_close(bn(x).F, ref(x.F))


def test_featurewise_layers():
    x = random_sparse(batch=1, size=5, channels=4)
    for layer, fn in [
        (rs.MinkowskiReLU(), torch.relu),
        (rs.MinkowskiLeakyReLU(0.2), lambda f: torch.nn.functional.leaky_relu(f, 0.2)),
        (rs.MinkowskiSigmoid(), torch.sigmoid),
        (rs.MinkowskiTanh(), torch.tanh),
        (rs.MinkowskiELU(), torch.nn.functional.elu),
    ]:
        y = layer(x)
        assert y.coordinate_map_key == x.coordinate_map_key
        torch.testing.assert_close(y.F, fn(x.F))
    lin = rs.MinkowskiLinear(4, 2).double()
    torch.testing.assert_close(lin(x).F, lin.linear(x.F))
    drop = rs.MinkowskiDropout(0.5).eval()
    assert torch.equal(drop(x).F, x.F)
    with pytest.raises(ValueError, match="expected 3 channels"):
        rs.MinkowskiLinear(3, 2)(x)


def test_pruning():
    x = random_sparse(batch=2, size=5, channels=2)
    mask = x.F[:, 0] > 0
    y = rs.MinkowskiPruning()(x, mask)
    assert len(y) == int(mask.sum()) and y.coordinate_manager is x.coordinate_manager
    assert torch.equal(y.C, x.C[mask]) and torch.equal(y.F, x.F[mask])
    y.F.sum().backward()
    assert torch.equal(x.F.grad[:, 0], mask.double())
    with pytest.raises(ValueError, match="bool tensor"):
        rs.MinkowskiPruning()(x, mask.float())
    # layers keep working on the pruned set
    z = rs.MinkowskiConvolution(2, 3, 3, dimension=3).double()(y)
    assert z.coordinate_map_key == y.coordinate_map_key


def test_conv_input_checks():
    x = random_sparse(batch=1, size=4, channels=2)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        rs.MinkowskiConvolution(3, 4, 3, dimension=3)(x)
    with pytest.raises(ValueError, match="expected a 2-D SparseTensor"):
        rs.MinkowskiConvolution(2, 4, 3, dimension=2)(x)
    with pytest.raises(ValueError, match="recon.sparse.SparseTensor"):
        rs.MinkowskiConvolution(2, 4, 3, dimension=3)(x.F)
    with pytest.raises(ValueError, match="kernel_size"):
        rs.MinkowskiConvolution(2, 4, (3, 3), dimension=3)
    with pytest.raises(ValueError, match="stride"):
        rs.MinkowskiConvolution(2, 4, 3, stride=0, dimension=3)
    with pytest.raises(ValueError, match="Generative"):  # nothing was downsampled into x
        rs.MinkowskiConvolutionTranspose(2, 4, 2, stride=2, dimension=3).double()(x)


def test_conv_onto_given_coordinates():
    x = random_sparse(batch=1, size=6, channels=2)
    target = torch.tensor([[0, 1, 1, 1], [0, 3, 2, 5]], dtype=torch.int32)
    conv = rs.MinkowskiConvolution(2, 3, 3, dimension=3).double()
    y = conv(x, coordinates=target)
    assert torch.equal(y.C, target)
    full = conv(x)
    rows = x.coordinate_manager.lookup(x.coordinate_map_key, target.long())
    for i, r in enumerate(rows.tolist()):  # occupied targets equal the submanifold result
        if r >= 0:
            torch.testing.assert_close(y.F[i], full.F[r])
    y2 = conv(x, coordinates=y)
    assert y2.coordinate_map_key == y.coordinate_map_key


def test_to_dense_layer():
    x = random_sparse(batch=2, size=4, channels=2)
    d = rs.MinkowskiToDenseTensor(torch.Size([2, 2, 4, 4, 4]))(x)
    assert d.shape == (2, 2, 4, 4, 4) and torch.equal(d, x.dense(shape=(2, 2, 4, 4, 4))[0])
