"""Write the registration inputs into the worker's folder, in world coordinates (see geometry.py).

Volumes are written as NRRD (exact double-precision geometry, no compression: the files are
temporary).  Masks are resampled (nearest neighbour) onto their volume's exported grid and stored
as 0/1; segmentations are rasterised onto their volume's grid with matching label values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from .geometry import LINEAR, NEAREST, Grid, export_volume, image_from_array
from .request import RegistrationRequest
from .segmentations import export_segments, select_segments


@dataclass
class ExportedInputs:
    """Paths of the written files (keyed like ``register_arguments``) and the fixed grid."""

    paths: Dict[str, str]
    fixed_grid: Grid
    warnings: List[str] = field(default_factory=list)

    @property
    def fixed_voxels(self) -> int:
        return int(np.prod(self.fixed_grid.size))


def _write(image: sitk.Image, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    sitk.WriteImage(image, path, useCompression=False)
    return path


def _mask_on_grid(node, grid: Grid) -> sitk.Image:
    """A 0/1 uint8 mask (nonzero = inside) on ``grid``."""
    image = export_volume(node, grid, NEAREST)
    inside = sitk.GetArrayViewFromImage(image) != 0
    if not inside.any():
        raise ValueError(f"The mask '{node.GetName()}' is empty where it overlaps its volume; choose a mask that covers the region to register.")
    return image_from_array(inside.astype(np.uint8), grid)


def export_inputs(request: RegistrationRequest, folder: str) -> ExportedInputs:
    """Write every input of ``request`` into ``folder``; never modifies the nodes."""
    fixed_image = export_volume(request.fixed, interpolation=LINEAR)
    moving_image = export_volume(request.moving, interpolation=LINEAR)
    fixed_grid = Grid.from_sitk(fixed_image)
    moving_grid = Grid.from_sitk(moving_image)
    exported = ExportedInputs(
        paths={"fixed": _write(fixed_image, folder, "fixed.nrrd"), "moving": _write(moving_image, folder, "moving.nrrd")},
        fixed_grid=fixed_grid,
    )
    for key, node, grid in (("fixed_mask", request.fixed_mask, fixed_grid), ("moving_mask", request.moving_mask, moving_grid)):
        if node is not None:
            exported.paths[key] = _write(_mask_on_grid(node, grid), folder, f"{key}.nrrd")

    if request.fixed_segmentation is not None or request.moving_segmentation is not None:
        selection = select_segments(request.fixed_segmentation, request.moving_segmentation)
        exported.warnings += selection.warnings
        for key, node, ids, volume, grid in (
            ("fixed_segmentation", request.fixed_segmentation, selection.fixed_ids, request.fixed, fixed_grid),
            ("moving_segmentation", request.moving_segmentation, selection.moving_ids, request.moving, moving_grid),
        ):
            if node is not None:
                labels = export_segments(node, ids, volume, grid)
                exported.paths[key] = _write(labels, folder, f"{key}.nrrd")
    return exported
