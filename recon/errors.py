"""Errors that reach users as one line: which file or argument, what is wrong, what was expected."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input (file, geometry, argument). The CLI prints ``str(err)`` alone and exits 2.

    Build messages as ``"<file or argument>: <problem> (expected <what>)"``, on one line.
    """

    def __init__(self, where: str | Path | None, problem: str):
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where is not None else problem)
