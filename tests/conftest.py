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
def fox_dir() -> Path:
    if not (FOX / "transforms.json").exists():
        pytest.fail(f"shared data missing: {FOX} (the project expects ../shared/data beside it)")
    return FOX
