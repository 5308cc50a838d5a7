"""Property-based tests (hypothesis): conversions round-trip, and readers given random bytes or a
valid file with flipped / truncated bytes either read it or raise our :class:`InputError` --
never another exception, never longer than the deadline per example.

Budgets are modest (25 derandomised examples per reader) so the file runs in well under a minute
on 2 cores; ``RECON_FUZZ_EXAMPLES=500`` runs a long randomised session. A failure prints the
shrunk example (the bytes changed) to reproduce it. NAF pickles are not fuzzed: with
``--trust-pickle`` a mutated pickle may run code, which is what trusting a file means.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.errors import InputError
from recon.geometry.cameras import (
    colmap_to_w2c,
    opengl_c2w_to_w2c,
    quaternion_to_rotation,
    rotation_to_quaternion,
    w2c_to_colmap,
    w2c_to_opengl_c2w,
)
from recon.geometry.ct import CTGeometry
from recon.io.formats import load_capture, load_ct_data, load_volume_file
from recon.io.images import load_image
from tests.io import valid_files as vf

_LONG = int(os.environ.get("RECON_FUZZ_EXAMPLES", "0"))
"""``RECON_FUZZ_EXAMPLES=500`` runs a long, randomised fuzz session (default: 25 fixed examples)."""
FUZZ = settings(max_examples=_LONG or 25, deadline=3000, derandomize=not _LONG, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MATH = settings(max_examples=60, deadline=None, derandomize=True)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
quaternions = st.tuples(finite, finite, finite, finite).filter(lambda q: math.sqrt(sum(v * v for v in q)) > 1e-3)


def _rigid(q: tuple[float, ...], t: tuple[float, ...]) -> torch.Tensor:
    mat = torch.eye(4, dtype=torch.float64)
    mat[:3, :3] = quaternion_to_rotation(torch.tensor(q, dtype=torch.float64))
    mat[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return mat


# ------------------------------------------------------------------------------ round trips
@MATH
@given(q=quaternions, t=st.tuples(finite, finite, finite))
def test_opengl_opencv_round_trip(q, t):
    c2w = _rigid(q, t)
    w2c = opengl_c2w_to_w2c(c2w)
    torch.testing.assert_close(w2c_to_opengl_c2w(w2c), c2w, atol=1e-9, rtol=1e-9)
    # the camera centre is the same point in both conventions; OpenGL looks down -z, OpenCV +z
    torch.testing.assert_close(-(w2c[:3, :3].T @ w2c[:3, 3]), c2w[:3, 3], atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(w2c[2, :3], -c2w[:3, 2], atol=1e-12, rtol=0)


@MATH
@given(q=quaternions)
def test_quaternion_matrix_round_trip(q):
    qt = torch.tensor(q, dtype=torch.float64)
    rot = quaternion_to_rotation(qt)
    torch.testing.assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.linalg.det(rot).item() == pytest.approx(1.0, abs=1e-12)
    back = rotation_to_quaternion(rot)
    unit = qt / qt.norm()
    unit = -unit if unit[0] < 0 else unit  # q and -q are the same rotation; w >= 0 is returned
    if abs(float(unit[0])) > 1e-6:  # at w = 0 both signs are valid answers
        torch.testing.assert_close(back, unit, atol=1e-9, rtol=0)
    torch.testing.assert_close(quaternion_to_rotation(back), rot, atol=1e-9, rtol=0)


@MATH
@given(q=quaternions, t=st.tuples(finite, finite, finite))
def test_colmap_round_trip(q, t):
    w2c = _rigid(q, t)
    qvec, tvec = w2c_to_colmap(w2c)
    torch.testing.assert_close(colmap_to_w2c(qvec, tvec), w2c, atol=1e-9, rtol=1e-9)


positive = st.floats(0.05, 50.0, allow_nan=False)


@st.composite
def geometries(draw) -> CTGeometry:
    mode = draw(st.sampled_from(["cone", "parallel"]))
    dso = draw(st.floats(50.0, 1000.0))
    n_views = draw(st.integers(1, 12))
    return CTGeometry(
        mode=mode,
        dso_mm=dso if mode == "cone" else None,
        dsd_mm=dso + draw(st.floats(1.0, 1000.0)) if mode == "cone" else None,
        n_detector=(draw(st.integers(2, 64)), draw(st.integers(1, 64))),  # one row would read back as a fan beam
        detector_pixel_mm=(draw(positive), draw(positive)),
        n_voxel=(draw(st.integers(1, 64)), draw(st.integers(1, 64)), draw(st.integers(1, 64))),
        voxel_mm=(draw(positive), draw(positive), draw(positive)),
        offset_origin_mm=tuple(draw(st.floats(-10, 10)) for _ in range(3)),
        offset_detector_mm=tuple(draw(st.floats(-10, 10)) for _ in range(2)),
        angles_rad=tuple(draw(st.lists(st.floats(-7.0, 7.0), min_size=n_views, max_size=n_views))),
    )


@MATH
@given(geo=geometries())
def test_ct_geometry_json_round_trip(geo):
    assert CTGeometry.from_dict(geo.to_dict()) == geo
    with tempfile.TemporaryDirectory() as d:
        path = geo.to_json(Path(d) / "g.json")
        assert CTGeometry.from_json(path) == geo
        tigre = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in geo.to_tigre_dict().items()}
        back = CTGeometry.from_dict(tigre)
        assert back.n_voxel == geo.n_voxel and back.n_detector == geo.n_detector and back.mode == geo.mode
        np.testing.assert_allclose(back.angles, geo.angles, atol=1e-12)
        np.testing.assert_allclose(back.voxel_mm, geo.voxel_mm, rtol=1e-12)


# ------------------------------------------------------------------------------ readers
READERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any], str]] = {
    # name: (build a valid input under a folder -> the file to mutate, read(input), reader input is the file or its folder)
    "npy-volume": (lambda d: vf.volume_file(d / "v.npy"), load_volume_file, "file"),
    "npz-volume": (lambda d: vf.volume_file(d / "v.npz"), load_volume_file, "file"),
    "nifti": (lambda d: vf.volume_file(d / "v.nii"), load_volume_file, "file"),
    "nifti-gz": (lambda d: vf.volume_file(d / "v.nii.gz"), load_volume_file, "file"),
    "tiff-volume": (lambda d: vf.volume_file(d / "v.tif"), load_volume_file, "file"),
    "dicom-slice": (lambda d: vf.volume_file(d / "dcm") / "slice_0001.dcm", load_volume_file, "folder"),
    "png": (lambda d: vf.transforms_capture(d).parent / "images" / "0001.png", load_image, "file"),
    "transforms.json": (lambda d: vf.transforms_capture(d), load_capture, "file"),
    "r2gaussian-meta": (lambda d: vf.r2gaussian_folder(d / "r2") / "meta_data.json", load_ct_data, "folder"),
    "projection-stack": (lambda d: vf.projection_stack(d / "scan.npy"), load_ct_data, "file"),
    "stack-geometry": (lambda d: vf.projection_stack(d / "scan.npy").with_suffix(".json"), load_ct_data, "geometry"),
    "colmap-images.txt": (lambda d: vf.colmap_capture(d) / "sparse" / "0" / "images.txt", load_capture, "colmap"),
    "llff-poses": (lambda d: vf.llff_capture(d) / "poses_bounds.npy", load_capture, "folder"),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[Path, Path, bytes]]:
    out = {}
    for name, (build, _read, _kind) in READERS.items():
        folder = tmp_path_factory.mktemp(name.replace(".", "_"))
        target = build(folder)
        out[name] = (folder, target, target.read_bytes())
    return out


def _target_input(kind: str, folder: Path, target: Path) -> Path:
    return {"file": target, "folder": target.parent, "geometry": target.with_suffix(".npy"), "colmap": folder}[kind]


def _read_or_refuse(name: str, originals: dict, data: bytes) -> None:
    folder, target, original = originals[name]
    _build, read, kind = READERS[name]
    try:
        target.write_bytes(data)
        try:
            read(_target_input(kind, folder, target))
        except InputError as err:
            assert "\n" not in str(err), str(err)
    finally:
        target.write_bytes(original)


mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.mark.parametrize("name", list(READERS))
@FUZZ
@given(flips=mutations, keep=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_mutated_file_reads_or_raises_input_error(originals, name, flips, keep):
    data = bytearray(originals[name][2])
    for where, value in flips:
        data[int(where * len(data))] = value
    if keep is not None:
        data = data[: int(keep * len(data))]
    _read_or_refuse(name, originals, bytes(data))


@pytest.mark.parametrize("name", ["npy-volume", "npz-volume", "nifti-gz", "tiff-volume", "png", "transforms.json", "r2gaussian-meta", "dicom-slice"])
@FUZZ
@given(data=st.binary(min_size=0, max_size=512))
def test_random_bytes_read_or_raise_input_error(originals, name, data):
    _read_or_refuse(name, originals, data)


def test_originals_read(originals):
    """The unmutated inputs read (so a refusal above is about the mutation)."""
    for name, (_build, read, kind) in READERS.items():
        folder, target, _original = originals[name]
        read(_target_input(kind, folder, target))
