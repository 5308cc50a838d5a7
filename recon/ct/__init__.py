"""Sparse-view CT: scan geometry, differentiable projector, FDK/FBP, (OS-)SART, simulation,
file formats and metrics. Conventions (axes, units) are in :mod:`recon.geometry.ct`."""

from recon.ct.analytic import FILTERS, fbp, fdk, filter_projections
from recon.geometry.ct import CTGeometry, FOVReport, ViewRays, circular_angles
from recon.ct.metrics import SSIM3D, psnr_3d, ssim_3d
from recon.ct.project import Projector, backproject, forward_project, voxel_driven_backproject
# SART lives in ``recon.ct.sart`` (``from recon.ct.sart import sart``); re-exporting the function
# here would shadow the module of the same name.

__all__ = [
    "CTGeometry",
    "FILTERS",
    "FOVReport",
    "Projector",
    "SSIM3D",
    "ViewRays",
    "backproject",
    "circular_angles",
    "fbp",
    "fdk",
    "filter_projections",
    "forward_project",
    "psnr_3d",
    "ssim_3d",
    "voxel_driven_backproject",
]
