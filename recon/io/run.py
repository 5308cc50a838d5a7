"""Run folders: the contract between fitting, evaluation, export, the viewer and batch.

Layout (everything written atomically: temp file in the same folder, then ``os.replace``)::

    RUN/
      run.json            status ("running" | "complete" | "failed"), kind, versions, timings
      config.json         the resolved configuration
      checkpoints/        ckpt_<step>.pt (params, optimiser and strategy state, RNG)
      splat.ply           final model (capture runs)
      renders/<split>/    renders named after the image files
      compare/<split>/    render | ground truth | error, side by side
      metrics.json        scores (written last)
      log.jsonl           one JSON object per logged step

A run folder whose ``run.json`` does not say ``complete`` is not a finished result.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from recon.errors import InputError
from recon.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json, to_jsonable

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "read_json"]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through a temp file, so an interrupted save never replaces a good one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any:
    """Read a JSON file, raising :class:`InputError` naming the file when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start}; expected a JSON file)") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None


class RunDir:
    """A run folder on disk (see module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # paths -----------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # status ----------------------------------------------------------------
    def status(self) -> dict:
        f = self.root / RUN_FILE
        if not f.is_file():
            return {}
        data = read_json(f)
        if not isinstance(data, dict):
            raise InputError(f, f"expected a JSON object, got {type(data).__name__}")
        return data

    def is_complete(self) -> bool:
        return self.status().get("status") == "complete"

    def mark(self, status: str, **info: Any) -> None:
        """Update ``run.json`` with a status and extra fields (kept from earlier calls)."""
        data = self.status()
        data.update(info)
        data["status"] = status
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self.root / RUN_FILE, data)

    # checkpoints -----------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"ckpt_{step:07d}.pt"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        found = sorted(self.checkpoints.glob("ckpt_*.pt"))
        return found[-1] if found else None

    def save_checkpoint(self, step: int, state: dict, keep: int = 2) -> Path:
        """Save ``state`` for ``step`` atomically and keep only the newest ``keep`` checkpoints."""
        path = self.checkpoint_path(step)
        atomic_torch_save(path, state)
        for old in sorted(self.checkpoints.glob("ckpt_*.pt"))[:-keep]:
            old.unlink()
        return path

    def append_log(self, record: dict) -> None:
        """Append one JSON line to ``log.jsonl`` (best effort; a crash loses at most this line).
        After a crash mid-line the record starts a new line, so only the torn one is lost."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "log.jsonl"
        torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        with open(path, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(to_jsonable(record)) + "\n")

    def read_log(self) -> list[dict]:
        """The records of ``log.jsonl``; a line that is not a JSON object (one torn by a crash
        while it was written) is skipped with a warning."""
        f = self.root / "log.jsonl"
        if not f.is_file():
            return []
        records = []
        for i, line in enumerate(f.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                logger.warning("%s:%d: not a JSON record (torn by a crash?), skipped", f, i)
        return records
