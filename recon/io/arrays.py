"""NumPy array files (``.npy`` / ``.npz``) read with one-line errors and without running code:
never unpickled (object arrays are refused), the shape a header declares is checked against the
bytes the file holds and the memory available before anything is allocated, and only real
numbers (bool, integer, float) are accepted.

Every reader in :mod:`recon.io` that loads ``.npy`` / ``.npz`` goes through here.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from recon.errors import InputError
from recon.memory import check_fits, format_bytes

__all__ = ["check_declared_size", "read_npy", "read_npz"]

DEFLATE_MAX_RATIO = 1032
"""Deflate (gzip, zip, PNG) cannot compress better than about 1032:1, so a compressed file
declaring more than this many times its own size is truncated or lying."""


def check_declared_size(where: str | Path, shape: tuple[int, ...], itemsize: int, stored_bytes: int | None, *, compressed: bool = False, what: str = "data") -> None:
    """Refuse a header whose declared data cannot be in the file (truncated or corrupt) or
    cannot fit in memory, before anything is allocated.

    Args:
        shape: the declared shape; ``itemsize``: bytes per element.
        stored_bytes: bytes of data the file holds after the header (``None``: unknown).
        compressed: the data are deflate-compressed (checked against :data:`DEFLATE_MAX_RATIO`).
    """
    if any(int(s) < 0 for s in shape):
        raise InputError(where, f"header declares a negative size {list(shape)}")
    declared = math.prod(int(s) for s in shape) * int(itemsize)
    if stored_bytes is not None:
        room = stored_bytes * DEFLATE_MAX_RATIO + 65536 if compressed else stored_bytes
        if declared > room:
            raise InputError(where, f"header declares {what} of shape {list(shape)} ({format_bytes(declared)}) but the file holds "
                                    f"{format_bytes(stored_bytes)}{' compressed' if compressed else ''} (truncated or corrupt file)")  # fmt: skip
    check_fits(declared, where, f"{what} of shape {list(shape)} declared in its header")


def _read_header(f: IO[bytes], where: str | Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, tokenize.TokenError) as err:  # numpy parses the header as Python literals
        raise InputError(where, f"not a readable .npy array ({' '.join(str(err).split())})") from None
    if dtype.hasobject:
        raise InputError(where, "holds Python objects (a pickle; refused because loading it would run code; expected a numeric array)")
    if dtype.kind not in "biuf":
        raise InputError(where, f"has dtype {dtype} (expected bool, integer or float numbers)")
    return tuple(int(s) for s in shape), dtype, bool(fortran)


def _read_body(f: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, fortran: bool, where: str | Path) -> np.ndarray:
    count = math.prod(shape)
    data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise InputError(where, f"truncated: holds {len(data)} of the {count * dtype.itemsize} data bytes its header declares")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def read_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """A ``.npy`` file as an array (never unpickled; sizes checked before allocating).

    Raises:
        InputError: missing, truncated, corrupt, object or non-numeric dtype, or too big.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file not found" if not path.exists() else "is not a file")
    try:
        with open(path, "rb") as f:
            shape, dtype, fortran = _read_header(f, path)
            check_declared_size(path, shape, dtype.itemsize, path.stat().st_size - f.tell(), what=what)
            return _read_body(f, shape, dtype, fortran, path)
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from None


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file (never unpickled; sizes checked before allocating).

    Raises:
        InputError: missing, not a zip, truncated, corrupt member, object dtype, too big.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "is not a file")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                where = f"{path} (array {name!r})"
                with z.open(info) as f:
                    shape, dtype, fortran = _read_header(f, where)
                    compressed = info.compress_type != zipfile.ZIP_STORED
                    check_declared_size(where, shape, dtype.itemsize, info.compress_size if compressed else info.file_size,
                                        compressed=compressed)  # fmt: skip
                    out[name] = _read_body(f, shape, dtype, fortran, where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, f"not a readable .npz archive ({' '.join(str(err).split())})") from None
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from None
    return out
