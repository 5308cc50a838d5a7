"""Run folders as the viewer reads them (``docs/run-folder.md``, format ``recon-run/1``).

:func:`check_run_folder` refuses what is not a run folder (the CLI turns that into one line
and exit code 2). :class:`RunFolder` builds the JSON the web client shows: status, config,
metrics, loss curve, cameras or scan geometry, and *banners* saying in words what is missing
or wrong. Nothing here raises on a damaged run: a missing or malformed file becomes a banner.
Files are re-read when their modification time or size changes, so a running job updates live.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from recon.errors import InputError
from recon_viewer import ct_volumes
from recon_viewer.splats import read_ply_header

__all__ = ["MAX_SPLATS_IN_BROWSER", "RunFolder", "check_run_folder"]

RUN_FORMAT = "recon-run/1"
MARKERS = ("run.json", "splat.ply", "volume.nii.gz", "volume.npy")
"""A folder holding none of these is not a run folder."""
MAX_SPLATS_IN_BROWSER = 3_000_000
"""Above this many Gaussians the client starts in the points-only view (it can still switch)."""
MAX_LOG_POINTS = 2000
"""The loss curve is thinned to about this many points."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_run_folder(path: str | Path) -> Path:
    """The resolved folder, or :class:`InputError` naming the path and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such folder (expected a run folder written by recon fit or recon ct fit)")
    if not path.is_dir():
        raise InputError(path, "not a folder (expected a run folder written by recon fit or recon ct fit)")
    root = path.resolve()
    if not any((root / name).is_file() for name in MARKERS):
        raise InputError(path, f"not a run folder (none of {', '.join(MARKERS)}; expected a folder written by recon fit or recon ct fit)")
    return root


class _FileCache:
    """Parsed file contents, re-read when (mtime, size) changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[Path, str], tuple[tuple[int, int], Any]] = {}

    def get(self, path: Path, what: str, load: Callable[[Path], Any]) -> Any:
        st = path.stat()
        key, stamp = (path, what), (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get(key)
            if hit and hit[0] == stamp:
                return hit[1]
        value = load(path)
        with self._lock:
            self._items[key] = (stamp, value)
            if len(self._items) > 64:  # volumes are big: keep the cache short
                self._items.pop(next(iter(self._items)))
        return value


def _banner(level: str, text: str) -> dict[str, str]:
    return {"level": level, "text": text}


class RunFolder:
    """One run folder given to ``recon view``, numbered ``index`` in the page.

    Args:
        index: position on the command line (the client's run id).
        root: the folder, as returned by :func:`check_run_folder`.
    """

    def __init__(self, index: int, root: Path):
        self.index = index
        self.root = Path(root)
        self.cache = _FileCache()
        self._nifti: dict[tuple, bytes] = {}
        self._nifti_lock = threading.Lock()

    # ----------------------------------------------------------------- helpers
    def url(self, rel: str) -> str:
        """URL of a file of this run (served by the server's ``/files/`` route)."""
        return f"/files/{self.index}/{quote(rel)}"

    def _stamp(self, rel: str) -> dict[str, Any] | None:
        path = self.root / rel
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        return {"url": self.url(rel), "mtime": st.st_mtime, "bytes": st.st_size}

    def _json(self, rel: str, banners: list[dict], required: str | None) -> Any:
        """Parsed JSON or ``None``; a missing file adds ``required`` as a banner, a bad one
        always adds a banner."""
        path = self.root / rel
        if not path.is_file():
            if required:
                banners.append(_banner("warning", required))
            return None
        try:
            return self.cache.get(path, "json", lambda p: json.loads(p.read_text()))
        except (OSError, ValueError) as err:
            banners.append(_banner("error", f"{rel} is not valid JSON ({err}); showing the run without it"))
            return None

    def _log(self) -> list[dict]:
        path = self.root / "log.jsonl"
        if not path.is_file():
            return []

        def load(p: Path) -> list[dict]:
            rows = []
            for line in p.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line being appended right now
                    continue
                if isinstance(row, dict):
                    rows.append(row)
            if len(rows) > MAX_LOG_POINTS:
                step = len(rows) / MAX_LOG_POINTS
                rows = [rows[int(i * step)] for i in range(MAX_LOG_POINTS)] + [rows[-1]]
            return rows

        return self.cache.get(path, "log", load)

    def kind(self, run: dict | None) -> str:
        """``capture`` / ``ct`` from ``run.json``, else guessed from the outputs present."""
        kind = (run or {}).get("kind")
        if kind in ("capture", "ct"):
            return kind
        if (self.root / "splat.ply").is_file() or (self.root / "cameras.json").is_file():
            return "capture"
        return "ct"

    # ----------------------------------------------------------------- state
    def summary(self) -> dict[str, Any]:
        """Name, kind and status: what the run list shows."""
        banners: list[dict] = []
        run = self._json("run.json", banners, None)
        run = run if isinstance(run, dict) else {}
        return {"id": self.index, "name": self.root.name, "path": str(self.root), "kind": self.kind(run), "status": run.get("status", "unknown")}

    def state(self) -> dict[str, Any]:
        """Everything the page shows for this run (polled every few seconds while running)."""
        banners: list[dict] = []
        run = self._json("run.json", banners, "no run.json: status unknown (not written by recon fit / recon ct fit?)")
        if run is not None and not isinstance(run, dict):
            banners.append(_banner("error", "run.json is not a JSON object"))
            run = None
        run = run or {}
        status = run.get("status", "unknown")
        fmt = run.get("format")
        # older CT runs used "format" for the input data's format (e.g. "r2gaussian"): only a
        # recon-run/N other than ours is worth a word
        if isinstance(fmt, str) and fmt.startswith("recon-run/") and fmt != RUN_FORMAT:
            banners.append(_banner("warning", f"run.json format {fmt!r}: this viewer reads {RUN_FORMAT}; some parts may be missing"))
        step, total = run.get("step"), run.get("total_steps")
        progress = f" (step {step}/{total})" if step is not None and total else ""
        if status == "running":
            banners.append(_banner("info", f"still running{progress}: this page updates as the run writes files"))
        elif status == "failed":
            banners.append(_banner("error", f"run failed{progress}: {run.get('error', 'no error message in run.json')}"))
        elif status == "interrupted":
            banners.append(_banner("warning", f"run interrupted{progress}; continue it with --resume"))
        elif run and status != "complete":
            banners.append(_banner("warning", f"run.json status {status!r} (expected running, complete, failed or interrupted)"))
        config = self._json("config.json", banners, "no config.json" if status == "complete" else None)
        metrics_missing = "no metrics.json (scores are written when the run completes)" if status != "failed" else None
        metrics = self._json("metrics.json", banners, metrics_missing)
        metrics = metrics if isinstance(metrics, dict) else None
        kind = self.kind(run)
        state: dict[str, Any] = {
            **self.summary(),
            "kind": kind,
            "status": status,
            "run": run,
            "config": config,
            "metrics": metrics,
            "log": self._log(),
            "files": {rel: self._stamp(rel) for rel in ("loss.png", "log.jsonl", "config.json", "metrics.json", "run.json")},
            "banners": banners,
        }
        if kind == "capture":
            state["capture"] = self._capture(metrics, config, banners, status)
        else:
            state["ct"] = self._ct(metrics, banners, status)
        return state

    # ----------------------------------------------------------------- capture
    def _image(self, folder: str, split: str, stem: str) -> str | None:
        for suffix in IMAGE_SUFFIXES:
            rel = f"{folder}/{split}/{stem}{suffix}"
            if (self.root / rel).is_file():
                return self.url(rel)
        return None

    def _capture(self, metrics: dict | None, config: Any, banners: list[dict], status: str) -> dict[str, Any]:
        out: dict[str, Any] = {"splat": None, "views": [], "max_splats": MAX_SPLATS_IN_BROWSER, "background": None}
        splat = self._stamp("splat.ply")
        if splat is None:
            banners.append(_banner("warning" if status == "running" else "error", "no splat.ply yet: nothing to render" if status == "running" else "no splat.ply: nothing to render"))
        else:
            try:
                header = self.cache.get(self.root / "splat.ply", "ply", read_ply_header)
                out["splat"] = {**splat, "n": header.n, "sh_degree": header.sh_degree}
            except (OSError, ValueError) as err:
                banners.append(_banner("error", f"splat.ply cannot be shown: {err}"))
        if isinstance(config, dict) and not config.get("background_mean") and isinstance(config.get("background"), list):
            out["background"] = config["background"]

        cameras = self._json("cameras.json", [], None)
        scores = {split: ((metrics or {}).get(split) or {}).get("views", {}) for split in ("train", "eval")}
        views: list[dict] = []
        if cameras is None:
            banners.append(_banner("warning", "no cameras.json (run written by an older recon): no camera frustums; views listed from compare/"))
            for split in ("train", "eval"):
                folder = self.root / "compare" / split
                for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
                    name = next((n for n in scores[split] if Path(n).stem == path.stem), path.name)
                    views.append({"name": name, "split": split, "c2w": None})
        elif not isinstance(cameras, dict) or not isinstance(cameras.get("views"), list):
            banners.append(_banner("error", "cameras.json has no 'views' list: no camera frustums"))
        else:
            if cameras.get("convention", "opencv") != "opencv":
                banners.append(_banner("warning", f"cameras.json convention {cameras.get('convention')!r}: read as opencv"))
            for cam in cameras["views"]:
                if isinstance(cam, dict) and "name" in cam:
                    views.append(dict(cam))
        for view in views:
            split, stem = view.get("split", "train"), Path(str(view["name"])).stem
            view["photo"] = self._image("photos", split, stem)
            view["render"] = self._image("renders", split, stem)
            view["compare"] = self._image("compare", split, stem)
            view["scores"] = scores.get(split, {}).get(view["name"])
        if views and not any(v["photo"] for v in views):
            banners.append(_banner("info", "no photos/ folder: thumbnails show renders"))
        out["views"] = views
        out["means"] = {split: ((metrics or {}).get(split) or {}).get("mean") for split in ("train", "eval")}
        return out

    # ----------------------------------------------------------------- CT
    def ct_params(self, metrics: dict | None = None) -> tuple[float, str, list[str]]:
        """(water attenuation per mm, units, notes) used to convert this run's volumes to HU."""
        if metrics is None:
            path = self.root / "metrics.json"
            try:
                metrics = self.cache.get(path, "json", lambda p: json.loads(p.read_text())) if path.is_file() else {}
            except (OSError, ValueError):
                metrics = {}
        notes = []
        mu = (metrics or {}).get("mu_water_per_mm")
        units = (metrics or {}).get("units")
        if not isinstance(mu, (int, float)) or mu <= 0:
            mu = ct_volumes.MU_WATER_PER_MM
            if units != "HU":
                notes.append(f"metrics.json has no mu_water_per_mm: HU computed with water = {mu} /mm")
        if units in ("HU", "hounsfield"):
            units = "HU"
        elif units not in (None, "attenuation_per_mm"):
            notes.append(f"metrics.json units {units!r} unknown: read as attenuation per mm")
            units = "attenuation_per_mm"
        return float(mu), units or "attenuation_per_mm", notes

    def geometry(self) -> dict | None:
        """``geometry.json`` contents, or ``None`` when missing or malformed."""
        path = self.root / "geometry.json"
        if not path.is_file():
            return None
        try:
            data = self.cache.get(path, "json", lambda p: json.loads(p.read_text()))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def volume_file(self, which: str) -> Path | None:
        """The file behind ``volume`` or ``reference``, if present."""
        names = {"volume": ("volume.nii.gz", "volume.nii", "volume.npy"), "reference": ("reference.nii.gz", "reference.nii")}[which]
        return next((self.root / n for n in names if (self.root / n).is_file()), None)

    def hu_volume(self, which: str) -> ct_volumes.HUVolume:
        """``volume``, ``reference`` or ``difference`` in HU (cached until the files change).

        Raises:
            FileNotFoundError: the file is missing. ValueError: it cannot be read.
        """
        mu, units, _ = self.ct_params()
        geometry = self.geometry()
        if which == "difference":
            return ct_volumes.difference(self.hu_volume("volume"), self.hu_volume("reference"))
        path = self.volume_file(which)
        if path is None:
            raise FileNotFoundError(which)
        geo_file = self.root / "geometry.json"
        geo_stamp = geo_file.stat().st_mtime_ns if geometry is not None else None
        return self.cache.get(path, f"hu:{mu}:{units}:{geo_stamp}", lambda p: ct_volumes.load_hu(p, mu, units, geometry))

    def nifti(self, which: str, orientation: str | None = None, slab_mm: float | None = None) -> bytes:
        """The NIfTI bytes the client loads: ``which`` (volume / reference / difference) in HU,
        as a thick-slab MIP when ``orientation`` and ``slab_mm`` are given. The last few are
        kept until an input file changes.

        Raises:
            FileNotFoundError: a needed file is missing. ValueError: it cannot be read or used.
        """
        inputs = ["metrics.json", "geometry.json"] + [p.name for p in (self.volume_file("volume"), self.volume_file("reference")) if p]
        stamps = tuple((n, (self.root / n).stat().st_mtime_ns) for n in inputs if (self.root / n).is_file())
        key = (which, orientation, slab_mm, stamps)
        with self._nifti_lock:
            if key in self._nifti:
                return self._nifti[key]
        volume = self.hu_volume(which)
        if orientation is not None and slab_mm is not None:
            volume = ct_volumes.slab_mip(volume, orientation, slab_mm)
        data = ct_volumes.nifti_bytes(volume)
        with self._nifti_lock:
            self._nifti[key] = data
            while len(self._nifti) > 4:
                self._nifti.pop(next(iter(self._nifti)))
        return data

    def _ct(self, metrics: dict | None, banners: list[dict], status: str) -> dict[str, Any]:
        mu, units, notes = self.ct_params(metrics)
        banners.extend(_banner("warning", note) for note in notes)
        out: dict[str, Any] = {"mu_water_per_mm": mu, "units": units, "volume": None, "reference": None, "geometry": None, "drawing": None}
        vol = self.volume_file("volume")
        if vol is None:
            banners.append(_banner("warning" if status == "running" else "error", "no volume.nii.gz yet: nothing to show" if status == "running" else "no volume.nii.gz: nothing to show"))
        else:
            st = vol.stat()
            out["volume"] = {"url": f"/api/run/{self.index}/ct/volume.nii", "mtime": st.st_mtime, "source": vol.name, "bytes": st.st_size}
        ref = self.volume_file("reference")
        if ref is None:
            banners.append(_banner("info", "no reference.nii.gz: no reference or difference view"))
        else:
            st = ref.stat()
            out["reference"] = {"url": f"/api/run/{self.index}/ct/reference.nii", "mtime": st.st_mtime, "source": ref.name}
            out["difference"] = {"url": f"/api/run/{self.index}/ct/difference.nii"}
        geometry = self.geometry()
        if geometry is None:
            text = "geometry.json is not valid" if (self.root / "geometry.json").is_file() else "no geometry.json (run written by an older recon)"
            banners.append(_banner("warning", f"{text}: scan geometry not drawn"))
        else:
            out["geometry"] = {k: v for k, v in geometry.items() if k not in ("angles_rad", "vectors")}
            try:
                out["drawing"] = ct_volumes.scan_drawing(geometry)
            except (KeyError, TypeError, ValueError) as err:
                banners.append(_banner("warning", f"geometry.json cannot be drawn ({type(err).__name__}: {err})"))
        return out
