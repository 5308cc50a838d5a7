"""The bad-input catalogue: one case per broken input, across every reader and command.

Each reader case builds a small valid input (:mod:`tests.io.valid_files`), breaks it one way and
asserts that reading it raises :class:`InputError` -- one line naming the file and the problem --
within :data:`TIME_BOUND_S`. Each command case runs ``recon ...`` in-process and asserts exit
code 2, one ``error:`` line on stderr naming the file, no traceback, and no run folder that
looks complete. ``docs/testing.md`` counts the cases per reader.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.errors import InputError
from recon.io.formats import load_capture, load_ct_data, load_volume_file
from recon.io.images import image_size, load_image
from recon.io.run import RunDir
from tests.io import valid_files as vf

TIME_BOUND_S = 10.0
"""Every case answers within this (none may hang or allocate what a header claims)."""

Read = Callable[[], Any]


# ------------------------------------------------------------------------------ file surgery
def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _garbage(path: Path, n: int = 300) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def _npy_header(path: Path, shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"\0" * 64) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)
    return path


def _save(path: Path, arr: Any) -> Path:
    np.save(path, arr, allow_pickle=isinstance(arr, np.ndarray) and arr.dtype.hasobject)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return path


def _edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def _set(d: dict, key: str, value: Any) -> None:
    d[key] = value


# ------------------------------------------------------------------------------ reader cases
CASES: dict[str, tuple[str, Callable[[Path], tuple[Read, str]]]] = {}
"""id -> (reader, build(tmp) -> (read, text the message must contain))."""


def case(reader: str, name: str):
    def register(build: Callable[[Path], tuple[Read, str]]):
        CASES[f"{reader}/{name}"] = (reader, build)
        return build

    return register


# images -----------------------------------------------------------------------
@case("images", "truncated-png")
def _(t):
    p = _truncate(vf.transforms_capture(t).parent / "images" / "0000.png", 0.6)
    return lambda: load_image(p), "0000.png"


@case("images", "random-bytes")
def _(t):
    p = _garbage(t / "x.png")
    return lambda: load_image(p), "x.png"


@case("images", "empty-file")
def _(t):
    (t / "e.jpg").write_bytes(b"")
    return lambda: image_size(t / "e.jpg"), "e.jpg"


@case("images", "100000x100000-header")
def _(t):
    p = _png_header(t / "huge.png", 100000, 100000)
    return lambda: load_image(p), "huge.png"


@case("images", "text-named-jpg")
def _(t):
    (t / "note.jpg").write_text("not a photo\n")
    return lambda: load_image(t / "note.jpg"), "note.jpg"


@case("images", "missing")
def _(t):
    return lambda: load_image(t / "gone.png"), "gone.png"


# transforms.json (nerfstudio / instant-ngp) -----------------------------------
def _tj(edit: Callable[[dict], None], needle: str = "transforms.json", **kw):
    def build(t):
        p = _edit_json(vf.transforms_capture(t), edit)
        return lambda: load_capture(p, **kw), needle

    return build


def _tj_bytes(content: bytes):
    def build(t):
        p = vf.transforms_capture(t)
        p.write_bytes(content)
        return lambda: load_capture(p), "transforms.json"

    return build


case("transforms", "non-utf8")(_tj_bytes(b'{"frames": []}\xff\xfe'))
case("transforms", "truncated-json")(_tj_bytes(b'{"frames": [{"file_path": "images/0000.png", '))
case("transforms", "top-level-list")(_tj_bytes(b"[1, 2, 3]"))
case("transforms", "no-frames")(_tj(lambda m: _set(m, "frames", [])))
case("transforms", "nan-pose")(_tj(lambda m: m["frames"][1]["transform_matrix"][0].__setitem__(3, float("nan"))))
case("transforms", "inf-focal")(_tj(lambda m: _set(m, "fl_x", float("inf")), "fl_x"))
case("transforms", "pose-2x2")(_tj(lambda m: _set(m["frames"][0], "transform_matrix", [[1, 0], [0, 1]]), "4x4"))
case("transforms", "pose-of-strings")(_tj(lambda m: _set(m["frames"][0], "transform_matrix", [["a"] * 4] * 4), "transform_matrix"))
case("transforms", "focal-is-text")(_tj(lambda m: _set(m, "fl_x", "abc"), "fl_x"))
case("transforms", "negative-size")(_tj(lambda m: _set(m, "w", -8), "transforms.json"))
case("transforms", "fisheye-model")(_tj(lambda m: _set(m, "camera_model", "OPENCV_FISHEYE"), "OPENCV_FISHEYE"))
case("transforms", "frame-without-file-path")(_tj(lambda m: m["frames"][0].pop("file_path"), "file_path"))
case("transforms", "image-listed-twice")(_tj(lambda m: m["frames"].append(dict(m["frames"][0])), "more than once"))
case("transforms", "missing-image")(_tj(lambda m: _set(m["frames"][0], "file_path", "images/nope.png"), "nope.png"))
case("transforms", "image-path-leaves-folder")(_tj(lambda m: _set(m["frames"][0], "file_path", "../outside.png"), "outside the dataset folder"))
case("transforms", "absolute-image-path")(_tj(lambda m: _set(m["frames"][0], "file_path", "/etc/passwd"), "outside the dataset folder"))
case("transforms", "mask-path-leaves-folder")(_tj(lambda m: _set(m["frames"][0], "mask_path", "../../mask.png"), "mask_path"))
case("transforms", "ply-path-leaves-folder")(_tj(lambda m: _set(m, "ply_file_path", "../points.ply"), "ply_file_path"))
case("transforms", "split-list-missing")(_tj(lambda m: None, "train_filenames", split="train"))


@case("transforms", "corrupt-point-ply")
def _(t):
    p = _edit_json(vf.transforms_capture(t), lambda m: _set(m, "ply_file_path", "points.ply"))
    (t / "points.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nproperty float x\nend_header\n\0\0")
    return lambda: load_capture(p), "points.ply"


# Blender -----------------------------------------------------------------------
@case("blender", "no-focal")
def _(t):
    _edit_json(vf.blender_capture(t), lambda m: m.pop("camera_angle_x"))
    return lambda: load_capture(t), "focal"


@case("blender", "missing-image")
def _(t):
    p = vf.blender_capture(t)
    (t / "train" / "0001.png").unlink()
    return lambda: load_capture(p), "0001"


@case("blender", "corrupt-image")
def _(t):
    vf.blender_capture(t)
    _garbage(t / "train" / "0002.png")
    return lambda: load_capture(t), "0002.png"


@case("blender", "wrong-split")
def _(t):
    p = vf.blender_capture(t)
    return lambda: load_capture(p, split="test"), "split"


# COLMAP -----------------------------------------------------------------------
def _colmap(edit: Callable[[Path], None], needle: str):
    def build(t):
        root = vf.colmap_capture(t)
        edit(root / "sparse" / "0")
        return lambda: load_capture(root), needle

    return build


case("colmap", "garbage-cameras")(_colmap(lambda m: (m / "cameras.txt").write_text("1 PINHOLE eight six\n"), "sparse"))
case("colmap", "unknown-camera-id")(_colmap(lambda m: (m / "images.txt").write_text("1 1 0 0 0 0 0 1 7 0000.png\n\n"), "sparse"))
case("colmap", "missing-points3D")(_colmap(lambda m: (m / "points3D.txt").unlink(), "points3D"))
case("colmap", "fisheye-model")(_colmap(lambda m: (m / "cameras.txt").write_text("1 OPENCV_FISHEYE 8 6 10 10 4 3 0 0 0 0\n"), "OPENCV_FISHEYE"))
case("colmap", "missing-image")(_colmap(lambda m: (m.parent.parent / "images" / "0001.png").unlink(), "0001.png"))
case("colmap", "truncated-bin-model")(_colmap(lambda m: [(m / "cameras.txt").unlink(), (m / "cameras.bin").write_bytes(b"\x01\0\0")], "sparse"))


# LLFF -------------------------------------------------------------------------
def _llff(edit: Callable[[Path], None], needle: str = "poses_bounds.npy"):
    def build(t):
        root = vf.llff_capture(t)
        edit(root / "poses_bounds.npy")
        return lambda: load_capture(root), needle

    return build


case("llff", "wrong-columns")(_llff(lambda p: _save(p, np.zeros((3, 15)))))
case("llff", "count-mismatch")(_llff(lambda p: _save(p, np.load(p)[:2]), "images"))
case("llff", "nan-pose")(_llff(lambda p: _save(p, np.where(np.eye(3, 17) > 0, np.nan, np.load(p)))))
case("llff", "truncated")(_llff(lambda p: _truncate(p, 0.7)))
case("llff", "object-array")(_llff(lambda p: _save(p, np.array([{"a": 1}] * 3, dtype=object)), "pickle"))
case("llff", "text-dtype")(_llff(lambda p: _save(p, np.full((3, 17), "x"))))


# R2-Gaussian ------------------------------------------------------------------
def _r2(edit: Callable[[Path], Any], needle: str, **kw):
    def build(t):
        root = vf.r2gaussian_folder(t / "r2")
        edit(root)
        return lambda: load_ct_data(root, **kw), needle

    return build


def _r2_meta(edit: Callable[[dict], None]) -> Callable[[Path], Any]:
    return lambda root: _edit_json(root / "meta_data.json", edit)


_P0 = "proj_train/proj_train_0000.npy"
case("r2gaussian", "non-utf8-meta")(_r2(lambda r: (r / "meta_data.json").write_bytes(b"{\"scanner\": \xff}"), "UTF-8"))
case("r2gaussian", "missing-projection")(_r2(lambda r: (r / _P0).unlink(), "proj_train_0000"))
case("r2gaussian", "truncated-projection")(_r2(lambda r: _truncate(r / _P0, 0.8), "proj_train_0000"))
case("r2gaussian", "nan-projection")(_r2(lambda r: _save(r / _P0, np.full((6, 8), np.nan, np.float32)), "NaN"))
case("r2gaussian", "object-projection")(_r2(lambda r: _save(r / _P0, np.array([None] * 3, dtype=object)), "pickle"))
case("r2gaussian", "complex-projection")(_r2(lambda r: _save(r / _P0, np.zeros((6, 8), np.complex64)), "dtype"))
case("r2gaussian", "3d-projection")(_r2(lambda r: _save(r / _P0, np.zeros((2, 6, 8), np.float32)), "2D"))
case("r2gaussian", "detector-mismatch")(_r2(lambda r: _save(r / _P0, np.zeros((7, 8), np.float32)), "different shapes"))
case("r2gaussian", "absurd-projection-header")(_r2(lambda r: _npy_header(r / _P0, (100000, 100000)), "proj_train_0000"))
case("r2gaussian", "volume-shape-mismatch")(_r2(lambda r: _save(r / "vol_gt.npy", np.zeros((5, 4, 4), np.float32)), "nVoxel"))
case("r2gaussian", "inf-volume")(_r2(lambda r: _save(r / "vol_gt.npy", np.full((5, 4, 3), np.inf, np.float32)), "NaN/inf"))
case("r2gaussian", "projection-path-leaves-folder")(_r2(_r2_meta(lambda m: _set(m["proj_train"][0], "file_path", "../../x.npy")), "outside the dataset folder"))
case("r2gaussian", "volume-path-absolute")(_r2(_r2_meta(lambda m: _set(m, "vol", "/etc/hostname")), "outside the dataset folder"))
case("r2gaussian", "negative-DSD")(_r2(_r2_meta(lambda m: _set(m["scanner"], "DSD", -1.0)), "meta_data.json"))
case("r2gaussian", "text-DSO")(_r2(_r2_meta(lambda m: _set(m["scanner"], "DSO", "far")), "meta_data.json"))
case("r2gaussian", "angle-is-text")(_r2(_r2_meta(lambda m: _set(m["proj_train"][1], "angle", "ten")), "angle"))
case("r2gaussian", "nan-angle")(_r2(_r2_meta(lambda m: _set(m["proj_train"][1], "angle", float("nan"))), "meta_data.json"))
case("r2gaussian", "proj-train-not-a-list")(_r2(_r2_meta(lambda m: _set(m, "proj_train", {"a": 1})), "proj_train"))


# NAF pickles ------------------------------------------------------------------
def _naf(write: Callable[[Path], Any] | None, needle: str, trust: bool = True):
    def build(t):
        p = vf.naf_pickle(t / "scan.pickle")
        if write is not None:
            write(p)
        return lambda: load_ct_data(p, trust_pickle=trust), needle

    return build


case("naf", "untrusted-pickle")(_naf(None, "--trust-pickle", trust=False))
case("naf", "truncated")(_naf(lambda p: _truncate(p, 0.5), "scan.pickle"))
case("naf", "random-bytes")(_naf(_garbage, "scan.pickle"))
case("naf", "not-a-dict")(_naf(lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "dict"))
case("naf", "numTrain-mismatch")(_naf(lambda p: p.write_bytes(pickle.dumps({**pickle.loads(p.read_bytes()), "numTrain": 99})), "numTrain"))
case("naf", "angle-count-mismatch")(_naf(lambda p: p.write_bytes(pickle.dumps(_naf_edit(p, angles=np.zeros(3)))), "angles"))


def _naf_edit(p: Path, **train: Any) -> dict:
    data = pickle.loads(p.read_bytes())
    data["train"] = {**data["train"], **train}
    return data


# projection stacks + TIGRE geometry --------------------------------------------
def _stack(edit: Callable[[Path], Any], needle: str, suffix: str = ".npy"):
    def build(t):
        p = vf.projection_stack(t / f"scan{suffix}")
        edit(p)
        return lambda: load_ct_data(p), needle

    return build


case("stack", "more-projections-than-angles")(_stack(lambda p: _save(p, np.zeros((7, 6, 8), np.float32)), "angles"))
case("stack", "detector-mismatch")(_stack(lambda p: _save(p, np.zeros((5, 6, 9), np.float32)), "detector"))
case("stack", "no-geometry-beside")(_stack(lambda p: p.with_suffix(".json").unlink(), "geometry"))
case("stack", "non-utf8-geometry")(_stack(lambda p: p.with_suffix(".json").write_bytes(b"{\"mode\": \"\xff\"}"), "scan.json"))
case("stack", "nan-projections")(_stack(lambda p: _save(p, np.full((5, 6, 8), np.nan, np.float32)), "NaN"))
case("stack", "million-slice-header")(_stack(lambda p: _npy_header(p, (1_000_000, 512, 512)), "scan.npy"))
case("stack", "complex-dtype")(_stack(lambda p: _save(p, np.zeros((5, 6, 8), np.complex64)), "dtype"))
case("stack", "corrupt-tiff")(_stack(lambda p: _garbage(p), "scan.tif", suffix=".tif"))
case("stack", "truncated-tiff")(_stack(lambda p: _truncate(p, 0.5), "scan.tif", suffix=".tif"))


# volumes (.npy, .npz, NIfTI, TIFF) ---------------------------------------------
def _vol(name: str, edit: Callable[[Path], Any], needle: str):
    def build(t):
        p = vf.volume_file(t / name)
        edit(p)
        return lambda: load_volume_file(p), needle

    return build


case("npy-volume", "2d-array")(_vol("v.npy", lambda p: _save(p, np.zeros((4, 5), np.float32)), "3D"))
case("npy-volume", "nan")(_vol("v.npy", lambda p: _save(p, np.full((3, 4, 5), np.nan, np.float32)), "NaN"))
case("npy-volume", "truncated")(_vol("v.npy", lambda p: _truncate(p, 0.8), "v.npy"))
case("npy-volume", "million-slice-header")(_vol("v.npy", lambda p: _npy_header(p, (1_000_000, 512, 512), "<i2"), "v.npy"))
case("npy-volume", "object-array")(_vol("v.npy", lambda p: _save(p, np.array([[[None]]], dtype=object)), "pickle"))
case("npy-volume", "not-npy")(_vol("v.npy", lambda p: p.write_text("1,2,3\n"), "v.npy"))
case("npz-volume", "not-a-zip")(_vol("v.npz", _garbage, "v.npz"))
case("npz-volume", "no-volume-key")(_vol("v.npz", lambda p: np.savez(p, other=np.zeros(3)), "volume"))
case("npz-volume", "absurd-member-header")(_vol("v.npz", lambda p: _npz_with(p, _npy_bytes((1_000_000, 1000, 1000))), "v.npz"))
case("npz-volume", "truncated")(_vol("v.npz", lambda p: _truncate(p, 0.6), "v.npz"))
case("nifti", "truncated")(_vol("v.nii", lambda p: _truncate(p, 0.7), "v.nii"))
case("nifti", "gz-not-gzip")(_vol("v.nii.gz", lambda p: p.write_bytes(gzip.decompress(p.read_bytes())), "v.nii.gz"))
case("nifti", "truncated-gzip")(_vol("v.nii.gz", lambda p: _truncate(p, 0.6), "v.nii.gz"))
case("nifti", "absurd-header")(_vol("v.nii", lambda p: _nifti_dims(p, (30000, 30000, 30000)), "v.nii"))
case("nifti", "nan")(_vol("v.nii", lambda p: _nifti_fill(p, np.nan), "NaN"))
case("nifti", "random-bytes")(_vol("v.nii", _garbage, "v.nii"))
case("tiff-volume", "random-bytes")(_vol("v.tif", _garbage, "v.tif"))
case("tiff-volume", "truncated")(_vol("v.tif", lambda p: _truncate(p, 0.5), "v.tif"))
case("tiff-volume", "100000x100000-header")(_vol("v.tif", lambda p: _tiff_size(p, 100000, 100000), "v.tif"))
case("tiff-volume", "nan")(_vol("v.tif", lambda p: _tiff_nan(p), "NaN"))


def _npy_bytes(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def _npz_with(path: Path, member: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("volume.npy", member)


def _nifti_dims(path: Path, dims: tuple[int, int, int]) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<8h", data, 40, 3, *dims, 1, 1, 1, 1)  # dim[0..7] of the NIfTI-1 header
    path.write_bytes(bytes(data))


def _nifti_fill(path: Path, value: float) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.full(img.shape, value, np.float32), img.affine), str(path))


def _tiff_size(path: Path, width: int, height: int) -> None:
    import tifffile

    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = [tif.pages[0].tags["ImageWidth"], tif.pages[0].tags["ImageLength"]]
        fmt = tif.byteorder + "I"
    for tag, value in zip(tags, (width, height)):
        if tag.dtype == 3:  # SHORT: write as much as fits
            struct.pack_into(tif.byteorder + "H", data, tag.valueoffset, min(value, 65535))
        else:
            struct.pack_into(fmt, data, tag.valueoffset, value)
    path.write_bytes(bytes(data))


def _tiff_nan(path: Path) -> None:
    import tifffile

    tifffile.imwrite(path, np.full((3, 4, 5), np.nan, np.float32))


# DICOM series -----------------------------------------------------------------
def _dicom(edit: Callable[[Path], Any], needle: str, n: int = 6):
    def build(t):
        folder = t / "dcm"
        vol = vf.ct_arrays(vf.ct_geometry())[1]
        from recon.io.dicom import write_dicom_series

        write_dicom_series(folder, np.concatenate([vol, vol])[:n] * 1000 - 1000, (2.0, 1.5, 1.0))
        edit(folder)
        return lambda: load_volume_file(folder), needle

    return build


def _dcm_edit(name: str, **fields: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        import pydicom

        ds = pydicom.dcmread(folder / name)
        for k, v in fields.items():
            setattr(ds, k, v)
        ds.save_as(folder / name)

    return edit


def _dcm_copy(src: str, dst: str) -> Callable[[Path], None]:
    return lambda folder: (folder / dst).write_bytes((folder / src).read_bytes())


case("dicom", "missing-slice")(_dicom(lambda f: (f / "slice_0002.dcm").unlink(), "spac"))
case("dicom", "duplicated-slice")(_dicom(_dcm_copy("slice_0002.dcm", "slice_0002_copy.dcm"), "slice"))
case("dicom", "uneven-spacing")(_dicom(_dcm_edit("slice_0004.dcm", ImagePositionPatient=[0.0, 0.0, 8.7]), "spac"))
case("dicom", "truncated-slice")(_dicom(lambda f: _truncate(f / "slice_0003.dcm", 0.7), "slice_0003.dcm"))
case("dicom", "no-dicom-files")(_dicom(lambda f: [p.unlink() for p in f.iterdir()] and (f / "README.txt").write_text("hi"), "DICOM"))
case("dicom", "two-series")(_dicom(_dcm_edit("slice_0001.dcm", SeriesInstanceUID="1.2.3.4"), "series"))
case("dicom", "60000x60000-header")(_dicom(_dcm_edit("slice_0001.dcm", Rows=60000, Columns=60000), "slice_0001.dcm"))
case("dicom", "dcm-file-not-dicom")(_dicom(lambda f: _garbage(f / "slice_0005.dcm"), "slice_0005.dcm"))
case("dicom", "missing-position")(_dicom(lambda f: _dcm_del(f / "slice_0001.dcm", "ImagePositionPatient"), "ImagePositionPatient"))


def _dcm_del(path: Path, key: str) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    delattr(ds, key)
    ds.save_as(path)


@pytest.mark.parametrize("name", list(CASES))
def test_reader_refuses_in_one_line(tmp_path, name):
    _reader, build = CASES[name]
    read, needle = build(tmp_path)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        read()
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "\n" not in message, message
    assert needle in message, message
    assert elapsed < TIME_BOUND_S, f"{elapsed:.1f} s"


# ------------------------------------------------------------------------------ commands
COMMANDS: dict[str, tuple[str, Callable[[Path], tuple[list[str], str, Path | None]]]] = {}
"""id -> (command, build(tmp) -> (argv, text the error line must contain, run folder or None))."""


def command(cmd: str, name: str):
    def register(build):
        COMMANDS[f"{cmd}/{name}"] = (cmd, build)
        return build

    return register


def _capture_run_edit(edit: Callable[[Path], Any]) -> Callable[[Path], Path]:
    def make(t: Path) -> Path:
        run = vf.capture_run(t / "run")
        edit(run)
        return run

    return make


_EVAL_RUNS = {
    "run-json-malformed": (lambda r: (r / "run.json").write_text("{\"status\": "), "run.json"),
    "run-json-a-list": (lambda r: (r / "run.json").write_text("[]"), "run.json"),
    "run-json-non-utf8": (lambda r: (r / "run.json").write_bytes(b"\xff\xfe{}"), "run.json"),
    "splat-missing": (lambda r: (r / "splat.ply").unlink(), "splat.ply"),
    "splat-corrupt": (lambda r: _truncate(r / "splat.ply", 0.5), "splat.ply"),
    "config-missing-keys": (lambda r: (r / "config.json").write_text("{}"), "config.json"),
    "config-missing": (lambda r: (r / "config.json").unlink(), "config.json"),
    "not-complete": (lambda r: RunDir(r).mark("running"), "complete"),
}
for _name, (_edit, _needle) in _EVAL_RUNS.items():
    command("eval", _name)(
        lambda t, e=_edit, n=_needle: (["eval", str(_capture_run_edit(e)(t)), "--cameras", str(vf.transforms_capture(t / "cams"))], n, None)
    )


@command("eval", "ct-run")
def _(t):
    return ["eval", str(vf.ct_run(t / "ct")), "--cameras", str(vf.transforms_capture(t / "cams"))], "CT run", None


@command("eval", "cameras-leave-folder")
def _(t):
    cams = _edit_json(vf.transforms_capture(t / "cams"), lambda m: _set(m["frames"][0], "file_path", "../../x.png"))
    return ["eval", str(vf.capture_run(t / "run")), "--cameras", str(cams)], "outside the dataset folder", None


_EXPORT_RUNS = {
    "run-json-non-utf8": (lambda r: (r / "run.json").write_bytes(b"\xff\xfe{}"), "run.json"),
    "no-splat-no-checkpoint": (lambda r: [(r / "splat.ply").unlink(), RunDir(r).mark("failed")], "checkpoint"),
    "corrupt-checkpoint": (lambda r: [(r / "splat.ply").unlink(), RunDir(r).mark("interrupted"), _garbage(_ckpt(r))], "ckpt_"),
    "checkpoint-needs-pickle": (lambda r: [(r / "splat.ply").unlink(), RunDir(r).mark("interrupted"), torch.save({"x": _Unsafe()}, _ckpt(r))], "ckpt_"),
    "checkpoint-without-model": (lambda r: [(r / "splat.ply").unlink(), RunDir(r).mark("interrupted"), torch.save({"step": 3}, _ckpt(r))], "ckpt_"),
}


class _Unsafe:
    """A class a checkpoint may name: loading it would need unpickling code."""


def _ckpt(run: Path) -> Path:
    (run / "checkpoints").mkdir(exist_ok=True)
    return run / "checkpoints" / "ckpt_0000001.pt"


for _name, (_edit, _needle) in _EXPORT_RUNS.items():
    command("export", _name)(lambda t, e=_edit, n=_needle: (["export", str(_capture_run_edit(e)(t))], n, None))


@command("export", "ct-run-metrics-without-water-value")
def _(t):
    return ["export", str(vf.ct_run(t / "ct"))], "metrics.json", None


@command("export", "missing-folder")
def _(t):
    return ["export", str(t / "nowhere")], "nowhere", None


@command("view", "missing-folder")
def _(t):
    return ["view", str(t / "nowhere"), "--no-browser"], "nowhere", None


@command("view", "a-file")
def _(t):
    (t / "f.txt").write_text("x")
    return ["view", str(t / "f.txt"), "--no-browser"], "f.txt", None


@command("view", "not-a-run-folder")
def _(t):
    (t / "plain").mkdir()
    return ["view", str(t / "plain"), "--no-browser"], "plain", None


@command("fit", "image-path-leaves-folder")
def _(t):
    cap = _edit_json(vf.transforms_capture(t / "cap"), lambda m: _set(m["frames"][0], "file_path", "../../x.png"))
    return ["fit", str(cap), "--out", str(t / "run")], "outside the dataset folder", t / "run"


@command("fit", "truncated-image")
def _(t):
    cap = vf.transforms_capture(t / "cap", n=4)
    _truncate(t / "cap" / "images" / "0002.png", 0.5)
    return ["fit", str(cap), "--out", str(t / "run"), "--train-views", "3", "--eval-views", "1"], "0002.png", t / "run"


@command("ct fit", "truncated-stack")
def _(t):
    p = _truncate(vf.projection_stack(t / "scan.npy"), 0.7)
    return ["ct", "fit", str(p), "--method", "fdk", "--out", str(t / "run")], "scan.npy", t / "run"


@command("ct fit", "projection-count-mismatch")
def _(t):
    p = vf.projection_stack(t / "scan.npy")
    _save(p, np.zeros((9, 6, 8), np.float32))
    return ["ct", "fit", str(p), "--method", "fdk", "--out", str(t / "run")], "angles", t / "run"


@command("ct fit", "untrusted-pickle")
def _(t):
    p = vf.naf_pickle(t / "scan.pickle")
    return ["ct", "fit", str(p), "--method", "fdk", "--out", str(t / "run")], "--trust-pickle", t / "run"


@command("ct fit", "r2-path-leaves-folder")
def _(t):
    root = vf.r2gaussian_folder(t / "r2")
    _edit_json(root / "meta_data.json", lambda m: _set(m["proj_train"][0], "file_path", "/etc/hostname"))
    return ["ct", "fit", str(root), "--method", "fdk", "--out", str(t / "run")], "outside the dataset folder", t / "run"


@command("ct convert", "untrusted-pickle")
def _(t):
    p = vf.naf_pickle(t / "scan.pickle")
    return ["ct", "convert", str(p), "--out", str(t / "r2")], "--trust-pickle", t / "r2"


@command("ct simulate", "gz-not-gzip")
def _(t):
    p = t / "vol.nii.gz"
    p.write_bytes(b"\0" * 400)
    return ["ct", "simulate", str(p), "--out", str(t / "sim")], "vol.nii.gz", t / "sim"


@command("ct simulate", "million-slice-npy")
def _(t):
    p = _npy_header(t / "vol.npy", (1_000_000, 512, 512))
    return ["ct", "simulate", str(p), "--out", str(t / "sim")], "vol.npy", t / "sim"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_exits_2_with_one_line(tmp_path, capsys, name):
    _cmd, build = COMMANDS[name]
    argv, needle, out = build(tmp_path)
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err
    assert elapsed < TIME_BOUND_S, f"{elapsed:.1f} s"
    if out is not None:
        assert not out.exists() or not RunDir(out).is_complete()


def test_allow_outside_paths_reads_what_is_refused_by_default(tmp_path):
    """The escape hatch: a capture listing an image outside its folder reads with the flag."""
    vf.transforms_capture(tmp_path / "elsewhere", n=1)
    p = _edit_json(vf.transforms_capture(tmp_path / "cap"), lambda m: _set(m["frames"][0], "file_path", "../elsewhere/images/0000.png"))
    with pytest.raises(InputError, match="outside the dataset folder"):
        load_capture(p)
    assert len(load_capture(p, allow_outside_paths=True)) == 3


def test_one_line_from_a_real_process(tmp_path):
    """The promise seen from outside: exit code 2, stderr one line, no traceback (two cases: a
    command that imports torch and one that does not; every case runs in-process above)."""
    import subprocess
    import sys

    for name in ("ct fit/truncated-stack", "view/not-a-run-folder"):
        sub = tmp_path / name.replace("/", "_").replace(" ", "_")
        sub.mkdir()
        argv, needle, _out = COMMANDS[name][1](sub)
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "viewer")])}
        proc = subprocess.run([sys.executable, "-m", "recon.cli", *argv], capture_output=True, text=True, timeout=120, cwd=root, env=env, check=False)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
