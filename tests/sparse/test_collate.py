"""recon.sparse.collate: sparse_quantize, batched_coordinates, sparse_collate (ME semantics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recon.sparse as rs


def test_quantize_floors_and_keeps_first_point():
    pts = torch.tensor([[0.2, 0.9], [-0.1, 0.0], [0.7, 0.1], [1.5, -0.5], [-0.9, 0.4]])
    feats = torch.arange(10.0).reshape(5, 2)
    coords, f, index, inverse = rs.sparse_quantize(pts, feats, return_index=True, return_inverse=True)
    # voxels by first occurrence: (0,0) from point 0, (-1,0) from point 1, (1,-1) from point 3
    assert coords.dtype == torch.int32
    assert coords.tolist() == [[0, 0], [-1, 0], [1, -1]]
    assert index.tolist() == [0, 1, 3] and torch.equal(f, feats[index])
    assert torch.equal(coords[inverse], torch.floor(pts).int())  # round trip
    assert torch.equal(torch.floor(pts[index]).int(), coords)


def test_quantize_size_and_numpy():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3)) * 2.0
    coords, index, inverse = rs.sparse_quantize(pts, quantization_size=0.5, return_index=True, return_inverse=True)
    expected = np.floor(pts / 0.5).astype(np.int32)
    assert len(np.unique(expected, axis=0)) == len(coords)
    assert np.array_equal(coords[inverse].numpy(), expected)
    per_axis = rs.sparse_quantize(pts, quantization_size=[0.5, 1.0, 2.0])
    assert len(per_axis) == len(np.unique(np.floor(pts / [0.5, 1.0, 2.0]), axis=0))
    only = rs.sparse_quantize(torch.tensor([[1, 2], [1, 2], [3, 4]]))
    assert isinstance(only, torch.Tensor) and only.tolist() == [[1, 2], [3, 4]]


def test_quantize_labels_conflict_gets_ignore_label():
    pts = torch.tensor([[0.1, 0.1], [0.2, 0.3], [1.5, 1.5], [1.2, 1.7], [3.0, 3.0]])
    labels = torch.tensor([4, 4, 1, 2, 7])
    coords, labs = rs.sparse_quantize(pts, labels=labels, ignore_label=-100)
    assert coords.tolist() == [[0, 0], [1, 1], [3, 3]]
    assert labs.tolist() == [4, -100, 7]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(coordinates=torch.zeros(3)), r"\[N, D\]"),
        (dict(coordinates=torch.zeros(3, 2), features=torch.zeros(2, 1)), r"features: expected \[3, C\]"),
        (dict(coordinates=torch.zeros(3, 2), return_inverse=True), "return_index"),
        (dict(coordinates=torch.zeros(3, 2), quantization_size=0.0), "quantization_size"),
        (dict(coordinates=[[0, 1]]), "numpy array or torch tensor"),
    ],
)
def test_quantize_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rs.sparse_quantize(**kwargs)


def test_batched_coordinates_and_collate():
    c0 = np.array([[0.5, 1.2], [3.9, -0.1]])
    c1 = torch.tensor([[7, 8]], dtype=torch.int64)
    b = rs.batched_coordinates([c0, c1])
    assert b.dtype == torch.int32 and b.tolist() == [[0, 0, 1], [0, 3, -1], [1, 7, 8]]
    coords, feats, labels = rs.sparse_collate([c0, c1], [np.ones((2, 3)), torch.zeros(1, 3, dtype=torch.float64)],
                                              labels=[torch.tensor([1, 2]), torch.tensor([3])])  # fmt: skip
    assert torch.equal(coords, b) and feats.shape == (3, 3) and labels.tolist() == [1, 2, 3]
    x = rs.SparseTensor(feats, coords)
    assert len(x.decomposed_coordinates) == 2
    with pytest.raises(ValueError, match="one per coords"):
        rs.sparse_collate([c0, c1], [np.ones((2, 3))])
    with pytest.raises(ValueError, match=r"coords\[1\]: expected \[N, 2\]"):
        rs.batched_coordinates([c0, torch.zeros(2, 3)])
