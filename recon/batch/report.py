"""The batch report: ``report.csv`` (one row per job) and ``report.html`` (self-contained: inline
CSS, thumbnails as base64 PNG, plots as inline SVG; opens offline from any folder).

Per job: status (and the one-line error), the main scores (CT: 3D PSNR/SSIM against the
reference; capture: PSNR/SSIM of the evaluation views, else the training views), wall and CPU
time, attempts, a thumbnail (CT: the axial slice beside the reference; capture: the first
evaluation comparison render · photo · error) and the ``recon view`` command of the run. The
plots show the distribution of the scores per kind and of the wall time per job.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from recon.batch.runner import DONE, JobResult
from recon.batch.storage import is_url, join, write_text

logger = logging.getLogger(__name__)

__all__ = ["CSV_COLUMNS", "report_rows", "scores", "write_report"]

CSV_COLUMNS = ("name", "kind", "status", "error", "method", "scored", "psnr", "ssim", "wall_s", "cpu_s", "peak_rss_mb",
               "attempts", "resumed_from_step", "n_gaussians", "iterations", "host", "data", "out", "view")  # fmt: skip
THUMB_WIDTH = 360


def scores(res: JobResult) -> tuple[str, float | None, float | None]:
    """(what was scored, PSNR, SSIM) of a job's metrics."""
    m = res.metrics or {}
    if res.kind == "ct":
        if "psnr_3d" in m:
            return "volume vs reference", m.get("psnr_3d"), m.get("ssim_3d")
        return "", None, None
    for split in ("eval", "train"):
        mean = (m.get(split) or {}).get("mean") if isinstance(m.get(split), dict) else None
        if mean and mean.get("n_views"):
            return f"{split} views", mean.get("psnr"), mean.get("ssim")
    return "", None, None


def _method(res: JobResult) -> str:
    opts, m = res.options, res.metrics or {}
    if res.kind == "ct":
        return str(m.get("method") or opts.get("method") or "gaussian")
    return str(opts.get("preset", "fewview")) + (f", {opts['model']}" if opts.get("model") else "")


def report_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
    """One dict per job with the :data:`CSV_COLUMNS`."""
    rows = []
    for r in results:
        scored, psnr, ssim = scores(r)
        m = r.metrics or {}
        rows.append({
            "name": r.name, "kind": r.kind, "status": r.status, "error": r.error or "", "method": _method(r), "scored": scored,
            "psnr": None if psnr is None else round(float(psnr), 4), "ssim": None if ssim is None else round(float(ssim), 5),
            "wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_mb": r.peak_rss_mb, "attempts": len(r.attempts), "resumed_from_step": r.resumed_from_step,
            "n_gaussians": m.get("n_gaussians"), "iterations": m.get("iterations"), "host": r.host or "",
            "data": r.data, "out": r.out, "view": f"recon view {r.out}" if r.status in DONE else "",
        })  # fmt: skip
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


# ---------------------------------------------------------------------------------- thumbnails
def _read_bytes(base: str, rel: str) -> bytes | None:
    target = join(base, rel)
    if not is_url(target):
        p = Path(target)
        return p.read_bytes() if p.is_file() else None
    from recon.batch.storage import _fs

    fs, path = _fs(target)
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, OSError):
        return None


def _first_image(base: str, folders: Sequence[str]) -> bytes | None:
    for folder in folders:
        target = join(base, folder)
        try:
            if is_url(target):
                from recon.batch.storage import _fs

                fs, path = _fs(target)
                names = sorted(PurePosixPath(p).name for p in fs.ls(path, detail=False))
            else:
                p = Path(target)
                names = sorted(x.name for x in p.iterdir()) if p.is_dir() else []
        except (FileNotFoundError, OSError):
            names = []
        for name in names:
            if name.lower().endswith(".png"):
                return _read_bytes(base, f"{folder}/{name}")
    return None


def _thumbnail(res: JobResult) -> str | None:
    """A data: URI of the job's thumbnail (None when the run has no image)."""
    if res.status not in DONE:
        return None
    if res.kind == "ct":
        raw = _read_bytes(res.out, "slices/axial.png")
    else:
        raw = _first_image(res.out, ("compare/eval", "renders/eval", "compare/train", "renders/train"))
    if raw is None:
        return None
    try:
        from PIL import Image

        img = Image.open(io.BytesIO(raw)).convert("RGB")
        if img.width > THUMB_WIDTH:
            img = img.resize((THUMB_WIDTH, max(1, round(img.height * THUMB_WIDTH / img.width))), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    except Exception as err:  # noqa: BLE001 - a broken image never breaks the report
        logger.warning("%s: no thumbnail (%s)", res.name, err)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- plots
def _svg_plots(rows: list[dict[str, Any]]) -> str:
    """Inline SVG: the PSNR distribution per kind and the wall time per job."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = {kind: [r["psnr"] for r in rows if r["kind"] == kind and r["psnr"] is not None] for kind in ("ct", "capture")}
    series = {k: v for k, v in series.items() if v}
    walls = [(r["name"], r["wall_s"]) for r in rows if r["wall_s"] is not None and r["status"] in ("complete", "skipped")]
    if not series and not walls:
        return ""
    panels = len(series) + (1 if walls else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.0), squeeze=False)
    i = 0
    label = {"ct": "CT: 3D PSNR (dB)", "capture": "capture: PSNR (dB)"}
    for kind, values in series.items():
        ax = axes[0, i]
        ax.hist(values, bins=min(20, max(5, len(values))), color="#4a7ebb", edgecolor="white")
        ax.set_xlabel(label[kind])
        ax.set_ylabel("jobs")
        ax.set_title(f"{label[kind].split(':')[0]}: median {sorted(values)[len(values) // 2]:.2f} dB (n={len(values)})", fontsize=9)
        i += 1
    if walls:
        ax = axes[0, i]
        values = [w for _, w in walls]
        ax.hist(values, bins=min(20, max(5, len(values))), color="#7a9e58", edgecolor="white")
        ax.set_xlabel("wall time per job (s)")
        ax.set_ylabel("jobs")
        ax.set_title(f"total {sum(values):.0f} s over {len(values)} jobs", fontsize=9)
    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


# ---------------------------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
.counts span{display:inline-block;margin-right:14px;padding:2px 8px;border-radius:10px;background:#eee}
table{border-collapse:collapse;margin-top:16px;width:100%} th,td{border-bottom:1px solid #ddd;padding:6px 8px;vertical-align:top;text-align:left}
th{background:#f5f5f5;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.st{padding:1px 8px;border-radius:10px;color:#fff;white-space:nowrap}
.complete{background:#2e7d32}.skipped{background:#558b2f}.failed,.invalid{background:#c62828}
.oom{background:#6a1b9a}.timed{background:#ef6c00}.interrupted,.worker{background:#616161}
.err{color:#b71c1c;font-family:ui-monospace,monospace;font-size:12px;max-width:520px;word-break:break-word}
code{font-size:12px;background:#f3f3f3;padding:1px 4px;border-radius:3px;word-break:break-all}
img.thumb{max-width:360px;border:1px solid #ccc} .plots svg{max-width:100%;height:auto}
"""


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _status_class(status: str) -> str:
    return {"out of memory": "oom", "timed out": "timed", "worker died": "worker"}.get(status, status)


def _href(report_dir: str, out: str) -> str:
    if is_url(out):
        return out
    try:
        return Path(out).resolve().relative_to(Path(report_dir).resolve()).as_posix() + "/"
    except ValueError:
        return Path(out).resolve().as_uri()


def _html(title: str, out: str, rows: list[dict[str, Any]], results: Sequence[JobResult], extra: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    wall = sum(r["wall_s"] or 0 for r in rows if r["status"] != "skipped")
    cpu = sum(r["cpu_s"] or 0 for r in rows if r["status"] != "skipped")
    head = [f"<h1>{html.escape(title)}</h1>",
            f"<div class=sub>{html.escape(out)} &middot; {len(rows)} jobs &middot; written {time.strftime('%Y-%m-%d %H:%M:%S')}"
            + "".join(f" &middot; {html.escape(str(k))}: {html.escape(str(v))}" for k, v in extra.items()) + "</div>",
            "<div class=counts>" + "".join(f"<span>{html.escape(k)}: <b>{v}</b></span>" for k, v in sorted(counts.items()))
            + f"<span>job time this run: {wall:.1f} s wall, {cpu:.1f} s CPU</span></div>"]  # fmt: skip
    try:
        plots = _svg_plots(rows)
    except Exception as err:  # noqa: BLE001 - the table matters more than the plots
        logger.warning("report plots failed: %s", err)
        plots = ""
    if plots:
        head.append(f"<div class=plots>{plots}</div>")
    columns = ("job", "status", "method", "PSNR", "SSIM", "wall s", "CPU s", "tries", "preview", "open")
    body = ["<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr></thead><tbody>"]
    for row, res in zip(rows, results):
        thumb = _thumbnail(res)
        img = f'<img class=thumb alt="{html.escape(row["name"])}" src="{thumb}">' if thumb else ""
        err = f'<div class=err>{html.escape(row["error"])}</div>' if row["error"] else ""
        scored = f'<br><small>{html.escape(row["scored"])}</small>' if row["scored"] else ""
        resumed = f'<br><small>resumed at step {row["resumed_from_step"]}</small>' if row["resumed_from_step"] else ""
        tries = "<br>".join(f'<small>{html.escape(str(a.get("status")))}{" → " + html.escape(str(a.get("retry_with"))) if a.get("retry_with") else ""}</small>'
                            for a in res.attempts) or ""  # fmt: skip
        link = f'<a href="{html.escape(_href(out, row["out"]))}">folder</a>'
        view = f'<br><code>{html.escape(row["view"])}</code>' if row["view"] else ""
        body.append(
            f"<tr><td><b>{html.escape(row['name'])}</b><br><small>{html.escape(row['kind'])} &middot; {html.escape(row['data'])}</small></td>"
            f"<td><span class='st {_status_class(row['status'])}'>{html.escape(row['status'])}</span>{resumed}{err}</td>"
            f"<td>{html.escape(row['method'])}</td><td class=num>{_fmt(row['psnr'])}{scored}</td><td class=num>{_fmt(row['ssim'], 4)}</td>"
            f"<td class=num>{_fmt(row['wall_s'], 1)}</td><td class=num>{_fmt(row['cpu_s'], 1)}</td>"
            f"<td class=num>{row['attempts']}<br>{tries}</td><td>{img}</td><td>{link}{view}</td></tr>"
        )
    body.append("</tbody></table>")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>" + html.escape(title) + "</title><style>" + _CSS
            + "</style></head><body>" + "\n".join(head + body) + "</body></html>\n")  # fmt: skip


def write_report(out: str, results: Sequence[JobResult], *, title: str = "recon batch", extra: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write ``OUT/report.csv`` and ``OUT/report.html`` (atomically; local path or URL);
    returns their paths."""
    rows = report_rows(results)
    csv_path, html_path = join(out, "report.csv"), join(out, "report.html")
    write_text(csv_path, _csv_text(rows))
    write_text(html_path, _html(title, out, rows, results, extra or {}))
    return csv_path, html_path
