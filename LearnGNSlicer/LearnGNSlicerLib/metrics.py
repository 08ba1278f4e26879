"""Image similarity used to check that a registration brought two volumes closer."""
from __future__ import annotations

from typing import Optional

import numpy as np


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Pearson correlation of the voxel values (1 = identical up to brightness and contrast)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Images must have the same shape, got {a.shape} and {b.shape}.")
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0
