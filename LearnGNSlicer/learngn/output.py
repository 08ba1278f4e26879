"""The output stage of a registration, on the registration's device: one displacement field on the full
fixed grid, the moving image warped once through it, and the quality figures.

This is the stage that touches every voxel of the full-resolution scans; with torch it runs where the
deformable stage ran (a GPU, where there is one) and only the results travel back to SimpleITK images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk
import torch

from .geometry import compose_to_field, displacement_transform, voxel_field_to_image, voxel_field_to_physical
from .quality import determinant_statistics, field_jacobian_determinant, mean_dice, normalised_cross_correlation
from .sampling import (field_image, field_tensor, image_tensor, label_array, linear_matrix, resample_on_device,
                       resamples_with_torch, sample_at, scalar_image, voxel_points)


@dataclass
class OutputImages:
    """What the user gets: the field (LPS mm, resampling sense) and the warped moving image."""

    displacement: sitk.Image
    warped: sitk.Image


class DenseField:
    """The composed field on the fixed grid: a tensor ``(z, y, x, 3)`` (LPS mm) on the device, and the same
    field as a SimpleITK image and transform, each made once when first asked for.  The SimpleITK forms
    are what the result hands back and what CPU resampling goes through; converting for every use had
    made the output stage 1.8 s slower on a CPU."""

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


def compose_on_device(prealignment: Optional[sitk.Transform], working_displacement: torch.Tensor,
                      grid: sitk.Image, fixed: sitk.Image, with_torch: Optional[bool] = None) -> DenseField:
    """The field ``x -> prealignment(x + u(x)) - x`` on every fixed voxel, ``(z, y, x, 3)`` LPS mm.

    ``u`` is the deformable stage's displacement in working-grid voxels ``(1, 3, z, y, x)``.  A linear
    pre-alignment is applied as a matrix on the device; any other (a dense initial transform) is composed
    by SimpleITK, as :func:`learngn.geometry.compose_to_field` always did (and so is everything on a CPU).
    """
    matrix = linear_matrix(prealignment)
    if matrix is None or not resamples_with_torch(working_displacement.device, with_torch):
        composed = compose_to_field([prealignment, displacement_transform(
            voxel_field_to_image(working_displacement, grid))], fixed)
        return DenseField(field_tensor(composed, working_displacement.device), fixed, image=composed)
    device = working_displacement.device
    points = voxel_points(fixed, device)
    working_mm = voxel_field_to_physical(working_displacement.float(), grid).permute(3, 0, 1, 2)[None]
    moved = points + sample_at(working_mm, grid, points)[0].permute(1, 2, 3, 0)
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


def output_images(moving: sitk.Image, field: DenseField) -> Tuple[OutputImages, torch.Tensor]:
    """The field and the moving image warped through it (outside the moving image: its lowest value), and
    the warped values as a tensor for the quality figures."""
    low = float(sitk.GetArrayViewFromImage(moving).min())
    warped = warp_moving(moving, field, default_value=low)
    return OutputImages(displacement=field.image(), warped=scalar_image(warped, field.fixed)), warped


def quality_figures(fixed: sitk.Image, moving: sitk.Image, field: DenseField, warped: torch.Tensor,
                    prealignment: Optional[sitk.Transform], fixed_mask: Optional[sitk.Image],
                    fixed_segmentation: Optional[sitk.Image], moving_segmentation: Optional[sitk.Image],
                    labels: List[int]) -> Dict[str, float]:
    """Similarity before, after pre-alignment and after registration (NCC inside the fixed mask), folding
    and roughness of the field, and mean Dice before and after where both segmentations are given."""
    device = field.tensor.device
    fixed_values = image_tensor(fixed, device)
    mask = None if fixed_mask is None else image_tensor(fixed_mask, device) > 0

    def ncc(moved: torch.Tensor) -> float:
        valid = torch.isfinite(moved) if mask is None else torch.isfinite(moved) & mask
        if not bool(valid.any()):
            return float("nan")
        return normalised_cross_correlation(fixed_values, torch.nan_to_num(moved), valid)

    nan = float("nan")
    metrics = {
        "ncc_before": ncc(resample_on_device(moving, fixed, None, device, default_value=nan)),
        "ncc_prealigned": ncc(resample_on_device(moving, fixed, prealignment, device, default_value=nan)),
        "ncc_after": ncc(warped),
    }
    determinant = field_jacobian_determinant(field.tensor, fixed)
    metrics.update(determinant_statistics(determinant, None if mask is None else mask[0, 0]))
    del determinant
    if fixed_segmentation is not None and moving_segmentation is not None:
        fixed_labels = sitk.GetArrayViewFromImage(fixed_segmentation)
        before = resample_on_device(moving_segmentation, fixed, None, device, nearest=True)
        after = warp_moving(moving_segmentation, field, nearest=True)
        for key, moved in (("before", before), ("after", after)):
            metrics[f"dice_{key}"] = mean_dice(fixed_labels, label_array(moved), labels)
    metrics["similarity_before"], metrics["similarity_after"] = metrics["ncc_before"], metrics["ncc_after"]
    return metrics
