"""The CT fixtures of tests/ct (small volumes, single-threaded torch) and the small fox capture of
tests/pipelines for these tests too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ct.conftest import _one_thread, cone_geo, shepp32  # noqa: F401
from tests.pipelines.conftest import make_capture


@pytest.fixture
def small_fox(fox_dir, tmp_path) -> Path:
    return make_capture(fox_dir, tmp_path / "fox12")
