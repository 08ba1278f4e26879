"""Physical space: the working grid, resampling onto it, and displacement fields in millimetres.

The deformable stage runs on an isotropic working grid aligned with the fixed image (same direction,
covering every fixed voxel centre), so the regulariser treats all axes alike whatever the scan's voxel
size.  Fields leave this module as SimpleITK vector images in LPS millimetres (ITK's convention).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .sampling import field_image, transform_field


def working_spacing(fixed: sitk.Image, max_voxels: int, requested: Optional[float] = None) -> float:
    """The requested spacing, else the finest isotropic spacing (not finer than the scan) within budget."""
    if requested is not None:
        return float(requested)
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    finest = float(min(fixed.GetSpacing()))
    return max(finest, float(np.cbrt(np.prod(extent) / max_voxels)))


def working_grid(fixed: sitk.Image, spacing: float) -> sitk.Image:
    """An empty isotropic image in the fixed image's orientation whose voxel centres span the fixed ones."""
    extent = (np.array(fixed.GetSize()) - 1) * np.array(fixed.GetSpacing())
    size = [int(np.ceil(e / spacing - 1e-6)) + 1 for e in extent]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(fixed.GetOrigin())
    grid.SetDirection(fixed.GetDirection())
    grid.SetSpacing([spacing] * 3)
    return grid


def voxel_field_to_physical(displacement: torch.Tensor, reference: sitk.Image) -> torch.Tensor:
    """A displacement in voxels of ``reference`` ``(1, 3, z, y, x)`` as LPS millimetres ``(z, y, x, 3)``."""
    voxels_xyz = displacement[0].flip(0).permute(1, 2, 3, 0)
    matrix = np.array(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    return voxels_xyz @ torch.as_tensor(matrix.T, dtype=displacement.dtype, device=displacement.device)


def voxel_field_to_image(displacement: torch.Tensor, reference: sitk.Image) -> sitk.Image:
    """A displacement in working voxels ``(1, 3, z, y, x)`` as an LPS millimetre field (float32) on ``reference``."""
    return field_image(voxel_field_to_physical(displacement.detach().float(), reference), reference)


def control_grid(working: sitk.Image, control_shape: Tuple[int, int, int], stride: int) -> sitk.Image:
    """An empty image whose voxel centres are the control points of ``working`` (``control_shape`` in (z, y, x)
    order, ``stride`` working voxels apart), with one more node on every side.

    Gauss-Newton interpolates its control grid like ``F.interpolate(align_corners=False)``: node ``k`` sits at
    working voxel ``stride * k + (stride - 1) / 2``, and beyond the first and last node the value stays
    constant.  Linear interpolation on this image (ITK, VTK, ``grid_sample``) gives the same field when the
    extra nodes repeat their neighbours (:func:`control_field_image`), out to ``stride`` voxels past the
    working grid.
    """
    spacing = np.array(working.GetSpacing()) * stride
    first = (stride - 1) / 2.0 - stride  # working-voxel index of the extra node before node 0
    grid = sitk.Image([int(n) + 2 for n in reversed(control_shape)], sitk.sitkUInt8)
    grid.SetOrigin(working.TransformContinuousIndexToPhysicalPoint([first] * 3))
    grid.SetDirection(working.GetDirection())
    grid.SetSpacing([float(s) for s in spacing])
    return grid


def control_field_image(control: torch.Tensor, stride: int, working: sitk.Image) -> sitk.Image:
    """Gauss-Newton's control grid (working voxels ``(1, 3, d, h, w)``) as an LPS millimetre field (float32) on
    :func:`control_grid`: the edge nodes repeated once on every side so that linear interpolation keeps the
    engine's constant extension."""
    padded = F.pad(control.detach().float(), (1, 1, 1, 1, 1, 1), mode="replicate")
    shape = tuple(int(n) for n in control.shape[2:])
    return field_image(voxel_field_to_physical(padded, working), control_grid(working, shape, stride))


def image_field_to_voxels(field: sitk.Image, device: torch.device) -> torch.Tensor:
    """Inverse of :func:`voxel_field_to_image` (for tests and for starting from a known field)."""
    direction = np.array(field.GetDirection()).reshape(3, 3)
    physical = sitk.GetArrayFromImage(field)
    voxels_xyz = (physical @ direction) / np.array(field.GetSpacing())
    return torch.from_numpy(voxels_xyz).permute(3, 0, 1, 2).flip(0)[None].float().to(device)


def compose_to_field(transforms: list, reference: sitk.Image) -> sitk.Image:
    """The dense field on ``reference`` of ``transforms[0] o transforms[1] o ...`` (last applied first)."""
    composite = sitk.CompositeTransform(3)
    for transform in transforms:
        if transform is not None:
            composite.AddTransform(transform)
    return transform_field(composite, reference)


def displacement_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A transform of a copy of ``field`` (SimpleITK's constructor empties the image it is given)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def physical_bounds(image: sitk.Image) -> np.ndarray:
    """The 8 corner points (LPS) of the image's voxel-centre box."""
    size = np.array(image.GetSize()) - 1
    corners = [[i * size[0], j * size[1], k * size[2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])
