"""recon.splat.adam.FusedAdam against its twin torch.optim.Adam (dense, active columns,
selective rows), checkpoints and the densification row operations."""

from __future__ import annotations

import pytest
import torch

from recon.splat.adam import FusedAdam, fuse_optimizers
from recon.splat.model import GaussianModel
from recon.splat.strategy import duplicate_rows, remove_rows


def _pair(shape, seed=0, **kw):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    a, b = torch.nn.Parameter(x.clone()), torch.nn.Parameter(x.clone())
    return a, b, torch.optim.Adam([a], **kw), FusedAdam([b], **kw)


@pytest.mark.parametrize("shape", [(50,), (50, 3), (50, 15, 3)])
def test_dense_matches_torch_adam(shape):
    a, b, oa, ob = _pair(shape, lr=0.01, eps=1e-15)
    g = torch.Generator().manual_seed(1)
    for it in range(25):
        grad = torch.randn(shape, generator=g) * (1e-6 if it % 4 == 0 else 0.1)
        a.grad, b.grad = grad.clone(), grad.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):  # moments: to 1e-6 of their largest value
        ref = oa.state[a][key]
        torch.testing.assert_close(ob.state[b][key], ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    assert float(ob.state[b]["step"]) == 25.0


def test_active_columns_are_exact():
    a, b, oa, ob = _pair((40, 15, 3), lr=0.01, eps=1e-15)
    g = torch.Generator().manual_seed(2)
    for it in range(30):
        active = 0 if it < 10 else 3 if it < 20 else 8  # SH degree 0, 1, 2
        grad = torch.zeros(40, 15, 3)
        grad[:, :active] = torch.randn(40, active, 3, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ob.param_groups[0]["active_columns"] = active
        oa.step()
        ob.step()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    ref = oa.state[a]["exp_avg"]
    torch.testing.assert_close(ob.state[b]["exp_avg"], ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


def test_selective_updates_only_visible_rows():
    a, b, oa, ob = _pair((30, 4), lr=0.05)
    vis = torch.arange(30) % 3 != 0
    b0 = b.detach().clone()
    grad = torch.randn(30, 4, generator=torch.Generator().manual_seed(3))
    a.grad, b.grad = grad.clone(), grad.clone()
    oa.step()
    ob.step(visibility=vis)
    torch.testing.assert_close(b[vis], a[vis], rtol=0, atol=1e-6)  # visible rows: as Adam
    assert torch.equal(b[~vis], b0[~vis]) and not ob.state[b]["exp_avg"][~vis].any()
    with pytest.raises(ValueError, match="visibility"):
        ob.step(visibility=vis[:5])


def test_state_dict_roundtrip_and_from_optimizer():
    model = GaussianModel.random_in_box(20, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))
    opts = model.make_optimizers(scene_scale=2.0)
    fused = fuse_optimizers(opts)
    assert fused["means"].param_groups[0]["lr"] == opts["means"].param_groups[0]["lr"]
    assert fused["means"].param_groups[0]["name"] == "means"
    for p in model.params.values():
        p.grad = torch.ones_like(p)
    for o in fused.values():
        o.step()
    # a torch Adam loads the fused optimiser's state and continues identically
    sd = fused["scales"].state_dict()
    twin = torch.optim.Adam([model.params["scales"]], lr=1.0)
    twin.load_state_dict(sd)
    assert float(twin.state[model.params["scales"]]["step"]) == 1.0
    with pytest.raises(ValueError, match="supports only"):
        FusedAdam([model.params["means"]], weight_decay=0.1)


def test_densification_row_operations_keep_moments():
    model = GaussianModel.random_in_box(10, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))
    opts = fuse_optimizers(model.make_optimizers())
    for p in model.params.values():
        p.grad = torch.randn_like(p)
    for o in opts.values():
        o.step()
    m_before = opts["means"].state[model.params["means"]]["exp_avg"].clone()
    state = {"grad2d": torch.zeros(10), "count": torch.zeros(10)}
    duplicate_rows(model.params, opts, state, torch.arange(10) < 2)
    remove_rows(model.params, opts, state, torch.arange(12) == 0)
    m_after = opts["means"].state[model.params["means"]]["exp_avg"]
    assert m_after.shape == (11, 3)
    torch.testing.assert_close(m_after[:9], m_before[1:])  # kept rows keep their moments
    assert not m_after[9:].any()  # copies start at zero
    for p in model.params.values():  # and the optimiser still steps the new tensors
        p.grad = torch.ones_like(p)
    for o in opts.values():
        o.step()
