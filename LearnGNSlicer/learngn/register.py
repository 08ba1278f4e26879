"""``register()``: the one entry point that turns a fixed and a moving image into a result.

Pipeline: check inputs -> pre-align (centre of mass, affine) -> features on the isotropic working grid
-> Gauss-Newton (GPU or CPU) -> compose one displacement field on the fixed grid -> warp once -> metrics.
"""
from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__
from .device import default_working_voxels, describe, is_out_of_memory, resolve_device
from .errors import InputError
from .features import intensity_window, mind_ssc, signed_distance_maps, union_labels
from .gauss_newton import gauss_newton_control, prepared_for_warp, upsample_from_grid, warp
from .geometry import working_grid, working_spacing
from .models import load_model
from .predictors import GaussNewtonPredictors, refined
from .output import CompactTransform, output_stage
from .plausibility import check_pairing, check_result
from .prealign import prealign
from .progress import ProgressEvent, ProgressTracker
from .sampling import label_array, ones_on_grid, resample_on_device, voxel_sample
from .settings import RegistrationSettings, get_preset
from .solver import resolve_backend
from .validation import check_image, check_label_image

#: Below this share of the fixed grid covered by the pre-aligned moving image, registration is pointless.
MIN_OVERLAP = 0.05


@dataclass
class RegistrationResult:
    """What a registration returns; see docs/ENGINE_API.md for the conventions."""

    compact: CompactTransform       # the pre-alignment and Gauss-Newton's control grid, as computed
    warped: sitk.Image
    prealignment: Optional[sitk.Transform]
    metrics: Dict[str, float]
    timings: Dict[str, float]
    device: str
    preset: str
    settings: RegistrationSettings
    warnings: List[str] = field(default_factory=list)

    @property
    def displacement(self) -> sitk.Image:
        """The field on the full fixed grid (float32), computed from the compact result when first asked for."""
        return self.compact.dense()

    def transform(self) -> sitk.CompositeTransform:
        """The result as a transform mapping fixed points to moving points: the control-grid field, then
        the pre-alignment (an ITK composite transform, what transform.h5 holds)."""
        return self.compact.transform()

    def to_summary(self) -> Dict[str, Any]:
        return {
            "preset": self.preset,
            "device": self.device,
            "metrics": self.metrics,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "settings": self.settings.to_dict(),
            "warnings": self.warnings,
            "versions": versions(),
            "conventions": "displacement on the fixed grid, LPS mm, resampling: x_moving = x_fixed + d(x_fixed)",
        }


def versions() -> Dict[str, str]:
    return {"learngn": __version__, "torch": torch.__version__, "SimpleITK": sitk.Version_VersionString(),
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class _Inputs:
    """Validated inputs and what is derived from them once."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_normalised: sitk.Image
    moving_normalised: sitk.Image
    fixed_mask: Optional[sitk.Image]
    moving_mask: Optional[sitk.Image]
    fixed_segmentation: Optional[sitk.Image]
    moving_segmentation: Optional[sitk.Image]
    labels: List[int]


def _as_mask(image: Optional[sitk.Image], reference: sitk.Image) -> Optional[sitk.Image]:
    return None if image is None else sitk.Cast(image != 0, sitk.sitkUInt8)


def _normalised(image: sitk.Image, array: np.ndarray, mask: Optional[np.ndarray], how: str) -> sitk.Image:
    low, high = intensity_window(voxel_sample(array, mask), how)
    return sitk.IntensityWindowing(sitk.Cast(image, sitk.sitkFloat32), low, high, 0.0, 1.0)


def _check_inputs(fixed, moving, fixed_mask, moving_mask, fixed_segmentation, moving_segmentation,
                  settings: RegistrationSettings) -> _Inputs:
    fixed_array = check_image(fixed, "fixed image")
    moving_array = check_image(moving, "moving image")
    fixed_mask_array = check_label_image(fixed_mask, "fixed mask")
    moving_mask_array = check_label_image(moving_mask, "moving mask")
    fixed_labels = check_label_image(fixed_segmentation, "fixed segmentation")
    moving_labels = check_label_image(moving_segmentation, "moving segmentation")
    for name, image, reference in (("fixed mask", fixed_mask, fixed), ("moving mask", moving_mask, moving)):
        if image is not None and image.GetSize() != reference.GetSize():
            raise InputError(f"the {name} is {image.GetSize()} voxels but its image is {reference.GetSize()}; "
                             "masks must be on the grid of their image (resample the mask first)")
    if "sdm" in settings.features and (fixed_segmentation is None or moving_segmentation is None):
        raise InputError("these settings register segmentations (distance maps), so they need one of each "
                         "image: pass fixed_segmentation= and moving_segmentation= (label images), or use a "
                         "preset that registers the images alone, e.g. preset='generic'")
    labels = union_labels(fixed_labels, moving_labels)
    return _Inputs(
        fixed=fixed, moving=moving,
        fixed_normalised=_normalised(fixed, fixed_array, fixed_mask_array, settings.intensity_normalisation),
        moving_normalised=_normalised(moving, moving_array, moving_mask_array, settings.intensity_normalisation),
        fixed_mask=_as_mask(fixed_mask, fixed), moving_mask=_as_mask(moving_mask, moving),
        fixed_segmentation=fixed_segmentation, moving_segmentation=moving_segmentation, labels=labels)


def _features(normalised: sitk.Image, segmentation: Optional[sitk.Image], grid: sitk.Image,
              transform: Optional[sitk.Transform], inputs: _Inputs, settings: RegistrationSettings,
              device: torch.device, model: Optional[GaussNewtonPredictors]) -> torch.Tensor:
    """The feature channels of one image on the working grid (the moving one through ``transform``); MIND or
    the distance maps go through the learned model's feature network where it has one of that kind."""
    channels = []
    intensity = resample_on_device(normalised, grid, transform, device)
    if "intensity" in settings.features:
        channels.append(intensity)
    if "mind" in settings.features:
        channels.append(refined(model, "mind", mind_ssc(intensity, dilation=settings.mind_dilation), intensity))
    if "sdm" in settings.features:
        labels = label_array(resample_on_device(segmentation, grid, transform, device, nearest=True))
        sdm = torch.from_numpy(signed_distance_maps(labels, inputs.labels, grid.GetSpacing()[0],
                                                    settings.sdm_clip_mm)).to(device)[None]
        channels.append(refined(model, "sdm", sdm))
    return torch.cat(channels, dim=1)


def _weight(inputs: _Inputs, grid: sitk.Image, transform: Optional[sitk.Transform],
            device: torch.device) -> Optional[torch.Tensor]:
    """Where the data term counts: inside the fixed mask and the pre-aligned moving mask."""
    weight = None
    for mask, mask_transform in ((inputs.fixed_mask, None), (inputs.moving_mask, transform)):
        if mask is not None:
            m = resample_on_device(mask, grid, mask_transform, device, nearest=True)
            weight = m if weight is None else weight * m
    return weight


def _deformable(inputs: _Inputs, grid: sitk.Image, transform: Optional[sitk.Transform],
                settings: RegistrationSettings, device: torch.device,
                tracker: ProgressTracker) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
    """Features and Gauss-Newton on ``device``; returns the control grid and the working-grid displacement
    (both in working voxels) and the feature residuals."""
    tracker.start("features", f"computing {', '.join(settings.features)} features on {device}")
    predictors = load_model(settings.model).to(device) if settings.model else None
    if predictors is not None and predictors.features is not None and predictors.features.kind not in settings.features:
        raise InputError(f"model {settings.model!r} refines {predictors.features.kind} features, but the settings "
                         f"use {', '.join(settings.features)}; add {predictors.features.kind!r} to the features "
                         "or use the model's preset")
    with torch.no_grad():
        fixed_features = _features(inputs.fixed_normalised, inputs.fixed_segmentation, grid, None, inputs, settings,
                                   device, predictors)
        tracker.update(0.5, "moving features")
        # laid out for Gauss-Newton's warps once, here, so that no second copy of the features is held
        moving_features = prepared_for_warp(_features(inputs.moving_normalised, inputs.moving_segmentation, grid,
                                                      transform, inputs, settings, device, predictors))
    weight = _weight(inputs, grid, transform, device)
    backend = resolve_backend(settings.solver, device)
    tracker.start("gauss-newton", f"Gauss-Newton on {device}")
    total_steps = settings.iterations * settings.levels

    def on_iteration(level: int, iteration: int, per_level: int) -> None:
        step = level * per_level + iteration + 1
        tracker.update(step / total_steps, f"level {level + 1}/{settings.levels}, iteration {iteration + 1}/{per_level}")

    with torch.no_grad():
        term_predictors = None if predictors is None or predictors.computes_classic_terms() else predictors
        control = gauss_newton_control(fixed_features, moving_features, settings, weight=weight,
                                       predictors=term_predictors, on_iteration=on_iteration, backend=backend)
        displacement = upsample_from_grid(control, settings.grid_stride, tuple(fixed_features.shape[2:]))
        residual = {
            "feature_residual_prealigned": _mean_squared(fixed_features - moving_features, weight),
            "feature_residual_after": _mean_squared(fixed_features - warp(moving_features, displacement), weight),
        }
    return control, displacement, residual


def _mean_squared(difference: torch.Tensor, weight: Optional[torch.Tensor]) -> float:
    squared = difference.pow(2).mean(dim=1, keepdim=True)
    if weight is None:
        return float(squared.mean())
    return float((squared * weight).sum() / weight.sum().clamp_min(1.0))


def _check_overlap(inputs: _Inputs, grid: sitk.Image, transform: Optional[sitk.Transform]) -> None:
    coverage = float(resample_on_device(ones_on_grid(inputs.moving), grid, transform, torch.device("cpu"),
                                        nearest=True).mean())
    if coverage < MIN_OVERLAP:
        raise InputError(f"after pre-alignment the moving image covers only {100 * coverage:.1f}% of the fixed "
                         "image: the images do not overlap. Check their origins and orientations, give an "
                         "initial transform, or enable pre-alignment (prealign='affine' or 'com')")


def _falling_back_to_cpu(run: Callable[[torch.device], Any], device: torch.device, what: str
                         ) -> Tuple[Any, torch.device]:
    """``run(device)``, and ``run(cpu)`` with a warning when the GPU runs out of memory."""
    try:
        return run(device), device
    except Exception as error:
        if device.type != "cuda" or not is_out_of_memory(error):
            raise
        warnings.warn(f"the GPU ran out of memory in the {what} ({error}); running it again on the CPU",
                      RuntimeWarning)
    torch.cuda.empty_cache()
    cpu = torch.device("cpu")
    return run(cpu), cpu


def register(fixed: sitk.Image, moving: sitk.Image, *, preset: str = "generic", device: str = "auto",
             fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
             fixed_segmentation: Optional[sitk.Image] = None, moving_segmentation: Optional[sitk.Image] = None,
             initial_transform: Optional[sitk.Transform] = None,
             progress: Optional[Callable[[ProgressEvent], None]] = None,
             cancel: Optional[Callable[[], bool]] = None, **overrides: Any) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; see docs/ENGINE_API.md.  Inputs are never modified."""
    tracker = ProgressTracker(progress, cancel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.start("prepare", "checking inputs")
        settings = get_preset(preset).settings.replace(**overrides)
        inputs = _check_inputs(fixed, moving, fixed_mask, moving_mask, fixed_segmentation, moving_segmentation,
                               settings)
        torch_device = resolve_device(device)

        def prealigned(on: torch.device) -> Optional[sitk.Transform]:
            tracker.start("prealign", f"pre-alignment: {settings.prealign} on {on}")
            return prealign(inputs.fixed_normalised, inputs.moving_normalised, settings.prealign,
                            initial=initial_transform, fixed_mask=inputs.fixed_mask, moving_mask=inputs.moving_mask,
                            should_stop=tracker.cancel_requested, device=on, progress=tracker.update)

        transform, torch_device = _falling_back_to_cpu(prealigned, torch_device, "pre-alignment")
        tracker.update(1.0, "pre-alignment done")  # honours a cancel that arrived during the affine fit
        pairing = check_pairing(inputs.fixed_normalised, inputs.moving_normalised, transform, inputs.fixed_mask,
                                inputs.moving_mask)  # before the long work: raises on a nonsense pairing

        def deformable(on: torch.device) -> Tuple[sitk.Image, Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]]:
            # planned for the device it runs on: a CPU fallback gets the CPU's voxel budget, not the GPU's
            budget = settings.max_working_voxels or default_working_voxels(on)
            planned = working_grid(fixed, working_spacing(fixed, budget, settings.working_spacing))
            _check_overlap(inputs, planned, transform)
            return planned, _deformable(inputs, planned, transform, settings, on, tracker)

        (grid, (control, displacement, residuals)), torch_device = _falling_back_to_cpu(deformable, torch_device,
                                                                                        "registration")

        def outputs_on(on: torch.device) -> Tuple[CompactTransform, sitk.Image, Dict[str, float]]:
            tracker.start("output", f"composing the displacement field and warping on {on}")
            return output_stage(fixed, moving, transform, control.to(on), settings.grid_stride, grid,
                                inputs.fixed_mask, inputs.fixed_segmentation, inputs.moving_segmentation,
                                inputs.labels, progress=tracker.update)

        (compact, warped, metrics), _ = _falling_back_to_cpu(outputs_on, torch_device, "output stage")
        metrics.update(residuals)
        metrics["working_spacing_mm"] = float(grid.GetSpacing()[0])
        check_result(pairing, displacement, grid, transform, metrics)
        tracker.finish()
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    timings = dict(tracker.timings)
    timings["total"] = sum(timings.values())
    return RegistrationResult(compact=compact, warped=warped, prealignment=transform,
                              metrics=metrics, timings=timings, device=describe(torch_device), preset=preset,
                              settings=settings, warnings=[str(w.message) for w in caught])
