"""Pre-alignment before the deformable stage: centre of mass, then an affine fit with SimpleITK.

Returns a transform mapping fixed points to moving points (ITK's resampling sense) that already
includes the caller's initial transform, so later stages only see one transform.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

LOGGER = logging.getLogger(__name__)

#: An affine whose determinant leaves this range is a failed fit rather than anatomy.
PLAUSIBLE_DETERMINANT = (0.5, 2.0)
#: Fixed seed of the metric's sample positions: the same inputs always give the same alignment.
SAMPLING_SEED = 20220706
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


#: Voxel sizes (mm) of the affine pyramid's levels: twelve parameters need no finer detail than 4 mm, and
#: a 2 mm level made the fit five times slower on a 192x160x256 CT (docs/BENCHMARKS.md).
PYRAMID_SPACINGS_MM = (16.0, 8.0, 4.0)


def pyramid_shrink_factors(image: sitk.Image) -> List[int]:
    """Whole-voxel shrink factors that bring ``image`` near each pyramid spacing, coarse to fine."""
    finest = min(image.GetSpacing())
    factors: List[int] = []
    for spacing in PYRAMID_SPACINGS_MM:
        factor = max(1, int(round(spacing / finest)))
        if not factors or factor < factors[-1]:
            factors.append(factor)
    return factors


def fit_affine(fixed: sitk.Image, moving: sitk.Image, start: sitk.AffineTransform,
               initial: Optional[sitk.Transform], fixed_mask: Optional[sitk.Image],
               moving_mask: Optional[sitk.Image], should_stop: Optional[Callable[[], bool]] = None
               ) -> sitk.AffineTransform:
    """Mattes mutual information affine fit on a 16/8/4 mm pyramid (modality independent), seeded sampling.

    ``should_stop`` is asked at every optimiser iteration; when it says yes the fit stops at once (the
    caller then raises its cancellation), so a cancel does not wait for the whole pyramid.
    """
    method = sitk.ImageRegistrationMethod()
    if should_stop is not None:
        method.AddCommand(sitk.sitkIterationEvent, lambda: method.StopRegistration() if should_stop() else None)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.25, SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.001, numberOfIterations=200,
                                                    relaxationFactor=0.8, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = pyramid_shrink_factors(fixed)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([factor / 2.0 if factor > 1 else 0.0 for factor in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    if initial is not None:
        method.SetMovingInitialTransform(initial)
    fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    method.SetInitialTransform(sitk.AffineTransform(start))
    start_value = method.MetricEvaluate(fixed, moving)
    affine = sitk.AffineTransform(start)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)
    end_value = method.MetricEvaluate(fixed, moving)
    LOGGER.info("affine: metric %.4f -> %.4f after %d iterations (%s)", start_value, end_value,
                method.GetOptimizerIteration(), method.GetOptimizerStopConditionDescription())
    # Keep the start where the fit does not improve the full-resolution metric (identical images, say):
    # the pyramid's optimum can wander by a fraction of a voxel without being better.
    return affine if end_value < start_value - MIN_IMPROVEMENT * abs(start_value) else sitk.AffineTransform(start)


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
             should_stop: Optional[Callable[[], bool]] = None) -> Optional[sitk.Transform]:
    """Fixed-to-moving transform after pre-alignment (``mode``: affine, com or none), ``initial`` included.

    ``fixed`` and ``moving`` are non-negative images (normalised intensities), whose mass locates the
    anatomy; masks, where given, restrict both the centre of mass and the affine metric.
    """
    if mode == "none":
        return initial
    fixed, fixed_mask = block_average(fixed, fixed_mask)
    moving, moving_mask = block_average(moving, moving_mask)
    fixed_weights = fixed if fixed_mask is None else sitk.Mask(fixed, fixed_mask)
    moving_weights = moving if moving_mask is None else sitk.Mask(moving, moving_mask)
    start = centre_translation(fixed_weights, moving_weights, initial)
    if mode == "com":
        return _with_initial(initial, start)
    affine = fit_affine(fixed, moving, start, initial, fixed_mask, moving_mask, should_stop)
    if should_stop is not None and should_stop():
        return _with_initial(initial, start)  # cancelled: the caller raises; a partial fit is never used
    determinant = float(np.linalg.det(np.array(affine.GetMatrix()).reshape(3, 3)))
    if not PLAUSIBLE_DETERMINANT[0] <= determinant <= PLAUSIBLE_DETERMINANT[1]:
        warnings.warn(f"the affine pre-alignment changed the volume by a factor {determinant:.2f}, which is "
                      "implausible; using the centre-of-mass alignment instead (check the field of view, or "
                      "give masks)", RuntimeWarning, stacklevel=2)
        return _with_initial(initial, start)
    return _with_initial(initial, affine)
