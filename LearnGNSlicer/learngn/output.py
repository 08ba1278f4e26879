"""The output stage of a registration: the result as the engine computed it, the moving image warped once
through it, and the quality figures.

The result is kept compact (:class:`CompactTransform`): the pre-alignment and Gauss-Newton's control grid
(float32, LPS mm), which is what the engine computed: its displacement anywhere is the linear
interpolation of the control points, followed by the pre-alignment.  The composite of the two transforms
(ITK applies the field, then the affine) maps every point as the engine's field does, at an eighth of the
size of the same field on the working grid and a fraction of the full-grid field's; the full-grid field
is only computed when asked for.

Warping touches every voxel of the full-resolution scan: on a CPU SimpleITK resamples through the compact
transform (multithreaded, no full-grid field in memory; 3-4x faster than two ``grid_sample`` passes on a
512x512x141 CT); elsewhere torch composes the full-grid field on the device and warps with it.  The
quality figures are computed where they are cheap and exact enough: the Jacobian on the working grid,
where the field lives, and the similarity on a regular subset of the fixed voxels.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .gauss_newton import upsample_from_grid
from .geometry import compose_to_field, control_field_image, displacement_transform, voxel_field_to_physical
from .quality import determinant_statistics, field_jacobian_determinant, mean_dice, normalised_cross_correlation
from .sampling import (field_image, field_tensor, image_tensor, label_array, linear_matrix, resample,
                       resample_on_device, resamples_with_torch, sample_at, scalar_image, subgrid, transform_field,
                       voxel_points)

#: Fixed voxels (at most) on which the similarity figures are computed: a regular subset of the scan.
SIMILARITY_VOXELS = 2_000_000

#: Called with the share of the output stage done and a message.
StageProgress = Callable[[float, str], None]


class CompactTransform:
    """The registration's transform as computed: ``x -> prealignment(x + u(x))``.

    ``control_field`` is ``u`` on Gauss-Newton's control grid (float32 vector image, LPS mm, one repeated node
    on every side; see :func:`learngn.geometry.control_grid`); ``working_grid`` is the grid the engine
    worked on.  :meth:`transform` is the ITK composite of both (what ``transform.h5`` holds);
    :meth:`composed_on_control_grid` is the whole displacement at the control points (exact under linear
    interpolation when the pre-alignment is linear); :meth:`dense` the field on any grid (the fixed one by
    default), made once when first asked for.
    """

    def __init__(self, prealignment: Optional[sitk.Transform], control_field: sitk.Image, working_grid: sitk.Image,
                 fixed: sitk.Image):
        self.prealignment, self.control_field, self.working_grid, self.fixed = (prealignment, control_field,
                                                                                working_grid, fixed)
        self._composed: Optional[sitk.Image] = None
        self._dense: Optional[sitk.Image] = None

    def transform(self) -> sitk.CompositeTransform:
        """A new ITK composite transform, fixed -> moving points: the field first, then the pre-alignment."""
        composite = sitk.CompositeTransform(3)
        if self.prealignment is not None:
            composite.AddTransform(self.prealignment)
        composite.AddTransform(displacement_transform(self.control_field))
        composite.FlattenTransform()
        return composite

    def composed_on_control_grid(self) -> sitk.Image:
        """The whole displacement ``prealignment(x + u(x)) - x`` at the control points (float32)."""
        if self._composed is None:
            self._composed = transform_field(self.transform(), self.control_field)
        return self._composed

    def dense(self, reference: Optional[sitk.Image] = None) -> sitk.Image:
        """The displacement on ``reference``'s grid (float32); on the fixed grid it is kept once made."""
        if reference is not None and reference is not self.fixed:
            return transform_field(self.transform(), reference)
        if self._dense is None:
            self._dense = transform_field(self.transform(), self.fixed)
        return self._dense


class DenseField:
    """The composed field on the fixed grid: a tensor ``(z, y, x, 3)`` (LPS mm) on the device, and the same
    field as a SimpleITK image and transform, each made once when first asked for."""

    def __init__(self, tensor: torch.Tensor, fixed: sitk.Image, image: Optional[sitk.Image] = None):
        self.tensor, self.fixed = tensor, fixed
        self._image = image
        self._transform: Optional[sitk.DisplacementFieldTransform] = None

    def image(self) -> sitk.Image:
        if self._image is None:
            self._image = field_image(self.tensor, self.fixed)
        return self._image

    def transform(self) -> sitk.DisplacementFieldTransform:
        if self._transform is None:
            self._transform = displacement_transform(self.image())
        return self._transform


def compose_on_device(prealignment: Optional[sitk.Transform], field: sitk.Image, fixed: sitk.Image,
                      device: torch.device, with_torch: Optional[bool] = None) -> DenseField:
    """The field ``x -> prealignment(x + u(x)) - x`` on every voxel of ``fixed``, ``(z, y, x, 3)`` LPS mm.

    ``u`` is ``field`` (an LPS mm vector image, linearly interpolated, as ITK does).  A linear pre-alignment
    is applied as a matrix on ``device``; any other (a dense initial transform) is composed by SimpleITK
    (and so is everything on a CPU).
    """
    matrix = linear_matrix(prealignment)
    if matrix is None or not resamples_with_torch(device, with_torch):
        composed = compose_to_field([prealignment, displacement_transform(field)], fixed)
        return DenseField(field_tensor(composed, device), fixed, image=composed)
    points = voxel_points(fixed, device)
    field_volume = field_tensor(field, device).permute(3, 0, 1, 2)[None]
    moved = points + sample_at(field_volume, field, points)[0].permute(1, 2, 3, 0)
    linear = torch.as_tensor(matrix, dtype=torch.float32, device=device)
    moved = moved @ linear[:3, :3].T + linear[:3, 3]
    return DenseField(moved.sub_(points), fixed)


def warp_moving(moving: sitk.Image, field: DenseField, *, nearest: bool = False, default_value: float = 0.0,
                with_torch: Optional[bool] = None) -> torch.Tensor:
    """``moving`` at ``x + field(x)`` for every fixed voxel ``x``: ``(1, 1, z, y, x)``."""
    device = field.tensor.device
    if not resamples_with_torch(device, with_torch):
        return resample_on_device(moving, field.fixed, field.transform(), device, nearest=nearest,
                                  default_value=default_value, with_torch=False)
    points = voxel_points(field.fixed, device).add_(field.tensor)
    return sample_at(image_tensor(moving, device), moving, points, nearest=nearest, default_value=default_value)


def compact_transform(prealignment: Optional[sitk.Transform], control: torch.Tensor, stride: int,
                      grid: sitk.Image, fixed: sitk.Image) -> Tuple[CompactTransform, torch.Tensor]:
    """The compact result of Gauss-Newton's control grid (working voxels ``(1, 3, d, h, w)``, ``stride``
    working voxels apart), and the whole displacement at the working-grid voxels as a tensor
    ``(z, y, x, 3)`` on the control grid's device (for the Jacobian)."""
    compact = CompactTransform(prealignment, control_field_image(control, stride, grid), grid, fixed)
    shape = tuple(sitk.GetArrayViewFromImage(grid).shape)
    working_mm = voxel_field_to_physical(upsample_from_grid(control.detach().float(), stride, shape), grid)
    matrix = linear_matrix(prealignment)
    if matrix is None:
        return compact, field_tensor(transform_field(compact.transform(), grid), working_mm.device)
    points = voxel_points(grid, working_mm.device)
    linear = torch.as_tensor(matrix, dtype=torch.float32, device=working_mm.device)
    return compact, ((points + working_mm) @ linear[:3, :3].T + linear[:3, 3]).sub_(points)


class Warper:
    """Resamples images of the moving grid onto the fixed grid through the result, once each: SimpleITK
    through the compact transform, or torch through the full-grid field on the device."""

    def __init__(self, compact: CompactTransform, device: torch.device, with_torch: Optional[bool] = None):
        self.compact, self.device = compact, device
        self._dense: Optional[DenseField] = None
        self._transform: Optional[sitk.Transform] = None
        if resamples_with_torch(device, with_torch):
            self._dense = compose_on_device(compact.prealignment, compact.control_field, compact.fixed, device,
                                            with_torch=True)
        else:
            self._transform = compact.transform()

    def warp(self, moving: sitk.Image, *, nearest: bool = False, default_value: float = 0.0) -> sitk.Image:
        """``moving`` at ``transform(x)`` for every fixed voxel ``x``, as a float32 image on the fixed grid."""
        if self._dense is not None:
            return scalar_image(warp_moving(moving, self._dense, nearest=nearest, default_value=default_value,
                                            with_torch=True), self.compact.fixed)
        interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        return resample(moving, self.compact.fixed, self._transform, interpolator, default_value)


def quality_figures(fixed: sitk.Image, moving: sitk.Image, warper: Warper, warped: sitk.Image,
                    composed: torch.Tensor, grid: sitk.Image, fixed_mask: Optional[sitk.Image],
                    fixed_segmentation: Optional[sitk.Image], moving_segmentation: Optional[sitk.Image],
                    labels: List[int]) -> Dict[str, float]:
    """Similarity before, after pre-alignment and after registration (NCC inside the fixed mask, on a regular
    subset of at most :data:`SIMILARITY_VOXELS` fixed voxels), folding and roughness of the field (on the
    working grid, inside the fixed mask) and mean Dice before and after (every voxel) where both
    segmentations are given."""
    device = composed.device
    sample, steps = subgrid(fixed, SIMILARITY_VOXELS)
    every = tuple(slice(None, None, step) for step in reversed(steps))  # (z, y, x) array order

    def on_sample(image: sitk.Image) -> torch.Tensor:
        array = np.array(sitk.GetArrayViewFromImage(image)[every], dtype=np.float32)  # a writable copy
        return torch.from_numpy(array).to(device)[None, None]

    fixed_values = on_sample(fixed)
    mask = None if fixed_mask is None else on_sample(fixed_mask) > 0

    def ncc(moved: torch.Tensor) -> float:
        valid = torch.isfinite(moved) if mask is None else torch.isfinite(moved) & mask
        if not bool(valid.any()):
            return float("nan")
        return normalised_cross_correlation(fixed_values, torch.nan_to_num(moved), valid)

    nan = float("nan")
    metrics = {
        "ncc_before": ncc(resample_on_device(moving, sample, None, device, default_value=nan)),
        "ncc_prealigned": ncc(resample_on_device(moving, sample, warper.compact.prealignment, device,
                                                 default_value=nan)),
        "ncc_after": ncc(on_sample(warped)),
    }
    working_mask = None
    if fixed_mask is not None:
        working_mask = resample_on_device(fixed_mask, grid, None, device, nearest=True)[0, 0] > 0
    metrics.update(determinant_statistics(field_jacobian_determinant(composed, grid), working_mask))
    if fixed_segmentation is not None and moving_segmentation is not None:
        fixed_labels = sitk.GetArrayViewFromImage(fixed_segmentation)
        before = resample_on_device(moving_segmentation, fixed, None, device, nearest=True)
        metrics["dice_before"] = mean_dice(fixed_labels, label_array(before), labels)
        after = warper.warp(moving_segmentation, nearest=True)
        metrics["dice_after"] = mean_dice(fixed_labels, np.rint(sitk.GetArrayViewFromImage(after)).astype(np.int64),
                                          labels)
    metrics["similarity_before"], metrics["similarity_after"] = metrics["ncc_before"], metrics["ncc_after"]
    return metrics


def output_stage(fixed: sitk.Image, moving: sitk.Image, prealignment: Optional[sitk.Transform],
                 control: torch.Tensor, stride: int, grid: sitk.Image, fixed_mask: Optional[sitk.Image],
                 fixed_segmentation: Optional[sitk.Image], moving_segmentation: Optional[sitk.Image],
                 labels: List[int], progress: Optional[StageProgress] = None, with_torch: Optional[bool] = None
                 ) -> Tuple[CompactTransform, sitk.Image, Dict[str, float]]:
    """The compact result of Gauss-Newton's control grid (see :func:`compact_transform`), the moving image
    warped once through it (outside the moving image: its lowest value) and the quality figures, on the
    control grid's device."""
    report = progress or (lambda fraction, message: None)
    compact, composed = compact_transform(prealignment, control, stride, grid, fixed)
    report(0.1, "warping the moving image")
    warper = Warper(compact, control.device, with_torch)
    low = float(sitk.GetArrayViewFromImage(moving).min())
    warped = warper.warp(moving, default_value=low)
    report(0.5, "quality figures")  # the command line reports its writing from 0.6 of this stage on
    metrics = quality_figures(fixed, moving, warper, warped, composed, grid, fixed_mask, fixed_segmentation,
                              moving_segmentation, labels)
    return compact, warped, metrics
