"""Run folders (format ``recon-run/1``): the contract between fitting, evaluation, export, the
viewer and batch. ``docs/run-folder.md`` describes the layout for readers outside Python; this
module defines it, and ``tests/io/test_run.py`` tests it.

Layout (every file written atomically: temp file in the same folder, then ``os.replace``)::

    RUN/
      run.json            format, kind, status, created/updated, step/total_steps, error, ...
      config.json         the resolved configuration
      log.jsonl           one JSON object per logged step
      checkpoints/        ckpt_<step>.pt (the training loop's state; the newest two are kept)
      loss.png            the loss curve
      metrics.json        scores (written last)
      capture runs:       cameras.json, splat.ply, renders/<split>/, photos/<split>/, compare/<split>/
      CT runs:            geometry.json, volume.npy, volume.nii.gz, reference.nii.gz, slices/, gaussians.pt
      capture runs with --prior: prior/pseudo_views.json, prior/step_<step>/{renders,repaired}/*.png
                          and prior/step_<step>/refresh.json (written last; recon.prior.guidance)

Statuses: ``running`` -> ``complete`` (every output written), or ``failed`` (``error`` holds the
one-line message) or ``interrupted`` (``--resume`` continues from the newest checkpoint). A
folder whose ``run.json`` does not say ``complete`` is not a finished result.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics, rigid_inverse
from recon.io.atomic import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    to_jsonable,
)
from recon.io.json_file import read_json

__all__ = [
    "FORMAT",
    "KINDS",
    "OUTPUTS",
    "PRIOR_REFRESH_FILE",
    "STATUSES",
    "RunDir",
    "atomic_torch_save",
    "atomic_write_json",
    "read_json",
]

logger = logging.getLogger(__name__)

FORMAT = "recon-run/1"
"""Written in every ``run.json``; readers refuse other formats."""
KINDS = ("capture", "ct")
STATUSES = ("running", "complete", "failed", "interrupted")

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
CAMERAS_FILE = "cameras.json"
GEOMETRY_FILE = "geometry.json"
PRIOR_DIR = "prior"
PRIOR_REFRESH_FILE = "refresh.json"

OUTPUTS: dict[str, tuple[str, ...]] = {
    "capture": (RUN_FILE, CONFIG_FILE, METRICS_FILE, CAMERAS_FILE, "splat.ply", "renders", "photos", "compare"),
    "ct": (RUN_FILE, CONFIG_FILE, METRICS_FILE, GEOMETRY_FILE, "volume.npy", "volume.nii.gz", "slices"),
}
"""What a ``complete`` run of each kind holds (files and folders)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class RunDir:
    """A run folder on disk (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def view_image(self, kind: str, split: str, name: str) -> Path:
        """``renders/<split>/<stem>.png``, ``compare/<split>/<stem>.png`` or ``photos/<split>/<stem>.jpg``."""
        if kind not in ("renders", "compare", "photos"):
            raise ValueError(f"kind: expected renders, compare or photos, given {kind!r}")
        return self.root / kind / split / (Path(name).stem + (".jpg" if kind == "photos" else ".png"))

    def prior_path(self, *parts: str) -> Path:
        """``prior/<parts>``: what a fit with a diffusion prior keeps (:mod:`recon.prior.guidance`)."""
        return self.root.joinpath(PRIOR_DIR, *parts)

    def prior_refresh_dir(self, step: int) -> Path:
        """``prior/step_<step>/``: the pseudo views rendered and repaired before training step ``step``."""
        return self.prior_path(f"step_{step:07d}")

    def prior_refreshes(self) -> list[int]:
        """Steps of the complete refreshes in ``prior/`` (those with their ``refresh.json``), ascending."""
        folder = self.root / PRIOR_DIR
        if not folder.is_dir():
            return []
        steps = []
        for d in folder.glob("step_*"):
            tail = d.name.removeprefix("step_")
            if tail.isdigit() and (d / PRIOR_REFRESH_FILE).is_file():
                steps.append(int(tail))
        return sorted(steps)

    # ------------------------------------------------------------------ policy
    def prepare(self, *, resume: bool, overwrite: bool, where: str = "--out") -> None:
        """The one run-folder policy: a missing or empty folder is fine; with ``resume`` the
        folder must hold a checkpoint; with ``overwrite`` it is emptied; otherwise a non-empty
        folder is refused (nothing in it is touched)."""
        out = self.root
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            if resume:
                if self.latest_checkpoint() is None:
                    raise InputError(out, "--resume given but the folder holds no checkpoint")
            elif overwrite:
                shutil.rmtree(out)
            else:
                raise InputError(out, f"{where} folder exists and is not empty (use --resume to continue or --overwrite)")
        out.mkdir(parents=True, exist_ok=True)

    def check_resumable(self, resume: bool, overwrite: bool, where: str = "--out") -> None:
        """What :meth:`prepare` would refuse, checked without touching anything (``setup()``
        calls this so that bad options fail before any work)."""
        out = self.root
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            if resume and self.latest_checkpoint() is None:
                raise InputError(out, "--resume given but the folder holds no checkpoint")
            if not resume and not overwrite:
                raise InputError(out, f"{where} folder exists and is not empty (use --resume to continue or --overwrite)")

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """``run.json`` as a dict (``{}`` when there is none). A malformed one raises
        :class:`InputError` naming the file."""
        f = self.root / RUN_FILE
        if not f.is_file():
            return {}
        data = read_json(f)
        if not isinstance(data, dict):
            raise InputError(f, f"expected a JSON object, got {type(data).__name__}")
        return data

    def is_complete(self) -> bool:
        return self.status().get("status") == "complete"

    def mark(self, status: str, **info: Any) -> None:
        """Update ``run.json`` with a status and extra fields (kept from earlier calls)."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, given {status!r}")
        data = self.status()
        data.update(info)
        data["status"] = status
        data["updated"] = _now()
        if status != "failed" and status != "interrupted":
            data.pop("error", None)
        atomic_write_json(self.root / RUN_FILE, data)

    def start(self, kind: str, config: dict[str, Any], *, resume: bool = False, **info: Any) -> None:
        """Write ``config.json`` and ``run.json`` (``running``) at the start of a job."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, given {kind!r}")
        atomic_write_json(self.root / CONFIG_FILE, config)
        previous = self.status() if resume else {}
        self.mark("running", format=FORMAT, kind=kind, created=previous.get("created", _now()), **info)

    def progress(self, step: int, total_steps: int) -> None:
        """Record the step reached (for viewers and batch reports) in ``run.json``."""
        self.mark(self.status().get("status", "running"), step=int(step), total_steps=int(total_steps))

    def complete(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` and mark the run ``complete`` (the last thing a job does)."""
        atomic_write_json(self.root / METRICS_FILE, metrics)
        self.mark("complete")

    def problems(self) -> list[str]:
        """What keeps this folder from being a complete, valid run (empty when it is one): the
        check ``recon batch`` uses to skip finished jobs and the viewer to explain a banner."""
        try:
            st = self.status()
        except InputError as err:
            return [str(err)]
        if not st:
            return [f"{self.root}: no {RUN_FILE} (not a recon run folder)"]
        out = []
        if st.get("format") != FORMAT:
            out.append(f"{RUN_FILE}: format {st.get('format')!r}, expected {FORMAT!r}")
        if st.get("status") != "complete":
            out.append(f"status is {st.get('status')!r}" + (f" ({st['error']})" if st.get("error") else ""))
        kind = st.get("kind")
        for name in OUTPUTS.get(kind, ()):
            if not self.path(name).exists():
                out.append(f"{name} is missing")
        if kind not in KINDS:
            out.append(f"{RUN_FILE}: unknown kind {kind!r}")
        return out

    # ------------------------------------------------------------------ cameras (capture runs)
    def write_cameras(self, splits: dict[str, tuple[list[str], CameraSet]]) -> Path:
        """``cameras.json``: every camera of the run, ``{"split": (names, cameras)}`` at
        training resolution (pinhole, no distortion), as OpenCV camera-to-world matrices."""
        views = []
        for split, (names, cams) in splits.items():
            c2w = rigid_inverse(cams.w2c.detach().double().cpu())
            for i, name in enumerate(names):
                k = cams.intrinsics[i]
                views.append({
                    "name": name, "split": split, "width": int(k.width), "height": int(k.height),
                    "fx": float(k.fx), "fy": float(k.fy), "cx": float(k.cx), "cy": float(k.cy),
                    "c2w": [[round(float(v), 9) for v in row] for row in c2w[i].tolist()],
                })  # fmt: skip
        return atomic_write_json(self.root / CAMERAS_FILE, {"convention": "opencv", "views": views})

    def read_cameras(self) -> dict[str, tuple[list[str], CameraSet]]:
        """Inverse of :meth:`write_cameras`; a missing or malformed file raises :class:`InputError`."""
        path = self.root / CAMERAS_FILE
        data = read_json(path)
        try:
            if data["convention"] != "opencv":
                raise InputError(path, f"convention {data['convention']!r}, expected 'opencv'")
            out: dict[str, tuple[list[str], list, list]] = {}
            for v in data["views"]:
                names, w2c, intr = out.setdefault(str(v["split"]), ([], [], []))
                names.append(str(v["name"]))
                w2c.append(rigid_inverse(torch.tensor(v["c2w"], dtype=torch.float64)))
                intr.append(Intrinsics(fx=float(v["fx"]), fy=float(v["fy"]), cx=float(v["cx"]), cy=float(v["cy"]),
                                       width=int(v["width"]), height=int(v["height"])))  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"not a recon cameras.json ({type(err).__name__}: {err})") from None
        return {split: (names, CameraSet(torch.stack(w2c).float(), intr)) for split, (names, w2c, intr) in out.items()}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"ckpt_{step:07d}.pt"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        found = sorted(self.checkpoints.glob("ckpt_*.pt"))
        return found[-1] if found else None

    def save_checkpoint(self, step: int, state: dict, keep: int = 2) -> Path:
        """Save ``state`` for ``step`` atomically and keep only the newest ``keep`` checkpoints."""
        path = self.checkpoint_path(step)
        atomic_torch_save(path, state)
        for old in sorted(self.checkpoints.glob("ckpt_*.pt"))[:-keep]:
            old.unlink()
        return path

    # ------------------------------------------------------------------ log
    def append_log(self, record: dict) -> None:
        """Append one JSON line to ``log.jsonl`` (best effort; a crash loses at most this line).
        After a crash mid-line the record starts a new line, so only the torn one is lost."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOG_FILE
        torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        with open(path, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(to_jsonable(record)) + "\n")

    def read_log(self) -> list[dict]:
        """The records of ``log.jsonl``; a line that is not a JSON object (one torn by a crash
        while it was written) is skipped with a warning."""
        f = self.root / LOG_FILE
        if not f.is_file():
            return []
        records = []
        for i, line in enumerate(f.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                logger.warning("%s:%d: not a JSON record (torn by a crash?), skipped", f, i)
        return records

    def truncate_log(self, step: int) -> None:
        """Drop log records after ``step`` (a resumed run re-logs the steps after its checkpoint)."""
        records = [r for r in self.read_log() if int(r.get("step", 0)) <= step]
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write_text(self.root / LOG_FILE, text)
