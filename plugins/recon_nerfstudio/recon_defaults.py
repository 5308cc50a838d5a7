"""Defaults shared with ``recon fit`` and ``recon ct fit``.

The plugins read them from recon's configs (:class:`recon.pipelines.capture.CaptureFitConfig`,
:class:`recon.ct.gaussian_trainer.GaussianFitConfig`) instead of restating the numbers, so ``ns-train
recon-splat`` / ``recon-ct`` and recon's commands train with the same settings unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recon.ct.gaussian_trainer import GaussianFitConfig
from recon.pipelines.capture import CaptureFitConfig
from recon.splat.config import UNSET_DEFAULTS

__all__ = ["capture_fit_default", "ct_fit_default"]


def _default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def capture_fit_default(name: str) -> Any:
    """Default value of ``CaptureFitConfig.<name>`` (``recon fit --<name>``; a fresh object for factory defaults).
    Options left unset for the presets to choose (``UNSET_DEFAULTS``: steps, coarse-to-fine) give
    their plain value: nerfstudio's loop trains at full resolution for ``--max-num-iterations``."""
    value = _default(CaptureFitConfig, name)
    return UNSET_DEFAULTS[name] if value is None and name in UNSET_DEFAULTS else value


def ct_fit_default(name: str) -> Any:
    """Default value of ``GaussianFitConfig.<name>`` (``recon ct fit --gaussian.<name>``)."""
    return _default(GaussianFitConfig, name)
