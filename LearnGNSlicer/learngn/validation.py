"""Checks of the inputs, so bad input fails early with a message that names the problem and the remedy."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .sampling import voxel_sample

MIN_SIZE = 8
#: An "intensity" image with at most this many distinct integer values is probably a label map.
LABEL_LIKE_VALUES = 64


def _require_3d_scalar(image: object, name: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name} must be a SimpleITK image, got {type(image).__name__}; "
                         "read it with SimpleITK.ReadImage or learngn.io.read_image")
    if image.GetDimension() != 3:
        advice = ("LearnGN registers 3D volumes; stack the slices into a volume" if image.GetDimension() == 2
                  else "select one time point or channel first")
        raise InputError(f"{name} is {image.GetDimension()}D ({image.GetSize()}); {advice}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); convert it to a scalar image first")
    if min(image.GetSize()) < MIN_SIZE:
        raise InputError(f"{name} is {image.GetSize()} voxels; each axis needs at least {MIN_SIZE} voxels "
                         "(a thin slab cannot be registered in 3D)")
    return image


def check_image(image: object, name: str) -> np.ndarray:
    """Validate an intensity image and return its voxels as an array (a view, not a copy).

    The checks that need every voxel (NaN, constant) cost one pass of ``min`` and ``max``; the guess that the
    image is a label map looks at a regular sample of the voxels (:func:`learngn.sampling.voxel_sample`).
    """
    image = _require_3d_scalar(image, name)
    array = np.asarray(sitk.GetArrayViewFromImage(image))
    low, high = array.min(), array.max()  # NaN propagates through both, infinities show as extremes
    if not (np.isfinite(low) and np.isfinite(high)):
        count = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} contains {count} NaN or infinite voxels; replace them "
                         "(for example with numpy.nan_to_num) before registering")
    low, high = float(low), float(high)
    if low == high:
        raise InputError(f"{name} is constant (every voxel is {low}); there is nothing to register - "
                         "check that the right volume was selected")
    sample = voxel_sample(array)
    if _integer_valued(sample):
        distinct = np.unique(sample).size
        if distinct <= LABEL_LIKE_VALUES:
            warnings.warn(f"{name} holds only {distinct} distinct integer values and looks like a label map; if "
                          "it is a segmentation, pass it as a segmentation (the distance-map setting) rather "
                          "than as the image", RuntimeWarning, stacklevel=3)
    return array


def _integer_valued(values: np.ndarray) -> bool:
    """Whether every value is an integer (trivially so for an integer array)."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return True
    return bool(np.all(np.isfinite(values))) and bool(np.array_equal(values, np.round(values)))


def check_label_image(image: Optional[object], name: str, *, allow_single: bool = True) -> Optional[np.ndarray]:
    """Validate a mask or segmentation: integer labels, not empty.  Returns the labels or None."""
    if image is None:
        return None
    image = _require_3d_scalar(image, name)
    array = np.asarray(sitk.GetArrayViewFromImage(image))
    if not _integer_valued(array):
        raise InputError(f"{name} has non-integer values, so it is an intensity image rather than a label "
                         "map; pass a segmentation (integer labels, 0 = background)")
    if not array.any():
        raise InputError(f"{name} is empty (no non-zero voxel); give a mask or segmentation that covers the "
                         "anatomy, or leave it out")
    return array if array.dtype == np.int32 else array.astype(np.int32)
