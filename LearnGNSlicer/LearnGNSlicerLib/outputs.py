"""Turn the worker's output folder into the output transform and warped volume nodes.

Everything that can fail (missing files, wrong sizes) happens while reading, before any node is
touched; nodes are then created or overwritten in one step, and new nodes are removed again if
that step fails, so the scene is left as it was.

The transform maps the fixed volume's world space to the moving volume's world space (both as
displayed, parent transforms included): the resampling field of the engine, set as FromParent.
The warped volume is the engine's single resampling of the moving volume onto the fixed grid.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .geometry import Grid, update_volume_from_array
from .i18n import tr as _
from .request import RegistrationRequest
from .scene import rollback_on_error
from .transforms import displacement_array, set_registration_references, set_resampling_field
from .worker import DISPLACEMENT_FILE, SUMMARY_FILE, WARPED_FILE


@dataclass
class WorkerOutputs:
    displacement_lps: np.ndarray    # (K, J, I, 3) on field_grid
    field_grid: Grid                # the engine's control grid (the field is linear in between its nodes)
    warped: np.ndarray              # on the fixed grid
    summary: dict


def read_outputs(outdir: str, fixed_grid: Grid, summary: Optional[dict] = None) -> WorkerOutputs:
    """Read and check the worker's files; raises with a clear message if any is missing or wrong."""
    def path(name: str) -> str:
        full = os.path.join(outdir, name)
        if not os.path.isfile(full):
            raise RuntimeError(f"The registration worker finished without writing {name} into {outdir}.")
        return full

    field = sitk.ReadImage(path(DISPLACEMENT_FILE))
    displacement = displacement_array(field)
    if not np.isfinite(displacement).all():
        raise RuntimeError(f"The worker's {DISPLACEMENT_FILE} holds values that are not numbers.")
    warped = sitk.GetArrayFromImage(sitk.ReadImage(path(WARPED_FILE)))
    if tuple(warped.shape) != fixed_grid.shape:
        raise RuntimeError(
            f"The worker's {WARPED_FILE} has size {tuple(reversed(warped.shape))} but the fixed volume "
            f"{tuple(fixed_grid.size)}; the engine must return the warped volume on the fixed grid."
        )
    if summary is None:
        summary_path = os.path.join(outdir, SUMMARY_FILE)
        summary = {}
        if os.path.isfile(summary_path):
            with open(summary_path, encoding="utf-8") as file:
                summary = json.load(file)
    return WorkerOutputs(displacement, Grid.from_sitk(field), warped, summary)


def _unique_name(scene, name: str) -> str:
    return scene.GenerateUniqueName(name)


def store_outputs(request: RegistrationRequest, outputs: WorkerOutputs, fixed_grid: Grid):
    """Create or overwrite the output nodes; returns ``(transform_node, warped_node)``."""
    scene = request.scene
    fixed_name, moving_name = request.fixed.GetName(), request.moving.GetName()
    with rollback_on_error(scene):
        transform = request.output_transform
        if transform is None:
            transform = scene.AddNewNodeByClass(
                "vtkMRMLTransformNode", _unique_name(scene, _("{moving} to {fixed}").format(moving=moving_name, fixed=fixed_name)))
        set_resampling_field(transform, outputs.displacement_lps, outputs.field_grid)
        set_registration_references(transform, request.fixed, request.moving)

        warped = request.output_volume
        if warped is None:
            warped = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", _unique_name(scene, _("{moving} warped").format(moving=moving_name)))
        warped.SetAndObserveTransformNodeID(None)  # voxels are placed in world coordinates
        update_volume_from_array(warped, outputs.warped, fixed_grid)
        _show_like(warped, request.moving)
    return transform, warped


def _show_like(warped, moving) -> None:
    """Give the warped volume a display node with the moving volume's window/level."""
    if warped.GetDisplayNode() is None:
        warped.CreateDefaultDisplayNodes()
    source, target = moving.GetDisplayNode(), warped.GetDisplayNode()
    if source is None or target is None or not hasattr(source, "GetWindow") or source.GetWindow() <= 0:
        return
    if source.GetColorNodeID():
        target.SetAndObserveColorNodeID(source.GetColorNodeID())
    target.SetAutoWindowLevel(False)
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())
