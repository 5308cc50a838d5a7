"""The local backend (the default): jobs in worker processes on this machine, no server.

``--jobs N`` long-lived worker processes (``multiprocessing``, spawn context: a fresh
interpreter, no forked torch/OpenMP state) each take one job at a time through
:func:`recon.batch.runner.execute_spec`, with ``cores // N`` torch/numba threads. A pool of our
own rather than ``concurrent.futures.ProcessPoolExecutor``, because a worker killed by the
kernel (out of memory) breaks that whole pool; here the driver knows which job the dead worker
held, reports it (``out of memory`` for SIGKILL, ``worker died`` otherwise) and starts a new
worker.

Stopping: Ctrl-C or SIGTERM in the driver sets a shared flag that every running job checks at
each training step (it saves a checkpoint and ends ``interrupted``); a second Ctrl-C kills the
workers (their newest checkpoints stay). Workers ignore the terminal's SIGINT themselves (the
driver decides), and die with the driver (``PR_SET_PDEATHSIG`` + a parent watchdog) after saving
a checkpoint at their next step, so a killed batch never leaves orphans writing into run folders.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from recon.batch.manifest import JobSpec
from recon.batch.runner import BatchRun, sigterm_as_interrupt

logger = logging.getLogger(__name__)

__all__ = ["available_cpus", "available_memory_bytes", "default_jobs", "run_local"]

KILL_GRACE_S = 60.0
"""After a per-job timeout, how long a job may take to reach its next step before it is killed."""


def available_cpus() -> int:
    """CPUs this process may use (affinity, cgroup quota)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def available_memory_bytes() -> int:
    """Memory available to new processes (``MemAvailable``), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_jobs(memory_per_job_gb: float) -> int:
    """What fits: one job per core, at most as many as ``memory_per_job_gb`` fit in the available memory."""
    by_memory = int(available_memory_bytes() / (memory_per_job_gb * 2**30)) if memory_per_job_gb > 0 else 1 << 30
    return max(1, min(available_cpus(), by_memory))


# ---------------------------------------------------------------------------------- the worker
def _die_with_parent() -> None:
    """SIGTERM when the driver dies (Linux), so a killed batch leaves no orphan jobs."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _watch_parent(parent: int, stop: dict[str, bool], outbox: Any) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            stop["stop"] = True
            outbox.cancel_join_thread()  # nobody reads it any more: never block the exit on it
            with contextlib.suppress(Exception):
                os.kill(os.getpid(), signal.SIGTERM)
            return


def _worker(wid: int, threads: int, inbox: Any, outbox: Any, stop_event: Any, parent: int) -> None:
    """A worker process: takes job specs from ``inbox`` until ``None``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides (stop_event); the loop installs its own while training
    local_stop = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: local_stop.__setitem__("stop", True))
    _die_with_parent()
    threading.Thread(target=_watch_parent, args=(parent, local_stop, outbox), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[logging.NullHandler()])
    from recon.batch.runner import execute_spec

    outbox.put(("ready", wid, os.getpid()))
    while not local_stop["stop"]:
        try:
            item = inbox.get(timeout=1.0)
        except queue.Empty:
            continue
        if item is None:
            break
        spec, kwargs = item
        name = spec["name"]
        outbox.put(("start", wid, name))
        last = [0.0]

        def on_progress(step: int, total: int, name: str = name, last: list[float] = last) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or step == total:
                last[0] = now
                outbox.put(("progress", wid, name, step, total))

        result = execute_spec(spec, should_stop=lambda: stop_event.is_set() or local_stop["stop"], on_progress=on_progress, **kwargs)
        outbox.put(("result", wid, result))


# ---------------------------------------------------------------------------------- the driver
@dataclass
class _Slot:
    proc: Any
    inbox: Any
    job: JobSpec | None = None
    since: float = 0.0
    pid: int | None = None
    kill_at: float | None = None


def _death(exitcode: int | None) -> tuple[str, str]:
    if exitcode == -signal.SIGKILL:
        return "out of memory", "worker killed by SIGKILL (the kernel's out-of-memory killer, or kill -9)"
    if exitcode is not None and exitcode < 0:
        return "worker died", f"worker killed by {signal.Signals(-exitcode).name}"
    return "worker died", f"worker exited with code {exitcode}"


def run_local(batch: BatchRun, todo: list[JobSpec], *, jobs: int, threads: int) -> None:
    """Run ``todo`` in ``jobs`` worker processes with ``threads`` threads each (see the module
    docstring). Returns when every job has a result; raises KeyboardInterrupt after a clean stop."""
    if not todo:
        return
    ctx = mp.get_context("spawn")
    stop_event = ctx.Event()
    outbox = ctx.Queue()
    pending: deque[JobSpec] = deque(todo)
    slots: dict[int, _Slot] = {}
    next_id = [0]
    interrupted = False

    def start_worker() -> None:
        wid = next_id[0]
        next_id[0] += 1
        inbox = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(wid, threads, inbox, outbox, stop_event, os.getpid()), name=f"recon-batch-{wid}", daemon=True)
        proc.start()
        slots[wid] = _Slot(proc, inbox)

    def handle(msg: tuple) -> None:
        kind, wid = msg[0], msg[1]
        slot = slots.get(wid)
        if kind == "ready" and slot is not None:
            slot.pid = msg[2]
        elif kind == "start":
            batch.started(msg[2])
        elif kind == "progress":
            batch.progress(msg[2], msg[3], msg[4])
        elif kind == "result":
            if slot is not None:
                slot.job = None
                slot.kill_at = None
            retry = batch.finished(msg[2])
            if retry is not None:
                pending.appendleft(retry)

    def drain(block_s: float) -> None:
        try:
            handle(outbox.get(timeout=block_s))
            while True:
                handle(outbox.get_nowait())
        except queue.Empty:
            pass

    def check_workers() -> None:
        now = time.monotonic()
        for wid, slot in list(slots.items()):
            if slot.proc.is_alive():
                if slot.job is not None and slot.kill_at is not None and now > slot.kill_at:
                    logger.warning("%s: no answer %.0f s after its timeout; killing its worker", slot.job.name, KILL_GRACE_S)
                    slot.proc.kill()
                continue
            drain(0.05)  # a result sent just before the exit
            slot.proc.join(timeout=1)
            if slot.job is not None:
                job = slot.job
                timed = slot.kill_at is not None and now > slot.kill_at
                status, error = ("timed out", f"killed {KILL_GRACE_S:.0f} s after its {batch.timeout_s:g} s timeout") if timed else _death(slot.proc.exitcode)
                retry = batch.finished(batch.crashed(job, status, error, wall_s=round(now - slot.since, 3)))
                if retry is not None:
                    pending.appendleft(retry)
            del slots[wid]
            if pending and not batch.state.stopping:
                start_worker()

    with sigterm_as_interrupt():
        try:
            for _ in range(min(jobs, len(pending))):
                start_worker()
            while pending or any(s.job is not None for s in slots.values()):
                if not batch.state.stopping:
                    for slot in slots.values():
                        if slot.job is None and pending and slot.proc.is_alive():
                            job = pending.popleft()
                            slot.job, slot.since = job, time.monotonic()
                            slot.kill_at = slot.since + batch.timeout_s + KILL_GRACE_S if batch.timeout_s else None
                            slot.inbox.put((job.to_dict(), batch.worker_kwargs(job, threads)))
                elif not any(s.job is not None for s in slots.values()):
                    break
                try:
                    drain(0.2)
                    check_workers()
                except KeyboardInterrupt:
                    if batch.state.stopping:  # the second Ctrl-C: stop at once
                        for slot in slots.values():
                            slot.proc.kill()
                        raise
                    interrupted = True
                    batch.state.stopping = True
                    stop_event.set()
                    batch._update(None)
                    logger.warning("stopping: running jobs save a checkpoint at their next step (Ctrl-C again to stop at once)")
        finally:
            for slot in slots.values():
                with contextlib.suppress(Exception):
                    slot.inbox.put(None)
            deadline = time.monotonic() + 10
            for slot in slots.values():
                slot.proc.join(timeout=max(0.1, deadline - time.monotonic()))
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join(timeout=5)
            with contextlib.suppress(Exception):
                outbox.close()
    if interrupted:
        raise KeyboardInterrupt("interrupted")
