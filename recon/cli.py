"""The ``recon`` command line: ``recon fit``, ``recon eval``, ``recon export``, ``recon render``,
``recon poses``, ``recon ct fit``, ``recon ct simulate``, ``recon ct convert``, ``recon ct export``,
``recon batch`` and ``recon view``.

Each subcommand is a config dataclass (the library's own: :class:`CaptureFitConfig`,
:class:`CTFitConfig`, ...); this module parses it with tyro and hands it to a presenter that
runs it (jobs through :func:`recon.pipelines.job.run_job`) and prints progress and results. The
CLI adds no options of its own to the configs.

Library errors of type :class:`recon.errors.InputError` are printed as one line and exit 2;
anything else is a bug and keeps its traceback. Ctrl-C / SIGTERM during training stop after the
current step with a checkpoint (exit 130; ``--resume`` continues).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from recon.errors import InputError

console = Console(stderr=True)


@dataclass
class View:
    """Look at run folders in the browser, offline: splats with their cameras, CT volumes in HU."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders written by recon fit / recon ct fit (two capture runs show side by side)."""
    port: int | None = None
    """TCP port (default 8765, or any free one if that is taken)."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 exposes the runs to your network (printed as a warning)."""
    no_browser: tyro.conf.FlagCreatePairsOff[bool] = False
    """Do not open a browser."""


def _view(cfg: View) -> None:
    from recon_viewer import serve  # the viewer imports no training code

    serve(cfg.runs, host=cfg.host, port=cfg.port, open_browser=not cfg.no_browser)


# ---------------------------------------------------------------------------------- progress
def make_progress() -> Progress:
    """A rich progress bar with step count, rate, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _run_with_bar(job: Any, description: str) -> dict:
    """Run a job with a progress bar that appears at its first training step (so bad input,
    found before, prints one line alone)."""
    from recon.pipelines.job import run_job

    bar = make_progress()
    task = None

    def on_step(step: int, total: int, record: dict) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total, info="", completed=step - 1)
        if step % 5 == 0 or step == total:
            text = "  ".join(
                f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}" for k, v in record.items()
                if isinstance(v, (int, float)) and k in ("loss", "l1", "residual_rms", "n_gaussians")
            )  # fmt: skip
            bar.update(task, completed=step, total=total, info=text)

    try:
        return run_job(job, progress=on_step)
    finally:
        bar.stop()


# ---------------------------------------------------------------------------------- capture
def _scores_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for col in ("split", "views", "PSNR", "SSIM", "LPIPS"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "eval"):
        if split not in metrics:
            continue
        m = metrics[split]["mean"]
        lp = f"{m['lpips']:.3f}" if "lpips" in m else "n/a"
        table.add_row(split, str(m["n_views"]), f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", lp)
    return table


def _fit(cfg: Any) -> None:
    metrics = _run_with_bar(cfg.setup(), "fitting")
    console.print(_scores_table(f"{cfg.out}", metrics))
    if metrics.get("eval", {}).get("lpips", "").startswith("unavailable"):
        console.print(f"LPIPS {metrics['eval']['lpips']}")
    out = Path(cfg.out)
    console.print(f"renders:  {out / 'renders'}  (comparisons in {out / 'compare'})")
    console.print(f"scores:   {out / 'metrics.json'}")
    console.print(f"PLY:      {out / 'splat.ply'}")
    console.print(f"look:     recon view {out}")


@dataclass
class Eval:
    """Render and score cameras given in the run's world frame (a transforms.json with images)."""

    run_dir: tyro.conf.Positional[Path]
    """A complete run folder written by ``recon fit``."""
    cameras: Path
    """transforms.json (or any capture recon reads) with the cameras and their images."""
    out: Path | None = None
    """Output folder (default RUN/eval_<cameras stem>)."""
    allow_outside_paths: bool = False
    """Read images that the cameras file lists outside its folder (absolute or '..' paths)."""
    align: Literal["auto", "sim3", "none"] = "auto"
    """How the cameras get into the run's world frame: 'sim3' maps them by the similarity between
    their and the run's centres of the views both name (at least 3); 'none' takes them as given;
    'auto' is 'sim3' for a run whose poses were estimated (it has registration.json), else 'none'."""
    refine_steps: int = 0
    """Test-time pose optimisation: steps of pose-only fitting of each camera to its own photo
    against the frozen model (0 = off). It fits on the images it scores; metrics.json says so."""
    refine_lr: float = 1e-3
    """Initial learning rate of that optimisation (decays 100x over the steps)."""


def _eval(cfg: Eval) -> None:
    from recon.pipelines.evaluate import eval_cameras

    scores = eval_cameras(cfg.run_dir, cfg.cameras, cfg.out, allow_outside_paths=cfg.allow_outside_paths,
                          align=cfg.align, refine_steps=cfg.refine_steps, refine_lr=cfg.refine_lr)  # fmt: skip
    a = scores["alignment"]
    how = (f"Sim(3) from {len(a['shared_views'])} shared views (scale {a['scale']:.4g}, residual rotation median "
           f"{a['shared_rot_deg_median']:.2f} deg, centre {a['shared_centre_pct_mean']:.2f} %)") if a["method"] == "sim3" else "none"  # fmt: skip
    if a["refine_steps"]:
        how += f" + {a['refine_steps']} steps of test-time pose optimisation per camera"
    console.print(f"alignment: {how}")
    m = scores["mean"]
    console.print(f"{m['n_views']} views: PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.4f}  (LPIPS {scores['lpips']})")
    if "unseen" in scores and scores["unseen"]["n_views"] != m["n_views"]:
        u = scores["unseen"]
        console.print(f"{u['n_views']} views not trained on: PSNR {u['psnr']:.2f}  SSIM {u['ssim']:.4f}")


def _step_bar(description: str) -> tuple[Progress, Callable[[int, int], None]]:
    """A progress bar that appears at the first step (so bad input prints one line alone) and
    its ``progress(done, total)``."""
    bar = make_progress()
    task = None

    def step(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total, info="")
        bar.update(task, completed=done, total=total)

    return bar, step


def _export(cfg: Any) -> None:
    bar, step = _step_bar("rendering views")
    try:
        result = cfg.run(progress=step)
    finally:
        bar.stop()
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.info.items())
    console.print(f"wrote {result.path} ({result.kind} {result.format}: {details})", highlight=False)


def _render(cfg: Any) -> None:
    bar, step = _step_bar("rendering frames")
    try:
        result = cfg.run(progress=step)
    finally:
        bar.stop()
    console.print(f"wrote {result.path} ({result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps)", highlight=False)
    if result.camera_path is not None:
        console.print(f"camera path: {result.camera_path} (edit it and render again with --path)", highlight=False)


@dataclass
class Poses:
    """Estimate camera poses of a folder of photos -> transforms.json: up to 10 photos with the few-view
    registration and its self-checks (recon.poses.sparse_registration), more with COLMAP (pycolmap, CPU SIFT)."""

    images: tyro.conf.Positional[Path]
    """Folder of photos (or the capture folder holding them)."""
    out: Path = Path("transforms.json")
    """transforms.json to write (nerfstudio layout; sparse_pc.ply beside it, and registration.json with the sparse method)."""
    method: Literal["auto", "sparse", "colmap"] = "auto"
    """'sparse': few-view registration (affine DSP-SIFT, focal length from view triplets, self-checks; every photo
    registered or exit 2 naming the ones that did not); 'colmap': COLMAP's incremental mapping (leaves out photos it
    cannot place, with a warning); 'auto': sparse for up to 10 photos with the default matcher and camera model."""
    max_image_size: int | None = None
    """Longest image side used for feature extraction (default 1000 for sparse, 1600 for colmap)."""
    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    """Exhaustive for small sets (3-30 photos), sequential for video frames (colmap only)."""
    camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL"] = "SIMPLE_RADIAL"
    """COLMAP camera model shared by all photos (sparse fits SIMPLE_RADIAL only)."""
    seed: int = 0
    """Seed of COLMAP's random choices (same input, same poses)."""


def _poses(cfg: Poses) -> None:
    from recon.poses.estimate import estimate_camera_poses

    console.print(f"estimating poses of {cfg.images} ({cfg.method})...")
    report = estimate_camera_poses(cfg.images, cfg.out, method=cfg.method, max_image_size=cfg.max_image_size,
                                   matcher=cfg.matcher, camera_model=cfg.camera_model, seed=cfg.seed)  # fmt: skip
    table = Table(title="poses")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("method", report.method)
    table.add_row("registered", f"{report.n_registered}/{report.n_images}")
    table.add_row("reprojection error (px)", f"{report.mean_reproj_error_px:.3f}")
    table.add_row("3D points", f"{report.n_points:,}")
    if report.registration is not None:
        table.add_row("focal length (px)", f"{report.registration['focal_px']:.1f} ({report.registration['focal_source']})")
    table.add_row("time (s)", f"{report.seconds:.1f}")
    console.print(table)
    if report.registration is not None:
        views = Table(title="views")
        for col in ("photo", "points", "reproj (px)", "confidence"):
            views.add_column(col, justify="left" if col == "photo" else "right")
        for v in report.registration["views"]:
            views.add_row(v["name"], str(v["n_points"]), f"{v['reproj_px']:.2f}", f"{v['confidence']:.2f}")
        console.print(views)
    if report.unregistered:
        console.print(f"[yellow]not registered:[/yellow] {', '.join(report.unregistered)}")
    console.print(f"wrote {report.transforms_path}" + (f" and {report.ply_path}" if report.ply_path else ""))


# ---------------------------------------------------------------------------------- CT
def _ct_fit(cfg: Any) -> None:
    metrics = _run_with_bar(cfg.setup(), f"ct {cfg.method}")
    table = Table(title=f"{cfg.out}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("method", str(metrics["method"]))
    table.add_row("views", str(metrics["n_views"]))
    table.add_row("volume (z, y, x)", " x ".join(str(n) for n in metrics["volume_shape"]))
    if "psnr_3d" in metrics:
        table.add_row("3D PSNR (dB)", f"{metrics['psnr_3d']:.2f}")
        table.add_row("3D SSIM", f"{metrics['ssim_3d']:.4f}")
    if metrics.get("psnr_3d_before_prior") is not None:
        table.add_row("3D PSNR before --prior (dB)", f"{metrics['psnr_3d_before_prior']:.2f}")
    if metrics.get("cor"):
        table.add_row("centre of rotation (px)", f"{metrics['cor']['shift_px']:+.2f} ({metrics['cor']['method']})")
    table.add_row("wall time (s)", f"{metrics['wall_time_s']:.1f}")
    console.print(table)
    out = Path(cfg.out)
    console.print(f"volume:  {out / 'volume.nii.gz'}  ({out / 'volume.npy'})")
    console.print(f"slices:  {out / 'slices'}")
    console.print(f"scores:  {out / 'metrics.json'}")
    console.print(f"look:    recon view {out}")


def _ct_simulate(cfg: Any) -> None:
    with console.status(f"simulating {cfg.views} views of {cfg.volume}..."):
        cfg.run()
    console.print(f"wrote {cfg.out} ({cfg.views} training views, {cfg.n_test} test views)")


@dataclass
class CtConvert:
    """Convert a CT dataset to an R2-Gaussian folder (arrays and JSON only; e.g. a NAF pickle once, with --trust-pickle)."""

    data: tyro.conf.Positional[Path]
    """Any CT dataset recon ct fit reads."""
    out: Path
    """R2-Gaussian folder to write."""
    trust_pickle: bool = False
    """Allow reading a .pickle (unpickling runs code from the file: only for files you trust)."""
    allow_outside_paths: bool = False
    """Read files that meta_data.json lists outside its folder (absolute or '..' paths)."""
    overwrite: bool = False
    """Replace an existing folder."""


def _ct_convert(cfg: CtConvert) -> None:
    from recon.io.formats import load_ct_data
    from recon.io.r2gaussian import write_r2gaussian
    from recon.io.run import RunDir

    RunDir(cfg.out).check_resumable(False, cfg.overwrite)
    data = load_ct_data(cfg.data, trust_pickle=cfg.trust_pickle, allow_outside_paths=cfg.allow_outside_paths)
    write_r2gaussian(cfg.out, data.geometry, data.projections, volume=data.volume,
                     test_geometry=data.test_geometry, test_projections=data.test_projections)  # fmt: skip
    console.print(f"wrote {cfg.out} ({data.geometry.n_views} projections" + (", reference volume" if data.volume is not None else "") + ")")


# ---------------------------------------------------------------------------------- batch
def _batch(cfg: Any) -> int:
    """``recon batch``: one progress bar across the jobs, a line per finished job, the report."""
    from recon.batch.report import scores
    from recon.batch.runner import DONE

    batch = cfg.setup()
    bar = make_progress()
    task = bar.add_task("jobs", total=len(batch.jobs), info="")
    marks = {"complete": "[green]done[/green]", "skipped": "[green]skip[/green]"}

    def on_update(state: Any, res: Any) -> None:
        failed = state.finished - state.count(*DONE)
        info = f"done {state.count(*DONE)}  running {len(state.running)}  failed {failed}" + ("  [yellow]stopping[/yellow]" if state.stopping else "")
        bar.update(task, completed=state.finished + state.fraction_running(), info=info)
        if res is not None:
            scored, psnr, _ssim = scores(res)
            detail = f"PSNR {psnr:.2f} ({scored})" if psnr is not None else (res.error or "")
            bar.console.print(f"{marks.get(res.status, '[red]' + res.status + '[/red]')} {res.name}  {detail}", highlight=False, soft_wrap=True)

    if cfg.batch.dry_run if hasattr(cfg, "batch") else cfg.dry_run:
        summary = batch.run(plan_only=True)
        table = Table(title=f"{batch.out} (dry run)")
        for col in ("job", "kind", "plan", "input"):
            table.add_column(col)
        for job in batch.jobs:
            table.add_row(job.name, job.kind, summary.plan.get(job.name, "invalid"), job.error or job.data)
        console.print(table)
        return 1 if any(j.error for j in batch.jobs) else 0
    with bar:
        summary = batch.run(on_update)
    table = Table(title=f"{batch.out}: {len(summary.results)} jobs")
    for col in ("status", "jobs"):
        table.add_column(col)
    for status in sorted({r.status for r in summary.results}):
        table.add_row(status, str(summary.count(status)))
    console.print(table)
    if summary.report_html:
        console.print(f"report:  {summary.report_html}  ({summary.report_csv})")
    if summary.interrupted:
        console.print("[yellow]stopped:[/yellow] running jobs kept a checkpoint; the same command continues (complete runs are skipped)")
    return summary.exit_code


def _commands() -> tuple[Any, dict[type, Callable[[Any], int | None]]]:
    """The tyro union of subcommands and the presenter of each config type (imports the
    pipelines, so ``recon view`` skips it)."""
    from recon.batch.config import BatchConfig, CaptureBatchConfig, CTBatchConfig
    from recon.pipelines.capture import CaptureFitConfig
    from recon.pipelines.ct import CTFitConfig
    from recon.pipelines.ct_simulate import CTSimulateConfig
    from recon.pipelines.export import CTExportConfig, ExportConfig
    from recon.pipelines.render import RenderConfig

    ct = (
        Annotated[CTFitConfig, tyro.conf.subcommand("fit")]
        | Annotated[CTSimulateConfig, tyro.conf.subcommand("simulate")]
        | Annotated[CtConvert, tyro.conf.subcommand("convert")]
        | Annotated[CTExportConfig, tyro.conf.subcommand("export")]
    )

    # made at run time: its field's type is the union above (annotations here are strings)
    Ct = dataclasses.make_dataclass("Ct", [("command", tyro.conf.OmitSubcommandPrefixes[ct])])  # type: ignore[valid-type]
    Ct.__doc__ = ("Sparse-view CT / CBCT: ``recon ct fit`` reconstructs, ``recon ct simulate`` makes test scans, ``recon ct convert`` "
                  "rewrites datasets, ``recon ct export`` writes DICOM, meshes and NIfTI in HU.")
    batch = (
        Annotated[BatchConfig, tyro.conf.subcommand("manifest")]
        | Annotated[CTBatchConfig, tyro.conf.subcommand("ct")]
        | Annotated[CaptureBatchConfig, tyro.conf.subcommand("capture")]
    )
    Batch = dataclasses.make_dataclass("Batch", [("command", tyro.conf.OmitSubcommandPrefixes[batch])])  # type: ignore[valid-type]
    Batch.__doc__ = "Many fits: ``recon batch MANIFEST`` (YAML/CSV), ``recon batch ct DIR`` / ``recon batch capture DIR`` (a folder of inputs)."

    commands = (
        Annotated[CaptureFitConfig, tyro.conf.subcommand("fit")]
        | Annotated[Eval, tyro.conf.subcommand("eval")]
        | Annotated[ExportConfig, tyro.conf.subcommand("export")]
        | Annotated[RenderConfig, tyro.conf.subcommand("render")]
        | Annotated[Poses, tyro.conf.subcommand("poses")]
        | Annotated[Ct, tyro.conf.subcommand("ct")]
        | Annotated[Batch, tyro.conf.subcommand("batch")]
        | Annotated[View, tyro.conf.subcommand("view")]
    )
    presenters: dict[type, Callable[[Any], int | None]] = {
        CaptureFitConfig: _fit, Eval: _eval, ExportConfig: _export, RenderConfig: _render, Poses: _poses, CTFitConfig: _ct_fit,
        CTSimulateConfig: _ct_simulate, CtConvert: _ct_convert, CTExportConfig: _export, View: _view,
        Ct: lambda c: presenters[type(c.command)](c.command),
        BatchConfig: _batch, CTBatchConfig: _batch, CaptureBatchConfig: _batch, Batch: lambda c: presenters[type(c.command)](c.command),
    }  # fmt: skip
    return commands, presenters


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command. Returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if argv[:1] == ["view"]:  # the viewer needs none of the training code: start in well under a second
        cmd: Any = tyro.cli(View, args=argv[1:], prog="recon view")
        presenters: dict[type, Callable[[Any], int | None]] = {View: _view}
    else:
        if argv[:1] == ["batch"] and len(argv) > 1 and argv[1] not in ("manifest", "ct", "capture") and not argv[1].startswith("-"):
            argv = ["batch", "manifest", *argv[1:]]  # recon batch MANIFEST
        commands, presenters = _commands()
        cmd = tyro.cli(commands, args=argv, prog="recon")
    try:
        code = presenters[type(cmd)](cmd)
    except InputError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:
        console.print(f"[yellow]stopped:[/yellow] {err or 'interrupted'}; a checkpoint was kept, --resume continues", highlight=False)
        return 130
    return int(code or 0)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
