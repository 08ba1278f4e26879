"""Pre-alignment before the deformable stage: centre of mass, then an affine fit (learngn.affine).

Returns a transform mapping fixed points to moving points (ITK's resampling sense) that already
includes the caller's initial transform, so later stages only see one transform.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .affine import PYRAMID_SPACINGS_MM, FitProgress, fit
from .sampling import linear_matrix, ones_on_grid

LOGGER = logging.getLogger(__name__)

#: An affine whose determinant leaves this range is a failed fit rather than anatomy.
PLAUSIBLE_DETERMINANT = (0.5, 2.0)
#: Share of the pre-alignment's progress before the affine fit starts (block averages, centre of mass).
FIT_START = 0.05
#: Relative metric gain below which the affine fit is not worth its risk (identical images, say).
MIN_IMPROVEMENT = 0.01


def centre_of_mass(weights: sitk.Image) -> np.ndarray:
    """Intensity-weighted centre (LPS) of a non-negative image."""
    array = sitk.GetArrayViewFromImage(weights).astype(np.float64)
    total = array.sum()
    if total <= 0:
        index = (np.array(weights.GetSize()) - 1) / 2.0
    else:
        grids = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
        index = np.array([(g * array).sum() / total for g in grids])[::-1]
    return np.array(weights.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))


def _with_initial(initial: Optional[sitk.Transform], transform: sitk.Transform) -> sitk.Transform:
    if initial is None:
        return transform
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(initial)
    composite.AddTransform(transform)
    return composite


def centre_translation(fixed_weights: sitk.Image, moving_weights: sitk.Image,
                       initial: Optional[sitk.Transform]) -> sitk.AffineTransform:
    """Translation that maps the fixed centre of mass onto the moving one (through ``initial``)."""
    fixed_centre = centre_of_mass(fixed_weights)
    moving_centre = centre_of_mass(moving_weights)
    translation = np.zeros(3)
    for _ in range(5):  # fixed-point iteration: exact for translations, close for near-rigid initials
        mapped = np.array(initial.TransformPoint(tuple(fixed_centre + translation))) if initial else fixed_centre + translation
        translation += moving_centre - mapped
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(fixed_centre))
    transform.SetTranslation(tuple(translation))
    return transform


def fit_affine(fixed: sitk.Image, moving: sitk.Image, start: sitk.AffineTransform,
               initial: Optional[sitk.Transform], fixed_mask: Optional[sitk.Image],
               moving_mask: Optional[sitk.Image], device: torch.device,
               should_stop: Optional[Callable[[], bool]] = None,
               progress: Optional[FitProgress] = None) -> sitk.AffineTransform:
    """The Gauss-Newton MIND affine (learngn.affine) from ``start``, or ``start`` where it gains nothing.

    A dense ``initial`` transform is applied by resampling the moving image through it once, onto a grid
    in the fixed image's space with a margin, so that the fit itself only ever sees linear transforms; where
    that grid falls outside the moving image is masked out, as points outside it are in the linear case.
    """
    initial_matrix = linear_matrix(initial)
    if initial_matrix is None:
        covered = ones_on_grid(moving)
        if moving_mask is not None:
            covered = covered * sitk.Cast(moving_mask > 0, sitk.sitkUInt8)
        moving, moving_mask = _through(initial, moving, fixed), _through(initial, covered, fixed)
        initial_matrix = np.eye(4)
    affine, start_cost, end_cost = fit(fixed, moving, start, initial_matrix, device, fixed_mask=fixed_mask,
                                       moving_mask=moving_mask, should_stop=should_stop, progress=progress)
    LOGGER.info("affine: MIND cost %.5f -> %.5f", start_cost, end_cost)
    # Keep the start where the fit does not clearly improve the cost (identical images, say): the optimum
    # can wander by a fraction of a voxel without being better.
    return affine if end_cost < start_cost - MIN_IMPROVEMENT * abs(start_cost) else sitk.AffineTransform(start)


#: Margin (share of the fixed extent on each side) of the grid that a dense initial transform is applied on.
DENSE_INITIAL_MARGIN = 0.25


def _through(transform: sitk.Transform, image: sitk.Image, fixed: sitk.Image) -> sitk.Image:
    """``image`` seen through ``transform``, on the fixed grid grown by the margin on every side."""
    pad = [int(np.ceil(DENSE_INITIAL_MARGIN * n)) for n in fixed.GetSize()]
    grid = sitk.Image([n + 2 * p for n, p in zip(fixed.GetSize(), pad)], sitk.sitkUInt8)
    grid.SetSpacing(fixed.GetSpacing())
    grid.SetDirection(fixed.GetDirection())
    grid.SetOrigin(fixed.TransformContinuousIndexToPhysicalPoint([-float(p) for p in pad]))
    interpolator = sitk.sitkNearestNeighbor if image.GetPixelID() == sitk.sitkUInt8 else sitk.sitkLinear
    return sitk.Resample(image, grid, transform, interpolator, 0.0, image.GetPixelID())


def block_average(image: sitk.Image, mask: Optional[sitk.Image] = None,
                  spacing_mm: float = PYRAMID_SPACINGS_MM[-1]) -> Tuple[sitk.Image, Optional[sitk.Image]]:
    """``image`` averaged over blocks of about ``spacing_mm`` (its mask sampled on the same grid).

    Every later step of the pre-alignment (centre of mass, pyramid, metric) then works on the finest
    resolution it uses instead of the full scan: the same result for a fraction of the time and memory.
    """
    factors = [max(1, int(spacing_mm // s)) for s in image.GetSpacing()]
    if max(factors) == 1 or any(n < 2 * f for n, f in zip(image.GetSize(), factors)):
        return image, mask
    coarse = sitk.BinShrink(image, factors)
    if mask is not None:
        mask = sitk.Resample(mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return coarse, mask


def prealign(fixed: sitk.Image, moving: sitk.Image, mode: str, *, initial: Optional[sitk.Transform] = None,
             fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
             should_stop: Optional[Callable[[], bool]] = None, device: torch.device = torch.device("cpu"),
             progress: Optional[FitProgress] = None) -> Optional[sitk.Transform]:
    """Fixed-to-moving transform after pre-alignment (``mode``: affine, com or none), ``initial`` included.

    ``fixed`` and ``moving`` are non-negative images (normalised intensities), whose mass locates the
    anatomy; masks, where given, restrict both the centre of mass and the affine metric.  ``progress``
    hears of each step with the share of the pre-alignment done (0 to 1) and a message.
    """
    if mode == "none":
        return initial
    report = progress or (lambda fraction, message: None)
    report(0.0, "block averaging the scans")
    fixed, fixed_mask = block_average(fixed, fixed_mask)
    moving, moving_mask = block_average(moving, moving_mask)
    fixed_weights = fixed if fixed_mask is None else sitk.Mask(fixed, fixed_mask)
    moving_weights = moving if moving_mask is None else sitk.Mask(moving, moving_mask)
    report(FIT_START, "centre of mass")
    start = centre_translation(fixed_weights, moving_weights, initial)
    if mode == "com":
        return _with_initial(initial, start)
    affine = fit_affine(fixed, moving, start, initial, fixed_mask, moving_mask, device, should_stop,
                        lambda fraction, message: report(FIT_START + (1.0 - FIT_START) * fraction, message))
    if should_stop is not None and should_stop():
        return _with_initial(initial, start)  # cancelled: the caller raises; a partial fit is never used
    determinant = float(np.linalg.det(np.array(affine.GetMatrix()).reshape(3, 3)))
    if not PLAUSIBLE_DETERMINANT[0] <= determinant <= PLAUSIBLE_DETERMINANT[1]:
        warnings.warn(f"the affine pre-alignment changed the volume by a factor {determinant:.2f}, which is "
                      "implausible; using the centre-of-mass alignment instead (check the field of view, or "
                      "give masks)", RuntimeWarning, stacklevel=2)
        return _with_initial(initial, start)
    return _with_initial(initial, affine)
