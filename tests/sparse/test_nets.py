"""recon.sparse.nets.MinkUNet: shapes, coordinates, gradients, save/load, bad input."""

from __future__ import annotations

import pytest
import torch

import recon.sparse as rs
from recon.sparse import backends, nets
from recon.sparse.nets import MinkUNet

from ._reference import random_sparse


@pytest.mark.parametrize("batch", [1, 2])
def test_minkunet_forward_backward(batch):
    x = random_sparse(batch=batch, size=10, channels=4, density=0.3, dtype=torch.float32)
    net = MinkUNet(4, 3, planes=(8, 16, 32), layers=(1, 1, 1), backend="torch")
    y = net(x)
    assert y.F.shape == (len(x), 3)
    assert y.coordinate_map_key == x.coordinate_map_key and torch.equal(y.C, x.C)  # same set, same rows
    y.F.square().mean().backward()
    assert x.F.grad is not None and x.F.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    # tensor strides 1, 2, 4 were visited; the transposed convs reused the cached finer sets
    strides = {k.tensor_stride for k in x.coordinate_manager._sets}
    assert {(1, 1, 1), (2, 2, 2), (4, 4, 4)} <= strides


def test_minkunet_depth_and_layers_follow_config():
    net = MinkUNet(2, 5, planes=(4, 8, 16, 32), layers=(2, 1, 1, 1), backend="torch")
    assert len(net.encoder) == 4 and len(net.up) == len(net.decoder) == 3
    assert len(net.decoder[-1]) == 2  # finest decoder level mirrors layers[0] = 2 blocks
    assert net.head.kernel.shape == (4, 5) and net.head.bias.shape == (1, 5)


def test_minkunet_save_and_load(tmp_path):
    x = random_sparse(batch=2, size=8, channels=2, dtype=torch.float32, requires_grad=False)
    net = MinkUNet(2, 3, planes=(4, 8), layers=(1, 1), backend="torch").eval()
    net.save_pretrained(tmp_path)
    loaded = MinkUNet.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    assert loaded.config.planes in ([4, 8], (4, 8)) and "backend" not in loaded.config
    torch.testing.assert_close(loaded(x).F, net(x).F)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0, out_channels=1), "in/out_channels"),
        (dict(in_channels=1, out_channels=1, planes=(4, 8), layers=(1,)), "equal non-empty lengths"),
        (dict(in_channels=1, out_channels=1, planes=(4, 0), layers=(1, 1)), "positive planes"),
        (dict(in_channels=1, out_channels=1, backend="bogus"), "expected one of"),
    ],
)
def test_minkunet_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MinkUNet(**kwargs)


def test_minkunet_bad_input():
    net = MinkUNet(4, 1, planes=(4,), layers=(1,), backend="torch")
    with pytest.raises(ValueError, match="4 channels"):
        net(random_sparse(batch=1, size=4, channels=3, dtype=torch.float32))
    with pytest.raises(ValueError, match="SparseTensor"):
        net(torch.zeros(3, 4))


def test_minkunet_rejects_conversion_only_backend(monkeypatch):
    fake = backends.SparseBackend("spconv", None, lambda x: x, lambda x, like=None: x)
    monkeypatch.setattr(nets, "get_backend", lambda name="auto", device=None: fake)
    with pytest.raises(ValueError, match="backend"):
        MinkUNet(1, 1, planes=(2,), layers=(1,))


def test_lazy_export():
    assert rs.MinkUNet is MinkUNet
