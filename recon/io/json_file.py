"""Reading JSON files with one-line errors naming the file (writing: :func:`recon.io.atomic.atomic_write_json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recon.errors import InputError

__all__ = ["read_json"]


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8 or malformed file raises
    :class:`InputError` naming it and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start}; expected a JSON file)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
