"""Fixtures for recon.sparse tests: one intra-op thread (these tensors are tiny; on shared CPUs
OpenMP barriers cost more than they save), restored after each test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (tests/conftest.py ``one_thread``)."""
