"""Paths listed inside dataset files (``file_path`` in ``transforms.json`` or R2-Gaussian's
``meta_data.json``): resolved against the dataset folder, and refused when they leave it
(absolute paths, ``..``) unless the caller allows that (``--allow-outside-paths``). A dataset
someone else made must not make recon read arbitrary files.

The check is on the path as written (lexical): a symlink inside the folder is the user's own
arrangement and is followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from recon.errors import InputError

__all__ = ["dataset_path"]


def dataset_path(root: Path, listed: str, listed_in: str | Path, what: str, *, allow_outside: bool = False) -> Path:
    """``root / listed`` normalised; :class:`InputError` naming ``listed_in`` when it leaves
    ``root`` and ``allow_outside`` is false."""
    if "\x00" in listed:
        raise InputError(listed_in, f"{what} {listed!r} contains a NUL character")
    path = Path(os.path.normpath(Path(root) / listed))
    rel = os.path.relpath(path, os.path.normpath(root))
    if not allow_outside and (Path(listed).is_absolute() or rel == ".." or rel.startswith(".." + os.sep)):
        raise InputError(listed_in, f"{what} {listed!r} points outside the dataset folder {root} "
                                    "(refused: pass --allow-outside-paths if you trust this file)")  # fmt: skip
    return path
