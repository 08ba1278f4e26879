"""The engine's displacement field as a Slicer transform node, and transform files.

The engine returns ``d(x) = x_moving - x_fixed`` in LPS millimetres on the fixed grid: a
resampling (fixed -> moving) field.  In Slicer that is a ``vtkOrientedGridTransform`` set as
*FromParent* on a plain ``vtkMRMLTransformNode`` (``vtkMRMLGridTransformNode`` is deprecated), with
the first two components negated for RAS.  Linear interpolation matches ITK's; saved as ``.h5`` it
becomes an ITK DisplacementFieldTransform that SimpleITK and ANTs read.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from .geometry import Grid

#: Multiplying an LPS vector by this gives the RAS vector (and back).
RAS_FROM_LPS_VECTOR = np.array([-1.0, -1.0, 1.0])


def displacement_array(field: sitk.Image) -> np.ndarray:
    """The field's vectors as a ``(K, J, I, 3)`` float32 array (as the engine computes them), still in LPS."""
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise ValueError(
            "Expected a 3D displacement field with 3 components per voxel, got "
            f"{field.GetDimension()}D with {field.GetNumberOfComponentsPerPixel()} components."
        )
    return sitk.GetArrayFromImage(field).astype(np.float32, copy=False)


def grid_transform(displacement_lps: np.ndarray, grid: Grid) -> "slicer.vtkOrientedGridTransform":
    """A VTK grid transform (float32, as the engine computes) of LPS displacements ``(K, J, I, 3)`` on ``grid``, in RAS, linear."""
    if displacement_lps.shape != (*grid.shape, 3):
        raise ValueError(f"Displacement shape {displacement_lps.shape} does not match the grid {(*grid.shape, 3)}.")
    ras = np.ascontiguousarray(displacement_lps * RAS_FROM_LPS_VECTOR.astype(np.float32), dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    image.SetOrigin(*grid.origin)
    image.SetSpacing(*grid.spacing)
    vectors = numpy_support.numpy_to_vtk(ras.reshape(-1, 3), deep=True, array_type=vtk.VTK_FLOAT)
    image.GetPointData().SetScalars(vectors)

    direction = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            direction.SetElement(row, col, float(grid.directions[row, col]))

    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(image)
    transform.SetGridDirectionMatrix(direction)
    transform.SetDisplacementScale(1.0)
    transform.SetDisplacementShift(0.0)
    transform.SetInterpolationModeToLinear()
    return transform


def set_resampling_field(transform_node, displacement_lps: np.ndarray, grid: Grid) -> None:
    """Make ``transform_node`` hold the field as its FromParent (resampling) transform."""
    transform_node.SetAndObserveTransformFromParent(grid_transform(displacement_lps, grid))


def set_registration_references(transform_node, fixed_node, moving_node) -> None:
    """Record which volumes the transform registers, with the roles Slicer's registration modules use."""
    transform_node.SetNodeReferenceID(transform_node.GetFixedNodeReferenceRole(), fixed_node.GetID() if fixed_node else None)
    transform_node.SetNodeReferenceID(transform_node.GetMovingNodeReferenceRole(), moving_node.GetID() if moving_node else None)


def use_linear_interpolation(transform_node) -> None:
    """Switch grid transforms in the node to linear interpolation (files load as cubic)."""
    for transform in (transform_node.GetTransformFromParent(), transform_node.GetTransformToParent()):
        if transform is not None and transform.IsA("vtkGridTransform"):
            transform.SetInterpolationModeToLinear()
        if transform is not None and transform.IsA("vtkGeneralTransform"):
            for index in range(transform.GetNumberOfConcatenatedTransforms()):
                part = transform.GetConcatenatedTransform(index)
                if part.IsA("vtkGridTransform"):
                    part.SetInterpolationModeToLinear()


def save_transform(transform_node, path: str) -> None:
    """Write the transform (``.h5``, ``.tfm``, ``.nrrd`` ...) with a transform storage node."""
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(os.fspath(path))
    if not storage.WriteData(transform_node):
        raise OSError(f"Could not write the transform '{transform_node.GetName()}' to {path}.")


def load_transform(scene, path: str, name: Optional[str] = None):
    """Read a transform file into a new transform node of ``scene`` (linear interpolation)."""
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", name or os.path.basename(path))
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(os.fspath(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise OSError(f"Could not read a transform from {path}.")
    use_linear_interpolation(node)
    return node
