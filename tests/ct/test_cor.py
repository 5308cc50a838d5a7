"""Centre-of-rotation estimation: synthetic scans with a known detector offset, simulated by our
projector, must be recovered within 0.25 px by both methods, with the sign that
``CTGeometry.offset_detector_mm`` expects."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from recon.ct.analytic import fbp
from recon.ct.cor import (
    CORResult,
    _fourier_shift,
    _mirror_pairs,
    apply_cor,
    cor_by_image_quality,
    cor_from_mirrored_projections,
    estimate_cor,
    offset_mm_to_shift,
    shift_to_offset_mm,
)
from recon.ct.phantoms import shepp_logan_3d
from recon.ct.project import Projector
from recon.ct.simulate import add_noise
from recon.errors import InputError
from recon.geometry.ct import CTGeometry, circular_angles

from .conftest import CT_DATA, MU, psnr

N = 48  # phantom size (pixels)
NU = 96  # detector columns: the object stays inside the field of view for shifts up to ~20 px
DU = 0.8  # detector pitch (mm): offsets in mm and px differ, so a mix-up of units fails


@pytest.fixture(scope="module")
def slice48() -> torch.Tensor:
    return torch.from_numpy(shepp_logan_3d((5, N, N))[2:3].copy()) * MU  # [1, N, N]


def _geo(mode: str, angles: np.ndarray, offset_mm: float = 0.0, rows: int = 1) -> CTGeometry:
    kw = dict(dsd_mm=240.0, dso_mm=120.0) if mode != "parallel" else {}
    # voxels of detector pitch at the axis (fan: magnification 2)
    vox = DU if mode == "parallel" else DU / 2.0
    return CTGeometry(
        mode=mode,
        n_detector=(rows, NU),
        detector_pixel_mm=(vox if mode == "cone" else 1.0, DU),
        n_voxel=(rows, N, N),
        voxel_mm=(vox if mode == "cone" else 1.0, vox, vox),
        angles_rad=tuple(angles),
        offset_detector_mm=(0.0, offset_mm),
        **kw,
    )


def _scan(vol, mode: str, angles: np.ndarray, shift_px: float, noise_i0: float | None = None):
    """Projections of ``vol`` with the axis ``shift_px`` columns right of the detector centre,
    and the (uncalibrated) geometry with no offset."""
    geo_true = _geo(mode, angles, offset_mm=-shift_px * DU, rows=vol.shape[0])
    p = Projector(geo_true).forward(vol)
    if noise_i0 is not None:
        p = add_noise(p, photons_i0=noise_i0, generator=torch.Generator().manual_seed(1))
    return p, dataclasses.replace(geo_true, offset_detector_mm=(0.0, 0.0)), geo_true


HALF = np.linspace(0.0, math.pi, 61)  # 180 deg inclusive: views 0 and 60 are an exact mirror pair
FULL = circular_angles(60)  # 360 deg


# ---------------------------------------------------------------------- sign convention
def test_sign_convention_matches_geometry(slice48):
    """A true detector offset of +2.4 mm (3 px along +U) puts the axis 3 px LEFT of the centre:
    shift -3 px, and the estimate's offset_detector_mm is the simulated one."""
    geo_true = _geo("parallel", HALF, offset_mm=3 * DU)
    # the axis (world origin) projects onto column (nu - 1) / 2 - 3
    rc = geo_true.project_points(np.zeros((1, 3)))
    np.testing.assert_allclose(rc[:, 0, 1], (NU - 1) / 2.0 - 3.0, atol=1e-9)
    p = Projector(geo_true).forward(slice48)
    res = cor_from_mirrored_projections(p, apply_cor(geo_true, 0.0))
    assert res.shift_px == pytest.approx(-3.0, abs=0.25)
    assert res.axis_column_px == pytest.approx((NU - 1) / 2.0 - 3.0, abs=0.25)
    assert res.offset_detector_mm == pytest.approx(3 * DU, abs=0.25 * DU)
    assert res.offset_px == pytest.approx(-res.shift_px)
    fixed = res.apply(geo_true)
    assert fixed.offset_detector_mm == (0.0, pytest.approx(res.offset_detector_mm))
    assert shift_to_offset_mm(-3.0, geo_true) == pytest.approx(2.4)
    assert offset_mm_to_shift(2.4, geo_true) == pytest.approx(-3.0)


# ---------------------------------------------------------------------- registration
@pytest.mark.parametrize("shift", [0.0, 3.3, -5.7])
@pytest.mark.parametrize("angles", ["half", "full"])
def test_registration_parallel_recovers_shift(slice48, shift, angles):
    a = HALF if angles == "half" else FULL
    p, geo0, _ = _scan(slice48, "parallel", a, shift)
    res = cor_from_mirrored_projections(p, geo0)
    assert res.method == "mirror-phase-correlation"
    assert res.shift_px == pytest.approx(shift, abs=0.25)
    assert res.confidence > 0.5
    if angles == "full":  # 60 pairs: four groups give a measured spread
        assert res.details["grouping"] == "pairs" and res.details["n_pairs"] == 60
        assert res.uncertainty_px < 0.1


def test_registration_interpolates_partner_views(slice48):
    """61 views over 360 deg: no view has an exact partner; partners are interpolated in angle."""
    a = circular_angles(61)
    pairs, gap = _mirror_pairs(a)
    assert gap == 0.0 and len(pairs) == 61 and all(0.0 < w < 1.0 for *_, w in pairs)
    p, geo0, _ = _scan(slice48, "parallel", a, 2.2)
    assert cor_from_mirrored_projections(p, geo0).shift_px == pytest.approx(2.2, abs=0.25)


def test_registration_nearest_pair_fallback(slice48):
    """0..178 deg (90 views): the nearest pair is one step short of 180 deg; used and flagged."""
    a = np.radians(np.arange(90) * 2.0)
    p, geo0, _ = _scan(slice48, "parallel", a, -4.1)
    res = cor_from_mirrored_projections(p, geo0)
    assert res.details["pair_angle_error_deg"] == pytest.approx(2.0, abs=1e-6)
    assert res.uncertainty_px >= 0.25
    assert res.shift_px == pytest.approx(-4.1, abs=0.25)


def test_registration_none_without_pairs(slice48):
    a = np.linspace(0.0, math.radians(120), 40)
    p, geo0, _ = _scan(slice48, "parallel", a, 1.0)
    assert cor_from_mirrored_projections(p, geo0) is None
    with pytest.raises(InputError, match="180 deg"):
        estimate_cor(p, geo0, method="registration")


@pytest.mark.parametrize("shift", [0.0, 2.7, -4.4])
def test_conjugate_rays_fan_recovers_shift(slice48, shift):
    p, geo0, _ = _scan(slice48, "fan", circular_angles(72), shift)
    res = cor_from_mirrored_projections(p, geo0)
    assert res.method == "conjugate-rays"
    assert res.shift_px == pytest.approx(shift, abs=0.25)
    assert res.confidence > 0.5 and res.uncertainty_px < 0.25


def test_fan_short_scan_has_no_conjugate_estimate(slice48):
    p, geo0, _ = _scan(slice48, "fan", np.linspace(0, math.radians(200), 50), 1.0)
    assert cor_from_mirrored_projections(p, geo0) is None


def test_cone_uses_central_row():
    """Even number of rows: the source plane lies between rows 2 and 3, which are averaged."""
    vol = torch.from_numpy(shepp_logan_3d((6, N, N))) * MU
    p, geo0, _ = _scan(vol, "cone", circular_angles(60), -3.6)
    res = cor_from_mirrored_projections(p, geo0)
    assert res.shift_px == pytest.approx(-3.6, abs=0.25)
    assert apply_cor(geo0, res).mode == "cone"


# ---------------------------------------------------------------------- image quality
@pytest.mark.parametrize("metric", ["negativity", "tv"])
@pytest.mark.parametrize("shift", [0.0, 3.3, -5.7])
def test_image_quality_parallel_recovers_shift(slice48, metric, shift):
    p, geo0, _ = _scan(slice48, "parallel", HALF, shift)
    # start 1.2 px off, as after a rough registration
    res = cor_by_image_quality(p, geo0, centre_px=shift + 1.2, search_px=3.0, metric=metric)
    assert res.method == f"fbp-{metric}"
    assert res.shift_px == pytest.approx(shift, abs=0.25)
    assert res.confidence > 0.5 and not res.details["minimum_on_edge"]


def test_image_quality_full_scan_uses_half_turn(slice48):
    p, geo0, _ = _scan(slice48, "parallel", FULL, -2.9)
    res = cor_by_image_quality(p, geo0, centre_px=-2.0, search_px=3.0)
    assert res.shift_px == pytest.approx(-2.9, abs=0.25)


def test_image_quality_fan_recovers_shift(slice48):
    p, geo0, _ = _scan(slice48, "fan", circular_angles(72), 2.7)
    res = cor_by_image_quality(p, geo0, centre_px=2.0, search_px=3.0)
    assert res.shift_px == pytest.approx(2.7, abs=0.25)


def test_image_quality_wide_search(slice48):
    p, geo0, _ = _scan(slice48, "parallel", HALF, 7.4)
    res = cor_by_image_quality(p, geo0)  # +-12 px at 1 px, then 0.25 px steps
    assert res.shift_px == pytest.approx(7.4, abs=0.25)
    assert len(res.details["shifts_px"]) > 25


def test_image_quality_binning_keeps_units(slice48):
    """Binned detectors (max_columns) still report shifts in original detector pixels."""
    p, geo0, _ = _scan(slice48, "parallel", HALF, -3.0)
    res = cor_by_image_quality(p, geo0, centre_px=-2.0, search_px=3.0, max_columns=48)
    assert res.details["binning"] == 2
    assert res.shift_px == pytest.approx(-3.0, abs=0.25)


def test_image_quality_edge_minimum_has_zero_confidence(slice48, caplog):
    p, geo0, _ = _scan(slice48, "parallel", HALF, 5.0)
    res = cor_by_image_quality(p, geo0, centre_px=0.0, search_px=2.0)
    assert res.details["minimum_on_edge"] and res.confidence == 0.0
    assert "edge of the search range" in caplog.text


# ---------------------------------------------------------------------- noise, combined
@pytest.mark.parametrize("mode", ["parallel", "fan"])
def test_estimate_cor_with_noise(slice48, mode):
    angles = HALF if mode == "parallel" else circular_angles(72)
    p, geo0, geo_true = _scan(slice48, mode, angles, -3.3, noise_i0=5e3)
    res = estimate_cor(p, geo0)
    assert res.method.startswith("combined(")
    assert res.shift_px == pytest.approx(-3.3, abs=0.25)
    for part in ("registration", "image"):
        assert res.details[part]["shift_px"] == pytest.approx(-3.3, abs=0.5)
    assert 0.0 < res.confidence <= 1.0 and res.uncertainty_px > 0
    assert sum(res.details["weights"].values()) == pytest.approx(1.0)
    json.dumps(res.to_dict())  # JSON-ready for run reports


def test_estimate_cor_falls_back_to_image(slice48):
    a = np.linspace(0.0, math.pi, 61)[:-3]  # 174 deg: no mirror pair within 1.5 steps
    p, geo0, _ = _scan(slice48, "parallel", a, 2.0)
    res = estimate_cor(p, geo0)
    assert res.method == "fbp-negativity" and res.details["registration"] is None
    assert res.shift_px == pytest.approx(2.0, abs=0.5)


def test_corrected_fbp_is_better(slice48):
    """Known answer: FBP with the estimated offset matches the phantom; uncorrected does not."""
    p, geo0, geo_true = _scan(slice48, "parallel", HALF, 4.5)
    res = estimate_cor(p, geo0)
    ref = slice48.numpy()
    good = fbp(p, res.apply(geo0))[0].numpy()
    bad = fbp(p, geo0)[0].numpy()
    assert psnr(good, ref[0]) > psnr(bad, ref[0]) + 6.0
    assert psnr(good, ref[0]) == pytest.approx(psnr(fbp(p, geo_true)[0].numpy(), ref[0]), abs=1.0)


# ---------------------------------------------------------------------- helpers, bad input
def test_fourier_shift_is_band_limited():
    x = np.sin(np.linspace(0, 6 * np.pi, 64, endpoint=False))[None] * np.hanning(64)
    twice = _fourier_shift(_fourier_shift(x, 0.5), 0.5)
    np.testing.assert_allclose(twice[..., 12:-12], x[..., 13:-11], atol=2e-3)
    np.testing.assert_allclose(_fourier_shift(x, 3.0)[..., :-3], x[..., 3:], atol=1e-9)


def test_apply_cor_keeps_v_offset_and_refuses_vectors():
    geo = dataclasses.replace(_geo("parallel", HALF, rows=4), offset_detector_mm=(0.3, 5.0))
    res = CORResult(shift_px=2.0, axis_column_px=49.5, offset_detector_mm=-1.6, confidence=1.0, uncertainty_px=0.1, method="x")
    assert apply_cor(geo, res).offset_detector_mm == (0.3, pytest.approx(-1.6))
    assert apply_cor(geo, -1.0).offset_detector_mm == (0.3, pytest.approx(0.8))
    vec = dataclasses.replace(geo, vectors=tuple(map(tuple, geo.as_vectors())))
    with pytest.raises(InputError, match="vector"):
        apply_cor(vec, res)
    with pytest.raises(InputError, match="vector"):
        cor_from_mirrored_projections(np.zeros(vec.projection_shape), vec)
    with pytest.raises(InputError, match="finite"):
        apply_cor(geo, float("nan"))


def test_bad_inputs(slice48):
    p, geo0, _ = _scan(slice48, "parallel", HALF, 0.0)
    with pytest.raises(InputError, match=r"expected shape \[61, 1, 96\]"):
        estimate_cor(p[:-1], geo0)
    bad = p.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        cor_by_image_quality(bad, geo0)
    with pytest.raises(InputError, match="unknown metric 'entropy'"):
        cor_by_image_quality(p, geo0, metric="entropy")
    with pytest.raises(InputError, match="unknown options"):
        estimate_cor(p, geo0, serach_px=2)
    with pytest.raises(InputError, match="method"):
        estimate_cor(p, geo0, method="vo")
    with pytest.raises(InputError, match="rows"):
        cor_from_mirrored_projections(p, geo0, rows=[3])
    with pytest.raises(InputError, match="CTGeometry"):
        estimate_cor(p, {"mode": "parallel"})
    with pytest.raises(InputError, match="max_columns"):
        cor_by_image_quality(p, geo0, max_columns=4)


# ---------------------------------------------------------------------- real data
def _real(name: str) -> dict:
    path = CT_DATA / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (the project expects ../shared/data beside it)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_real_savu_methods_agree():
    """Real synchrotron data (Savu, 180 deg): registration and FBP refinement agree on the
    axis (~6.3 px right of the centre; the dataset json's heuristic says ~7)."""
    from recon.io.ct_data import counts_to_line_integrals

    d = _real("savu_dls_i13_24737_parallel")
    li = counts_to_line_integrals(d["projections_raw"], d["dark"], d["flat"], dead_pixels="zero")
    geo = CTGeometry(mode="parallel", n_detector=li.shape[1:], detector_pixel_mm=(1.0, 1.0), n_voxel=(li.shape[1], 160, 160),
                     voxel_mm=(1.0, 1.0, 1.0), angles_rad=tuple(np.radians(d["angles_deg"].astype(np.float64))))
    a = cor_from_mirrored_projections(li, geo)
    assert 5.5 < a.shift_px < 7.5 and a.confidence > 0.8
    b = cor_by_image_quality(li, geo, rows=[67], centre_px=a.shift_px, search_px=2.0)
    assert abs(a.shift_px - b.shift_px) < 0.5


def test_real_gel_fan_axis_and_rotation_direction():
    """Real fan-beam data (gel phantom, 360 deg): the axis is within half a pixel of the centre,
    and conjugate rays match better with the angles as given than negated (handedness)."""
    import json as _json

    d = _real("fips_gel_phantom_fan2d_72")
    meta = _json.loads((CT_DATA / "fips_gel_phantom_fan2d_72.json").read_text())["geometry"]
    geo = CTGeometry(mode="fan", n_detector=(1, 282), detector_pixel_mm=(0.4, 0.4), n_voxel=(1, 64, 64), voxel_mm=(0.5, 0.5, 0.5),
                     dsd_mm=meta["source_detector_dist"], dso_mm=meta["source_origin_dist"], angles_rad=tuple(d["angles_rad"].astype(np.float64)))
    p = d["sinograms"][8][:, None, :]
    a = cor_from_mirrored_projections(p, geo)
    flipped = cor_from_mirrored_projections(p, geo.with_angles(-geo.angles))
    assert abs(a.shift_px) < 0.5 and a.confidence > 0.8
    assert a.details["mismatch_min"] < 0.7 * flipped.details["mismatch_min"]
