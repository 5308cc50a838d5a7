"""sparse-recon: 3D reconstruction from sparse views (few-photo Gaussian splatting, sparse-view CT)."""

__version__ = "0.1.0"
