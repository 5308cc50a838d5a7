"""Shared fixtures: where the real data lives, deterministic torch."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FOX = SHARED_DATA / "object" / "fox"
CT_DATA = SHARED_DATA / "ct"


@pytest.fixture(scope="session", autouse=True)
def _sigint_at_its_default():
    """Ctrl-C raises KeyboardInterrupt in this process and reaches the children tests start. A
    test process can be started with SIGINT ignored (pytest-xdist workers, some CI runners), and an
    ignored SIGINT is inherited through exec: a ``recon`` subprocess would then never see the
    SIGINT a test sends it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Single-threaded torch for small CPU work, restored afterwards: on a shared 2-core machine
    OpenMP spin-waiting makes tiny ops far slower than one thread. Folders of small-tensor tests
    make it autouse in their conftest (``_one_thread``); single modules use
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fox_dir() -> Path:
    if not (FOX / "transforms.json").exists():
        pytest.fail(f"shared data missing: {FOX} (the project expects ../shared/data beside it)")
    return FOX
