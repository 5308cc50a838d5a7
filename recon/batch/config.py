"""``recon batch``: the configs (:class:`BatchConfig` for a manifest, :class:`CTBatchConfig` /
:class:`CaptureBatchConfig` for a folder of inputs) and the :class:`Batch` they ``setup()`` into.

    batch = BatchConfig(manifest=Path("week23.yaml"), out="runs/week23").setup()  # reads and checks; writes nothing
    summary = batch.run()      # every job, then OUT/report.html and OUT/report.csv
    summary.exit_code          # 0: every job complete; 1: a job failed; 130: stopped by Ctrl-C

A folder batch is a ``recon ct fit`` / ``recon fit`` config whose ``data`` is a folder of inputs:
every option given applies to every job (``recon batch ct scans/ --method tv``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro

from recon.batch.manifest import (
    JobSpec,
    assign_outputs,
    folder_jobs,
    options_of,
    read_manifest,
)
from recon.batch.runner import DONE, BatchRun, JobResult, UpdateFn, batch_lock
from recon.batch.storage import is_url
from recon.errors import InputError
from recon.pipelines.capture import CaptureFitConfig
from recon.pipelines.ct import CTFitConfig

logger = logging.getLogger(__name__)

__all__ = ["Batch", "BatchConfig", "BatchOptions", "BatchSummary", "CTBatchConfig", "CaptureBatchConfig"]


@dataclass
class BatchOptions:
    """How a batch runs (shared by ``recon batch MANIFEST`` and ``recon batch ct|capture DIR``)."""

    backend: Literal["local", "ray"] = "local"
    """'local': worker processes on this machine, no server; 'ray': Ray tasks on a local Ray
    instance or the cluster at --address (pip install 'sparse-recon[ray]')."""
    address: str | None = None
    """Ray cluster to join (e.g. 10.0.0.5:6379 or 'auto'); only with --backend ray."""
    jobs: int | None = None
    """Jobs at a time (local: worker processes). Default: local, what fits the cores and
    --memory-per-job-gb of free memory; ray, what the cluster's CPUs (GPUs) run at once."""
    cpus_per_job: float | None = None
    """CPU threads of each job (local default: cores / jobs; Ray: the task's CPU request, default 1)."""
    gpus_per_job: float | None = None
    """Ray: GPUs per task (default 1 on a cluster with GPUs: one job per GPU; else 0)."""
    memory_per_job_gb: float = 2.0
    """Memory a job needs: bounds the default --jobs (local) and is each task's memory request (Ray)."""
    timeout: float | None = None
    """Seconds a job may run in one attempt; it then stops at its next step with a checkpoint
    (status 'timed out'; a rerun resumes it). Unset: no limit."""
    retries: int = 2
    """Ray: times a task is rerun when its worker dies (it resumes from its checkpoint)."""
    redo: bool = False
    """Run every job again from scratch, complete runs included (default: skip complete runs,
    resume interrupted ones)."""
    scratch: Path | None = None
    """Node-local staging folder for URL inputs and outputs (default $RECON_BATCH_SCRATCH or <tmp>/recon-batch)."""
    dry_run: bool = False
    """Check the manifest and show what would run, resume or be skipped; run nothing."""

    def check(self) -> None:
        if self.backend not in ("local", "ray"):
            raise InputError("--backend", f"expected local or ray, got {self.backend!r}")
        if self.address is not None and self.backend != "ray":
            raise InputError("--address", "joins a Ray cluster: add --backend ray")
        if self.gpus_per_job is not None and self.backend != "ray":
            raise InputError("--gpus-per-job", "is a Ray resource request: add --backend ray (local jobs use the GPU the fit's --device picks)")
        if self.jobs is not None and self.jobs < 1:
            raise InputError("--jobs", f"must be >= 1, got {self.jobs}")
        if self.cpus_per_job is not None and not self.cpus_per_job > 0:
            raise InputError("--cpus-per-job", f"must be > 0, got {self.cpus_per_job}")
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise InputError("--gpus-per-job", f"must be >= 0, got {self.gpus_per_job}")
        if self.memory_per_job_gb < 0:
            raise InputError("--memory-per-job-gb", f"must be >= 0, got {self.memory_per_job_gb}")
        if self.timeout is not None and not self.timeout > 0:
            raise InputError("--timeout", f"must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise InputError("--retries", f"must be >= 0, got {self.retries}")


@dataclass
class BatchConfig(BatchOptions):
    """Run many capture and CT fits from a manifest (YAML or CSV): one bad job never stops the
    others, complete runs are skipped, interrupted ones resume; OUT/report.html at the end."""

    manifest: tyro.conf.Positional[Path] = field(kw_only=True)
    """Manifest: .yaml/.yml (defaults + jobs) or .csv (a row per job); docs/batch.md."""
    out: str | None = None
    """Batch folder (a path or an fsspec URL): runs go to OUT/<job name>, the report to OUT/report.html.
    Default: the manifest's out:, else runs/<manifest stem>."""

    def setup(self) -> Batch:
        """Read and check the manifest (nothing is written) -> the batch."""
        self.check()
        jobs, manifest_out = read_manifest(self.manifest)
        out = self.out or manifest_out or str(Path("runs") / self.manifest.stem)
        return Batch(jobs, out, self, title=f"recon batch {self.manifest.name}")


def _folder_setup(kind: str, cfg: Any) -> Batch:
    cfg.batch.check()
    options = options_of(kind, cfg)
    jobs = folder_jobs(kind, cfg.data, options)
    return Batch(jobs, str(cfg.out), cfg.batch, title=f"recon batch {kind} {cfg.data}")


@dataclass
class CTBatchConfig(CTFitConfig):
    """Reconstruct every CT scan in a folder with the same options (recon ct fit's): one job per
    sub-folder / .npy / .tif / .pickle scan."""

    data: tyro.conf.Positional[Path]
    """Folder of scans: each sub-folder (R2-Gaussian) or projection file (.npy/.tif with its
    geometry beside it, .pickle with --trust-pickle) is one job, named after it."""
    out: str = "runs/batch"  # type: ignore[assignment]
    """Batch folder (a path or an fsspec URL): runs go to OUT/<scan name>, the report to OUT/report.html."""
    resume: tyro.conf.Suppress[bool] = False
    overwrite: tyro.conf.Suppress[bool] = False
    batch: tyro.conf.OmitArgPrefixes[BatchOptions] = field(default_factory=BatchOptions)
    """How the batch runs."""

    def setup(self) -> Batch:  # type: ignore[override]
        """List the folder and check the options (nothing is written) -> the batch."""
        return _folder_setup("ct", self)


@dataclass
class CaptureBatchConfig(CaptureFitConfig):
    """Fit every capture in a folder with the same options (recon fit's): one job per sub-folder."""

    data: tyro.conf.Positional[Path] = field(kw_only=True)
    """Folder of captures: each sub-folder (transforms.json, COLMAP, LLFF, ...) is one job, named after it."""
    out: str = "runs/batch"  # type: ignore[assignment]
    """Batch folder (a path or an fsspec URL): runs go to OUT/<capture name>, the report to OUT/report.html."""
    resume: tyro.conf.Suppress[bool] = False
    overwrite: tyro.conf.Suppress[bool] = False
    batch: tyro.conf.OmitArgPrefixes[BatchOptions] = field(default_factory=BatchOptions)
    """How the batch runs."""

    def setup(self) -> Batch:  # type: ignore[override]
        """List the folder and check the options (nothing is written) -> the batch."""
        return _folder_setup("capture", self)


@dataclass
class BatchSummary:
    """What a batch run ended with."""

    results: list[JobResult]
    out: str
    report_csv: str | None
    report_html: str | None
    interrupted: bool = False
    plan: dict[str, str] = field(default_factory=dict)

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results)

    @property
    def exit_code(self) -> int:
        """0: every job complete (or skipped as complete); 1: a job failed; 130: stopped by Ctrl-C."""
        if self.interrupted:
            return 130
        return 1 if any(r.status not in DONE for r in self.results) else 0


class Batch:
    """A checked batch, ready to run (see the module docstring)."""

    def __init__(self, jobs: list[JobSpec], out: str, options: BatchOptions, *, title: str = "recon batch") -> None:
        self.options = options
        self.out = out if is_url(out) else str(Path(out).expanduser().resolve())
        self.jobs = assign_outputs(jobs, self.out)
        self.title = title
        reserved = [j for j in self.jobs if j.name in ("report.html", "report.csv")]
        for j in reserved:
            j.error = j.error or f"job {j.index + 1} ({j.name}): the name is reserved for the batch report"

    def _resources(self, n_todo: int) -> tuple[int, int]:
        """(jobs at a time, threads per job) for the local backend."""
        from recon.batch.local import available_cpus, default_jobs

        o = self.options
        jobs = o.jobs or default_jobs(o.memory_per_job_gb)
        if o.jobs is None and o.cpus_per_job:
            jobs = max(1, min(jobs, int(available_cpus() // o.cpus_per_job)))
        jobs = max(1, min(jobs, n_todo))
        threads = int(o.cpus_per_job) if o.cpus_per_job else max(1, available_cpus() // jobs)
        return jobs, max(1, threads)

    def run(self, on_update: UpdateFn | None = None, *, plan_only: bool | None = None, ray_init: dict[str, Any] | None = None) -> BatchSummary:
        """Run every job (see :mod:`recon.batch.runner`) and write the report (also after
        Ctrl-C). ``on_update(state, result)`` follows the progress; ``plan_only`` (default
        ``--dry-run``) only plans; ``ray_init`` are extra ``ray.init`` arguments."""
        o = self.options
        plan_only = o.dry_run if plan_only is None else plan_only
        with batch_lock(self.out) if not plan_only else contextlib.nullcontext():
            br = BatchRun(self.jobs, self.out, redo=o.redo, timeout_s=o.timeout, scratch=str(o.scratch) if o.scratch else None, on_update=on_update)
            todo, plan = br.plan()
            if plan_only:
                return BatchSummary(br.results, self.out, None, None, plan=plan)
            extra: dict[str, Any] = {"backend": o.backend}
            interrupted = False
            try:
                self._dispatch(br, todo, extra, ray_init)
            except KeyboardInterrupt:
                interrupted = True
            except InputError:  # the backend could not start: one line, no report
                raise
            except BaseException:  # a bug in the driver: keep a report of what finished
                self._report(br, extra)
                raise
            csv_path, html_path = self._report(br, extra)
            return BatchSummary(br.results, self.out, csv_path, html_path, interrupted=interrupted, plan=plan)

    def _dispatch(self, br: BatchRun, todo: list[JobSpec], extra: dict[str, Any], ray_init: dict[str, Any] | None) -> None:
        o = self.options
        if o.backend == "local":
            jobs, threads = self._resources(len(todo))
            extra["workers"] = f"{jobs} x {threads} threads"
            if todo:
                from recon.batch.local import run_local

                run_local(br, todo, jobs=jobs, threads=threads)
            return
        from recon.batch.ray_backend import run_ray

        extra["ray"] = o.address or "local instance"
        run_ray(br, todo, address=o.address, jobs=o.jobs, cpus_per_job=o.cpus_per_job, gpus_per_job=o.gpus_per_job,
                memory_per_job_gb=o.memory_per_job_gb, retries=o.retries, init_kwargs=ray_init)  # fmt: skip

    def _report(self, br: BatchRun, extra: dict[str, Any]) -> tuple[str | None, str | None]:
        from recon.batch.report import write_report

        try:
            return write_report(self.out, br.results, title=self.title, extra=extra)
        except Exception as err:  # noqa: BLE001 - the run folders are the results; the report is a view of them
            logger.error("could not write the report in %s: %s", self.out, err)
            return None, None
