"""Loading shipped or user-trained model weights from a local folder (never a download).

:func:`save_local` writes such a folder (the training scripts' output) without ever leaving a
half-written one; :func:`load_local` is the one place that checks a ``save_pretrained`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) and turns every way it can fail into one
:class:`~recon.errors.InputError` naming the folder and the script that writes the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from recon.errors import InputError

__all__ = ["WEIGHT_FILES", "load_local", "save_local"]

WEIGHT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
"""What ``ModelMixin.save_pretrained`` writes and :func:`load_local` needs."""

_M = TypeVar("_M")


def load_local(cls: type[_M], folder: Path, what: str, train_script: str, **kwargs: Any) -> _M:
    """``cls.from_pretrained(folder, local_files_only=True, **kwargs)`` with one-line errors.

    Args:
        cls: a diffusers ``ModelMixin`` subclass.
        folder: the weights folder.
        what: the weights' name in messages (e.g. "CT refiner").
        train_script: the script that writes them (named in the messages).

    Raises:
        InputError: a file is missing, the files do not load, or they hold another class.
    """
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(folder, f"no {what} weights here (missing {', '.join(missing)}); train them with "
                                 f"`python {train_script} --weights-out {folder}`")  # fmt: skip
    try:
        model = cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False, **kwargs)  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as err:
        msg = " ".join(str(err).split())[:200]
        raise InputError(folder, f"could not load the {what} weights ({type(err).__name__}: {msg}); retrain with `python {train_script}`") from None
    if not isinstance(model, cls):
        raise InputError(folder, f"holds a {type(model).__name__}, not a {cls.__name__}")
    return model


def save_local(model: Any, folder: Path) -> int:
    """``model.save_pretrained`` (safetensors) into a temporary sibling of ``folder``, then each
    file moved into ``folder``: an interrupted save leaves the previous weights whole. Other files
    in ``folder`` (a model card) are kept. Returns the size of the safetensors file in bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return (folder / WEIGHT_FILES[1]).stat().st_size
