"""The Ray backend (``--backend ray``): each job is a Ray task, on a local Ray instance or on the
cluster at ``--address``. Ray is an optional extra (``pip install 'sparse-recon[ray]'``),
imported only here.

- Resources: every task asks for ``--cpus-per-job`` CPUs (default 1; the job uses that many
  torch/numba threads), ``--gpus-per-job`` GPUs (default: 1 when the cluster has GPUs, so one
  job per GPU; 0 otherwise) and ``--memory-per-job-gb`` of Ray's ``memory`` resource, so Ray
  never packs more jobs on a node than its memory holds.
- At most ``--jobs`` tasks are in flight (default: what the cluster's CPUs/GPUs run at once);
  results are gathered as they finish (``ray.wait``).
- A task whose worker dies (node lost, killed) is retried by Ray up to ``--retries`` times
  (``max_retries``); the retry resumes from the job's newest checkpoint. Ray's own
  out-of-memory kill (``ray.exceptions.OutOfMemoryError``) is reported as ``out of memory`` and
  retried once with a smaller setting like any other.
- ``--timeout``: the task stops itself at the next training step after that many seconds
  (checkpoint saved, ``timed out``); one that does not answer within a grace period is
  cancelled (``ray.cancel(force=True)``).
- Ctrl-C: a progress actor tells every running task to stop at its next step (checkpoint,
  ``interrupted``); tasks still running after a grace period are cancelled.

Data: the tasks read inputs and write run folders at the paths or URLs in the job specs, so on a
multi-node cluster they must be on a filesystem every node mounts at the same path, or fsspec
URLs (``docs/batch.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from recon.batch.manifest import JobSpec
from recon.batch.runner import BatchRun, sigterm_as_interrupt
from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["run_ray"]

STOP_GRACE_S = 60.0
"""After Ctrl-C or a timeout, how long a task may take to reach its next step before it is cancelled."""
REPORT_EVERY_S = 1.0
LOCAL_START_ATTEMPTS = 2
"""Tries at starting a local Ray instance: its raylet gives its agent processes 15 s to report
their ports and aborts when a starved agent misses that on a busy machine; the second try finds
the imports in the page cache."""


def import_ray() -> Any:
    """``import ray``, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--backend ray", "Ray is not installed (pip install 'sparse-recon[ray]', or use --backend local)") from None
    return ray


class _ProgressSink:
    """A Ray actor (0 CPUs): tasks report start and progress to it; it tells them to stop."""

    def __init__(self) -> None:
        self.stop = False
        self.events: list[tuple] = []

    def started(self, name: str, host: str, pid: int) -> bool:
        self.events.append(("start", name, host, pid, time.time()))
        return self.stop

    def report(self, name: str, step: int, total: int) -> bool:
        self.events.append(("progress", name, step, total))
        return self.stop

    def set_stop(self) -> None:
        self.stop = True

    def poll(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def _task(spec: dict[str, Any], kwargs: dict[str, Any], sink: Any) -> dict[str, Any]:
    """One job in a Ray worker: threads = the CPUs Ray assigned; progress and stop via ``sink``."""
    import ray

    from recon.batch.runner import execute_spec

    name = spec["name"]
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    kwargs = {**kwargs, "threads": max(1, int(cpus))}
    stop = [bool(ray.get(sink.started.remote(name, socket.gethostname(), os.getpid())))]
    last = [time.monotonic()]

    def on_progress(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S or step == total:
            last[0] = now
            stop[0] = bool(ray.get(sink.report.remote(name, step, total)))

    return execute_spec(spec, should_stop=lambda: stop[0], on_progress=on_progress, **kwargs)


def children() -> set[int]:
    """Pids of this process's child processes (Linux ``/proc``; empty elsewhere)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def stop_failed_start(before: set[int]) -> None:
    """After a failed ``ray.init``: ``ray.shutdown()`` and kill the Ray processes the attempt left
    behind (GCS, dashboard, monitors: children started since ``before``); Ray does not stop them
    when its node never came up."""
    import signal

    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    for pid in children() - before:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _code_path() -> str:
    """PYTHONPATH for the tasks: where this driver's ``recon`` lives, first (same code on a
    local instance or a cluster sharing the path; elsewhere the installed package is used)."""
    import recon

    root = str(Path(recon.__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _error_of(ray: Any, err: BaseException) -> tuple[str, str]:
    exc = ray.exceptions
    text = str(err).strip().splitlines()
    first = next((ln.strip() for ln in text if ln.strip()), type(err).__name__)[:300]
    if isinstance(err, getattr(exc, "OutOfMemoryError", ())):
        return "out of memory", f"killed by Ray's memory monitor ({first})"
    if isinstance(err, (exc.WorkerCrashedError, getattr(exc, "NodeDiedError", exc.WorkerCrashedError))):
        return "worker died", f"the worker died and its retries were used up ({first})"
    if isinstance(err, exc.TaskCancelledError):
        return "interrupted", "cancelled"
    if isinstance(err, getattr(exc, "RuntimeEnvSetupError", ())):
        return "failed", f"Ray could not set up the worker environment ({first})"
    return "failed", f"{type(err).__name__}: {first}"


def run_ray(
    batch: BatchRun,
    todo: list[JobSpec],
    *,
    address: str | None = None,
    jobs: int | None = None,
    cpus_per_job: float | None = None,
    gpus_per_job: float | None = None,
    memory_per_job_gb: float = 2.0,
    retries: int = 2,
    init_kwargs: dict[str, Any] | None = None,
) -> None:
    """Run ``todo`` as Ray tasks (see the module docstring). Uses the Ray connection this
    process already has, else starts a local instance or joins ``address``; raises
    KeyboardInterrupt after a clean stop."""
    if not todo:
        return
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # an offline tool: no usage reports
    ours = False
    if not ray.is_initialized():
        where = f"could not join the Ray cluster at {address}" if address else "could not start a local Ray instance"
        attempts = 1 if address else LOCAL_START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            before = children()
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                         **(init_kwargs or {}))  # fmt: skip
                break
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise InputError("--backend ray", f"{where} ({_first_line(err)})") from None
            except Exception as err:  # noqa: BLE001 - ray raises a plain Exception when its node does not come up
                stop_failed_start(before)
                if attempt < attempts:
                    logger.warning("%s (%s); trying again", where, _first_line(err))
                    continue
                raise InputError("--backend ray", f"{where} ({_first_line(err)}; its logs are in the Ray session folder, /tmp/ray/session_latest/logs)") from None
        ours = True
    elif address:
        logger.info("this process is already connected to Ray; --address %s is not used", address)
    try:
        _run(ray, batch, todo, jobs=jobs, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, memory_per_job_gb=memory_per_job_gb, retries=retries)
    finally:
        if ours:
            with contextlib.suppress(Exception):
                ray.shutdown()


def _run(ray: Any, batch: BatchRun, todo: list[JobSpec], *, jobs: int | None, cpus_per_job: float | None, gpus_per_job: float | None,
         memory_per_job_gb: float, retries: int) -> None:  # fmt: skip
    resources = ray.cluster_resources()
    cpus = float(cpus_per_job or 1)
    gpus = float(gpus_per_job) if gpus_per_job is not None else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
    memory = int(memory_per_job_gb * 2**30) if memory_per_job_gb > 0 else 0
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpus > 0 and not any(n.get("GPU", 0) >= gpus for n in nodes):
        raise InputError("--gpus-per-job", f"{gpus:g} GPUs per job but no node of the cluster has that many (GPUs: {resources.get('GPU', 0):g})")
    if not any(n.get("CPU", 0) >= cpus for n in nodes):
        raise InputError("--cpus-per-job", f"{cpus:g} CPUs per job but no node of the cluster has that many")
    if memory and not any(n.get("memory", 0) >= memory for n in nodes):
        biggest = max((n.get("memory", 0) for n in nodes), default=0) / 2**30
        raise InputError("--memory-per-job-gb", f"{memory_per_job_gb:g} GiB per job but the largest node offers {biggest:.1f} GiB to Ray tasks")
    slots = int(resources.get("CPU", 1) // cpus)
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    in_flight_max = max(1, jobs or slots)
    logger.info("Ray: %d jobs, %g CPU / %g GPU / %.1f GiB each, %d at a time", len(todo), cpus, gpus, memory / 2**30, in_flight_max)

    sink = ray.remote(num_cpus=0)(_ProgressSink).remote()
    task = ray.remote(_task)
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": int(retries), "retry_exceptions": False,
               "runtime_env": {"env_vars": {"PYTHONPATH": _code_path()}}}  # fmt: skip
    if memory:
        options["memory"] = memory
    pending = list(todo)
    refs: dict[Any, JobSpec] = {}
    started_at: dict[str, float] = {}
    deadline: dict[str, float] = {}
    stopping_since: float | None = None
    cancelled: set[Any] = set()

    def submit() -> None:
        while pending and len(refs) < in_flight_max and not batch.state.stopping:
            job = pending.pop(0)
            ref = task.options(name=f"recon-batch:{job.name}", **options).remote(job.to_dict(), batch.worker_kwargs(job), sink)
            refs[ref] = job

    def poll_sink() -> None:
        for ev in ray.get(sink.poll.remote()):
            if ev[0] == "start":
                started_at[ev[1]] = time.monotonic()
                if batch.timeout_s:
                    deadline[ev[1]] = started_at[ev[1]] + batch.timeout_s + STOP_GRACE_S
                batch.started(ev[1])
            elif ev[0] == "progress":
                batch.progress(ev[1], ev[2], ev[3])

    def collect(ref: Any) -> None:
        job = refs.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - Ray's errors for a task that never returned
            status, error = _error_of(ray, err)
            if status == "interrupted" and job.name in deadline and time.monotonic() > deadline[job.name]:
                status, error = "timed out", f"cancelled {STOP_GRACE_S:.0f} s after its {batch.timeout_s:g} s timeout"
            started = started_at.get(job.name)
            result = batch.crashed(job, status, error, wall_s=round(time.monotonic() - started, 3) if started else None)
        retry = batch.finished(result)
        if retry is not None:
            pending.insert(0, retry)

    interrupted = False
    with sigterm_as_interrupt():
        submit()
        while refs:
            try:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                poll_sink()
                for ref in ready:
                    collect(ref)
                more, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
                for ref in more:
                    collect(ref)
                now = time.monotonic()
                for ref, job in list(refs.items()):
                    late = job.name in deadline and now > deadline[job.name]
                    if ref not in cancelled and (late or (stopping_since is not None and now - stopping_since > STOP_GRACE_S)):
                        logger.warning("%s: no answer in time; cancelling its task", job.name)
                        ray.cancel(ref, force=True)
                        cancelled.add(ref)
                submit()
            except KeyboardInterrupt:
                if batch.state.stopping:
                    for ref in refs:
                        with contextlib.suppress(Exception):
                            ray.cancel(ref, force=True)
                    raise
                interrupted = True
                batch.state.stopping = True
                stopping_since = time.monotonic()
                sink.set_stop.remote()
                batch._update(None)
                logger.warning("stopping: running jobs save a checkpoint at their next step (Ctrl-C again to stop at once)")
    if interrupted:
        raise KeyboardInterrupt("interrupted")
