"""nerfstudio plugins for sparse-recon.

Registered from ``pyproject.toml`` (entry points, so ``ns-train`` / ``ns-eval`` / ``ns-export`` /
``ns-viewer`` find them):

* method ``recon-splat`` (:mod:`.methods`): Gaussian splatting rendered by
  :func:`recon.splat.rasterize.rasterization` (our numba rasteriser on CPU, gsplat on CUDA) and
  densified by :class:`recon.splat.strategy.DensifyStrategy`;
* dataparser ``recon-fewview`` (:mod:`.dataparser`): a nerfstudio capture cut down to K training
  views spread by :func:`recon.geometry.view_selection.farthest_point_views`;
* method ``recon-ct`` (:mod:`.methods`, :mod:`.ct_model`): recon's radiative Gaussians
  (:mod:`recon.ct.gaussians`) trained on X-ray projections, initialised, rendered and densified
  by recon;
* dataparser ``recon-ct-data`` (:mod:`.ct_dataparser`): any CT projection set recon reads, as
  X-ray pinhole cameras and one-channel images.

This package only imports nerfstudio lazily from its submodules: nerfstudio loads the dataparser
entry points while it is still building its own config tables, so :mod:`.dataparser` and
:mod:`.ct_dataparser` must not import nerfstudio's datamanagers or method configs.
"""
