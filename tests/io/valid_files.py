"""Small valid inputs of every reader, written from scratch (no shared data): the starting points
the bad-input catalogue breaks and the fuzz tests mutate. Each builder returns the path a reader
or command takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon.geometry.ct import CTGeometry, circular_angles

W, H = 8, 6
"""Size of the tiny photos."""


def ct_geometry(n_views: int = 5) -> CTGeometry:
    """A small non-cubic cone-beam geometry (axis mix-ups show)."""
    return CTGeometry(mode="cone", dsd_mm=400.0, dso_mm=250.0, n_detector=(6, 8), detector_pixel_mm=(1.2, 1.2),
                      n_voxel=(3, 4, 5), voxel_mm=(2.0, 1.5, 1.0), angles_rad=circular_angles(n_views))  # fmt: skip


def ct_arrays(geo: CTGeometry, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(geo.projection_shape).astype(np.float32), rng.random(geo.n_voxel).astype(np.float32)


def _photos(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        rgb = np.full((H, W, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:04d}.png")
        names.append(f"{i:04d}.png")
    return names


def _c2w(i: int) -> list[list[float]]:
    a = 0.3 * i
    rot = [[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]]
    return [[*rot[r], [1.0, 0.5, 2.0][r] + i] for r in range(3)] + [[0.0, 0.0, 0.0, 1.0]]


def transforms_capture(root: Path, n: int = 3) -> Path:
    """A nerfstudio ``transforms.json`` with ``n`` 8x6 PNGs -> the json."""
    names = _photos(root / "images", n)
    meta = {"camera_model": "OPENCV", "fl_x": 10.0, "fl_y": 10.0, "cx": 4.0, "cy": 3.0, "w": W, "h": H,
            "frames": [{"file_path": f"images/{name}", "transform_matrix": _c2w(i)} for i, name in enumerate(names)]}  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(meta))
    return root / "transforms.json"


def blender_capture(root: Path, n: int = 3) -> Path:
    """A Blender ``transforms_train.json`` (extension-less file paths) -> the json."""
    names = _photos(root / "train", n)
    meta = {"camera_angle_x": 0.7, "frames": [{"file_path": f"./train/{Path(name).stem}", "transform_matrix": _c2w(i)} for i, name in enumerate(names)]}
    (root / "transforms_train.json").write_text(json.dumps(meta))
    return root / "transforms_train.json"


def colmap_capture(root: Path, n: int = 3) -> Path:
    """A COLMAP text model in ``sparse/0`` with ``n`` images -> the capture folder."""
    names = _photos(root / "images", n)
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 PINHOLE {W} {H} 10 10 4 3\n")
    lines = []
    for i, name in enumerate(names):
        lines.append(f"{i + 1} 1 0 0 0 {0.1 * i} 0 1 1 {name}")
        lines.append("")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "points3D.txt").write_text("1 0 0 5 255 0 0 0.5\n")
    return root


def llff_capture(root: Path, n: int = 3) -> Path:
    """An LLFF ``poses_bounds.npy`` with ``n`` images -> the capture folder."""
    _photos(root / "images", n)
    rows = []
    for i in range(n):
        pose = np.concatenate([np.eye(3), [[0.1 * i], [0.0], [0.0]], [[H], [W], [10.0]]], axis=1)
        rows.append(np.concatenate([pose.reshape(-1), [1.0, 10.0]]))
    np.save(root / "poses_bounds.npy", np.asarray(rows))
    return root


def r2gaussian_folder(root: Path) -> Path:
    from recon.io.r2gaussian import write_r2gaussian

    geo = ct_geometry()
    proj, vol = ct_arrays(geo)
    test_geo = geo.with_angles([0.1, 0.2])
    write_r2gaussian(root, geo, proj, volume=vol, test_geometry=test_geo, test_projections=ct_arrays(test_geo, 1)[0])
    return root


def naf_pickle(path: Path) -> Path:
    from recon.io.naf import write_naf_pickle

    geo = ct_geometry()
    proj, vol = ct_arrays(geo)
    return write_naf_pickle(path, geo, proj, volume=vol)


def projection_stack(path: Path) -> Path:
    """``scan.npy`` (or ``.tif``) with ``scan.json`` beside it -> the stack."""
    from recon.io.tigre import write_projection_stack

    geo = ct_geometry()
    return write_projection_stack(path, ct_arrays(geo)[0], geo)


def volume_file(path: Path) -> Path:
    """A [3, 4, 5] volume as ``.npy``, ``.npz``, ``.nii``, ``.nii.gz``, ``.tif`` or a DICOM folder."""
    from recon.io.formats import write_volume

    vol = ct_arrays(ct_geometry())[1]
    if path.name.endswith(".npz"):
        np.savez(path, volume=vol, spacing_mm_zyx=np.array([2.0, 1.5, 1.0]))
        return path
    if path.suffix == "":
        vol = vol * 1000.0 - 1000.0  # HU
    return write_volume(path, vol, (2.0, 1.5, 1.0))


def capture_run(root: Path, capture_json: Path | None = None) -> Path:
    """A complete capture run folder (``recon fit`` layout) with a 4-Gaussian ``splat.ply``."""
    from recon.io.ply import write_splat_ply
    from recon.io.run import RunDir

    run = RunDir(root)
    run.prepare(resume=False, overwrite=False)
    n = 4
    params = {"means": torch.zeros(n, 3), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "scales": torch.full((n, 3), -2.0),
              "opacities": torch.zeros(n), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}  # fmt: skip
    write_splat_ply(run.path("splat.ply"), params)
    run.start("capture", {"downscale": 1.0, "background": [0.0, 0.0, 0.0], "sh_degree": 0})
    for name in ("renders", "photos", "compare"):
        run.path(name).mkdir()
    run.path("cameras.json").write_text(json.dumps({"convention": "opencv", "views": []}))
    run.complete({"train": {}})
    return root


def ct_run(root: Path) -> Path:
    """A complete CT run folder (``recon ct fit`` layout)."""
    from recon.io.run import RunDir

    run = RunDir(root)
    run.prepare(resume=False, overwrite=False)
    run.start("ct", {"method": "fdk"})
    geo = ct_geometry()
    geo.to_json(run.path("geometry.json"))
    np.save(run.path("volume.npy"), ct_arrays(geo)[1])
    volume_file(run.path("volume.nii.gz"))
    run.path("slices").mkdir()
    run.complete({"method": "fdk"})
    return root
