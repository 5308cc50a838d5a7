"""Shared fixtures: where the real data lives, deterministic torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FOX = SHARED_DATA / "object" / "fox"
CT_DATA = SHARED_DATA / "ct"


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
