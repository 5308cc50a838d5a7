"""Batch manifests: the jobs of a ``recon batch`` run, read from YAML, CSV or a folder of inputs,
and the configs built from them.

A job is a :class:`JobSpec`: a kind (``ct`` = ``recon ct fit``, ``capture`` = ``recon fit``), an
input, a run folder and option overrides by field name of the kind's config
(:class:`~recon.pipelines.ct.CTFitConfig`, :class:`~recon.pipelines.capture.CaptureFitConfig`),
nested with a dot (``tv.iterations``, ``gaussian.n_gaussians``, ``reg.dropout``). CLI spellings
work too (``--train-views``, ``tv.lambda-tv``).

YAML (``docs/batch.md``)::

    out: runs/week23                # optional; --out wins
    defaults:                       # options of every job; per kind under ct: / capture:
      ct: {method: tv, views: 25}
      capture: {preset: plain, downscale: 8}
    jobs:
      - {kind: ct, data: scans/case01}
      - {kind: ct, data: scans/case02.npy, name: case02-fdk, method: fdk}
      - {kind: capture, data: captures/mug, iterations: 2000, reg: {dropout: 0.1}}

CSV: one row per job; columns ``kind``, ``data``, optional ``name``, and one column per option
(an empty cell leaves the option unset; cells are read as YAML scalars: ``100``, ``tv``,
``[0, 1, 2]``). Relative paths are relative to the manifest's folder.

Checking is in two tiers. A manifest that cannot be read (syntax, wrong layout, unknown top-level
key) raises :class:`~recon.errors.InputError` (one line, exit 2). A bad job (unknown kind or
option, a value of the wrong type, a missing input field, a duplicate name) gets its one-line
``error`` and is reported without running; the other jobs go on. Everything else about the
inputs is checked by the job's own ``setup()`` in the worker.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from recon.batch.storage import is_url, join
from recon.errors import InputError

__all__ = [
    "KINDS",
    "RESERVED",
    "JobSpec",
    "build_config",
    "config_class",
    "folder_jobs",
    "options_of",
    "read_manifest",
    "validate_options",
]

KINDS = ("ct", "capture")
"""``ct``: ``recon ct fit``; ``capture``: ``recon fit``."""
RESERVED = ("data", "out", "resume", "overwrite")
"""Options a batch sets itself: the input, the run folder (``OUT/<name>``) and the resume policy."""
_TOP_KEYS = ("out", "defaults", "kind", "jobs")
_JOB_KEYS = ("kind", "data", "name")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CT_SUFFIXES = (".pickle", ".pkl", ".npy", ".tif", ".tiff")
"""Files of a scan folder that are scans (geometry .json/.yaml beside a stack is not a job)."""


@dataclass
class JobSpec:
    """One job of a batch: what to fit, into which run folder, with which option overrides."""

    name: str
    """Unique in the batch; the run folder is ``OUT/<name>``."""
    kind: str
    """``ct`` or ``capture``."""
    data: str
    """The input: a local path or an fsspec URL (``file://``, ``s3://``, ...)."""
    out: str = ""
    """The run folder (a local path or URL); set by the batch."""
    options: dict[str, Any] = field(default_factory=dict)
    """Overrides by (dotted) field name, JSON-able values, already checked against the config."""
    error: str | None = None
    """Why this job cannot run (reported, never run); None for a valid job."""
    index: int = 0
    """Position in the manifest (0-based), for messages."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# ---------------------------------------------------------------------------------- configs
def config_class(kind: str) -> type:
    """The config dataclass of a job kind (imports the pipeline)."""
    if kind == "ct":
        from recon.pipelines.ct import CTFitConfig

        return CTFitConfig
    if kind == "capture":
        from recon.pipelines.capture import CaptureFitConfig

        return CaptureFitConfig
    raise ValueError(f"kind: expected one of {KINDS}, given {kind!r}")


def _command(kind: str) -> str:
    return "recon ct fit" if kind == "ct" else "recon fit"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _option_names(cls: type) -> list[str]:
    """Every option name of ``cls``: its fields and, for nested configs, ``group.field``."""
    names = []
    for name, tp in _hints(cls).items():
        if name in RESERVED:
            continue
        if _is_config(tp):
            names += [f"{name}.{sub}" for sub in _hints(tp)]
        else:
            names.append(name)
    return names


def _normalise(key: str) -> str:
    """``--tv.lambda-tv`` -> ``tv.lambda_tv``."""
    return str(key).strip().lstrip("-").replace("-", "_")


def _flatten(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tv": {"iterations": 3}}`` -> ``{"tv.iterations": 3}`` (keys normalised)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = prefix + _normalise(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a list of {len(args)} values"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


class _BadValue(ValueError):
    pass


def _coerce(value: Any, tp: Any, base: Path | None) -> Any:
    """``value`` (from YAML/CSV/JSON) as the type ``tp`` of a config field, or :class:`_BadValue`."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _coerce(value, typing.get_args(tp)[0], base)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, base)
            except _BadValue:
                continue
        raise _BadValue
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice or (isinstance(value, (int, float)) and str(value) == str(choice)):
                return choice
        raise _BadValue
    if origin is tuple:
        args = typing.get_args(tp)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], base) for v in items)
        if len(items) != len(args):
            raise _BadValue
        return tuple(_coerce(v, a, base) for v, a in zip(items, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise _BadValue
    if tp is int:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if tp is float:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            raise _BadValue
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise _BadValue
        p = Path(value).expanduser()
        return (base / p) if base is not None and not p.is_absolute() else p
    return value


def validate_options(kind: str, options: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Check ``options`` (dotted names, nested mappings allowed) against the config of ``kind``;
    returns them flattened, normalised and coerced to JSON-able values. A bad name or value raises
    :class:`ValueError` with one line saying which and what is expected. Relative paths are made
    relative to ``base``."""
    cls = config_class(kind)
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for name, value in _flatten(options).items():
        group, _, sub = name.partition(".")
        if group in RESERVED and not sub:
            raise ValueError(f"option {name!r} is set by recon batch (runs go to OUT/<name>; interrupted jobs resume)")
        tp = hints.get(group)
        if tp is not None and sub and _is_config(tp):
            tp = _hints(tp).get(sub)
        elif tp is not None and (sub or _is_config(tp)):
            tp = None
        if tp is None:
            close = difflib.get_close_matches(name, _option_names(cls), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (see {_command(kind)} --help)"
            raise ValueError(f"unknown option {name!r} for {_command(kind)}{hint}")
        try:
            value = _coerce(value, tp, base)
        except _BadValue:
            raise ValueError(f"option {name!r}: expected {_describe(tp)}, got {value!r}") from None
        out[name] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def build_config(kind: str, data: str | Path, out: str | Path, options: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False) -> Any:
    """The config of a job, exactly as the CLI would build it: ``data``, ``out``, the resume
    policy and the (dotted) ``options`` set by field name. Presets apply as on the command line
    (:class:`~recon.splat.config.SplatTrainConfig`: explicit options win)."""
    cls = config_class(kind)
    hints = _hints(cls)
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in validate_options(kind, options).items():
        group, _, sub = name.partition(".")
        if sub:
            nested.setdefault(group, {})[sub] = _coerce(value, _hints(hints[group])[sub], None)
        else:
            top[name] = _coerce(value, hints[name], None)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for group, values in nested.items():
        f = defaults[group]
        base = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        top[group] = dataclasses.replace(base, **values)
    return cls(data=Path(data), out=Path(out), resume=resume, overwrite=overwrite, **top)


def options_of(kind: str, config: Any) -> dict[str, Any]:
    """The options of ``config`` (a config of ``kind`` or a subclass) that differ from the
    defaults of the kind's config (dotted names, JSON-able): what a folder batch
    (``recon batch ct DIR --method tv``) passes to every job."""
    cls = config_class(kind)
    default = cls(data=Path("."))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in RESERVED:
            continue
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for sub in dataclasses.fields(value):
                v, b = getattr(value, sub.name), getattr(base, sub.name)
                if v != b:
                    out[f"{f.name}.{sub.name}"] = _jsonable(v)
        elif value != base:
            out[f.name] = _jsonable(value)
    return out


# ---------------------------------------------------------------------------------- reading
def _default_name(data: str) -> str:
    tail = data.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".tar.gz"):
        if tail.endswith(suffix):
            return tail[: -len(suffix)]
    stem = tail.rsplit(".", 1)[0] if "." in tail[1:] else tail
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "job"


def _resolve_data(data: Any, base: Path | None) -> str:
    text = str(data).strip()
    if is_url(text) or base is None:
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else base / p)


def _make_job(index: int, entry: Any, defaults: Mapping[str, Any], base: Path | None) -> JobSpec:
    """A :class:`JobSpec` from one manifest entry; problems go to its ``error``."""
    where = f"job {index + 1}"
    if not isinstance(entry, Mapping):
        return JobSpec(name=f"job{index + 1}", kind="?", data="", index=index,
                       error=f"{where}: expected a mapping with kind, data and options, got {type(entry).__name__}")  # fmt: skip
    entry = {_normalise(k) if _normalise(k) in _JOB_KEYS else k: v for k, v in entry.items()}
    kind = str(entry.get("kind", defaults.get("kind", ""))).strip()
    data = entry.get("data")
    name = str(entry["name"]).strip() if entry.get("name") is not None else (_default_name(str(data)) if data else f"job{index + 1}")
    spec = JobSpec(name=name, kind=kind, data=_resolve_data(data, base) if data else "", index=index)
    where = f"job {index + 1} ({name})"
    if kind not in KINDS:
        spec.error = f"{where}: kind {kind!r}, expected one of {', '.join(KINDS)}" if kind else f"{where}: no kind (expected kind: ct or capture)"
        return spec
    if not data or not str(data).strip():
        spec.error = f"{where}: no data (expected the input path or URL)"
        return spec
    if not _NAME.match(name):
        spec.error = f"{where}: name {name!r} is not usable as a folder name (letters, digits, '.', '_', '-'; not starting with '.' or '_')"
        return spec
    merged = {**_flatten(defaults.get("all", {})), **_flatten(defaults.get(kind, {}))}
    merged.update(_flatten({k: v for k, v in entry.items() if k not in _JOB_KEYS}))
    try:
        spec.options = validate_options(kind, merged, base)
    except ValueError as err:
        spec.error = f"{where}: {err}"
    return spec


def _check_names(jobs: list[JobSpec]) -> list[JobSpec]:
    seen: dict[str, int] = {}
    for job in jobs:
        if job.error is None and job.name in seen:
            job.error = f"job {job.index + 1} ({job.name}): name already used by job {seen[job.name] + 1} (add name: to one of them)"
        seen.setdefault(job.name, job.index)
    return jobs


def _split_defaults(manifest: Path, defaults: Any, kind: str | None) -> dict[str, Any]:
    """``defaults:`` -> ``{"all": {...}, "ct": {...}, "capture": {...}}``."""
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, Mapping):
        raise InputError(manifest, f"defaults: expected a mapping of options, got {type(defaults).__name__}")
    out: dict[str, Any] = {"all": {}, "ct": {}, "capture": {}}
    for key, value in defaults.items():
        if key in KINDS:
            if not isinstance(value, Mapping):
                raise InputError(manifest, f"defaults.{key}: expected a mapping of options, got {type(value).__name__}")
            out[key] = dict(value)
        else:
            out["all"][key] = value
    if kind is not None:
        out["kind"] = kind
    return out


def read_manifest(path: str | Path) -> tuple[list[JobSpec], str | None]:
    """Read a YAML (``.yaml``/``.yml``) or CSV (``.csv``) manifest -> (jobs, the manifest's
    ``out`` or None). A manifest that cannot be read raises :class:`InputError` (one line naming
    the file); bad jobs carry their ``error``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found" if not path.exists() else "is not a file (a folder of scans: recon batch ct DIR / recon batch capture DIR)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot be read as UTF-8 text ({err})") from None
    base = path.resolve().parent
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text, base), None
    if suffix not in (".yaml", ".yml"):
        raise InputError(path, f"unknown manifest type {suffix or '(no suffix)'!r} (expected .yaml, .yml or .csv)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, f"YAML syntax error{where}: {problem}") from None
    if isinstance(doc, list):
        doc = {"jobs": doc}
    if not isinstance(doc, Mapping):
        raise InputError(path, f"expected a mapping with jobs: (or a list of jobs), got {type(doc).__name__}")
    unknown = [str(k) for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise InputError(path, f"unknown top-level key {unknown[0]!r} (expected {', '.join(_TOP_KEYS)}; job options go under jobs: or defaults:)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise InputError(path, "jobs: expected a non-empty list of jobs (kind, data, options)")
    kind = doc.get("kind")
    if kind is not None and kind not in KINDS:
        raise InputError(path, f"kind: {kind!r}, expected one of {', '.join(KINDS)}")
    defaults = _split_defaults(path, doc.get("defaults"), kind)
    out = doc.get("out")
    if out is not None:
        out = str(out) if is_url(str(out)) or Path(str(out)).expanduser().is_absolute() else str(base / str(out))
    return _check_names([_make_job(i, e, defaults, base) for i, e in enumerate(jobs)]), out


def _read_csv(path: Path, text: str, base: Path) -> list[JobSpec]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
    except csv.Error as err:
        raise InputError(path, f"CSV syntax error: {err}") from None
    if not rows:
        raise InputError(path, "empty manifest (expected a header row with kind, data and option columns)")
    header = [_normalise(h) for h in rows[0]]
    if "data" not in header:
        raise InputError(path, f"no 'data' column in the header {rows[0]} (expected kind, data, [name], options...)")
    if len(set(header)) != len(header):
        raise InputError(path, f"repeated column in the header {rows[0]}")
    if len(rows) < 2:
        raise InputError(path, "no jobs (expected one row per job after the header)")
    jobs = []
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            jobs.append(JobSpec(name=f"job{i + 1}", kind="?", data="", index=i,
                                error=f"job {i + 1}: {len(row)} cells, the header has {len(header)}"))  # fmt: skip
            continue
        entry: dict[str, Any] = {}
        for key, cell in zip(header, row):
            if cell.strip() == "":
                continue
            if key in _JOB_KEYS:
                entry[key] = cell.strip()
                continue
            try:
                entry[key] = yaml.safe_load(cell)
            except yaml.YAMLError:
                entry[key] = cell
        jobs.append(_make_job(i, entry, {}, base))
    return _check_names(jobs)


def folder_jobs(kind: str, folder: str | Path, options: Mapping[str, Any]) -> list[JobSpec]:
    """One job per input in ``folder`` (``recon batch ct DIR``): CT: each sub-folder and each
    projection file (``.npy``/``.tif``/``.pickle``; a geometry file beside a stack is not a job);
    capture: each sub-folder. Hidden entries are skipped; every job gets ``options``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder (expected a folder holding one scan or capture per entry)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")))
    if kind == "ct":
        inputs = [p for p in entries if p.is_dir() or p.name.lower().endswith(_CT_SUFFIXES)]
    else:
        inputs = [p for p in entries if p.is_dir()]
    if not inputs:
        what = "sub-folders or .npy/.tif/.pickle scans" if kind == "ct" else "sub-folders (one capture each)"
        raise InputError(folder, f"holds no inputs (expected {what})")
    checked = validate_options(kind, options)
    jobs = [JobSpec(name=_default_name(p.name), kind=kind, data=str(p), options=dict(checked), index=i) for i, p in enumerate(inputs)]
    return _check_names(jobs)


def assign_outputs(jobs: list[JobSpec], out: str) -> list[JobSpec]:
    """Set every job's run folder to ``OUT/<name>``."""
    for job in jobs:
        job.out = join(out, job.name)
    return jobs
