"""One training loop for every trainer: steps, checkpoints and exact resume, the log, progress,
the global random state, the time spent, and a clean stop on Ctrl-C / SIGTERM.

A trainer is any object with the :class:`Trainer` interface (capture Gaussians, anchored
Gaussians, CT Gaussians, TV, SART):

- ``step``: steps done so far;
- ``train_step() -> dict``: one optimisation step; increments ``step`` and returns that step's
  numbers (``loss`` at least), which the loop appends to ``history``;
- ``state_dict()`` / ``load_state_dict(state)``: everything needed to continue, including the
  trainer's own random generators;
- ``history``: one record per step, ``{"step", "time_s", "loss", ...}``;
- optionally ``converged``: when it turns True the loop stops before ``n_steps`` (a trainer
  with a convergence test; it keeps the flag in its state, so a resumed run stops too).

:func:`train` adds what every trainer needs and none writes again: a checkpoint every
``checkpoint_every`` steps and at the end (in a :class:`~recon.io.run.RunDir`, atomically; the
global torch/numpy/Python random state saved with it), a ``log.jsonl`` record every
``log_every`` steps, a progress callback, wall time carried across resumed sessions, and on
SIGINT/SIGTERM a checkpoint of the last finished step before :class:`Interrupted` is raised.

Resume: :func:`read_checkpoint` returns the newest checkpoint; the caller builds the trainer
from ``checkpoint["trainer"]`` (trainers skip their initialisation when given a state) and
passes the checkpoint to :func:`train`, which restores the random state and the elapsed time.
The same seed and the same steps then give bit-identical parameters on the CPU
(``tests/pipelines/test_resume.py``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from recon.errors import InputError
from recon.io.run import RunDir
from recon.train.seed import rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "Interrupted", "ProgressFn", "Trainer", "read_checkpoint", "train"]

CHECKPOINT_FORMAT = "recon-checkpoint/2"
"""Written into every checkpoint; older checkpoints are refused with a one-line error."""

ProgressFn = Callable[[int, int, dict], None]
"""``progress(step, n_steps, record)`` after every step."""


@runtime_checkable
class Trainer(Protocol):
    """What :func:`train` drives (see the module docstring)."""

    step: int
    history: list[dict[str, Any]]

    def train_step(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Interrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT or SIGTERM; a checkpoint of ``step`` was saved (when the
    loop had a run folder)."""

    def __init__(self, step: int, signal_name: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(f"{signal_name} at step {step}")


def read_checkpoint(run: RunDir) -> dict[str, Any] | None:
    """The newest checkpoint of ``run`` (None when there is none), loaded with
    ``weights_only=True``: a checkpoint cannot run code. A checkpoint written by another version
    of recon, or damaged, raises :class:`InputError` naming the file."""
    path = run.latest_checkpoint()
    if path is None:
        return None
    return load_checkpoint_file(path)


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint file (see :func:`read_checkpoint`)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a readable recon checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format", "no format field") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(path, f"checkpoint format {found!r}, expected {CHECKPOINT_FORMAT!r} (written by another recon version; start a new run)")
    return ckpt


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, str | None]]:
    """While inside, SIGINT/SIGTERM set ``flag["signal"]`` instead of raising at once, so the loop
    stops between steps with a consistent state. A second Ctrl-C raises immediately. Only in the
    main thread (signal handlers cannot be installed elsewhere)."""
    flag: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        logger.warning("%s received: stopping after this step (Ctrl-C again to stop at once)", flag["signal"])

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _save(run: RunDir, trainer: Trainer, elapsed_s: float, keep: int) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(trainer.step),
        "elapsed_s": float(elapsed_s),
        "trainer": trainer.state_dict(),
        "rng": rng_state(),
    }
    run.save_checkpoint(int(trainer.step), state, keep=keep)


def train(
    trainer: Trainer,
    n_steps: int,
    *,
    run: RunDir | None = None,
    resumed: dict[str, Any] | None = None,
    checkpoint_every: int = 0,
    log_every: int = 10,
    progress: ProgressFn | None = None,
    on_checkpoint: Callable[[Trainer], None] | None = None,
    keep_checkpoints: int = 2,
    final_checkpoint: bool = True,
) -> float:
    """Run ``trainer`` until ``trainer.step == n_steps`` (or it says it ``converged``); returns the training seconds (wall
    time, earlier sessions of a resumed run included).

    Args:
        trainer: see :class:`Trainer`.
        n_steps: total steps (a resumed run continues to this count).
        run: the run folder for checkpoints and ``log.jsonl`` (None: train in memory only).
        resumed: the checkpoint the trainer was built from (:func:`read_checkpoint`): its global
            random state and elapsed time are restored.
        checkpoint_every: steps between checkpoints (0: only the final one).
        log_every: steps between ``log.jsonl`` records (the last step is always logged).
        progress: called after every step with ``(step, n_steps, record)``; raising
            ``KeyboardInterrupt`` there cancels like a signal (checkpoint, then :class:`Interrupted`).
        on_checkpoint: called after each checkpoint is written (e.g. to write a preview of the
            model for a viewer); not after the final one.
        final_checkpoint: save a checkpoint after the last step (lets ``--resume`` extend a run).
    """
    if n_steps < 0:
        raise ValueError(f"n_steps: expected >= 0, got {n_steps}")
    elapsed0 = 0.0
    if resumed is not None:
        if int(resumed["step"]) != trainer.step:
            raise ValueError(f"resumed checkpoint is at step {resumed['step']} but the trainer at {trainer.step}")
        set_rng_state(resumed["rng"])
        elapsed0 = float(resumed.get("elapsed_s", 0.0))
        logger.info("resuming at step %d (%.1f s trained before)", trainer.step, elapsed0)
    t0 = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t0

    with _stop_on_signals() as flag:
        while trainer.step < n_steps and not getattr(trainer, "converged", False):
            numbers = trainer.train_step()
            record = {"step": int(trainer.step), "time_s": round(elapsed(), 3), **numbers}
            trainer.history.append(record)
            if run is not None and (trainer.step % max(1, log_every) == 0 or trainer.step == n_steps):
                run.append_log(record)
            if run is not None and checkpoint_every and trainer.step % checkpoint_every == 0 and trainer.step < n_steps:
                _save(run, trainer, elapsed(), keep_checkpoints)
                if on_checkpoint is not None:
                    on_checkpoint(trainer)
            if progress is not None:
                try:
                    progress(int(trainer.step), n_steps, record)
                except KeyboardInterrupt:  # a caller's way to cancel between steps
                    flag["signal"] = flag["signal"] or "cancelled"
            if flag["signal"] is not None:
                if run is not None:
                    _save(run, trainer, elapsed(), keep_checkpoints)
                raise Interrupted(int(trainer.step), flag["signal"])
        total = elapsed()
        if run is not None and final_checkpoint:
            _save(run, trainer, total, keep_checkpoints)
    return total
