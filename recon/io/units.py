"""Units in one place: CT attenuation (1/mm) <-> Hounsfield units, with the water value used."""

from __future__ import annotations

import numpy as np

__all__ = ["MU_WATER_PER_MM", "hu_to_mu", "mu_to_hu"]

MU_WATER_PER_MM = 0.0206
"""Linear attenuation of water at ~60 keV, 1/mm (NIST XCOM: mu/rho = 0.2059 cm^2/g)."""


def hu_to_mu(hu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM, *, clip: bool = True) -> np.ndarray:
    """Hounsfield units -> linear attenuation in 1/mm: ``mu = mu_water * (1 + HU / 1000)``
    (air, -1000 HU, is 0). Negative results (below -1000 HU) are clipped to 0 when ``clip``."""
    mu = mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0)
    if clip:
        mu = np.maximum(mu, 0.0)
    return mu.astype(np.float32)


def mu_to_hu(mu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation in 1/mm -> Hounsfield units (inverse of :func:`hu_to_mu`)."""
    return (1000.0 * (np.asarray(mu, dtype=np.float64) / mu_water_per_mm - 1.0)).astype(np.float32)


