"""Pre-align training pairs the way :func:`learngn.register` does, so a model trains on the misalignment
it meets in use.

``register`` runs Gauss-Newton after an affine pre-alignment of the images.  A model trained on pairs
that were never pre-aligned sees larger displacements than it will ever be given (on the held-out abdomen
pairs at 4 mm the mean Dice is 13.9% before and 23.8% after the affine), and learns to take larger steps
than use calls for.  Here every ordered pair of training cases gets the engine's own pre-alignment of the
two cases' images (the dataset's images, or for label maps alone the same synthetic CT that
``learngn evaluate --images synthetic-ct`` registers), once, and the moving case is then sampled through
it.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..features import CT_WINDOW, normalise_intensity
from ..prealign import prealign
from ..sampling import index_to_physical, linear_matrix
from .data import CaseData
from .synthesis import case_seed, synthetic_ct_image

#: Reverses the axis order of homogeneous voxel coordinates: (x, y, z, 1) <-> (z, y, x, 1).
_REVERSE_AXES = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

PREALIGN_MODES = ("none", "com", "affine")


def normalised_image(case: CaseData, window: Tuple[float, float]) -> sitk.Image:
    """The case's image on its working grid, windowed to [0, 1] by ``window`` (the trainer's, chosen as
    ``register`` chooses it); a synthetic CT (the evaluation's, seeded by the case, CT window) where the case
    has labels only."""
    if case.image is None:
        labels = sitk.GetImageFromArray(case.labels)
        labels.CopyInformation(case.grid)
        hu = sitk.GetArrayFromImage(synthetic_ct_image(labels, seed=case_seed(case.name)))
        window = CT_WINDOW
    else:
        hu = case.image
    image = sitk.GetImageFromArray(normalise_intensity(torch.from_numpy(hu), window).numpy())
    image.CopyInformation(case.grid)
    return image


def voxel_alignment(transform: Optional[sitk.Transform], fixed: sitk.Image, moving: sitk.Image) -> np.ndarray:
    """The 4x4 matrix taking a fixed voxel ``(z, y, x, 1)`` to the moving voxel it is matched with."""
    physical = linear_matrix(transform)
    if physical is None:
        raise ValueError("training pairs are pre-aligned with linear transforms only")
    xyz = np.linalg.inv(index_to_physical(moving)) @ physical @ index_to_physical(fixed)
    return _REVERSE_AXES @ xyz @ _REVERSE_AXES


def through(matrix: Optional[np.ndarray], coords: torch.Tensor) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, ...)`` (z, y, x channels) mapped by ``matrix`` (None: unchanged)."""
    if matrix is None:
        return coords
    linear = torch.as_tensor(matrix[:3, :3], dtype=coords.dtype)
    offset = torch.as_tensor(matrix[:3, 3], dtype=coords.dtype).view(1, 3, *([1] * (coords.dim() - 2)))
    return torch.einsum("ij,bj...->bi...", linear, coords) + offset


class PairAligner:
    """Pre-alignments of ordered pairs of cases, computed on first use and kept (they are deterministic,
    so a resumed run gets the same ones)."""

    def __init__(self, mode: str, windows: Optional[Dict[str, Tuple[float, float]]] = None) -> None:
        if mode not in PREALIGN_MODES:
            raise ValueError(f"unknown pre-alignment {mode!r}; use {', '.join(PREALIGN_MODES)}")
        self.mode = mode
        self._windows = windows or {}  # intensity windows of the cases with images
        self._images: Dict[str, sitk.Image] = {}
        self._matrices: Dict[Tuple[str, str], Optional[np.ndarray]] = {}

    def matrix(self, fixed: CaseData, moving: CaseData) -> Optional[np.ndarray]:
        """Fixed voxel -> moving voxel of the pair's pre-alignment; None when pre-alignment is off."""
        if self.mode == "none":
            return None
        key = (fixed.name, moving.name)
        if key not in self._matrices:
            images = [self._image(case) for case in (fixed, moving)]
            transform = prealign(images[0], images[1], self.mode)
            self._matrices[key] = voxel_alignment(transform, fixed.grid, moving.grid)
        return self._matrices[key]

    def _image(self, case: CaseData) -> sitk.Image:
        if case.name not in self._images:
            self._images[case.name] = normalised_image(case, self._windows.get(case.name, CT_WINDOW))
        return self._images[case.name]
