"""The CT fixtures of tests/ct (small volumes, single-threaded torch) for these tests too."""

from tests.ct.conftest import _one_thread, cone_geo, shepp32  # noqa: F401
