"""The job contract: every command that writes a run folder is a config that ``setup()``s into
a :class:`Job`, and :func:`run_job` runs it the same way for the CLI, the viewer's live runs and
``recon batch``.

    job = config.setup()        # reads and validates every input; writes nothing
    metrics = run_job(job)      # the run folder: prepared, started, filled, completed

``setup()`` does everything that can fail on bad input (reading files, checking geometry and
options) before the run folder is touched, so bad input leaves no folder behind. :func:`run_job`
then applies the one run-folder policy (:meth:`recon.io.run.RunDir.prepare`: refuse a non-empty
folder unless ``--resume`` or ``--overwrite``), writes ``config.json`` and ``run.json``
(``running``), calls :meth:`Job.execute`, writes ``metrics.json`` and marks the run
``complete``. A failure marks it ``failed`` with a one-line error; Ctrl-C / SIGTERM mark it
``interrupted`` after the training loop saved a checkpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable
from typing import Any, Protocol

from recon.errors import InputError
from recon.io.run import RunDir

logger = logging.getLogger(__name__)

__all__ = ["Job", "JobBase", "JobConfig", "ProgressFn", "run_job"]

ProgressFn = Callable[[int, int, dict], None]
"""``progress(step, total, record)`` while a job trains (record: loss, counts, ...)."""


class Job(Protocol):
    """A validated job, ready to run into its run folder."""

    kind: str
    """``"capture"`` or ``"ct"`` (``run.json``'s ``kind``)."""
    run_dir: RunDir
    resume: bool
    overwrite: bool

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration written to ``config.json``."""
        ...

    def run_info(self) -> dict[str, Any]:
        """Fields ``run.json`` carries from the start (views, method, device, ...)."""
        ...

    def execute(self, progress: ProgressFn | None) -> dict[str, Any]:
        """Train and write every output into ``run``; returns the metrics (``metrics.json``)."""
        ...


class JobConfig(Protocol):
    """A command's configuration: a dataclass with ``out``, ``resume``, ``overwrite`` and
    :meth:`setup`."""

    def setup(self) -> Job: ...


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text and not isinstance(err, InputError) else (text[0] if text else type(err).__name__)


def run_job(job: Job, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run ``job`` into its run folder (see the module docstring); returns the metrics."""
    run = job.run_dir
    try:
        run.prepare(resume=job.resume, overwrite=job.overwrite)
        run.start(job.kind, job.config_dict(), resume=job.resume, **job.run_info())
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        raise InputError(err.filename or run.root, f"cannot write the run folder ({err.strerror}; expected a writable folder with free space)") from None
    try:
        metrics = job.execute(progress)
        run.complete(metrics)
    except KeyboardInterrupt as err:  # recon.train.Interrupted included: a checkpoint was saved
        run.mark("interrupted", error=_one_line(err) if str(err) else "interrupted by the user")
        raise
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            run.mark("failed", error=_one_line(err))
            raise
        try:  # the disk may refuse this too; the error line below is what matters
            run.mark("failed", error=_one_line(err))
        except OSError:
            pass
        raise InputError(err.filename or run.root, f"cannot be written ({err.strerror}): the run stopped; free space or choose another "
                                                   "--out (--resume continues from the last checkpoint)") from None  # fmt: skip
    except BaseException as err:
        run.mark("failed", error=_one_line(err))
        raise
    return metrics


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""Errors of the output storage (full disk, quota, read-only, no permission): one line, not a traceback."""


class JobBase:
    """What every job shares: ``config_dict`` from its dataclass config, and ``run()``."""

    config: Any

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """:func:`run_job` on this job; returns the metrics."""
        return run_job(self, progress)  # type: ignore[arg-type]
