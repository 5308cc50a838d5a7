"""Where a batch's inputs and outputs live: local paths (a shared filesystem on a cluster) or
fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

The pipelines read and write local files (atomic renames, memory-mapped arrays), so a job whose
input or run folder is a URL works in a local staging folder (``--scratch``):

- an input URL is downloaded once per node into ``SCRATCH/inputs/<hash>/`` (a file input brings
  its same-stem siblings: the geometry ``.json``/``.yaml`` beside a projection stack);
- a run folder URL is staged in ``SCRATCH/runs/<hash>/<name>/``: an incomplete remote run with a
  checkpoint is downloaded first (so a rerun on any node resumes it), and after the job the
  folder is uploaded with ``run.json`` last: a reader that finds ``status: complete`` finds every
  other file in place. Files the job removed (older checkpoints) are removed remotely.

Only ``fsspec`` is needed for ``file://`` URLs; other protocols need their fsspec driver
(``s3fs``, ``gcsfs``, ``adlfs``), which the error names when it is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from recon.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["default_scratch", "is_url", "join", "problems", "publish_run", "stage_input", "stage_run", "write_text"]

RUN_FILE = "run.json"


def is_url(text: str | Path) -> bool:
    """``s3://bucket/x``, ``file:///data`` (not a local path)."""
    s = str(text)
    head, sep, _ = s.partition("://")
    return bool(sep) and head.isidentifier()


def join(base: str | Path, name: str) -> str:
    """``base/name`` for a local path or a URL."""
    if is_url(base):
        return str(base).rstrip("/") + "/" + name
    return str(Path(base) / name)


def _fs(url: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - torch depends on fsspec
        raise InputError(url, "URLs need fsspec (pip install fsspec)") from None
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise InputError(url, f"no fsspec driver for this URL ({str(err).splitlines()[0]}; e.g. pip install s3fs for s3://)") from None


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def default_scratch() -> Path:
    """``$RECON_BATCH_SCRATCH`` or ``<tmp>/recon-batch``: node-local staging for URL inputs/outputs."""
    return Path(os.environ.get("RECON_BATCH_SCRATCH") or Path(tempfile.gettempdir()) / "recon-batch")


# ---------------------------------------------------------------------------------- inputs
def stage_input(data: str, scratch: Path) -> str:
    """A local path for the input ``data``: itself when local, else a cached download."""
    if not is_url(data):
        return data
    fs, path = _fs(data)
    name = PurePosixPath(path.rstrip("/")).name
    dest = scratch / "inputs" / _hash(data)
    if (dest / ".complete").is_file():
        return str(dest / name)
    try:
        isdir = fs.isdir(path)
        exists = isdir or fs.exists(path)
    except OSError as err:
        raise InputError(data, f"cannot be read ({err})") from None
    if not exists:
        raise InputError(data, "not found")
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdir(scratch / "inputs")))
    try:
        if isdir:
            fs.get(path.rstrip("/") + "/", str(tmp / name), recursive=True)
        else:  # the file and its same-stem siblings (geometry beside a stack)
            parent = str(PurePosixPath(path).parent)
            stem = name.split(".", 1)[0]
            for other in fs.ls(parent, detail=False):
                if PurePosixPath(other).name.split(".", 1)[0] == stem and not fs.isdir(other):
                    fs.get_file(other, str(tmp / PurePosixPath(other).name))
        (tmp / ".complete").touch()
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(dest / name)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------------------------- run folders
def _remote_names(fs: Any, root: str) -> list[str] | None:
    try:
        return [PurePosixPath(p.rstrip("/")).name for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return None


def problems(out: str) -> list[str]:
    """What keeps the run folder ``out`` (local or URL) from being a complete, valid run:
    :meth:`recon.io.run.RunDir.problems`, for a URL on a local mirror of its ``run.json`` and
    file names."""
    from recon.io.run import RunDir

    if not is_url(out):
        return RunDir(out).problems()
    fs, root = _fs(out)
    names = _remote_names(fs, root)
    if names is None or RUN_FILE not in names:
        return [f"{out}: no {RUN_FILE} (not a recon run folder)"]
    with tempfile.TemporaryDirectory(prefix="recon-run-") as tmp:
        for name in names:
            if name != RUN_FILE:
                Path(tmp, name).touch()
        fs.get_file(root.rstrip("/") + "/" + RUN_FILE, str(Path(tmp, RUN_FILE)))
        return [p.replace(tmp, out) for p in RunDir(tmp).problems()]


def stage_run(out: str, scratch: Path) -> Path:
    """A local folder to run the job whose run folder is ``out``: ``out`` itself when local;
    for a URL a staging folder holding the newest state (local staging with a checkpoint, else
    the remote folder when it has one, else empty)."""
    if not is_url(out):
        return Path(out)
    local = scratch / "runs" / _hash(out.rstrip("/").rsplit("/", 1)[0]) / out.rstrip("/").rsplit("/", 1)[-1]
    if local.is_dir() and any(local.glob("checkpoints/ckpt_*.pt")):
        return local
    fs, root = _fs(out)
    names = _remote_names(fs, root) or []
    if local.exists():
        shutil.rmtree(local)
    if "checkpoints" in names:
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get(root.rstrip("/") + "/", str(local), recursive=True)
        logger.info("downloaded %s to resume it", out)
    return local


def publish_run(local: Path, out: str, *, keep_local: bool = False) -> None:
    """Upload the staged run folder ``local`` to the URL ``out`` (no-op for a local ``out``):
    every file, ``run.json`` last; remote files the job removed are deleted."""
    if not is_url(out) or not local.is_dir():
        return
    fs, root = _fs(out)
    root = root.rstrip("/")
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    rel = [p.relative_to(local).as_posix() for p in files]
    fs.makedirs(root, exist_ok=True)
    for p, r in sorted(zip(files, rel), key=lambda t: t[1] == RUN_FILE):
        parent = str(PurePosixPath(root, r).parent)
        fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(p), f"{root}/{r}")
    try:
        remote = [x for x in fs.find(root) if not fs.isdir(x)]
    except FileNotFoundError:
        remote = []
    keep = {f"{root}/{r}" for r in rel}
    for x in remote:  # fsspec paths carry no protocol, like ``root``
        if x.rstrip("/") not in keep and x.startswith(root + "/"):
            fs.rm_file(x)
    if not keep_local:
        shutil.rmtree(local, ignore_errors=True)


def write_text(target: str, text: str) -> None:
    """Write a small text file (report, attempt record) to a local path, atomically, or a URL."""
    if not is_url(target):
        from recon.io.atomic import atomic_write_text

        atomic_write_text(target, text)
        return
    fs, path = _fs(target)
    fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
    fs.pipe_file(path, text.encode("utf-8"))


def read_text(target: str) -> str | None:
    """A small text file's contents, or None when it does not exist."""
    if not is_url(target):
        p = Path(target)
        return p.read_text(encoding="utf-8") if p.is_file() else None
    fs, path = _fs(target)
    try:
        return fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        return None
