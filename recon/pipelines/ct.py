"""Sparse-view CT: ``recon ct fit`` (FDK / FBP / SART / TV / radiative Gaussians) and ``recon ct
simulate`` (an R2-Gaussian-layout dataset from a volume).

Both commands validate every input before anything is written. A fit writes a run folder
(see :mod:`recon.io.run`)::

    RUN/
      run.json          status: running -> complete (written last)
      config.json       the command's fields
      volume.npy        [Z, Y, X] attenuation in 1/mm (float32); with --refine, the refined one
      volume_unrefined.npy   --refine: the reconstruction before the refiner
      volume.nii.gz     the same with its voxel spacing and origin (mm)
      slices/{axial,coronal,sagittal}.png   central slices (reconstruction | reference)
      loss.png          iterative methods: loss (SART: residual RMS) per step
      metrics.json      3D PSNR / SSIM against the reference (when there is one), times
      log.jsonl         per-step records of iterative methods
      checkpoints/      resumable state (SART, TV, Gaussians)
      gaussians.pt      the fitted Gaussians (method gaussian)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from recon.io.ct_data import CTData
from recon.io.nifti import write_nifti
from recon.ct.gaussians import GaussianFitConfig, GaussianTrainer
from recon.geometry.ct import CTGeometry, circular_angles
from recon.ct.metrics import psnr_3d, ssim_3d
from recon.ct.tv_trainer import TVConfig
from recon.errors import InputError
from recon.io.formats import load_ct_data, load_volume_file
from recon.io.images import save_image
from recon.io.atomic import atomic_save_npy
from recon.io.run import RunDir, atomic_torch_save, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["CTFit", "CTSimulate", "ProgressFn"]

ProgressFn = Callable[[int, int, dict], None]
"""``progress(step, total, info)`` after every iteration / step (info: loss, n_gaussians, ...)."""

METHODS = ("fdk", "fbp", "sart", "tv", "gaussian")
_STACK_SUFFIXES = (".npy", ".tif", ".tiff")


# =============================================================================== data
def resample_volume(volume: np.ndarray, voxel_mm: tuple[float, float, float], size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Area-resample [Z, Y, X] to ``size``^3 voxels keeping the physical extent (adaptive average
    pooling when shrinking, trilinear when growing); returns the volume and its new voxel size."""
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    shape = (size, size, size)
    if all(s <= n for s, n in zip(shape, volume.shape)):
        out = torch.nn.functional.interpolate(vol, size=shape, mode="area")
    else:
        out = torch.nn.functional.interpolate(vol, size=shape, mode="trilinear", align_corners=False)
    extent = [n * d for n, d in zip(volume.shape, voxel_mm)]
    return out[0, 0].numpy(), tuple(e / size for e in extent)  # type: ignore[return-value]


# =============================================================================== output helpers
def _slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """Central axial (y, x), coronal (z, x) and sagittal (z, y) slices, superior (+z) at the top."""
    Z, Y, X = volume.shape
    return {
        "axial": volume[Z // 2],
        "coronal": volume[:, Y // 2, :][::-1],
        "sagittal": volume[:, :, X // 2][::-1],
    }


def write_slice_pngs(folder: Path, volume: np.ndarray, reference: np.ndarray | None, voxel_mm: tuple[float, float, float]) -> list[Path]:
    """``axial/coronal/sagittal.png``: the volume's central slices, with the reference beside
    them (same grey window: the reference's range, else the volume's 0.5-99.5 percentiles);
    rows are stretched to the voxel aspect ratio."""
    src = reference if reference is not None else volume
    lo, hi = (float(src.min()), float(src.max())) if reference is not None else tuple(float(v) for v in np.percentile(volume, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    paths = []
    rec_s, ref_s = _slices(volume), _slices(reference) if reference is not None else None
    aspect = {"axial": voxel_mm[1] / voxel_mm[2], "coronal": voxel_mm[0] / voxel_mm[2], "sagittal": voxel_mm[0] / voxel_mm[1]}
    for name, img in rec_s.items():
        tiles = [img] if ref_s is None else [img, np.full((img.shape[0], 2), hi), ref_s[name]]
        strip = (np.concatenate(tiles, axis=1) - lo) / (hi - lo)
        rows = max(1, round(strip.shape[0] * aspect[name]))
        if rows != strip.shape[0]:
            idx = np.clip(((np.arange(rows) + 0.5) * strip.shape[0] / rows).astype(int), 0, strip.shape[0] - 1)
            strip = strip[idx]
        paths.append(save_image(folder / f"{name}.png", np.clip(strip, 0.0, 1.0).astype(np.float32)))
    return paths


def plot_curve(path: Path, steps: list[int], values: list[float], ylabel: str, extra: tuple[str, list[float]] | None = None) -> Path:
    """A log-scale curve (and an optional second axis) as PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel, color="tab:blue")
    if min(values) > 0:
        ax.set_yscale("log")
    if extra is not None:
        ax2 = ax.twinx()
        ax2.plot(steps, extra[1], color="tab:orange")
        ax2.set_ylabel(extra[0], color="tab:orange")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def volume_metrics(volume: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """R2-Gaussian's 3D PSNR (over the reference's range) and SSIM (mean of axial, coronal and
    sagittal slice means), with the per-axis SSIMs."""
    s = ssim_3d(volume, reference)
    return {
        "psnr_3d": round(psnr_3d(volume, reference), 4),
        "ssim_3d": round(s.mean, 5),
        "ssim_axial": round(s.axial, 5),
        "ssim_coronal": round(s.coronal, 5),
        "ssim_sagittal": round(s.sagittal, 5),
    }


def _check_out_dir(out: Path, resume: bool, overwrite: bool, where: str = "--out") -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if not any(out.iterdir()):
        return
    if resume:
        if RunDir(out).latest_checkpoint() is None:
            raise InputError(out, "--resume given but the folder holds no checkpoint")
        return
    if not overwrite:
        raise InputError(out, f"{where} folder exists and is not empty (use --resume to continue or --overwrite)")


# =============================================================================== fit
@dataclass
class CTFit:
    """Reconstruct a volume from CT projections: FDK/FBP, (OS-)SART or radiative Gaussians."""

    data: tyro.conf.Positional[Path]
    """Projections: an R2-Gaussian folder (meta_data.json), a NAF .pickle, or a .npy/.tif stack
    with its TIGRE/recon geometry .json/.yaml beside it (same stem)."""
    method: Literal["fdk", "fbp", "sart", "tv", "gaussian"] = "gaussian"
    """fdk (cone) / fbp (fan, parallel; same code), sart, tv (TV-regularised voxels, the
    Gaussian method's loss) or gaussian (R2-Gaussian-style)."""
    out: Path = Path("runs/ct")
    """Run folder to write."""
    iterations: int | None = None
    """SART iterations (default 20), TV steps (default --tv.iterations) or Gaussian steps (default --gaussian.iterations)."""
    views: int | None = None
    """Use N of the projections, evenly spread (sparse-view subset); all when unset."""
    filter: str = "ram-lak"
    """FDK/FBP ramp window: ram-lak, shepp-logan, cosine, hann, hamming."""
    short_scan: Literal["auto", "error", "parker"] = "auto"
    """FDK/FBP on scans under 360 deg (+ fan): parker weights ('auto' when needed) or refuse."""
    sart_subsets: int | None = None
    """SART: None = one view per update (SART); k = OS-SART with k ordered subsets."""
    relaxation: float = 1.0
    """SART relaxation lambda in (0, 2)."""
    reference: Path | None = None
    """Reference volume for the metrics (.npy/.npz/NIfTI/TIFF/DICOM, [z, y, x] in 1/mm); default: the dataset's volume."""
    seed: int = 0
    """Seed of every random choice."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many Gaussian / TV steps, or 5 SART iterations (0: at the end only)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    overwrite: bool = False
    """Replace an existing run folder."""
    gaussian: GaussianFitConfig = field(default_factory=GaussianFitConfig)
    """Gaussian method hyperparameters."""
    tv: TVConfig = field(default_factory=TVConfig)
    """TV method hyperparameters."""
    refine: bool = False
    """Refine the reconstruction's non-air voxels with the learned sparse U-Net
    (recon.prior.ct_refiner); volume.npy is then the refined volume, volume_unrefined.npy the input."""
    refiner_path: Path | None = None
    """Refiner weights folder (config.json + diffusion_pytorch_model.safetensors); default: the
    shipped recon/prior/weights/ct_refiner."""

    # ------------------------------------------------------------------ validation
    def _validate(self) -> tuple[CTData, np.ndarray | None]:
        if self.method not in METHODS:
            raise InputError("--method", f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        if self.iterations is not None and self.iterations < 0:
            raise InputError("--iterations", f"must be >= 0, got {self.iterations}")
        if not 0.0 < self.relaxation < 2.0:
            raise InputError("--relaxation", f"must be in (0, 2), got {self.relaxation}")
        if self.sart_subsets is not None and self.sart_subsets < 1:
            raise InputError("--sart-subsets", f"must be >= 1, got {self.sart_subsets}")
        if self.checkpoint_every < 0:
            raise InputError("--checkpoint-every", f"must be >= 0, got {self.checkpoint_every}")
        from recon.ct.analytic import _filter_name

        _filter_name(self.filter)
        if self.method == "gaussian":
            self.gaussian.validate()
        if self.method == "tv":
            self.tv.validate()
        if self.resume and self.method in ("fdk", "fbp"):
            raise InputError("--resume", f"method {self.method} is not iterative; nothing to resume")
        data = load_ct_data(self.data)
        if self.views is not None:
            if not 1 <= self.views <= data.geometry.n_views:
                raise InputError("--views", f"asked for {self.views} of the {data.geometry.n_views} projections; expected 1..{data.geometry.n_views}")
            idx = data.geometry.view_indices(self.views)
            data = dataclasses.replace(data, geometry=data.geometry.subset(idx), projections=data.projections[idx])
        if self.method == "fdk" and data.geometry.mode == "parallel":
            logger.info("fdk on a parallel-beam scan runs FBP")
        reference = data.volume
        if self.reference is not None:
            reference, _sp = load_volume_file(self.reference)
        if reference is not None and tuple(reference.shape) != data.geometry.n_voxel:
            raise InputError(self.reference or self.data, f"reference volume is {list(reference.shape)} but the geometry's grid is {list(data.geometry.n_voxel)} (z, y, x)")
        if self.method in ("fdk", "fbp", "tv", "gaussian"):
            self._short_scan_mode(data.geometry)  # raises for short scans with short_scan='error'
        if self.refiner_path is not None and not self.refine:
            raise InputError("--refiner-path", "given without --refine (add --refine to use it)")
        if self.refine:
            from recon.prior.ct_refiner import load_refiner

            self._refiner = load_refiner(self.refiner_path)  # a missing weights folder fails here, before any output
        _check_out_dir(Path(self.out), self.resume, self.overwrite)
        if self.resume and (Path(self.out) / "config.json").is_file():
            previous = json.loads((Path(self.out) / "config.json").read_text())
            if previous.get("method") != self.method:
                raise InputError("--resume", f"{self.out} holds a {previous.get('method')} run, not {self.method}")
        return data, reference

    def _short_scan_mode(self, geometry: CTGeometry) -> str:
        from recon.ct.analytic import view_weights

        if geometry.mode == "parallel":
            return "error"
        _w, kind, coverage = view_weights(geometry)
        if kind != "short":
            return "error"
        if self.short_scan == "error":
            raise InputError("--short-scan", f"the {geometry.n_views} views cover {math.degrees(coverage):.1f} deg, not 360; use --short-scan parker")
        return "parker"

    # ------------------------------------------------------------------ run
    def run(self, progress: ProgressFn | None = None) -> dict:
        """Validate, reconstruct, write the run folder; returns the metrics dict."""
        data, reference = self._validate()
        run = RunDir(Path(self.out))
        if run.root.exists() and self.overwrite and not self.resume:
            shutil.rmtree(run.root)
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.path("config.json"), dataclasses.asdict(self))
        run.mark("running", kind="ct", method=self.method, n_views=data.geometry.n_views, data=str(self.data), format=data.meta.get("format"))
        torch.manual_seed(self.seed)
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            extra: dict[str, Any] = {}
            if self.method in ("fdk", "fbp"):
                volume = self._analytic(data)
            elif self.method == "sart":
                volume = self._sart(data, run, progress, extra)
            elif self.method == "tv":
                volume = self._tv(data, run, progress, extra)
            else:
                volume = self._gaussian(data, run, progress, extra)
            unrefined = None
            if self.refine:
                unrefined, volume = volume, self._apply_refiner(volume, extra)
            wall = time.perf_counter() - t0 + extra.pop("previous_wall_s", 0.0)
            cpu = time.process_time() - c0
            return self._finish(run, data, volume, reference, wall, cpu, extra, unrefined=unrefined)
        except BaseException as err:
            run.mark("failed" if not isinstance(err, KeyboardInterrupt) else "interrupted", error=repr(err))
            raise

    def _analytic(self, data: CTData) -> np.ndarray:
        from recon.ct.analytic import fdk

        vol = fdk(data.projections, data.geometry, filter=self.filter, short_scan=self._short_scan_mode(data.geometry))
        return vol.numpy()

    def _sart(self, data: CTData, run: RunDir, progress: ProgressFn | None, extra: dict) -> np.ndarray:
        from recon.ct.project import Projector
        from recon.ct.sart import sart

        n_it = 20 if self.iterations is None else self.iterations
        x: torch.Tensor | None = None
        done, previous = 0, 0.0
        ckpt = run.latest_checkpoint() if self.resume else None
        if ckpt is not None:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            x, done, previous = state["volume"], int(state["iteration"]), float(state.get("wall_s", 0.0))
            logger.info("resuming SART at iteration %d", done)
        t0 = time.perf_counter()
        base = {"done": done}

        def cb(p) -> None:
            it = base["done"] + p.iteration
            run.append_log({"step": it, "residual_rms": p.residual_rms, "time_s": round(previous + time.perf_counter() - t0, 3)})
            if progress is not None:
                progress(it, n_it, {"loss": p.residual_rms})

        # chunks of 5 iterations so that checkpoints hold the volume after whole iterations
        projector = Projector(data.geometry)
        chunk = 5 if self.checkpoint_every else max(1, n_it - done)
        while done < n_it:
            k = min(chunk, n_it - done)
            x = sart(data.projections, data.geometry, k, n_subsets=self.sart_subsets, relaxation=self.relaxation, init=x, callback=cb, projector=projector)
            done += k
            base["done"] = done
            if done < n_it or self.checkpoint_every:  # the last one lets --resume extend a finished run
                run.save_checkpoint(done, {"volume": x, "iteration": done, "wall_s": previous + time.perf_counter() - t0})
        if x is None:  # zero iterations
            x = torch.zeros(data.geometry.n_voxel)
        extra["previous_wall_s"] = previous
        extra["iterations"] = n_it
        log = run.read_log()
        if log:
            plot_curve(run.path("loss.png"), [r["step"] for r in log], [r["residual_rms"] for r in log], "residual RMS")
        return x.numpy()

    def _train(self, run: RunDir, progress: ProgressFn | None, make: Callable[[dict | None], Any], what: str, info: Callable[[Any], dict]) -> tuple[Any, dict]:
        """Build a trainer (``make(state)``; from the newest checkpoint with --resume), fit it
        with a log record every 10 steps and checkpoints, save the final state. Returns (trainer,
        the metrics entries every projection-domain method reports)."""
        ckpt = run.latest_checkpoint() if self.resume else None
        state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt is not None else None
        trainer = make(state)
        if ckpt is not None:
            logger.info("resumed %s at step %d from %s", what, trainer.step, ckpt)
        previous = trainer.elapsed_s

        def cb(p) -> None:
            if p.step % 10 == 0 or p.step == p.n_steps:
                run.append_log(trainer.history[-1])
            if progress is not None:
                progress(p.step, p.n_steps, info(p))

        trainer.fit(callback=cb, checkpoint=lambda step, state: run.save_checkpoint(step, state), checkpoint_every=self.checkpoint_every)
        run.save_checkpoint(trainer.step, trainer.state_dict())
        return trainer, {
            "previous_wall_s": 0.0,  # trainer.elapsed_s already counts earlier sessions
            "iterations": trainer.step,
            "init": trainer.init_description,
            "train_time_s": round(trainer.elapsed_s, 2),
            "resumed_from_s": round(previous, 2) if ckpt is not None else None,
        }

    def _iterations(self, cfg):
        cfg = dataclasses.replace(cfg, seed=self.seed)
        return cfg if self.iterations is None else dataclasses.replace(cfg, iterations=self.iterations)

    def _tv(self, data: CTData, run: RunDir, progress: ProgressFn | None, extra: dict) -> np.ndarray:
        from recon.ct.tv_trainer import TVTrainer

        cfg = self._iterations(self.tv)
        trainer, common = self._train(
            run, progress, lambda state: TVTrainer(data.projections, data.geometry, cfg, state=state), "TV reconstruction",
            lambda p: {"loss": p.loss, "l1": p.l1},
        )  # fmt: skip
        hist = trainer.history
        if hist:
            plot_curve(run.path("loss.png"), [r["step"] for r in hist], [r["loss"] for r in hist], "loss")
        extra.update(common, lambda_tv=cfg.lambda_tv)
        return trainer.volume().numpy()

    def _gaussian(self, data: CTData, run: RunDir, progress: ProgressFn | None, extra: dict) -> np.ndarray:
        cfg = self._iterations(self.gaussian)
        trainer, common = self._train(
            run, progress, lambda state: GaussianTrainer(data.projections, data.geometry, cfg, state=state), "Gaussian fit",
            lambda p: {"loss": p.loss, "l1": p.l1, "n_gaussians": p.n_gaussians},
        )  # fmt: skip
        atomic_torch_save(run.path("gaussians.pt"), {**trainer.model.state_dict_full(), "scale": trainer.scale})
        hist = trainer.history
        if hist:
            plot_curve(run.path("loss.png"), [r["step"] for r in hist], [r["loss"] for r in hist], "loss", ("Gaussians", [r["n_gaussians"] for r in hist]))
        extra.update(common, n_gaussians=trainer.model.num_gaussians, lambda_tv=cfg.lambda_tv)
        return trainer.volume().numpy()

    def _apply_refiner(self, volume: np.ndarray, extra: dict) -> np.ndarray:
        """The learned refiner on the reconstruction's non-air voxels (air unchanged)."""
        from recon.prior.ct_refiner import DEFAULT_WEIGHTS, load_refiner, refine_volume

        model = getattr(self, "_refiner", None)
        if model is None:
            model = load_refiner(self.refiner_path)
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        logger.info("refining the reconstruction with %s", self.refiner_path or DEFAULT_WEIGHTS)
        t = time.perf_counter()
        mask = model.select(volume)
        refined = refine_volume(volume, model, mask=mask)
        extra.update(
            refiner=str(self.refiner_path if self.refiner_path is not None else DEFAULT_WEIGHTS),
            refine_time_s=round(time.perf_counter() - t, 2),
            refined_fraction=round(float(mask.mean()), 4),
        )
        return refined

    def _finish(
        self, run: RunDir, data: CTData, volume: np.ndarray, reference: np.ndarray | None, wall: float, cpu: float, extra: dict,
        unrefined: np.ndarray | None = None,
    ) -> dict:  # fmt: skip
        geo = data.geometry
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        atomic_save_npy(run.path("volume.npy"), volume)
        if unrefined is not None:
            atomic_save_npy(run.path("volume_unrefined.npy"), np.ascontiguousarray(unrefined, dtype=np.float32))
        zc, yc, xc = geo.voxel_centers_mm()
        write_nifti(run.path("volume.nii.gz"), volume, geo.voxel_mm, origin_mm=(float(xc[0]), float(yc[0]), float(zc[0])))
        write_slice_pngs(run.path("slices"), volume, reference, geo.voxel_mm)
        metrics: dict[str, Any] = {
            "method": self.method,
            "n_views": geo.n_views,
            "volume_shape": list(geo.n_voxel),
            "voxel_mm": list(geo.voxel_mm),
            "wall_time_s": round(wall, 2),
            "cpu_time_s": round(cpu, 2),
            "filter": self.filter if self.method in ("fdk", "fbp") else None,
            "refined": bool(unrefined is not None),
            **extra,
        }
        if reference is not None:
            metrics.update(volume_metrics(volume, reference))
            if unrefined is not None:
                metrics.update({f"{k}_unrefined": v for k, v in volume_metrics(unrefined, reference).items()})
            metrics["reference_range"] = [float(reference.min()), float(reference.max())]
        atomic_write_json(run.path("metrics.json"), metrics)
        run.mark("complete", wall_time_s=metrics["wall_time_s"], psnr_3d=metrics.get("psnr_3d"))
        return metrics


# =============================================================================== simulate
@dataclass
class CTSimulate:
    """Simulate a sparse-view cone-beam dataset (R2-Gaussian layout) from a CT volume."""

    volume: tyro.conf.Positional[Path]
    """Volume: .npz with a 'volume' key (and 'spacing_mm_zyx'), .npy, NIfTI, TIFF or a DICOM folder; [z, y, x]."""
    views: int = 25
    """Training projections, evenly over --total-angle-deg."""
    out: Path = Path("data/ct_sim")
    """Dataset folder to write (meta_data.json, proj_train/, proj_test/, vol_gt.npy)."""
    n_test: int = 20
    """Noise-free test projections at random angles (R2-Gaussian's protocol)."""
    units: Literal["auto", "hu", "mu"] = "auto"
    """Values of the volume: Hounsfield units (converted mu = mu_water (1 + HU/1000)), attenuation in 1/mm, or auto (HU when the minimum is below -500)."""
    voxel_mm: tuple[float, float, float] | None = None
    """Voxel size (z, y, x) in mm when the file has none (.npy); overrides the file's when given."""
    size: int | None = None
    """Resample to size^3 voxels (area averaging, same physical extent) before simulating."""
    mode: Literal["cone", "parallel"] = "cone"
    """Beam geometry."""
    detector: int = 256
    """Detector pixels per side; pitch 2 x the volume's largest extent / detector (R2-Gaussian: sDetector = 2 sVoxel)."""
    dso_extent: float = 2.5
    """Source-to-axis distance in units of the volume's largest extent (R2-Gaussian: DSO 5 for sVoxel 2)."""
    dsd_extent: float = 3.5
    """Source-to-detector distance in units of the volume's largest extent (R2-Gaussian: DSD 7)."""
    total_angle_deg: float = 360.0
    """Angular range of the training views."""
    noise: bool = True
    """Add Poisson + Gaussian detector noise to the training projections."""
    noise_protocol: Literal["physical", "r2gaussian"] = "physical"
    """'physical': counts ~ Poisson(I0 exp(-p)) + N(0, sigma); 'r2gaussian': TIGRE's model on p / max(p) (recon.ct.simulate)."""
    photons: float = 1e5
    """I0, photons per unattenuated pixel."""
    electronic_noise: float = 10.0
    """Electronic noise standard deviation, photons."""
    seed: int = 0
    """Noise and test-angle seed."""
    overwrite: bool = False
    """Replace an existing dataset folder."""

    def _validate(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        if self.views < 1:
            raise InputError("--views", f"must be >= 1, got {self.views}")
        if self.n_test < 0:
            raise InputError("--n-test", f"must be >= 0, got {self.n_test}")
        if self.detector < 1:
            raise InputError("--detector", f"must be >= 1, got {self.detector}")
        if self.size is not None and self.size < 2:
            raise InputError("--size", f"must be >= 2, got {self.size}")
        if not 0 < self.total_angle_deg <= 360:
            raise InputError("--total-angle-deg", f"must be in (0, 360], got {self.total_angle_deg}")
        if self.mode == "cone" and not 0 < self.dso_extent < self.dsd_extent:
            raise InputError("--dso-extent", f"need 0 < dso_extent < dsd_extent, got {self.dso_extent}, {self.dsd_extent}")
        if not self.photons > 0 or self.electronic_noise < 0:
            raise InputError("--photons", f"need photons > 0 and electronic_noise >= 0, got {self.photons}, {self.electronic_noise}")
        vol, spacing = load_volume_file(self.volume)
        if self.voxel_mm is not None:
            if len(self.voxel_mm) != 3 or any(not v > 0 for v in self.voxel_mm):
                raise InputError("--voxel-mm", f"must be 3 positive numbers, got {self.voxel_mm}")
            spacing = tuple(float(v) for v in self.voxel_mm)
        if spacing is None:
            raise InputError(self.volume, "has no voxel spacing; pass --voxel-mm Z Y X")
        units = self.units
        if units == "auto":
            units = "hu" if float(vol.min()) < -500.0 else "mu"
        if units == "hu":
            from recon.io.units import hu_to_mu

            vol = hu_to_mu(vol)
        elif float(vol.min()) < 0:
            raise InputError(self.volume, f"attenuation values must be >= 0, found {float(vol.min()):.4g} (pass --units hu for Hounsfield units)")
        if self.size is not None:
            vol, spacing = resample_volume(vol, spacing, self.size)
        _check_out_dir(Path(self.out), False, self.overwrite, "--out")
        return np.ascontiguousarray(vol, dtype=np.float32), spacing  # type: ignore[return-value]

    def geometry(self, n_voxel: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> CTGeometry:
        """The scanner: R2-Gaussian's proportions scaled to the volume's largest extent."""
        extent = max(n * d for n, d in zip(n_voxel, voxel_mm))
        pitch = 2.0 * extent / self.detector
        kw: dict[str, Any] = {
            "mode": self.mode,
            "n_detector": (self.detector, self.detector),
            "detector_pixel_mm": (pitch, pitch),
            "n_voxel": tuple(n_voxel),
            "voxel_mm": tuple(voxel_mm),
            "angles_rad": circular_angles(self.views, self.total_angle_deg),
        }
        if self.mode == "cone":
            kw.update(dso_mm=self.dso_extent * extent, dsd_mm=self.dsd_extent * extent)
        return CTGeometry(**kw)

    def run(self, progress: ProgressFn | None = None) -> dict:
        """Validate, simulate and write the dataset (into a temporary sibling folder, renamed at
        the end: an interrupted run leaves no partial dataset). Returns a summary dict."""
        from recon.ct.simulate import write_r2gaussian_dataset

        vol, spacing = self._validate()
        geo = self.geometry(vol.shape, spacing)
        geo.fov_check(shape="cylinder")
        out = Path(self.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if progress is not None:
                progress(0, 1, {})
            write_r2gaussian_dataset(
                tmp, vol, geo, self.views, self.n_test, total_angle_deg=self.total_angle_deg, noise=self.noise,
                photons_i0=self.photons, electronic_noise_std=self.electronic_noise, protocol=self.noise_protocol, seed=self.seed,
            )  # fmt: skip
            summary = {
                "source": str(self.volume),
                "n_views": self.views,
                "n_test": self.n_test,
                "volume_shape": list(vol.shape),
                "voxel_mm": [round(v, 6) for v in spacing],
                "geometry": {k: v for k, v in geo.to_dict().items() if k != "angles_rad"},
                "noise": {"enabled": self.noise, "protocol": self.noise_protocol, "photons": self.photons, "electronic_noise": self.electronic_noise},
                "mu_range_per_mm": [float(vol.min()), float(vol.max())],
            }
            (tmp / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if progress is not None:
            progress(1, 1, {})
        return summary
