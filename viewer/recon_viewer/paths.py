"""Which files the viewer may serve: regular files inside a run folder, reached without symlinks.

Every refusal is the same ``None`` (the server answers 404): no directory listing, nothing
outside the folder, no ``..`` (however it was encoded: the server decodes the URL once before
calling :func:`safe_file`), no absolute path, no symlink anywhere on the way, no dot-file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["CONTENT_TYPES", "content_type", "safe_file"]

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}


def content_type(path: str | Path) -> str:
    """MIME type by extension; anything unknown (PLY, NIfTI, checkpoints) is binary."""
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def safe_file(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it is a regular file inside ``root``; otherwise ``None``.

    Args:
        root: the run folder, already resolved (``Path.resolve()``).
        rel: the decoded, ``/``-separated path below ``root`` taken from the URL.

    Refused (``None``): empty paths, absolute paths, empty / ``.`` / ``..`` / dot-file
    segments, backslashes or NUL bytes, anything that does not exist, directories, and any
    path with a symlink in it (even one pointing back inside ``root``).
    """
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None
    path = root
    mode = 0
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    if not stat.S_ISREG(mode):
        return None
    real = os.path.realpath(path)
    if os.path.commonpath([real, str(root)]) != str(root):  # belt and braces
        return None
    return path
