"""Export a finished (or interrupted) run's model to files other tools read."""

from __future__ import annotations

from pathlib import Path

import torch

from recon.errors import InputError
from recon.io.ply import read_splat_ply, write_splat_ply
from recon.io.run import RunDir


def load_run_params(run_dir: Path) -> dict:
    """Model parameters of a run: ``splat.ply`` when complete, else the newest checkpoint."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise InputError(run_dir, "run folder not found")
    if run.is_complete() and run.path("splat.ply").is_file():
        return read_splat_ply(run.path("splat.ply"))
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise InputError(run_dir, "no splat.ply and no checkpoint to export from")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {k.removeprefix("params."): v for k, v in state["model"].items()}


def export_run(run_dir: Path, fmt: str = "ply", out: Path | None = None) -> Path:
    """Write the run's Gaussians as ``fmt`` (only 'ply'); returns the written path."""
    if fmt != "ply":
        raise InputError("--format", f"unknown format {fmt!r} (expected 'ply')")
    params = load_run_params(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "export" / "splat.ply"
    write_splat_ply(path, params)
    return path
