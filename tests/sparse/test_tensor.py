"""recon.sparse.tensor: SparseTensor, CoordinateManager (hashing, strides, kernel-map cache)."""

from __future__ import annotations

import pytest
import torch

import recon.sparse as rs
from recon.sparse.tensor import unique_rows

from ._reference import random_sparse


def test_kernel_offsets_minkowski_order():
    off = rs.kernel_offsets(3, 3)
    assert off.shape == (27, 3)
    # first axis fastest, odd sizes centred
    assert off[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert off[13].tolist() == [0, 0, 0]
    even = rs.kernel_offsets((2, 4), 2)
    assert even[:3].tolist() == [[0, 0], [1, 0], [0, 1]] and even[-1].tolist() == [1, 3]
    with pytest.raises(ValueError, match="region_type"):
        rs.kernel_offsets(3, 3, region_type="hypercross")


def test_construction_and_accessors():
    coords = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0], [0, 4, 4, 4]], dtype=torch.int32)
    feats = torch.randn(3, 5)
    x = rs.SparseTensor(feats, coords)
    assert x.F is feats and x.features is feats
    assert torch.equal(x.C, coords) and torch.equal(x.coordinates, coords) and x.C.dtype == torch.int32
    assert x.tensor_stride == [1, 1, 1] and x.D == 3 and len(x) == 3 and x.shape == (3, 5)
    assert isinstance(x.coordinate_manager, rs.CoordinateManager)
    y = rs.SparseTensor(torch.randn(3, 2), coords.long(), tensor_stride=2, coordinate_manager=x.coordinate_manager)
    assert y.coordinate_manager is x.coordinate_manager and y.tensor_stride == [2, 2, 2]


@pytest.mark.parametrize(
    "features,coordinates,match",
    [
        (torch.randn(3), torch.zeros(3, 4, dtype=torch.int32), r"features: expected \[N, C\]"),
        (torch.randn(3, 2), torch.zeros(3, 4), "integer dtype"),
        (torch.randn(2, 2), torch.arange(12).reshape(3, 4), "expected 3 rows"),
        (torch.randn(2, 2), torch.zeros(2, 4, dtype=torch.int64), "unique rows"),
        (torch.randn(2, 2), torch.zeros(2, dtype=torch.int64), r"\[N, 1 \+ D\]"),
        (torch.randn(2, 2), None, "coordinate_map_key"),
    ],
)
def test_construction_bad_input(features, coordinates, match):
    with pytest.raises(ValueError, match=match):
        rs.SparseTensor(features, coordinates)


def test_dense_known_answer_and_gradient():
    coords = torch.tensor([[0, 1, 2], [1, 0, 0], [0, 3, 1]])
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    x = rs.SparseTensor(feats, coords)
    dense, origin, stride = x.dense()
    assert dense.shape == (2, 2, 4, 3) and origin.tolist() == [0, 0] and stride == [1, 1]
    assert dense[0, :, 1, 2].tolist() == [1.0, 2.0] and dense[1, :, 0, 0].tolist() == [3.0, 4.0]
    assert dense[0, :, 3, 1].tolist() == [5.0, 6.0] and dense.abs().sum() == feats.abs().sum()
    (dense * torch.arange(dense.numel()).reshape(dense.shape)).sum().backward()
    assert feats.grad[0].tolist() == [0 * 12 + 1 * 3 + 2, 1 * 12 + 1 * 3 + 2]  # b=0, c, i=1, j=2
    big, _, _ = x.dense(shape=(3, 99, 5, 5))  # C is taken from the features
    assert big.shape == (3, 2, 5, 5)
    with pytest.raises(ValueError, match="contain every coordinate"):
        x.dense(shape=(2, 2, 2, 2))


def test_dense_negative_coordinates_and_stride():
    x = rs.SparseTensor(torch.ones(2, 1), torch.tensor([[0, -2, 4], [0, 2, 0]]))
    with pytest.raises(ValueError, match="min_coordinate"):
        x.dense()
    dense, origin, _ = x.dense(min_coordinate=torch.tensor([-2, 0]))
    assert origin.tolist() == [-2, 0] and dense.shape == (1, 1, 5, 5)
    assert dense[0, 0, 0, 4] == 1 and dense[0, 0, 4, 0] == 1
    y = rs.MinkowskiSumPooling(2, stride=2, dimension=2)(x)  # tensor stride 2, coordinates -2/0/2/4
    d2, o2, s2 = y.dense(min_coordinate=torch.tensor([-2, 0]))
    assert s2 == [2, 2] and d2.shape == (1, 1, 3, 3) and d2[0, 0, 0, 2] == 1 and d2[0, 0, 2, 0] == 1
    with pytest.raises(ValueError, match="multiples of the tensor stride"):
        y.dense(min_coordinate=torch.tensor([-1, 0]))


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_decomposition(batch):
    x = random_sparse(batch=batch, size=5, channels=2)
    coords, feats = x.decomposed_coordinates, x.decomposed_features
    assert len(coords) == len(feats) == batch
    assert sum(len(c) for c in coords) == len(x)
    for b in range(batch):
        rows = (x.C[:, 0] == b).nonzero().squeeze(1)
        assert torch.equal(coords[b], x.C[rows, 1:]) and torch.equal(feats[b], x.F[rows])
        assert torch.equal(x.features_at(b), x.F[rows]) and torch.equal(x.coordinates_at(b), x.C[rows, 1:])


def test_arithmetic_on_same_coordinates():
    x = random_sparse(batch=2, size=5, channels=3)
    y = x._like(torch.randn_like(x.F))
    for op in ["__add__", "__sub__", "__mul__", "__truediv__"]:
        z = getattr(x, op)(y)
        assert z.coordinate_map_key == x.coordinate_map_key
        torch.testing.assert_close(z.F, getattr(x.F, op)(y.F))
    torch.testing.assert_close((2 * x - 1).F, 2 * x.F - 1)
    torch.testing.assert_close((1 / (x * x + 1)).F, 1 / (x.F * x.F + 1))
    torch.testing.assert_close((-x).F, -x.F)
    same = rs.SparseTensor(y.F.detach(), x.C.clone())  # equal coordinates, other manager
    torch.testing.assert_close((x + same).F, x.F + y.F)
    other = random_sparse(batch=2, size=5, channels=3)
    with pytest.raises(ValueError, match="same coordinates"):
        x + other


def test_unique_rows_first_occurrence():
    c = torch.tensor([[0, 5], [1, -3], [0, 5], [2, 2], [1, -3]])
    unique_map, inverse = unique_rows(c)
    assert unique_map.tolist() == [0, 1, 3]
    assert torch.equal(c[unique_map][inverse], c)


def test_stride_and_transposed_stride():
    x = random_sparse(batch=2, size=9, channels=1)
    m, key = x.coordinate_manager, x.coordinate_map_key
    k2 = m.stride(key, 2)
    assert k2.tensor_stride == (2, 2, 2) and m.stride(key, 2) == k2  # cached
    expected = {(b, *(v // 2 * 2 for v in r)) for b, *r in x.C.tolist()}
    got = m.get_coordinates(k2).tolist()
    assert len(got) == len(expected) and {tuple(r) for r in got} == expected
    k4 = m.stride(k2, 2)
    assert k4.tensor_stride == (4, 4, 4)
    assert m.transposed_stride(k4, 2) == k2 and m.transposed_stride(k2, 2) == key
    with pytest.raises(ValueError, match="Generative"):
        m.transposed_stride(key, 2)


def test_lookup_absent_rows():
    x = rs.SparseTensor(torch.zeros(2, 1), torch.tensor([[0, 1, 1], [1, 5, -2]]))
    m = x.coordinate_manager
    q = torch.tensor([[1, 5, -2], [0, 1, 1], [0, 5, -2], [3, 100, 100], [0, -100, 1]])
    assert m.lookup(x.coordinate_map_key, q).tolist() == [1, 0, -1, -1, -1]


def test_kernel_map_cache_counts_builds():
    x = random_sparse(batch=2, size=6, channels=2)
    m, key = x.coordinate_manager, x.coordinate_map_key
    conv = rs.MinkowskiConvolution(2, 2, 3, dimension=3).double()
    conv(x)
    assert m.kernel_map_builds == 1
    conv(x)
    rs.MinkowskiConvolution(2, 4, 3, dimension=3).double()(x)  # same geometry, other layer
    assert m.kernel_map_builds == 1
    down = rs.MinkowskiConvolution(2, 2, 2, stride=2, dimension=3).double()(x)
    assert m.kernel_map_builds == 2
    # the transposed map of a cached forward map is its swap: no new build
    up = rs.MinkowskiConvolutionTranspose(2, 2, 2, stride=2, dimension=3).double()(down)
    assert m.kernel_map_builds == 2 and up.coordinate_map_key == key
    fwd = m.kernel_map(key, down.coordinate_map_key, 2)
    tr = m.kernel_map(down.coordinate_map_key, key, 2, is_transpose=True)
    assert torch.equal(fwd.in_rows, tr.out_rows) and torch.equal(fwd.out_rows, tr.in_rows)
    m.kernel_map(key, key, 3, dilation=2)  # other dilation: new map
    assert m.kernel_map_builds == 3


def test_prune_and_origin():
    x = random_sparse(batch=3, size=5, channels=2)
    m = x.coordinate_manager
    keep = torch.rand(len(x)) < 0.5
    pkey = m.prune(x.coordinate_map_key, keep)
    assert pkey != x.coordinate_map_key and torch.equal(m.get_coordinates(pkey), x.C[keep])
    okey, rows = m.origin(x.coordinate_map_key)
    assert m.get_coordinates(okey).tolist() == [[b, 0, 0, 0] for b in range(3)]
    assert torch.equal(rows, x.C[:, 0].long()) and okey.tensor_stride == (0, 0, 0)


def test_to_dtype_keeps_manager():
    x = random_sparse(batch=1, size=4, channels=2)
    y = x.float()
    assert y.dtype == torch.float32 and y.coordinate_manager is x.coordinate_manager
    assert x.detach().requires_grad is False
