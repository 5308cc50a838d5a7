"""Fixtures for recon.sparse tests: one intra-op thread (these tensors are tiny; on shared CPUs
OpenMP barriers cost more than they save), restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
