"""What every batch backend shares: running one job in a worker (:func:`execute_spec`) and the
bookkeeping around all of them in the driver (:class:`BatchRun`).

In a worker, a job goes through the same job contract as ``recon fit`` / ``recon ct fit``
(:func:`recon.pipelines.job.run_job`) with the batch's resume policy:

- a run folder that is a complete, valid run (``RunDir.problems() == []``) is skipped;
- a folder holding a checkpoint is resumed (``resume=True``): an interrupted or killed job
  continues from its newest checkpoint;
- a recon run folder without a checkpoint (failed before its first one) is started again;
  a folder that is not a recon run folder is refused, never emptied;
- bad input (:class:`~recon.errors.InputError`) is recorded with its one-line message,
  ``MemoryError`` / allocator failures as ``out of memory``, Ctrl-C / SIGTERM / the per-job
  timeout stop at the next training step with a checkpoint (``interrupted`` / ``timed out``).

In the driver, :class:`BatchRun` plans the jobs (skip / resume / run / invalid), takes the
batch folder's lock, records each result (``OUT/_batch/jobs/<name>.json`` keeps every attempt),
retries a job that ran out of memory once with a smaller setting where one exists (capture:
twice the ``downscale``; CT gaussian: half the ``n_gaussians``), keeps the progress counts, and
writes ``report.html`` / ``report.csv`` at the end, also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recon.batch.manifest import JobSpec, build_config
from recon.batch.storage import (
    default_scratch,
    is_url,
    join,
    problems,
    publish_run,
    read_text,
    stage_input,
    stage_run,
    write_text,
)
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DONE",
    "FAILED",
    "BatchRun",
    "JobResult",
    "execute_spec",
    "sigterm_as_interrupt",
    "smaller_options",
]

DONE = ("complete", "skipped")
"""Statuses of a job whose run folder is a complete run."""
FAILED = ("failed", "invalid", "out of memory", "timed out", "worker died")
"""Statuses that make ``recon batch`` exit 1."""
STATE_DIR = "_batch"
"""The batch's own files inside OUT: ``jobs/<name>.json`` (attempts), ``logs/<name>.log``, ``lock``."""


@dataclass
class JobResult:
    """The outcome of one job (a row of ``report.csv``)."""

    name: str
    kind: str
    data: str
    out: str
    status: str
    """complete, skipped (complete before this run), failed, invalid (bad manifest entry), out of
    memory, timed out, interrupted, worker died."""
    error: str | None = None
    """One line for every status but complete/skipped."""
    metrics: dict[str, Any] | None = None
    """``metrics.json`` of a complete run."""
    wall_s: float | None = None
    """Wall time of this attempt (for skipped jobs: the run's own wall/train time)."""
    cpu_s: float | None = None
    """CPU time of the worker process during this attempt (all its threads)."""
    peak_rss_mb: float | None = None
    """Peak resident memory (MiB) of the process that ran this attempt, during the attempt (Linux:
    the kernel's high-water mark, reset when the job starts; None elsewhere)."""
    resumed_from_step: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """The options the job ran with (after an out-of-memory retry: the smaller setting)."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every attempt recorded for this job in OUT/_batch/jobs/<name>.json (earlier batches included)."""
    host: str | None = None
    started: str | None = None
    finished: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobResult:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _one_line(err: BaseException) -> str:
    from recon.pipelines.job import _one_line as one_line

    return one_line(err)


def is_out_of_memory(err: BaseException) -> bool:
    """MemoryError, torch's CUDA/CPU allocator failures."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text)


def smaller_options(spec: JobSpec) -> dict[str, Any] | None:
    """The smaller setting an out-of-memory job is retried with, or None when there is none:
    capture: twice the ``downscale``; CT gaussian: half the ``gaussian.n_gaussians``."""
    if spec.error is not None:
        return None
    cfg = build_config(spec.kind, ".", ".", spec.options)
    if spec.kind == "capture":
        return {"downscale": float(cfg.downscale) * 2}
    if spec.kind == "ct" and cfg.method == "gaussian" and cfg.gaussian.n_gaussians >= 8:
        return {"gaussian.n_gaussians": int(cfg.gaussian.n_gaussians) // 2}
    return None


# ---------------------------------------------------------------------------------- the worker side
@contextlib.contextmanager
def _job_log(path: Path | None) -> Iterator[None]:
    """Library logs of this job (tracebacks of unexpected errors included) into ``path``."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _reset_peak_rss() -> None:
    """Reset this process's resident-memory high-water mark (``VmHWM``; Linux >= 4.0), so that
    :func:`_peak_rss_mb` gives the peak of the job alone in a long-lived worker."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float | None:
    """``VmHWM`` of this process in MiB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import torch

    torch.set_num_threads(int(threads))
    try:
        import numba

        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):  # pragma: no cover
        pass


def execute_spec(
    spec: dict[str, Any],
    *,
    redo: bool = False,
    threads: int | None = None,
    timeout_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    scratch: str | None = None,
    log_file: str | None = None,
) -> dict[str, Any]:
    """Run one job (a :class:`JobSpec` as a dict) in this process; returns a
    :class:`JobResult` as a dict. Never raises for the job's own failures.

    Args:
        redo: start again even when the run folder is complete or has a checkpoint.
        threads: torch/numba threads for this job.
        timeout_s: stop at the next training step after this many seconds (a checkpoint is
            saved; status ``timed out``; a rerun resumes).
        should_stop: polled at every training step; True stops like Ctrl-C (``interrupted``).
        on_progress: ``(step, total)`` at every training step.
        scratch: staging folder for URL inputs and run folders (default: :func:`default_scratch`).
        log_file: where this job's log goes (local path or URL).
    """
    job = JobSpec.from_dict(spec)
    _reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    res = JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status="failed", options=dict(job.options),
                    host=socket.gethostname(), started=_now())  # fmt: skip
    scratch_dir = Path(scratch) if scratch else default_scratch()
    local_log = Path(log_file) if log_file and not is_url(log_file) else (scratch_dir / "logs" / f"{job.name}.log" if log_file else None)
    timed_out = False
    local_out: Path | None = None
    try:
        with _job_log(local_log):
            if job.error is not None:
                res.status, res.error = "invalid", job.error
                return res.to_dict()
            if not redo and not problems(job.out):
                res.status = "skipped"
                res.metrics = _read_metrics(job.out)
                return res.to_dict()
            from recon.io.run import RunDir
            from recon.pipelines.job import run_job

            _set_threads(threads)
            local_out = stage_run(job.out, scratch_dir)
            run = RunDir(local_out)
            resume = not redo and run.latest_checkpoint() is not None
            overwrite = not resume and local_out.is_dir() and any(local_out.iterdir())
            if overwrite and not run.path("run.json").is_file():
                raise InputError(job.out, "exists, is not empty and is not a recon run folder (move it away; recon batch never empties it)")
            data = stage_input(job.data, scratch_dir)
            config = build_config(job.kind, data, local_out, job.options, resume=resume, overwrite=overwrite)
            job_obj = config.setup()
            if resume and getattr(job_obj, "checkpoint", None) is not None:
                res.resumed_from_step = int(job_obj.checkpoint["step"])
            start = time.monotonic()

            def progress(step: int, total: int, record: dict) -> None:
                nonlocal timed_out
                if on_progress is not None:
                    on_progress(step, total)
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    timed_out = True
                    raise KeyboardInterrupt
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt

            res.metrics = run_job(job_obj, progress)
            res.status = "complete"
    except InputError as err:
        res.status, res.error = "failed", str(err)
    except KeyboardInterrupt as err:
        res.status = "timed out" if timed_out else "interrupted"
        res.error = f"timed out after {timeout_s:g} s ({err}); a rerun resumes" if timed_out else f"interrupted ({err or 'stopped'}); a rerun resumes"
    except BaseException as err:  # noqa: BLE001 - one job's failure never stops the batch
        if is_out_of_memory(err):
            res.status, res.error = "out of memory", _one_line(err)
        else:
            res.status, res.error = "failed", _one_line(err)
        if local_log is not None:
            with _job_log(local_log):
                logger.error("job %s failed:\n%s", job.name, traceback.format_exc())
    finally:
        res.wall_s = round(time.perf_counter() - t0, 3)
        res.cpu_s = round(time.process_time() - c0, 3)
        res.peak_rss_mb = _peak_rss_mb()
        res.finished = _now()
        if local_out is not None and is_url(job.out):
            try:
                publish_run(local_out, job.out, keep_local=res.status != "complete")
            except Exception as err:  # noqa: BLE001
                res.status, res.error = "failed", f"{job.out}: upload failed ({_one_line(err)})"
        if log_file and is_url(log_file) and local_log is not None and local_log.is_file():
            with contextlib.suppress(Exception):
                write_text(log_file, local_log.read_text(encoding="utf-8", errors="replace"))
    return res.to_dict()


def _read_metrics(out: str) -> dict[str, Any] | None:
    text = read_text(join(out, "metrics.json"))
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------- the driver side
@dataclass
class Running:
    name: str
    started: float
    step: int = 0
    total: int = 0


@dataclass
class BatchState:
    """What a progress display shows: counts, running jobs, finished results."""

    total: int
    results: dict[str, JobResult] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results.values())

    @property
    def finished(self) -> int:
        return len(self.results)

    def fraction_running(self) -> float:
        """Sum of the running jobs' step fractions (for a smooth ETA)."""
        return sum(min(1.0, r.step / r.total) for r in self.running.values() if r.total)


UpdateFn = Callable[[BatchState, "JobResult | None"], None]
"""``on_update(state, result)``: after every state change (``result`` when a job finished)."""


class BatchRun:
    """The driver's side of one ``recon batch`` run (see the module docstring). Backends call
    :meth:`worker_kwargs`, :meth:`started`, :meth:`progress` and :meth:`finished`."""

    def __init__(
        self,
        jobs: list[JobSpec],
        out: str,
        *,
        redo: bool = False,
        timeout_s: float | None = None,
        scratch: str | None = None,
        on_update: UpdateFn | None = None,
    ) -> None:
        self.jobs, self.out, self.redo, self.timeout_s = jobs, out, redo, timeout_s
        self.scratch = scratch
        self.on_update = on_update
        self.state = BatchState(total=len(jobs))
        self._specs = {j.name: j for j in jobs}
        self._attempts: dict[str, list[dict[str, Any]]] = {}
        self._retried: set[str] = set()
        self._fresh: set[str] = set()

    # ------------------------------------------------------------------ files
    def state_path(self, *parts: str) -> str:
        return join(self.out, "/".join((STATE_DIR, *parts)))

    def log_path(self, name: str) -> str:
        return self.state_path("logs", f"{name}.log")

    def _load_attempts(self, name: str) -> list[dict[str, Any]]:
        text = read_text(self.state_path("jobs", f"{name}.json"))
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {}
        return list(data.get("attempts", [])) if isinstance(data, dict) else []

    # ------------------------------------------------------------------ planning
    def plan(self) -> tuple[list[JobSpec], dict[str, str]]:
        """-> (the jobs to run, ``{name: "skip" | "resume" | "run" | "invalid"}``). Invalid jobs
        and complete runs are recorded at once; an earlier out-of-memory retry that did not
        finish keeps its smaller setting (so its checkpoint matches)."""
        todo, how = [], {}
        for job in self.jobs:
            self._attempts[job.name] = attempts = self._load_attempts(job.name)
            if job.error is not None:
                how[job.name] = "invalid"
                self._record(JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status="invalid", error=job.error))
                continue
            found = problems(job.out)
            if not found and not self.redo:
                how[job.name] = "skip"
                self._record(self._skipped(job))
                continue
            last = attempts[-1] if attempts else {}
            reduced = last.get("reduced") or last.get("retry_with")
            if reduced and not self.redo:  # an out-of-memory retry's run folder: keep its setting
                job.options = {**job.options, **reduced}
                self._retried.add(job.name)
            has_ckpt = not self.redo and _has_checkpoint(job.out)
            how[job.name] = "resume" if has_ckpt else "run"
            todo.append(job)
        return todo, how

    def _skipped(self, job: JobSpec) -> JobResult:
        metrics = _read_metrics(job.out)
        wall = None
        if metrics:
            wall = metrics.get("wall_time_s", metrics.get("train_time_s"))
        cpu = metrics.get("cpu_time_s") if metrics else None
        return JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status="skipped", metrics=metrics, wall_s=wall,
                         cpu_s=cpu, options=dict(job.options), attempts=self._attempts.get(job.name, []))  # fmt: skip

    # ------------------------------------------------------------------ backends' calls
    def worker_kwargs(self, job: JobSpec, threads: int | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`execute_spec` for ``job`` (picklable)."""
        return {"redo": self.redo or job.name in self._fresh, "threads": threads, "timeout_s": self.timeout_s,
                "scratch": self.scratch, "log_file": self.log_path(job.name)}  # fmt: skip

    def started(self, name: str) -> None:
        self.state.running[name] = Running(name, time.monotonic())
        self._update(None)

    def progress(self, name: str, step: int, total: int) -> None:
        r = self.state.running.get(name)
        if r is not None:
            r.step, r.total = step, total
            self._update(None)

    def finished(self, result: dict[str, Any] | JobResult) -> JobSpec | None:
        """Record a job's result; returns the job to run again (an out-of-memory retry with a
        smaller setting), or None."""
        res = result if isinstance(result, JobResult) else JobResult.from_dict(result)
        self.state.running.pop(res.name, None)
        job = self._specs.get(res.name)
        attempt = {k: getattr(res, k) for k in ("status", "error", "started", "finished", "wall_s", "cpu_s", "peak_rss_mb", "host", "resumed_from_step")}
        attempt["options"] = dict(res.options)
        retry = None
        if res.status == "out of memory" and job is not None and res.name not in self._retried and not self.state.stopping:
            reduced = smaller_options(job)
            if reduced is not None:
                self._retried.add(res.name)
                attempt["retry_with"] = reduced
                retry = dataclasses.replace(job, options={**job.options, **reduced})
                self._specs[res.name] = retry
                self._fresh.add(res.name)
                logger.warning("%s ran out of memory; retrying once with %s", res.name, reduced)
        if res.name in self._retried and retry is None and job is not None:
            attempt["reduced"] = {k: job.options[k] for k in ("downscale", "gaussian.n_gaussians") if k in job.options}
        if res.status not in ("skipped", "invalid"):
            self._attempts.setdefault(res.name, []).append(attempt)
            self._save_attempts(res.name)
        res.attempts = list(self._attempts.get(res.name, []))
        if retry is None:
            self._record(res)
        else:
            self._update(None)
        return retry

    def _save_attempts(self, name: str) -> None:
        try:
            write_text(self.state_path("jobs", f"{name}.json"), json.dumps({"name": name, "attempts": self._attempts[name]}, indent=1) + "\n")
        except OSError as err:  # the report still has it
            logger.warning("could not record the attempts of %s: %s", name, err)

    def _record(self, res: JobResult) -> None:
        if not res.attempts:
            res.attempts = list(self._attempts.get(res.name, []))
        self.state.results[res.name] = res
        self._update(res)

    def _update(self, res: JobResult | None) -> None:
        if self.on_update is not None:
            self.on_update(self.state, res)

    def crashed(self, job: JobSpec, status: str, error: str, wall_s: float | None = None) -> dict[str, Any]:
        """A result for a job whose worker died (killed, out of memory, timed out)."""
        return JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status=status, error=error, wall_s=wall_s,
                         options=dict(job.options), finished=_now()).to_dict()  # fmt: skip

    @property
    def results(self) -> list[JobResult]:
        """Results in manifest order (jobs never finished: ``interrupted``)."""
        out = []
        for job in self.jobs:
            res = self.state.results.get(job.name)
            if res is None:
                res = JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status="interrupted",
                                error="not started (the batch was stopped); a rerun runs it", options=dict(job.options))  # fmt: skip
            out.append(res)
        return out


def _has_checkpoint(out: str) -> bool:
    if not is_url(out):
        ck = Path(out) / "checkpoints"
        return ck.is_dir() and any(ck.glob("ckpt_*.pt"))
    from recon.batch.storage import _fs

    fs, root = _fs(out)
    try:
        return bool(fs.glob(root.rstrip("/") + "/checkpoints/ckpt_*.pt"))
    except (FileNotFoundError, OSError):
        return False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt like Ctrl-C (the driver stops cleanly)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def batch_lock(out: str) -> Iterator[None]:
    """Hold ``OUT/_batch/lock`` (local folders): a second ``recon batch`` on the same folder is
    refused with one line instead of racing on the same run folders."""
    if is_url(out):
        yield
        return
    import fcntl

    path = Path(out) / STATE_DIR / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise InputError(out, f"another recon batch is running on this folder (pid {holder}); wait for it or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()
