"""Atomic file writes, the one writer every module uses: readers never see a partial file, and
an interrupted or failed write keeps the old file.

Mechanism (:func:`atomic_path`): write to a hidden temporary file in the destination folder
(same suffix, so libraries that dispatch on the extension keep working), fsync it, then
``os.replace`` it over the destination. Permissions follow the process umask, as a plain
``open(path, "w")`` would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_save_npy",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_path",
    "atomic_write_text",
    "to_jsonable",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


def _suffix(name: str) -> str:
    """The compound suffix libraries dispatch on (``.nii.gz``, ``.png``, ``.json``)."""
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``
    (fsynced), on any exception (Ctrl-C included) it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{_suffix(path.name)}")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path`` to fill (a DICOM series); on success it
    takes ``path``'s place (a folder already there is moved aside, then removed: callers decide
    whether replacing it is allowed), on any exception it is removed and ``path`` is untouched.
    Readers see the old folder or the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a binary file object, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_path(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` for libraries that write to a path themselves (nibabel, pydicom,
    tifffile, matplotlib); ``tmp_path`` has ``path``'s suffix. Atomic (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    return atomic_write(path, lambda f: np.save(f, array))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically: an interrupted save never replaces a good checkpoint."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tensors and numpy scalars/arrays turned into JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (see :func:`to_jsonable`), atomically. An object that
    cannot be encoded raises before anything is written."""
    return atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())
