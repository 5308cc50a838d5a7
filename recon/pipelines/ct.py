"""``recon ct fit``: CT projections -> a volume (FDK / FBP / SART / TV / radiative Gaussians /
a learned slice diffusion prior), slices and scores, in one run folder.

Assembly only: :class:`CTFitConfig` ``setup()``s into a :class:`CTFit` job, which
:func:`recon.pipelines.job.run_job` runs. ``setup()`` reads and checks the data, the view subset,
the reference, the centre of rotation and the options before anything is written; ``execute()``
reconstructs (iterative methods through :func:`recon.train.train`: checkpoints, exact resume,
log, a preview ``volume.nii.gz`` at each checkpoint) and writes the outputs (layout:
:mod:`recon.io.run`)::

    volume.npy, volume.nii.gz     [Z, Y, X] attenuation in 1/mm (with --prior, after the prior;
                                  volume_before_prior.npy holds the reconstruction)
    reference.nii.gz              the reference the metrics use, when there is one
    geometry.json                 the scan geometry (after --cor)
    slices/{axial,coronal,sagittal}.png, loss.png, log.jsonl, metrics.json, gaussians.pt
    volume_init.npy               --method diffusion: the starting volume (TV or FDK)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from recon.ct.gaussian_trainer import GaussianFitConfig, GaussianTrainer
from recon.ct.metrics import volume_metrics
from recon.ct.project import torch_threads
from recon.ct.sart import SARTTrainer
from recon.ct.tv_trainer import TVConfig, TVTrainer
from recon.errors import InputError
from recon.geometry.ct import CTGeometry
from recon.io.atomic import atomic_save_npy, atomic_torch_save
from recon.io.ct_data import CTData
from recon.io.figures import plot_curve, write_slice_pngs
from recon.io.formats import load_ct_data, load_volume_file
from recon.io.nifti import write_nifti
from recon.io.run import GEOMETRY_FILE, RunDir
from recon.io.units import MU_WATER_PER_MM
from recon.pipelines.job import JobBase, ProgressFn
from recon.pipelines.memory import MemoryEstimate, check_memory, ct_fit_estimate
from recon.prior.dds import DiffusionConfig
from recon.train import Trainer, read_checkpoint, seed_everything, train

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "CTFit", "CTFitConfig"]

METHODS = ("fdk", "fbp", "sart", "tv", "gaussian", "diffusion")
PRIORS = ("none", "unet", "indi")


@dataclass
class InDIConfig:
    """``--prior indi``: the learned InDI refiner after the reconstruction (recon.prior.ct_indi)."""

    steps: int = 1
    """InDI steps from t = 1 (the reconstruction) to t = 0 (chosen on the validation abdomen;
    recon/prior/weights/ct_indi/MODEL_CARD.md)."""
    dc_steps: int = 10
    """OS-FISTA TV steps on the projections after the InDI steps (data consistency; --tv.* settings); 0: none."""
    weights: Path | None = None
    """Weights folder (config.json + diffusion_pytorch_model.safetensors); default: the shipped
    recon/prior/weights/ct_indi."""

    def validate(self) -> None:
        if self.steps < 1:
            raise InputError("--indi.steps", f"must be >= 1, got {self.steps}")
        if self.dc_steps < 0:
            raise InputError("--indi.dc-steps", f"must be >= 0, got {self.dc_steps}")


@dataclass
class CTFitConfig:
    """Reconstruct a volume from CT projections (fdk, fbp, sart, tv, radiative gaussian or diffusion) into --out."""

    data: tyro.conf.Positional[Path]
    """Projections: an R2-Gaussian folder (meta_data.json), a NAF .pickle (with --trust-pickle),
    or a .npy/.tif stack with its TIGRE/recon geometry .json/.yaml beside it (same stem)."""
    method: Literal["fdk", "fbp", "sart", "tv", "gaussian", "diffusion"] = "gaussian"
    """fdk (cone) / fbp (fan, parallel; same code), sart, tv (TV-regularised voxels: OS-FISTA on a
    Huber data loss + TV, or with --tv.solver adam the Gaussian method's loss with Adam), gaussian
    (R2-Gaussian-style) or diffusion (a learned axial-slice diffusion prior sampled DDS-style from
    an OS-FISTA TV start, recon.prior.dds; --diffusion.*)."""
    out: Path = Path("runs/ct")
    """Run folder to write (layout: docs/run-folder.md)."""
    iterations: int | None = None
    """SART iterations (default 20), TV steps (default --tv.iterations) or Gaussian steps (default --gaussian.iterations)."""
    views: int | None = None
    """Use N of the projections, evenly spread (sparse-view subset); all when unset."""
    filter: str = "ram-lak"
    """FDK/FBP ramp window: ram-lak, shepp-logan, cosine, hann, hamming."""
    short_scan: Literal["auto", "error", "parker"] = "auto"
    """FDK/FBP on scans under 360 deg (+ fan): parker weights ('auto' when needed) or refuse."""
    cor: str = "none"
    """Centre of rotation: 'none' (the geometry's detector offset as given), 'auto' (estimated
    from the projections, recon.ct.cor.estimate_cor: mirrored-view registration refined by FBP
    image quality; parallel and fan/cone scans with a circular orbit) or a shift in detector
    pixels (+ = the axis projects to higher columns)."""
    sart_subsets: int | None = None
    """SART: None = one view per update (SART); k = OS-SART with k ordered subsets."""
    relaxation: float = 1.0
    """SART relaxation lambda in (0, 2)."""
    reference: Path | None = None
    """Reference volume for the metrics (.npy/.npz/NIfTI/TIFF/DICOM, [z, y, x] in 1/mm); default: the dataset's volume."""
    seed: int = 0
    """Seed of every random choice."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint (and a preview volume.nii.gz) every this many steps (SART:
    iterations; 0: at the end only)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    overwrite: bool = False
    """Replace an existing run folder."""
    trust_pickle: bool = False
    """Allow reading a NAF / SAX-NeRF .pickle: unpickling runs code from the file, so only for files you trust."""
    allow_outside_paths: bool = False
    """Read projections and volumes that meta_data.json lists outside its folder (absolute or '..' paths)."""
    skip_memory_check: bool = False
    """Run even when the estimated peak memory exceeds what is available (see recon.pipelines.memory)."""
    gaussian: GaussianFitConfig = field(default_factory=GaussianFitConfig)
    """Gaussian method hyperparameters."""
    tv: TVConfig = field(default_factory=TVConfig)
    """TV method hyperparameters (also the TV start of --method diffusion, always with the fista solver)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Diffusion-prior method hyperparameters (recon.prior.dds)."""
    prior: Literal["none", "unet", "indi"] = "none"
    """Learned prior applied after the reconstruction: 'unet' adds the learned sparse U-Net's
    residual to the non-air voxels (recon.prior.ct_refiner); 'indi' runs the InDI refiner
    trained on TV reconstructions and then --indi.dc-steps TV steps on the projections
    (recon.prior.ct_indi; use it with --method tv; --indi.*). volume.npy is then the result,
    volume_before_prior.npy the reconstruction."""
    prior_path: Path | None = None
    """Weights folder of --prior unet (config.json + diffusion_pytorch_model.safetensors); default:
    the shipped recon/prior/weights/ct_refiner. (--prior indi: --indi.weights.)"""
    indi: InDIConfig = field(default_factory=InDIConfig)
    """--prior indi settings."""

    def setup(self) -> CTFit:
        """Read and check every input (nothing is written) -> the job."""
        return CTFit(self)

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """``setup().run(progress)``: the whole command; returns the metrics."""
        return self.setup().run(progress)


def _cor_shift(value: str) -> float | None:
    """``--cor``: None for 'none', nan for 'auto', else the shift in pixels."""
    if value == "none":
        return None
    if value == "auto":
        return math.nan
    try:
        shift = float(value)
    except ValueError:
        raise InputError("--cor", f"expected 'none', 'auto' or a shift in pixels, got {value!r}") from None
    if not math.isfinite(shift):
        raise InputError("--cor", f"the shift must be finite, got {value!r}")
    return shift


class CTFit(JobBase):
    """A validated ``recon ct fit`` job (see the module docstring)."""

    kind = "ct"

    def __init__(self, config: CTFitConfig) -> None:
        self.config = cfg = config
        self.run_dir = RunDir(cfg.out)
        self.resume, self.overwrite = cfg.resume, cfg.overwrite
        self._check_options()
        self.run_dir.check_resumable(cfg.resume, cfg.overwrite)
        data = load_ct_data(cfg.data, trust_pickle=cfg.trust_pickle, allow_outside_paths=cfg.allow_outside_paths)
        if cfg.views is not None:
            if not 1 <= cfg.views <= data.geometry.n_views:
                raise InputError("--views", f"asked for {cfg.views} of the {data.geometry.n_views} projections; expected 1..{data.geometry.n_views}")
            idx = data.geometry.view_indices(cfg.views)
            data = dataclasses.replace(data, geometry=data.geometry.subset(idx), projections=data.projections[idx])
        self.cor: dict[str, Any] | None = None
        shift = _cor_shift(cfg.cor)
        if shift is not None:
            data = self._apply_cor(data, shift)
        if cfg.method == "fdk" and data.geometry.mode == "parallel":
            logger.info("fdk on a parallel-beam scan runs FBP")
        reference = data.volume
        if cfg.reference is not None:
            reference, _spacing = load_volume_file(cfg.reference)
        if reference is not None and tuple(reference.shape) != data.geometry.n_voxel:
            raise InputError(cfg.reference or cfg.data, f"reference volume is {list(reference.shape)} but the geometry's grid is {list(data.geometry.n_voxel)} (z, y, x)")
        if cfg.method in ("fdk", "fbp", "tv", "gaussian", "diffusion"):
            self.short_scan = self._short_scan_mode(data.geometry)  # raises for short scans with short_scan='error'
        self.diffusion_model = None
        if cfg.method == "diffusion":
            from recon.prior.ct_diffusion import load_slice_diffusion

            self.diffusion_model = load_slice_diffusion(cfg.diffusion.weights)  # missing/corrupt weights fail here, before any output
            m = self.diffusion_model.size_multiple
            if data.geometry.n_voxel[1] % m or data.geometry.n_voxel[2] % m:
                raise InputError("--method diffusion", f"the slice model needs slice sides that are multiples of {m}; the grid is {list(data.geometry.n_voxel)} (z, y, x)")
        self.prior_model = None
        if cfg.prior == "unet":
            from recon.prior.ct_refiner import load_refiner

            self.prior_model = load_refiner(cfg.prior_path)  # a missing weights folder fails here, before any output
        elif cfg.prior == "indi":
            from recon.prior.ct_indi import load_indi

            self.prior_model = load_indi(cfg.indi.weights)  # a missing weights folder fails here, before any output
            if cfg.method != "tv":
                logger.warning("--prior indi was trained on --method tv reconstructions; after --method %s it is out of its training distribution", cfg.method)
        self.checkpoint = read_checkpoint(self.run_dir) if cfg.resume else None
        if cfg.resume and self.checkpoint is None and self.run_dir.root.is_dir() and any(self.run_dir.root.iterdir()):
            raise InputError(cfg.out, "--resume given but the folder holds no checkpoint")
        if cfg.resume and self.run_dir.path("config.json").is_file():
            from recon.io.json_file import read_json

            previous = read_json(self.run_dir.path("config.json"))
            if isinstance(previous, dict) and previous.get("method") != cfg.method:
                raise InputError("--resume", f"{cfg.out} holds a {previous.get('method')} run, not {cfg.method}")
        self.memory = ct_memory_estimate(cfg, data)
        check_memory(self.memory, str(cfg.data), skip=cfg.skip_memory_check)
        self.data, self.reference = data, reference
        if cfg.method == "diffusion" and cfg.diffusion.init_volume is not None:
            self._given_init(cfg.diffusion.init_volume)  # checked before any output

    # ------------------------------------------------------------------ validation
    def _check_options(self) -> None:
        cfg = self.config
        if cfg.method not in METHODS:
            raise InputError("--method", f"unknown method {cfg.method!r} (expected one of {', '.join(METHODS)})")
        if cfg.iterations is not None and cfg.iterations < 0:
            raise InputError("--iterations", f"must be >= 0, got {cfg.iterations}")
        if not 0.0 < cfg.relaxation < 2.0:
            raise InputError("--relaxation", f"must be in (0, 2), got {cfg.relaxation}")
        if cfg.sart_subsets is not None and cfg.sart_subsets < 1:
            raise InputError("--sart-subsets", f"must be >= 1, got {cfg.sart_subsets}")
        if cfg.checkpoint_every < 0:
            raise InputError("--checkpoint-every", f"must be >= 0, got {cfg.checkpoint_every}")
        from recon.ct.analytic import filter_name

        filter_name(cfg.filter)
        if cfg.method == "gaussian":
            cfg.gaussian.validate()
        if cfg.method in ("tv", "diffusion"):
            cfg.tv.validate()
        if cfg.method == "diffusion":
            cfg.diffusion.validate()
        if cfg.resume and cfg.method in ("fdk", "fbp"):
            raise InputError("--resume", f"method {cfg.method} is not iterative; nothing to resume")
        if cfg.resume and cfg.method == "diffusion":
            raise InputError("--resume", "method diffusion keeps no checkpoints (one sampling pass); run it again")
        if cfg.prior not in PRIORS:
            raise InputError("--prior", f"unknown prior {cfg.prior!r} (expected one of {', '.join(PRIORS)})")
        if cfg.prior_path is not None and cfg.prior == "none":
            raise InputError("--prior-path", "given without --prior (add --prior unet to use it)")
        if cfg.prior_path is not None and cfg.prior == "indi":
            raise InputError("--prior-path", "is the --prior unet weights; give the InDI weights with --indi.weights")
        if cfg.prior == "indi":
            cfg.indi.validate()

    def _short_scan_mode(self, geometry: CTGeometry) -> str:
        from recon.ct.analytic import view_weights

        if geometry.mode == "parallel":
            return "error"
        _w, kind, coverage = view_weights(geometry)
        if kind != "short":
            return "error"
        if self.config.short_scan == "error":
            raise InputError("--short-scan", f"the {geometry.n_views} views cover {math.degrees(coverage):.1f} deg, not 360; use --short-scan parker")
        return "parker"

    def _apply_cor(self, data: CTData, shift: float) -> CTData:
        from recon.ct.cor import apply_cor, estimate_cor

        if math.isnan(shift):
            res = estimate_cor(data.projections, data.geometry)
            shift = res.shift_px
            self.cor = {"shift_px": round(shift, 3), "confidence": round(res.confidence, 3), "uncertainty_px": round(res.uncertainty_px, 3), "method": res.method}
            logger.info("centre of rotation: %.2f px (confidence %.2f, %s)", shift, res.confidence, res.method)
            if res.confidence < 0.5:
                logger.warning("the centre-of-rotation estimate has low confidence (%.2f); check slices/ or pass --cor <shift>", res.confidence)
        else:
            self.cor = {"shift_px": shift, "method": "given"}
        return dataclasses.replace(data, geometry=apply_cor(data.geometry, shift))

    # ------------------------------------------------------------------ the job contract
    def run_info(self) -> dict[str, Any]:
        return {"method": self.config.method, "n_views": self.data.geometry.n_views, "data": str(self.config.data),
                "data_format": self.data.meta.get("format")}  # fmt: skip

    def execute(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        cfg, run, geo = self.config, self.run_dir, self.data.geometry
        geo.to_json(run.path(GEOMETRY_FILE))
        if self.reference is not None:
            self._write_nifti("reference.nii.gz", self.reference)
        seed_everything(cfg.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        extra: dict[str, Any] = {}
        with torch_threads("auto"):
            if cfg.method in ("fdk", "fbp"):
                from recon.ct.analytic import fdk

                volume = fdk(self.data.projections, geo, filter=cfg.filter, short_scan=self.short_scan).numpy()
                wall = time.perf_counter() - t0
            elif cfg.method == "diffusion":
                volume = self._diffusion(progress, extra)
                wall = time.perf_counter() - t0
            else:
                volume = self._iterate(progress, extra)
                earlier = float(self.checkpoint["elapsed_s"]) if self.checkpoint is not None else 0.0
                wall = time.perf_counter() - t0 + earlier  # this session (init included) + training before it
        before_prior = None
        if self.prior_model is not None:
            before_prior, volume = volume, self._apply_prior(volume, extra)
        return self._finish(volume, wall, time.process_time() - c0, extra, before_prior)

    # ------------------------------------------------------------------ iterative methods
    def _make_trainer(self, state: dict | None) -> tuple[Trainer, int]:
        cfg, data = self.config, self.data
        if cfg.method == "sart":
            n = 20 if cfg.iterations is None else cfg.iterations
            return SARTTrainer(data.projections, data.geometry, n_subsets=cfg.sart_subsets, relaxation=cfg.relaxation, state=state), n
        sub = cfg.tv if cfg.method == "tv" else cfg.gaussian
        sub = dataclasses.replace(sub, seed=cfg.seed)
        if cfg.iterations is not None:
            sub = dataclasses.replace(sub, iterations=cfg.iterations)
        if cfg.method == "tv":
            trainer = TVTrainer(data.projections, data.geometry, sub, state=state)  # type: ignore[arg-type]
            return trainer, int(trainer.config.iterations)  # type: ignore[arg-type]
        return GaussianTrainer(data.projections, data.geometry, sub, state=state), sub.iterations  # type: ignore[arg-type]

    def _iterate(self, progress: ProgressFn | None, extra: dict) -> np.ndarray:
        run, ckpt = self.run_dir, self.checkpoint
        trainer, n_steps = self._make_trainer(ckpt["trainer"] if ckpt is not None else None)
        if ckpt is not None:
            run.truncate_log(trainer.step)
            logger.info("resumed %s at step %d", self.config.method, trainer.step)
        run.mark("running", init=getattr(trainer, "init_description", None), total_steps=n_steps, step=trainer.step)

        def on_step(step: int, total: int, record: dict) -> None:
            if step % 50 == 0:
                run.progress(step, total)
            if progress is not None:
                progress(step, total, record)

        seconds = train(
            trainer, n_steps, run=run, resumed=ckpt, checkpoint_every=self.config.checkpoint_every, progress=on_step,
            log_every=1 if self.config.method == "sart" else 10,  # a SART step is a whole iteration
            on_checkpoint=lambda t: self._write_nifti("volume.nii.gz", np.asarray(t.volume().detach().cpu().numpy(), dtype=np.float32)),  # type: ignore[attr-defined]
        )  # fmt: skip
        run.progress(trainer.step, n_steps)
        hist = trainer.history or run.read_log()
        if hist:
            second = ("Gaussians", [r.get("n_gaussians", 0) for r in hist]) if self.config.method == "gaussian" else None
            plot_curve(run.path("loss.png"), [r["step"] for r in hist], [r["loss"] for r in hist],
                       "residual RMS" if self.config.method == "sart" else "loss", second)  # fmt: skip
        extra.update(iterations=trainer.step, init=getattr(trainer, "init_description", None), train_time_s=round(seconds, 2))
        if ckpt is not None:
            extra.update(resumed_from_step=int(ckpt["step"]), resumed_from_s=round(float(ckpt["elapsed_s"]), 2))
        if isinstance(trainer, GaussianTrainer):
            atomic_torch_save(run.path("gaussians.pt"), {**trainer.model.state_dict_full(), "scale": trainer.scale})
            extra.update(n_gaussians=trainer.model.num_gaussians, lambda_tv=trainer.config.lambda_tv)
        elif isinstance(trainer, TVTrainer):
            fista = trainer.config.solver == "fista"
            extra.update(tv_solver=trainer.config.solver, lambda_tv=trainer.config.fista_lambda_tv if fista else trainer.config.lambda_tv,
                         converged=trainer.converged)  # fmt: skip
        volume = trainer.volume()  # type: ignore[attr-defined]
        return np.asarray(volume.detach().cpu().numpy(), dtype=np.float32)

    # ------------------------------------------------------------------ diffusion prior
    def _diffusion(self, progress: ProgressFn | None, extra: dict) -> np.ndarray:
        """The starting volume (OS-FISTA TV or FDK), then DDS sampling with the slice prior."""
        import torch

        from recon.prior.ct_diffusion import DEFAULT_WEIGHTS
        from recon.prior.dds import dds_reconstruct

        cfg, data, run = self.config, self.data, self.run_dir
        dc = dataclasses.replace(cfg.diffusion, seed=cfg.seed)
        t = time.perf_counter()
        projector = None
        if dc.init_volume is not None:
            init = torch.from_numpy(self._given_init(dc.init_volume))
            init_desc = f"given volume ({dc.init_volume})"
        elif dc.init == "tv":
            tv = dataclasses.replace(cfg.tv, solver="fista", seed=cfg.seed)
            trainer = TVTrainer(data.projections, data.geometry, tv, num_threads=None)
            n = int(trainer.config.iterations)  # type: ignore[arg-type]
            run.mark("running", init=f"tv (fista, {n} steps)", total_steps=dc.steps, step=0)
            for _ in range(n):
                trainer.train_step()
                if trainer.converged:
                    break
            init = trainer.volume()
            projector = trainer.projector
            init_desc = f"tv (fista, {trainer.step} steps, lambda {tv.fista_lambda_tv})"
        else:
            from recon.ct.analytic import fdk

            init = fdk(data.projections, data.geometry, filter="hann", short_scan=self.short_scan, num_threads=None).clamp_min(0)
            init_desc = "fdk (hann)"
        init_s = time.perf_counter() - t
        init_np = np.ascontiguousarray(init.detach().cpu().numpy(), dtype=np.float32)
        atomic_save_npy(run.path("volume_init.npy"), init_np)
        logger.info("diffusion: started from %s in %.1f s; %d DDIM steps from t = %d", init_desc, init_s, dc.steps, dc.t_start)
        run.mark("running", init=init_desc, total_steps=dc.steps, step=0)

        def on_step(step: int, total: int, record: dict) -> None:
            run.progress(step, total)
            if progress is not None:
                progress(step, total, record)

        t = time.perf_counter()
        volume = dds_reconstruct(data.projections, data.geometry, self.diffusion_model, torch.from_numpy(init_np), dc,  # type: ignore[arg-type]
                                 projector=projector, progress=on_step)  # fmt: skip
        extra.update(init=init_desc, init_time_s=round(init_s, 2), sampling_time_s=round(time.perf_counter() - t, 2),
                     diffusion_weights=str(dc.weights or DEFAULT_WEIGHTS), diffusion_steps=dc.steps, diffusion_t_start=dc.t_start,
                     diffusion_cg_iterations=dc.cg_iterations, diffusion_tv_z=dc.tv_z, diffusion_eta=dc.eta)  # fmt: skip
        if self.reference is not None:
            extra.update({f"{k}_init": v for k, v in volume_metrics(init_np, self.reference).items() if k in ("psnr_3d", "ssim_3d")})
        return np.asarray(volume.numpy(), dtype=np.float32)

    def _given_init(self, path: Path) -> np.ndarray:
        """``--diffusion.init-volume``: a [Z, Y, X] .npy on the scan's grid, finite, in 1/mm."""
        try:
            vol = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(path, f"could not read the starting volume ({type(err).__name__}: {err}); expected a .npy [z, y, x] array") from None
        if vol.shape != tuple(self.data.geometry.n_voxel) or not np.issubdtype(vol.dtype, np.floating) or not np.isfinite(vol).all():
            raise InputError(path, f"expected a finite float [z, y, x] volume of shape {list(self.data.geometry.n_voxel)}, got {vol.dtype} {list(vol.shape)}")
        return np.ascontiguousarray(vol, dtype=np.float32)

    # ------------------------------------------------------------------ outputs
    def _apply_prior(self, volume: np.ndarray, extra: dict) -> np.ndarray:
        """The learned prior: the refiner on the non-air voxels (air unchanged), or InDI + TV steps."""
        if self.config.prior == "indi":
            return self._apply_indi(volume, extra)
        from recon.prior.ct_refiner import DEFAULT_WEIGHTS, refine_volume

        model = self.prior_model
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        logger.info("applying the learned prior %s", self.config.prior_path or DEFAULT_WEIGHTS)
        t = time.perf_counter()
        mask = model.select(volume)  # type: ignore[union-attr]
        out = refine_volume(volume, model, mask=mask)  # type: ignore[arg-type]
        extra.update(prior=self.config.prior, prior_path=str(self.config.prior_path or DEFAULT_WEIGHTS),
                     prior_time_s=round(time.perf_counter() - t, 2), prior_fraction=round(float(mask.mean()), 4))  # fmt: skip
        return out

    def _apply_indi(self, volume: np.ndarray, extra: dict) -> np.ndarray:
        """``--indi.steps`` InDI steps from the reconstruction, then ``--indi.dc-steps`` TV steps on the projections."""
        from recon.prior.ct_indi import DEFAULT_WEIGHTS, data_consistency, indi_refine

        ic = self.config.indi
        logger.info("applying the InDI prior %s: %d step(s) + %d TV steps", ic.weights or DEFAULT_WEIGHTS, ic.steps, ic.dc_steps)
        t = time.perf_counter()
        refined = indi_refine(volume, self.prior_model, steps=ic.steps)  # type: ignore[arg-type]
        t_net = time.perf_counter() - t
        out = data_consistency(refined, self.data.projections, self.data.geometry, ic.dc_steps, self.config.tv)
        extra.update(prior="indi", prior_path=str(ic.weights or DEFAULT_WEIGHTS), indi_steps=ic.steps, indi_dc_steps=ic.dc_steps,
                     prior_time_s=round(time.perf_counter() - t, 2), indi_network_s=round(t_net, 2))  # fmt: skip
        return out

    def _write_nifti(self, name: str, volume: np.ndarray) -> Path:
        geo = self.data.geometry
        zc, yc, xc = geo.voxel_centres_mm()
        return write_nifti(self.run_dir.path(name), volume, geo.voxel_mm, origin_mm=(float(zc[0]), float(yc[0]), float(xc[0])))

    def _finish(self, volume: np.ndarray, wall: float, cpu: float, extra: dict, before_prior: np.ndarray | None) -> dict[str, Any]:
        cfg, run, geo, reference = self.config, self.run_dir, self.data.geometry, self.reference
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        atomic_save_npy(run.path("volume.npy"), volume)
        if before_prior is not None:
            atomic_save_npy(run.path("volume_before_prior.npy"), np.ascontiguousarray(before_prior, dtype=np.float32))
        self._write_nifti("volume.nii.gz", volume)
        write_slice_pngs(run.path("slices"), volume, reference, geo.voxel_mm)
        metrics: dict[str, Any] = {
            "method": cfg.method,
            "n_views": geo.n_views,
            "volume_shape": list(geo.n_voxel),
            "voxel_mm": list(geo.voxel_mm),
            "units": "attenuation_per_mm",
            "mu_water_per_mm": MU_WATER_PER_MM,
            "wall_time_s": round(wall, 2),
            "cpu_time_s": round(cpu, 2),
            "filter": cfg.filter if cfg.method in ("fdk", "fbp") else None,
            "prior": cfg.prior,
            "cor": self.cor,
            **extra,
        }
        if reference is not None:
            metrics.update(volume_metrics(volume, reference))
            if before_prior is not None:
                metrics.update({f"{k}_before_prior": v for k, v in volume_metrics(before_prior, reference).items()})
            metrics["reference_range"] = [float(reference.min()), float(reference.max())]
        run.mark("running", wall_time_s=metrics["wall_time_s"], psnr_3d=metrics.get("psnr_3d"))
        return metrics


def ct_memory_estimate(cfg: CTFitConfig, data: CTData) -> MemoryEstimate:
    """Peak memory of reconstructing ``data`` with ``cfg`` (:mod:`recon.pipelines.memory`)."""
    pixels = int(data.projections.size) + (int(data.test_projections.size) if data.test_projections is not None else 0)
    n_gaussians = max(cfg.gaussian.n_gaussians, cfg.gaussian.max_gaussians) if cfg.method == "gaussian" else 0
    return ct_fit_estimate(cfg.method, data.geometry.n_voxel, pixels, n_gaussians=n_gaussians)
