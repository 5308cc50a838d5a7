"""CT volumes for the browser: attenuation -> Hounsfield units, a difference volume, thick-slab
MIPs, and the scan geometry as lines to draw.

The conversion is done here, on the server, with numpy and nibabel: the browser (niivue) gets
int16 NIfTI volumes in HU whose affine puts voxel centres where ``geometry.json`` says they are
(world millimetres, rotation axis = z through the origin), so cursors, the 3D render and the
drawn scan geometry share one frame.

``HU = 1000 (mu / mu_water - 1)`` with ``mu_water`` from the run's ``metrics.json``
(``mu_water_per_mm``), as ``docs/run-folder.md`` defines it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MU_WATER_PER_MM",
    "HUVolume",
    "difference",
    "geometry_affine",
    "load_hu",
    "mip_slices",
    "nifti_bytes",
    "scan_drawing",
    "slab_mip",
]

MU_WATER_PER_MM = 0.0206
"""Fallback water attenuation (1/mm) for runs whose metrics.json does not state it. The same
value as ``recon.io.units.MU_WATER_PER_MM`` (a test checks); not imported from there because
importing ``recon.ct`` loads torch, which would cost the viewer its quick start."""

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Slab-MIP orientations and the [z, y, x] array axis each projects along."""


@dataclass(frozen=True)
class HUVolume:
    """A volume in Hounsfield units, [z, y, x], with its world placement."""

    hu: np.ndarray
    """[Z, Y, X] float32 Hounsfield units."""
    voxel_mm: tuple[float, float, float]
    """Voxel size (z, y, x) in mm."""
    affine: np.ndarray
    """[4, 4] NIfTI affine of the [x, y, z]-ordered data the server sends."""


def load_hu(path: Path, mu_water_per_mm: float, units: str, geometry: dict | None) -> HUVolume:
    """Read ``volume.nii.gz`` / ``reference.nii.gz`` (or ``volume.npy``) and convert to HU.

    Args:
        path: the file; ``.npy`` arrays are [z, y, x] and take their spacing from ``geometry``.
        mu_water_per_mm: water attenuation used for the conversion.
        units: ``"attenuation_per_mm"`` (converted) or ``"HU"`` (kept as is).
        geometry: ``geometry.json`` contents or ``None``; when its ``n_voxel`` matches the
            volume and the file's affine carries no orientation (a positive diagonal, as recon
            writes), the affine is rebuilt from it (voxel centres of ``recon.geometry.ct``).
            A file whose affine flips or rotates axes (a patient orientation) keeps its own.

    Raises:
        ValueError: one-line reason (unreadable file, not 3D, non-finite values).
    """
    path = Path(path)
    if path.suffix == ".npy":
        zyx = np.load(path, mmap_mode="r")
        if zyx.ndim != 3:
            raise ValueError(f"expected a 3D [z, y, x] array, got shape {list(zyx.shape)}")
        zyx = np.asarray(zyx, dtype=np.float32)
        spacing = tuple(float(v) for v in (geometry or {}).get("voxel_mm", (1.0, 1.0, 1.0)))
        file_affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        placed_by_file = False
    else:
        import nibabel as nib

        try:
            original = nib.load(str(path))
            # recon writes a positive diagonal affine (no patient orientation): only then may
            # geometry.json place the volume; a file with its own orientation keeps it
            placed_by_file = not _positive_diagonal(original.affine)
            img = nib.as_closest_canonical(original)
            xyz = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - nibabel raises several types for bad files
            raise ValueError(f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
        if xyz.ndim == 4 and xyz.shape[3] == 1:
            xyz = xyz[..., 0]
        if xyz.ndim != 3:
            raise ValueError(f"expected a 3D image, got shape {list(xyz.shape)}")
        zyx = np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)))
        zooms = img.header.get_zooms()[:3]
        spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
        file_affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(zyx)):
        raise ValueError(f"{int(np.sum(~np.isfinite(zyx)))} voxels are NaN/inf")
    if units == "HU":
        hu = zyx.astype(np.float32)
    else:
        hu = (1000.0 * (zyx / np.float32(mu_water_per_mm) - 1.0)).astype(np.float32)
    affine = geometry_affine(geometry, zyx.shape) if geometry and not placed_by_file else None
    if affine is None:
        affine = file_affine
        spacing_out = spacing
    else:
        spacing_out = tuple(float(v) for v in geometry["voxel_mm"])  # type: ignore[index]
    return HUVolume(hu=hu, voxel_mm=spacing_out, affine=affine)  # type: ignore[arg-type]


def _positive_diagonal(affine: np.ndarray) -> bool:
    """Whether a NIfTI affine only scales (positively) and shifts: no rotation, no flip."""
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    return bool(np.all(np.diag(rot) > 0) and np.allclose(rot - np.diag(np.diag(rot)), 0.0))


def geometry_affine(geometry: dict, shape_zyx: tuple[int, ...]) -> np.ndarray | None:
    """NIfTI affine of [x, y, z]-ordered data placed as ``geometry.json`` places the volume:
    voxel ``(i, j, k)`` at ``((i - (X-1)/2) dx + ox, (j - (Y-1)/2) dy + oy, (k - (Z-1)/2) dz + oz)``.

    ``None`` when the geometry has no usable ``n_voxel`` / ``voxel_mm`` or its ``n_voxel``
    (z, y, x) differs from ``shape_zyx``.
    """
    try:
        n = [int(v) for v in geometry["n_voxel"]]
        d = [float(v) for v in geometry["voxel_mm"]]
        o = [float(v) for v in geometry.get("offset_origin_mm", (0.0, 0.0, 0.0))]
    except (KeyError, TypeError, ValueError):
        return None
    if len(n) != 3 or len(d) != 3 or len(o) != 3 or tuple(n) != tuple(shape_zyx):
        return None
    affine = np.diag([d[2], d[1], d[0], 1.0])
    affine[:3, 3] = [-(n[2] - 1) / 2 * d[2] + o[2], -(n[1] - 1) / 2 * d[1] + o[1], -(n[0] - 1) / 2 * d[0] + o[0]]
    return affine


def difference(recon: HUVolume, reference: HUVolume) -> HUVolume:
    """Reconstruction minus reference, in HU, placed like the reconstruction.

    Raises:
        ValueError: the two volumes have different shapes.
    """
    if recon.hu.shape != reference.hu.shape:
        raise ValueError(f"reference shape {list(reference.hu.shape)} differs from the volume's {list(recon.hu.shape)}")
    return HUVolume(hu=recon.hu - reference.hu, voxel_mm=recon.voxel_mm, affine=recon.affine)


def mip_slices(slab_mm: float, voxel_mm: float) -> int:
    """Slices in a MIP slab: ``slab_mm / voxel_mm`` rounded half up, then up to an odd number
    (the slab is centred on a slice), at least 1. The client labels the slab with the same rule."""
    n = max(1, math.floor(float(slab_mm) / float(voxel_mm) + 0.5))
    return n + 1 - n % 2


def slab_mip(volume: HUVolume, orientation: str, slab_mm: float) -> HUVolume:
    """Thick-slab maximum intensity projection: every slice becomes the maximum over the
    ``slab_mm`` of slices centred on it, along the axis normal to ``orientation``.

    ``slab_mm`` becomes :func:`mip_slices` slices (1: the volume itself).
    """
    from scipy.ndimage import maximum_filter1d

    if orientation not in AXES:
        raise ValueError(f"orientation {orientation!r} (expected one of {', '.join(AXES)})")
    axis = AXES[orientation]
    n = mip_slices(slab_mm, volume.voxel_mm[axis])
    if n == 1:
        return volume
    mip = maximum_filter1d(volume.hu, size=n, axis=axis, mode="nearest")
    return HUVolume(hu=mip, voxel_mm=volume.voxel_mm, affine=volume.affine)


def nifti_bytes(volume: HUVolume) -> bytes:
    """The volume as an uncompressed single-file NIfTI-1 (int16 HU, [x, y, z] order, mm)."""
    import nibabel as nib

    xyz = np.transpose(np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16), (2, 1, 0))
    img = nib.Nifti1Image(np.asfortranarray(xyz), volume.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(volume.affine, code=1)
    img.header.set_qform(volume.affine, code=1)
    return img.to_bytes()


def scan_drawing(geometry: dict[str, Any]) -> dict[str, Any]:
    """Sources, detectors and the volume box of ``geometry.json`` in world mm, for drawing.

    Follows ``recon.geometry.ct.CTGeometry.per_view_rays`` (TIGRE convention; a test checks
    they agree): at angle ``t`` the source is ``R(t) (dso, 0, 0)``, the detector centre
    ``R(t) (-(dsd - dso), off_u, off_v)``, its pixel steps ``U = R(t) (0, du, 0)`` and
    ``V = (0, 0, -dv)``; per-view ``vectors`` replace the circle when present.

    Returns:
        ``mode``; ``sources`` [V, 3] (``None`` for parallel beams, which get ``directions``);
        ``detectors`` [V, 4, 3] corners (row 0 first: top-left, top-right, bottom-right,
        bottom-left); ``volume_box`` [[x0, y0, z0], [x1, y1, z1]] (outer voxel faces);
        ``n_views``.
    """
    mode = str(geometry.get("mode", "cone"))
    nv, nu = (int(v) for v in geometry["n_detector"])
    dv, du = (float(v) for v in geometry["detector_pixel_mm"])
    vectors = geometry.get("vectors")
    sources = directions = None
    if vectors:
        vec = np.asarray(vectors, dtype=np.float64)
        first, centre, u_mm, v_mm = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
        if mode == "parallel":
            directions = first / np.linalg.norm(first, axis=1, keepdims=True)
        else:
            sources = first
    else:
        th = np.asarray(geometry.get("angles_rad", ()), dtype=np.float64)
        c, s, zeros = np.cos(th), np.sin(th), np.zeros_like(th)
        off_v, off_u = (float(v) for v in geometry.get("offset_detector_mm", (0.0, 0.0)))
        u_mm = np.stack([-du * s, du * c, zeros], axis=1)
        v_mm = np.stack([zeros, zeros, np.full_like(th, -dv)], axis=1)
        if mode == "parallel":
            centre = np.stack([-off_u * s, off_u * c, np.full_like(th, off_v)], axis=1)
            directions = np.stack([-c, -s, zeros], axis=1)
        else:
            dso, dsd = float(geometry["dso_mm"]), float(geometry["dsd_mm"])
            z_plane = float(geometry.get("offset_origin_mm", (0.0, 0.0, 0.0))[0]) if mode == "fan" else 0.0
            det_x = -(dsd - dso)
            sources = np.stack([dso * c, dso * s, np.full_like(th, z_plane)], axis=1)
            centre = np.stack([det_x * c - off_u * s, det_x * s + off_u * c, np.full_like(th, off_v + z_plane)], axis=1)
    hu, hv = nu / 2.0, nv / 2.0
    corners = np.stack(
        [centre - hu * u_mm - hv * v_mm, centre + hu * u_mm - hv * v_mm, centre + hu * u_mm + hv * v_mm, centre - hu * u_mm + hv * v_mm],
        axis=1,
    )
    n_vox = [int(v) for v in geometry["n_voxel"]]
    d_vox = [float(v) for v in geometry["voxel_mm"]]
    o_vox = [float(v) for v in geometry.get("offset_origin_mm", (0.0, 0.0, 0.0))]
    half = [n_vox[i] * d_vox[i] / 2.0 for i in range(3)]  # (z, y, x)
    lo = [o_vox[2] - half[2], o_vox[1] - half[1], o_vox[0] - half[0]]
    hi = [o_vox[2] + half[2], o_vox[1] + half[1], o_vox[0] + half[0]]
    return {
        "mode": mode,
        "n_views": int(corners.shape[0]),
        "sources": None if sources is None else np.round(sources, 4).tolist(),
        "directions": None if directions is None else np.round(directions, 6).tolist(),
        "detectors": np.round(corners, 4).tolist(),
        "volume_box": [lo, hi],
    }
