"""The output stage of a registration, on the registration's device: one displacement field on the full
fixed grid, the moving image warped once through it, and the quality figures.

This is the stage that touches every voxel of the full-resolution scans; with torch it runs where the
deformable stage ran (a GPU, where there is one) and only the results travel back to SimpleITK images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import compose_to_field, displacement_transform, voxel_field_to_image, voxel_field_to_physical
from .quality import determinant_statistics, field_jacobian_determinant, mean_dice, normalised_cross_correlation
from .sampling import (field_image, field_tensor, image_tensor, linear_matrix, resample_on_device,
                       resamples_with_torch, sample_at, scalar_image, voxel_points)


@dataclass
class OutputImages:
    """What the user gets: the field (LPS mm, resampling sense) and the warped moving image."""

    displacement: sitk.Image
    warped: sitk.Image


def compose_on_device(prealignment: Optional[sitk.Transform], working_displacement: torch.Tensor,
                      grid: sitk.Image, fixed: sitk.Image, with_torch: Optional[bool] = None) -> torch.Tensor:
    """The field ``x -> prealignment(x + u(x)) - x`` on every fixed voxel, ``(z, y, x, 3)`` LPS mm.

    ``u`` is the deformable stage's displacement in working-grid voxels ``(1, 3, z, y, x)``.  A linear
    pre-alignment is applied as a matrix on the device; any other (a dense initial transform) is composed
    by SimpleITK, as :func:`learngn.geometry.compose_to_field` always did (and so is everything on a CPU).
    """
    matrix = linear_matrix(prealignment)
    if matrix is None or not resamples_with_torch(working_displacement.device, with_torch):
        composed = compose_to_field([prealignment, displacement_transform(
            voxel_field_to_image(working_displacement, grid))], fixed)
        return field_tensor(composed, working_displacement.device)
    device = working_displacement.device
    points = voxel_points(fixed, device)
    working_mm = voxel_field_to_physical(working_displacement.float(), grid).permute(3, 0, 1, 2)[None]
    moved = points + sample_at(working_mm, grid, points)[0].permute(1, 2, 3, 0)
    linear = torch.as_tensor(matrix, dtype=torch.float32, device=device)
    moved = moved @ linear[:3, :3].T + linear[:3, 3]
    return moved.sub_(points)


def warp_moving(moving: sitk.Image, fixed: sitk.Image, field: torch.Tensor, *, nearest: bool = False,
                default_value: float = 0.0, with_torch: Optional[bool] = None) -> torch.Tensor:
    """``moving`` at ``x + field(x)`` for every fixed voxel ``x``: ``(1, 1, z, y, x)``."""
    if not resamples_with_torch(field.device, with_torch):
        return resample_on_device(moving, fixed, displacement_transform(field_image(field, fixed)), field.device,
                                  nearest=nearest, default_value=default_value, with_torch=False)
    points = voxel_points(fixed, field.device).add_(field)
    return sample_at(image_tensor(moving, field.device), moving, points, nearest=nearest,
                     default_value=default_value)


def output_images(fixed: sitk.Image, moving: sitk.Image, field: torch.Tensor) -> OutputImages:
    """The field and the moving image warped through it (outside the moving image: its lowest value)."""
    low = float(sitk.GetArrayViewFromImage(moving).min())
    warped = warp_moving(moving, fixed, field, default_value=low)
    return OutputImages(displacement=field_image(field, fixed), warped=scalar_image(warped, fixed))


def quality_figures(fixed: sitk.Image, moving: sitk.Image, field: torch.Tensor, warped: sitk.Image,
                    prealignment: Optional[sitk.Transform], fixed_mask: Optional[sitk.Image],
                    fixed_segmentation: Optional[sitk.Image], moving_segmentation: Optional[sitk.Image],
                    labels: List[int]) -> Dict[str, float]:
    """Similarity before, after pre-alignment and after registration (NCC inside the fixed mask), folding
    and roughness of the field, and mean Dice before and after where both segmentations are given."""
    device = field.device
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
        "ncc_after": ncc(image_tensor(warped, device)),
    }
    determinant = field_jacobian_determinant(field, fixed)
    metrics.update(determinant_statistics(determinant, None if mask is None else mask[0, 0]))
    del determinant
    if fixed_segmentation is not None and moving_segmentation is not None:
        fixed_labels = sitk.GetArrayViewFromImage(fixed_segmentation)
        before = resample_on_device(moving_segmentation, fixed, None, device, nearest=True)
        after = warp_moving(moving_segmentation, fixed, field, nearest=True)
        for key, moved in (("before", before), ("after", after)):
            moved_labels = moved[0, 0].round().cpu().numpy().astype(np.int64)
            metrics[f"dice_{key}"] = mean_dice(fixed_labels, moved_labels, labels)
    metrics["similarity_before"], metrics["similarity_after"] = metrics["ncc_before"], metrics["ncc_after"]
    return metrics
