"""Defaults shared with ``recon fit`` (:class:`recon.pipelines.capture.CaptureFitConfig`).

The plugins read them from recon's config instead of restating the numbers, so ``ns-train
recon-splat`` and ``recon fit`` train with the same schedule unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recon.pipelines.capture import CaptureFitConfig

__all__ = ["capture_fit_default"]


def capture_fit_default(name: str) -> Any:
    """Default value of ``CaptureFitConfig.<name>`` (a fresh object for factory defaults)."""
    for f in dataclasses.fields(CaptureFitConfig):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"CaptureFitConfig.{name} has no default")
    raise ValueError(f"CaptureFitConfig has no field {name!r}")
