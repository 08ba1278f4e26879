"""Building blocks for the headless Slicer tests: volumes with known geometry, transforms, fakes."""
from __future__ import annotations

import math
import os
import sys
from typing import Optional, Sequence

import numpy as np
import vtk

import slicer
from LearnGNSlicerLib.geometry import Grid, matrix_to_vtk, update_volume_from_array
from LearnGNSlicerLib.worker import WorkerLauncher

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODULE_DIR = os.path.join(REPO, "LearnGNSlicer")
FAKE_WORKER = os.path.join(HERE, "fake_worker.py")


def ijk_to_ras(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), directions: Optional[np.ndarray] = None) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = (np.eye(3) if directions is None else np.asarray(directions)) * np.asarray(spacing)
    matrix[:3, 3] = origin
    return matrix


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about RAS axis 0, 1 or 2."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def add_volume(scene, array: np.ndarray, matrix: np.ndarray, name: str = "volume", label: bool = False):
    """A volume node holding ``array`` (K, J, I) placed by ``matrix`` (IJK to RAS)."""
    node_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, name)
    shape = array.shape
    update_volume_from_array(node, array, Grid(matrix, (shape[2], shape[1], shape[0])))
    node.CreateDefaultDisplayNodes()
    return node


def blob(shape=(20, 24, 28), center=(10, 12, 14), radius=4.0, dtype=np.float32) -> np.ndarray:
    """A smooth bright ball, centre given as (k, j, i)."""
    k, j, i = np.indices(shape)
    distance2 = (k - center[0]) ** 2 + (j - center[1]) ** 2 + (i - center[2]) ** 2
    return (100.0 * np.exp(-distance2 / (2 * radius**2))).astype(dtype)


def add_linear_transform(scene, matrix: np.ndarray, name: str = "linear"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(matrix_to_vtk(matrix))
    return node


def translation(x=0.0, y=0.0, z=0.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (x, y, z)
    return matrix


def add_constant_grid_transform(scene, shift_ras: Sequence[float], name: str = "grid"):
    """A non-linear (grid) transform node whose FromParent moves every point by ``shift_ras``."""
    image = vtk.vtkImageData()
    image.SetDimensions(6, 6, 6)
    image.SetOrigin(-200.0, -200.0, -200.0)
    image.SetSpacing(80.0, 80.0, 80.0)
    image.AllocateScalars(vtk.VTK_DOUBLE, 3)
    from vtk.util import numpy_support

    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    values[:] = np.asarray(shift_ras, dtype=float)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(image)
    transform.SetInterpolationModeToLinear()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", name)
    node.SetAndObserveTransformFromParent(transform)
    return node


def voxel_ras(node, ijk) -> np.ndarray:
    """World RAS position of voxel ``ijk`` of ``node`` (parent transforms applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = np.array(matrix.MultiplyPoint([*ijk, 1.0])[:3])
    parent = node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(to_world)
        ras = np.array(to_world.TransformPoint(ras))
    return ras


def fake_launcher(**environment: str) -> WorkerLauncher:
    """Runs ``fake_learngn`` (this folder) instead of the engine, with the given environment."""
    return WorkerLauncher(python=sys.executable, module="fake_learngn",
                          python_path=[HERE, MODULE_DIR],
                          extra_environment=dict(environment))


def snapshot(node) -> dict:
    """What must not change on an input node: voxels, geometry, parent transform, modification."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    state = {"id": node.GetID(), "name": node.GetName(), "parent": node.GetTransformNodeID(),
             "matrix": [matrix.GetElement(r, c) for r in range(4) for c in range(4)]}
    if node.IsA("vtkMRMLVolumeNode"):
        state["voxels"] = slicer.util.arrayFromVolume(node).copy()
    return state


def assert_unchanged(before: dict, node) -> None:
    after = snapshot(node)
    for key in ("id", "name", "parent", "matrix"):
        assert after[key] == before[key], f"input {key} changed"
    if "voxels" in before:
        np.testing.assert_array_equal(after["voxels"], before["voxels"])
