"""recon.sparse.backends: selection, error messages, and MinkowskiEngine parity (when installed)."""

from __future__ import annotations

import pytest
import torch

import recon.sparse as rs
from recon.sparse import backends

from ._reference import random_sparse

ME_AVAILABLE = backends.available_backends()["minkowski"] is None


@pytest.fixture
def no_minkowski(monkeypatch):
    """Pretend MinkowskiEngine does not import, whatever is installed."""
    real = backends._import

    def fake(name):
        return (None, "ModuleNotFoundError: No module named 'MinkowskiEngine'") if name == "minkowski" else real(name)

    monkeypatch.setattr(backends, "_import", fake)


def test_torch_backend_always_available(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    b = rs.get_backend("torch")
    assert b.name == "torch" and b.nn is rs.nn and b.nn.MinkowskiConvolution is rs.MinkowskiConvolution
    x = random_sparse(batch=1, size=3, channels=1)
    assert b.to_native(x) is x and b.from_native(x, like=x) is x


def test_auto_falls_back_to_torch_without_minkowski(monkeypatch, no_minkowski):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert rs.get_backend().name == "torch"
    assert rs.get_backend(None).name == "torch"


def test_missing_minkowski_raises_with_install_hint(monkeypatch, no_minkowski):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.raises(rs.SparseBackendUnavailable, match="scripts/install_minkowski.sh") as err:
        rs.get_backend("minkowski")
    assert "No module named 'MinkowskiEngine'" in str(err.value)
    assert isinstance(err.value, ImportError)


def test_env_var_selects_and_is_validated(monkeypatch, no_minkowski):
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert rs.get_backend("auto").name == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "minkowski")
    with pytest.raises(rs.SparseBackendUnavailable, match=r"\$RECON_SPARSE_BACKEND"):
        rs.get_backend()
    monkeypatch.setenv(backends.ENV_VAR, "tensorflow")
    with pytest.raises(ValueError, match=r"RECON_SPARSE_BACKEND.*'tensorflow'"):
        rs.get_backend()
    assert rs.get_backend("torch").name == "torch"  # an explicit name wins over the variable


def test_unknown_name_and_spconv_on_cpu(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="expected one of"):
        rs.get_backend("cuda-magic")
    with pytest.raises(rs.SparseBackendUnavailable, match="spconv"):
        rs.get_backend("spconv", device="cpu")
    status = rs.available_backends("cpu")
    assert status["torch"] is None and status["spconv"] is not None


# ------------------------------------------------------------------ MinkowskiEngine parity
_ME_SKIP = pytest.mark.skipif(not ME_AVAILABLE, reason="MinkowskiEngine is not importable (scripts/install_minkowski.sh; docs/testing.md)")


def needs_me(test):
    """Parity with MinkowskiEngine: marked ``minkowski`` (``pytest -m minkowski``), skipped without it."""
    return pytest.mark.minkowski(_ME_SKIP(test))


def _rows_like(y_me, y_ours):
    return backends.from_minkowski(y_me, like=y_ours)


@needs_me
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2), (1, 1)])
def test_minkowski_conv_parity(kernel_size, stride):
    import MinkowskiEngine as ME

    x = random_sparse(batch=2, size=8, channels=3)
    ours = rs.MinkowskiConvolution(3, 4, kernel_size, stride=stride, bias=True, dimension=3).double()
    theirs = ME.MinkowskiConvolution(3, 4, kernel_size=kernel_size, stride=stride, bias=True, dimension=3).double()
    theirs.load_state_dict(ours.state_dict())
    y = ours(x)
    y_me = _rows_like(theirs(backends.to_minkowski(x)), y)
    assert y_me.coordinate_map_key == y.coordinate_map_key  # same coordinate set, same row order
    torch.testing.assert_close(y_me.F, y.F, atol=1e-10, rtol=0)


@needs_me
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2)])
def test_minkowski_conv_gradient_parity(kernel_size, stride):
    import MinkowskiEngine as ME

    x = random_sparse(batch=2, size=8, channels=3)
    x_me_feats = x.F.detach().clone().requires_grad_(True)
    x_me = ME.SparseTensor(features=x_me_feats, coordinates=x.C.int().contiguous(), tensor_stride=x.tensor_stride)
    ours = rs.MinkowskiConvolution(3, 4, kernel_size, stride=stride, bias=True, dimension=3).double()
    theirs = ME.MinkowskiConvolution(3, 4, kernel_size=kernel_size, stride=stride, bias=True, dimension=3).double()
    theirs.load_state_dict(ours.state_dict())
    y = ours(x)
    y_me = _rows_like(theirs(x_me), y)
    upstream = torch.randn_like(y.F)
    (y.F * upstream).sum().backward()
    (y_me.F * upstream).sum().backward()
    torch.testing.assert_close(x_me_feats.grad, x.F.grad, atol=1e-10, rtol=0)  # same input rows
    torch.testing.assert_close(theirs.kernel.grad, ours.kernel.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(theirs.bias.grad, ours.bias.grad, atol=1e-10, rtol=0)


@needs_me
def test_minkowski_transposed_and_pooling_parity():
    import MinkowskiEngine as ME

    x = random_sparse(batch=2, size=8, channels=3, requires_grad=False)
    x_me = backends.to_minkowski(x)
    down = rs.MinkowskiConvolution(3, 3, 2, stride=2, dimension=3).double()
    down_me = ME.MinkowskiConvolution(3, 3, kernel_size=2, stride=2, dimension=3).double()
    down_me.load_state_dict(down.state_dict())
    for k in (2, 3):
        up = rs.MinkowskiConvolutionTranspose(3, 2, k, stride=2, dimension=3).double()
        up_me = ME.MinkowskiConvolutionTranspose(3, 2, kernel_size=k, stride=2, dimension=3).double()
        up_me.load_state_dict(up.state_dict())
        y = up(down(x))
        torch.testing.assert_close(_rows_like(up_me(down_me(x_me)), y).F, y.F, atol=1e-10, rtol=0)
    for ours, theirs in [
        (rs.MinkowskiMaxPooling(3, stride=2, dimension=3), ME.MinkowskiMaxPooling(kernel_size=3, stride=2, dimension=3)),
        (rs.MinkowskiAvgPooling(2, stride=2, dimension=3), ME.MinkowskiAvgPooling(kernel_size=2, stride=2, dimension=3)),
    ]:
        y = ours(x)
        torch.testing.assert_close(_rows_like(theirs(x_me), y).F, y.F, atol=1e-10, rtol=0)


@needs_me
def test_minkowski_minkunet_parity():
    from recon.sparse.nets import MinkUNet

    x = random_sparse(batch=2, size=8, channels=2, requires_grad=False)
    ours = MinkUNet(2, 3, planes=(4, 8), layers=(1, 1), backend="torch").double().eval()
    theirs = MinkUNet(2, 3, planes=(4, 8), layers=(1, 1), backend="minkowski").double().eval()
    theirs.load_state_dict(ours.state_dict())
    y, y_me = ours(x), theirs(x)
    assert y_me.coordinate_map_key == x.coordinate_map_key
    torch.testing.assert_close(y_me.F, y.F, atol=1e-8, rtol=0)


def test_install_script_parses():
    """The MinkowskiEngine build recipe named in the install hint exists and is valid bash."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "install_minkowski.sh"
    assert script.is_file() and "scripts/install_minkowski.sh" in backends.INSTALL_HINT
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_minkowski_sequence_patch():
    """The post-install patch rewrites every form of the Python 3.10-removed collections.Sequence."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "patch_minkowski_sequence.py"
    spec = importlib.util.spec_from_file_location("patch_minkowski_sequence", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = (
        "import math\n"
        "from collections import Sequence, namedtuple\n"
        "    from collections import Sequence\n"
        "from collections import OrderedDict\n"
        "ok = isinstance(x, collections.Sequence)\n"
    )
    assert mod.patch_text(src) == (
        "import math\n"
        "from collections import namedtuple\n"
        "from collections.abc import Sequence\n"
        "    from collections.abc import Sequence\n"
        "from collections import OrderedDict\n"
        "ok = isinstance(x, collections.abc.Sequence)\n"
    )
    assert mod.patch_text(mod.patch_text(src)) == mod.patch_text(src)  # idempotent
