"""``recon batch``: many capture and CT fits from a manifest or a folder, on worker processes
(default) or a Ray cluster; complete runs are skipped, interrupted ones resume, every batch ends
in ``report.html`` / ``report.csv`` (docs/batch.md).

Modules: :mod:`~recon.batch.manifest` (jobs from YAML/CSV/folders, configs from overrides),
:mod:`~recon.batch.runner` (one job in a worker; the driver's bookkeeping), :mod:`~recon.batch.local`
and :mod:`~recon.batch.ray_backend` (the backends), :mod:`~recon.batch.report`,
:mod:`~recon.batch.storage` (local paths and fsspec URLs), :mod:`~recon.batch.config` (the configs).

The package itself imports nothing heavy (worker processes import it before setting their
thread counts); the configs load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Batch", "BatchConfig", "BatchOptions", "BatchSummary", "CTBatchConfig", "CaptureBatchConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from recon.batch import config

        return getattr(config, name)
    raise AttributeError(f"module 'recon.batch' has no attribute {name!r}")
