"""recon.sparse.functional and the conv/pooling layers against dense torch ops, forward and
gradients (float64, 1e-5), at occupied sites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import recon.sparse as rs
from recon.sparse import functional as SF

from ._reference import at, conv, dense_weight, random_sparse

TOL = dict(atol=1e-5, rtol=1e-5)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


@pytest.mark.parametrize(
    "dimension,kernel_size,dilation",
    [(3, 3, 1), (3, 2, 1), (3, 3, 2), (3, 1, 1), (2, 3, 1), (2, 4, 1)],
)
def test_submanifold_conv_matches_dense(dimension, kernel_size, dilation):
    x = random_sparse(batch=2, size=7 if dimension == 3 else 9, channels=3, dimension=dimension)
    layer = rs.MinkowskiConvolution(3, 4, kernel_size, dilation=dilation, dimension=dimension).double()
    y = layer(x)
    assert y.coordinate_map_key == x.coordinate_map_key  # submanifold: same coordinates
    size = [7 if dimension == 3 else 9] * dimension
    dense = x.dense(shape=(2, 3, *size))[0]
    w = dense_weight(layer.kernel.reshape(-1, 3, 4), kernel_size, dimension)
    if kernel_size % 2:
        ref = conv(dimension)(dense, w, padding=dilation * (kernel_size // 2), dilation=dilation)
    else:  # even kernels cover offsets 0 .. K-1: pad only on the high side
        pad = [0, dilation * (kernel_size - 1)] * dimension
        ref = conv(dimension)(F.pad(dense, pad), w, dilation=dilation)
    ref_rows = at(ref, x.C)
    torch.testing.assert_close(y.F, ref_rows, **TOL)
    g = torch.randn_like(y.F)
    got = _grads((y.F * g).sum(), x.F, layer.kernel)
    want = _grads((ref_rows * g).sum(), x.F, layer.kernel)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_strided_conv_matches_dense(kernel_size):
    G = 8
    x = random_sparse(batch=2, size=G, channels=2)
    layer = rs.MinkowskiConvolution(2, 3, kernel_size, stride=2, bias=True, dimension=3).double()
    y = layer(x)
    assert y.tensor_stride == [2, 2, 2]
    c = x.C.long()
    expected = {(int(b), *(int(v) // 2 * 2 for v in r)) for b, *r in c.tolist()}
    assert {tuple(r) for r in y.C.tolist()} == expected and len(y) == len(expected)
    dense = x.dense(shape=(2, 2, G, G, G))[0]
    w = dense_weight(layer.kernel, kernel_size, 3)
    ref = F.conv3d(dense, w, stride=2, padding=kernel_size // 2 if kernel_size % 2 else 0)
    ref_rows = at(ref, y.C, stride=2) + layer.bias
    torch.testing.assert_close(y.F, ref_rows, **TOL)
    g = torch.randn_like(y.F)
    got = _grads((y.F * g).sum(), x.F, layer.kernel, layer.bias)
    want = _grads((ref_rows * g).sum(), x.F, layer.kernel, layer.bias)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_transposed_conv_matches_dense(kernel_size):
    G = 8
    x = random_sparse(batch=2, size=G, channels=2)
    coarse = rs.MinkowskiConvolution(2, 3, 2, stride=2, dimension=3).double()(x)
    y_in = coarse._like(torch.randn(len(coarse), 3, dtype=torch.float64, requires_grad=True))
    layer = rs.MinkowskiConvolutionTranspose(3, 2, kernel_size, stride=2, dimension=3).double()
    y = layer(y_in)
    # output on the cached finer set: exactly x's coordinates
    assert y.coordinate_map_key == x.coordinate_map_key and y.tensor_stride == [1, 1, 1]
    dense = y_in.dense(shape=(2, 3, G // 2, G // 2, G // 2))[0]
    w = dense_weight(layer.kernel, kernel_size, 3, transpose=True)
    if kernel_size == 2:
        ref = F.conv_transpose3d(dense, w, stride=2)
    else:  # offsets -1, 0, 1 around each coarse site
        ref = F.conv_transpose3d(dense, w, stride=2, padding=1, output_padding=1)
    ref_rows = at(ref, y.C)
    torch.testing.assert_close(y.F, ref_rows, **TOL)
    g = torch.randn_like(y.F)
    got = _grads((y.F * g).sum(), y_in.F, layer.kernel)
    want = _grads((ref_rows * g).sum(), y_in.F, layer.kernel)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_generative_transposed_conv_generates_all_offsets():
    x = random_sparse(batch=2, size=6, channels=2, density=0.2)
    coarse = rs.MinkowskiConvolution(2, 2, 2, stride=2, dimension=3).double()(x)
    layer = rs.MinkowskiGenerativeConvolutionTranspose(2, 3, 2, stride=2, dimension=3).double()
    y = layer(coarse)
    assert y.tensor_stride == [1, 1, 1]
    offsets = rs.kernel_offsets(2, 3)
    expected = {(b, *(v + o for v, o in zip(r, off))) for b, *r in coarse.C.tolist() for off in offsets.tolist()}
    assert {tuple(r) for r in y.C.tolist()} == expected and len(y) == len(expected)
    dense = coarse.dense(shape=(2, 2, 3, 3, 3))[0]
    ref = F.conv_transpose3d(dense, dense_weight(layer.kernel, 2, 3, transpose=True), stride=2)
    torch.testing.assert_close(y.F, at(ref, y.C), **TOL)


def test_custom_backward_matches_autograd_twin():
    x = random_sparse(batch=2, size=6, channels=3)
    mgr, key = x.coordinate_manager, x.coordinate_map_key
    for out_key, transpose in [(key, False), (mgr.stride(key, 2), False)]:
        kmap = mgr.kernel_map(key, out_key, 3, is_transpose=transpose)
        kernel = torch.randn(27, 3, 5, dtype=torch.float64, requires_grad=True)
        a = SF.sparse_conv(x.F, kernel, kmap)
        b = SF.sparse_conv_reference(x.F, kernel, kmap)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        g = torch.randn_like(a)
        for ga, gb in zip(_grads((a * g).sum(), x.F, kernel), _grads((b * g).sum(), x.F, kernel)):
            torch.testing.assert_close(ga, gb, atol=1e-12, rtol=0)
    small = random_sparse(batch=1, size=4, channels=2)
    kmap = small.coordinate_manager.kernel_map(small.coordinate_map_key, small.coordinate_map_key, 3)
    kernel = torch.randn(27, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, k: SF.sparse_conv(f, k, kmap), (small.F, kernel))


def test_conv_bad_inputs():
    x = random_sparse(batch=1, size=4, channels=2)
    kmap = x.coordinate_manager.kernel_map(x.coordinate_map_key, x.coordinate_map_key, 3)
    with pytest.raises(ValueError, match="expected 27 offsets"):
        SF.sparse_conv(x.F, torch.randn(8, 2, 3, dtype=torch.float64), kmap)
    with pytest.raises(ValueError, match=r"\[K, C_in, C_out\]"):
        SF.sparse_conv(x.F, torch.randn(27, 3, 3, dtype=torch.float64), kmap)


def test_batches_do_not_mix():
    """Two batches at identical spatial coordinates: each output equals the single-batch run."""
    occupied = torch.rand(6, 6, 6) < 0.4
    spatial = occupied.nonzero().int()
    n = len(spatial)
    coords = torch.cat([torch.cat([torch.full((n, 1), b, dtype=torch.int32), spatial], 1) for b in (0, 1)])
    feats = torch.randn(2 * n, 2, dtype=torch.float64)
    for layer in [
        rs.MinkowskiConvolution(2, 3, 3, dimension=3).double(),
        rs.MinkowskiConvolution(2, 3, 3, stride=2, dimension=3).double(),
        rs.MinkowskiMaxPooling(3, stride=2, dimension=3),
    ]:
        both = layer(rs.SparseTensor(feats, coords))
        for b in (0, 1):
            alone = layer(rs.SparseTensor(feats[b * n : (b + 1) * n], coords[:n]))
            torch.testing.assert_close(both.features_at(b), alone.F, atol=1e-12, rtol=0)
            assert torch.equal(both.coordinates_at(b), alone.coordinates_at(0))


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_pooling_matches_dense(kernel_size, stride):
    G = 8
    x = random_sparse(batch=2, size=G, channels=3, requires_grad=True)
    dense, _, _ = x.dense(shape=(2, 3, G, G, G))
    occupancy = rs.SparseTensor(torch.ones(len(x), 1, dtype=torch.float64), x.C).dense(shape=(2, 1, G, G, G))[0]
    pad = kernel_size // 2 if kernel_size % 2 else 0
    # max over occupied inputs only: empty sites are -inf
    masked = torch.where(occupancy > 0, dense, torch.full_like(dense, -torch.inf))
    ref_max = F.max_pool3d(masked, kernel_size, stride, padding=pad)
    sums = F.avg_pool3d(dense, kernel_size, stride, padding=pad, divisor_override=1)
    counts = F.avg_pool3d(occupancy, kernel_size, stride, padding=pad, divisor_override=1)
    for layer, ref in [
        (rs.MinkowskiMaxPooling(kernel_size, stride=stride, dimension=3), ref_max),
        (rs.MinkowskiAvgPooling(kernel_size, stride=stride, dimension=3), sums / counts.clamp(min=1)),
        (rs.MinkowskiSumPooling(kernel_size, stride=stride, dimension=3), sums),
    ]:
        y = layer(x)
        assert y.tensor_stride == [stride] * 3
        ref_rows = at(ref, y.C, stride=stride)
        torch.testing.assert_close(y.F, ref_rows, **TOL)
        g = torch.randn_like(y.F)
        torch.testing.assert_close(_grads((y.F * g).sum(), x.F)[0], _grads((ref_rows * g).sum(), x.F)[0], **TOL)


def test_global_pooling():
    x = random_sparse(batch=3, size=5, channels=2)
    for layer, fn in [
        (rs.MinkowskiGlobalAvgPooling(), lambda f: f.mean(0)),
        (rs.MinkowskiGlobalMaxPooling(), lambda f: f.max(0).values),
        (rs.MinkowskiGlobalSumPooling(), lambda f: f.sum(0)),
    ]:
        y = layer(x)
        assert y.C.tolist() == [[b, 0, 0, 0] for b in range(3)]
        torch.testing.assert_close(y.F, torch.stack([fn(x.features_at(b)) for b in range(3)]), **TOL)


def test_cat_same_coordinates_only():
    x = random_sparse(batch=1, size=5, channels=2)
    y = rs.MinkowskiConvolution(2, 3, 3, dimension=3).double()(x)
    z = rs.cat(x, y)
    assert z.F.shape == (len(x), 5) and z.coordinate_map_key == x.coordinate_map_key
    torch.testing.assert_close(z.F, torch.cat([x.F, y.F], 1))
    other = random_sparse(batch=1, size=5, channels=2)
    with pytest.raises(ValueError, match="same coordinates|coordinates of tensors"):
        rs.cat(x, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conv_cuda_matches_cpu():
    x = random_sparse(batch=2, size=8, channels=3)
    layer = rs.MinkowskiConvolution(3, 4, 3, stride=2, dimension=3).double()
    y_cpu = layer(x)
    y_gpu = layer.cuda()(x.cuda())
    torch.testing.assert_close(
        y_gpu.F.cpu()[_match(y_gpu.C.cpu(), y_cpu.C)], y_cpu.F.detach(), atol=1e-10, rtol=0
    )


def _match(a, b):
    """Row of a for each row of b (same coordinate sets)."""
    index = {tuple(r): i for i, r in enumerate(a.tolist())}
    return torch.tensor([index[tuple(r)] for r in b.tolist()])
