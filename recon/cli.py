"""The ``recon`` command line: ``recon fit``, ``recon eval``, ``recon export``, ``recon poses``,
``recon ct fit``, ``recon ct simulate`` and ``recon view``.

Library errors of type :class:`recon.errors.InputError` are printed as one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from recon.errors import InputError

console = Console(stderr=True)


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


from recon.pipelines.capture import CaptureFitConfig  # noqa: E402


@dataclass
class Fit(CaptureFitConfig):
    """Fit Gaussian splats to a few posed photos; writes renders, scores and splat.ply to --out."""

    def run(self) -> None:
        trainer = self.setup()
        with make_progress() as bar:
            task = bar.add_task("fitting", total=self.iterations, info="")

            def on_step(step: int, total: int, stats: dict) -> None:
                if step % 10 == 0 or step == total:
                    bar.update(
                        task, completed=step, info=f"loss {stats['loss']:.4f}  {stats['n_gaussians']:,} Gaussians"
                    )

            bar.update(task, completed=trainer.step)
            metrics = trainer.fit(progress=on_step)
        console.print(_scores_table(f"{self.out}", metrics))
        if metrics.get("eval", {}).get("lpips", "").startswith("unavailable"):
            console.print(f"LPIPS {metrics['eval']['lpips']}")
        out = Path(self.out)
        console.print(f"renders:  {out / 'renders'}  (comparisons in {out / 'compare'})")
        console.print(f"scores:   {out / 'metrics.json'}")
        console.print(f"PLY:      {out / 'splat.ply'}")


@dataclass
class Eval:
    """Render and score cameras given in the run's world frame (a transforms.json with images)."""

    run_dir: tyro.conf.Positional[Path]
    """A complete run folder written by ``recon fit``."""
    cameras: Path
    """transforms.json (or any capture recon reads) with the cameras and their images."""
    out: Path | None = None
    """Output folder (default RUN/eval_<cameras stem>)."""

    def run(self) -> None:
        from recon.pipelines.capture import eval_cameras

        scores = eval_cameras(self.run_dir, self.cameras, self.out)
        m = scores["mean"]
        console.print(f"{m['n_views']} views: PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.4f}  (LPIPS {scores['lpips']})")


@dataclass
class Export:
    """Export a run's model (PLY in the standard 3DGS layout)."""

    run_dir: tyro.conf.Positional[Path]
    """A run folder written by ``recon fit``."""
    format: Literal["ply"] = "ply"
    """Output format."""
    out: Path | None = None
    """Output file (default RUN/export/splat.ply)."""

    def run(self) -> None:
        from recon.pipelines.export import export_run

        path = export_run(self.run_dir, self.format, self.out)
        console.print(f"wrote {path}")


@dataclass
class Poses:
    """Estimate camera poses of a folder of photos with COLMAP (pycolmap, CPU SIFT) -> transforms.json."""

    images: tyro.conf.Positional[Path]
    """Folder of photos (or the capture folder holding them)."""
    out: Path = Path("transforms.json")
    """transforms.json to write (nerfstudio layout; sparse_pc.ply beside it)."""
    max_image_size: int = 1600
    """Longest image side used for feature extraction."""
    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    """Exhaustive for small sets (3-30 photos), sequential for video frames."""
    camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL"] = "SIMPLE_RADIAL"
    """COLMAP camera model shared by all photos."""
    seed: int = 0
    """Seed of COLMAP's random choices (same input, same poses)."""

    def run(self) -> None:
        from recon.poses import estimate_poses

        console.print(f"estimating poses of {self.images} (SIFT, {self.matcher} matching)...")
        report = estimate_poses(
            self.images, self.out, max_image_size=self.max_image_size, matcher=self.matcher,
            camera_model=self.camera_model, seed=self.seed,
        )
        table = Table(title="poses")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("registered", f"{report.n_registered}/{report.n_images}")
        table.add_row("reprojection error (px)", f"{report.mean_reproj_error_px:.3f}")
        table.add_row("3D points", f"{report.n_points:,}")
        table.add_row("time (s)", f"{report.seconds:.1f}")
        console.print(table)
        if report.unregistered:
            console.print(f"[yellow]not registered:[/yellow] {', '.join(report.unregistered)}")
        console.print(f"wrote {report.transforms_path}" + (f" and {report.ply_path}" if report.ply_path else ""))


from recon.pipelines.ct import CTFit, CTSimulate  # noqa: E402


@dataclass
class CtFit(CTFit):
    """Reconstruct a volume from CT projections (fdk, fbp, sart, tv or radiative gaussian) into --out."""

    def run(self) -> dict:  # type: ignore[override]
        with make_progress() as bar:
            task = bar.add_task(f"ct {self.method}", total=None, info="")

            def on_step(step: int, total: int, info: dict) -> None:
                text = "  ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, (int, float)))
                bar.update(task, completed=step, total=total, info=text)

            metrics = super().run(progress=on_step)
        table = Table(title=f"{self.out}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("method", str(metrics["method"]))
        table.add_row("views", str(metrics["n_views"]))
        table.add_row("volume (z, y, x)", " x ".join(str(n) for n in metrics["volume_shape"]))
        if "psnr_3d" in metrics:
            table.add_row("3D PSNR (dB)", f"{metrics['psnr_3d']:.2f}")
            table.add_row("3D SSIM", f"{metrics['ssim_3d']:.4f}")
        if metrics.get("psnr_3d_unrefined") is not None:
            table.add_row("3D PSNR before --refine (dB)", f"{metrics['psnr_3d_unrefined']:.2f}")
        table.add_row("wall time (s)", f"{metrics['wall_time_s']:.1f}")
        console.print(table)
        out = Path(self.out)
        console.print(f"volume:  {out / 'volume.nii.gz'}  ({out / 'volume.npy'})")
        console.print(f"slices:  {out / 'slices'}")
        console.print(f"scores:  {out / 'metrics.json'}")
        return metrics


@dataclass
class CtSimulate(CTSimulate):
    """Simulate a noisy sparse-view cone-beam scan of a volume (R2-Gaussian dataset layout)."""

    def run(self) -> dict:  # type: ignore[override]
        with console.status(f"simulating {self.views} views of {self.volume}..."):
            info = super().run()
        console.print(f"wrote {self.out} ({self.views} training views, {self.n_test} test views)")
        return info


CtCommands = Union[
    Annotated[CtFit, tyro.conf.subcommand("fit")],
    Annotated[CtSimulate, tyro.conf.subcommand("simulate")],
]


@dataclass
class Ct:
    """Sparse-view CT / CBCT: ``recon ct fit`` reconstructs, ``recon ct simulate`` makes test scans."""

    command: tyro.conf.OmitSubcommandPrefixes[CtCommands]

    def run(self) -> None:
        self.command.run()


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

    def run(self) -> None:
        from recon_viewer import serve  # the viewer imports no training code

        serve(self.runs, host=self.host, port=self.port, open_browser=not self.no_browser)


Commands = Union[
    Annotated[Fit, tyro.conf.subcommand("fit")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[Export, tyro.conf.subcommand("export")],
    Annotated[Poses, tyro.conf.subcommand("poses")],
    Annotated[Ct, tyro.conf.subcommand("ct")],
    Annotated[View, tyro.conf.subcommand("view")],
]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command. Returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    cmd = tyro.cli(Commands, args=argv, prog="recon")
    try:
        cmd.run()
    except InputError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
