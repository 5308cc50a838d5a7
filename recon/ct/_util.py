"""Small private helpers shared by the CT modules (atomic writes, array checks)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from recon.errors import InputError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    ``write`` receives a temporary path in the same folder (same suffix as ``path``, so
    libraries that dispatch on the extension keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.exists():
            tmp_path.unlink()
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` without the ``.npy`` suffix surprise, written atomically."""

    def _write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    return atomic_write(path, _write)


def check_finite(array: np.ndarray, where: str | Path, what: str) -> None:
    """Raise ``InputError`` when ``array`` holds NaN or inf, naming how many and the first index."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            where, f"{what} contains {int(bad.sum())} NaN/inf values (first at index {first}); expected finite numbers"
        )
