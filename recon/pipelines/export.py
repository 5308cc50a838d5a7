"""Export a finished (or interrupted) run's model to files other tools read."""

from __future__ import annotations

from pathlib import Path

from recon.errors import InputError
from recon.io.ply import read_splat_ply, write_splat_ply
from recon.io.run import RunDir, read_json
from recon.train import read_checkpoint


def load_run_params(run_dir: Path) -> dict:
    """Model parameters of a capture run: ``splat.ply`` when complete, else the newest
    checkpoint (an anchored fit's checkpoint is decoded into its Gaussians, as ``splat.ply``
    would hold them)."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise InputError(run_dir, "run folder not found")
    kind = run.status().get("kind", "capture")
    if kind != "capture":
        raise InputError(run_dir, f"a {kind.upper()} run has no splats to export (expected a capture run of 'recon fit'; "
                                  "a CT run's volume is volume.nii.gz)")  # fmt: skip
    if run.is_complete() and run.path("splat.ply").is_file():
        return read_splat_ply(run.path("splat.ply"))
    ckpt = read_checkpoint(run)
    if ckpt is None:
        raise InputError(run_dir, "no splat.ply and no checkpoint to export from")
    state = ckpt.get("trainer")
    if not isinstance(state, dict) or not isinstance(state.get("fields"), list) or not state["fields"]:
        raise InputError(run.latest_checkpoint() or run_dir, "not a checkpoint of 'recon fit' (no model state)")
    model_state = state["fields"][0]["model"]
    if state.get("model_kind") == "anchored":
        return _decode_anchored(run, model_state)
    return {k.removeprefix("params."): v for k, v in model_state.items() if k.startswith("params.")}


def _decode_anchored(run: RunDir, model_state: dict) -> dict:
    """The Gaussians an anchored checkpoint decodes into (its config from ``config.json``)."""
    from recon.splat.anchored import AnchoredConfig, AnchoredGaussians

    config = read_json(run.path("config.json"))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["anchored"].items()}
    model = AnchoredGaussians.from_state_dict(model_state, AnchoredConfig(**fields), sh_degree=int(config["sh_degree"]))
    return {k: v.detach() for k, v in model.to_gaussian_model().params.items()}


def export_run(run_dir: Path, fmt: str = "ply", out: Path | None = None) -> Path:
    """Write the run's Gaussians as ``fmt`` (only 'ply'); returns the written path."""
    if fmt != "ply":
        raise InputError("--format", f"unknown format {fmt!r} (expected 'ply')")
    params = load_run_params(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "export" / "splat.ply"
    write_splat_ply(path, params)
    return path
