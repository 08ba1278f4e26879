"""Volume nodes to SimpleITK images and back, in world coordinates.

MRML places voxels with an IJK-to-RAS matrix and, optionally, a parent transform; ITK images and
the engine's files use LPS (``LPS = diag(-1, -1, 1) * RAS``).  Inputs are exported as they are
displayed, i.e. in world coordinates:

* no parent transform: the voxels and IJK-to-RAS matrix are written as they are (exact);
* a linear parent transform whose result is still an orthogonal grid (rotations, translations,
  flips, scaling of whole axes): the transform is baked into the exported geometry, the voxels are
  copied unchanged (exact, no interpolation);
* a non-linear parent transform, or a linear one with shear: the volume is resampled once through
  the transform onto its own grid directions and spacing, enlarged to cover where the transform
  moved the content (as hardening a transform does).

Nothing here modifies the nodes it reads.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support


#: ``LPS_FROM_RAS @ ras`` turns a homogeneous RAS point or matrix into LPS (the matrix is its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Interpolation modes understood by :func:`sample_in_world`.
LINEAR = "linear"
NEAREST = "nearest"

#: Enlarging a grid to cover transformed content stops at this many times the original size per axis,
#: so a wild transform cannot request an enormous volume.
MAX_GRID_GROWTH = 3


@dataclass(frozen=True)
class Grid:
    """A voxel grid placed in world RAS: the geometry of an exported image.

    ``ijk_to_ras`` maps voxel indices (i, j, k) to RAS millimetres; ``size`` is (I, J, K), the VTK
    dimension order.  NumPy arrays on this grid have shape ``(K, J, I)``.
    """

    ijk_to_ras: np.ndarray
    size: Tuple[int, int, int]

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Shape of a NumPy array (K, J, I) holding this grid's voxels."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    def is_orthogonal(self, tolerance: float = 1e-6) -> bool:
        """True when the axes are perpendicular, as ITK image geometry requires."""
        directions = self.directions
        return bool(np.allclose(directions.T @ directions, np.eye(3), atol=tolerance))

    def same_as(self, other: "Grid", tolerance: float = 1e-6) -> bool:
        return self.size == other.size and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance))

    def vtk_matrix(self) -> vtk.vtkMatrix4x4:
        return matrix_to_vtk(self.ijk_to_ras)

    def apply_to_sitk(self, image: sitk.Image) -> None:
        """Give ``image`` this grid's geometry (converted to LPS)."""
        lps = LPS_FROM_RAS @ self.ijk_to_ras
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in lps[:3, 3]])
        image.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Grid":
        """The RAS grid of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise ValueError(f"Expected a 3D image, got {image.GetDimension()}D.")
        lps = np.eye(4)
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
        lps[:3, 3] = image.GetOrigin()
        size = tuple(int(s) for s in image.GetSize())
        return cls(LPS_FROM_RAS @ lps, size)  # type: ignore[arg-type]


def matrix_to_vtk(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for row, col in itertools.product(range(4), range(4)):
        result.SetElement(row, col, float(matrix[row, col]))
    return result


def matrix_from_vtk(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def check_scalar_volume(node, role: str) -> None:
    """Raise a clear error unless ``node`` is a single-component volume with voxels."""
    if node is None:
        raise ValueError(f"No {role} selected; select a {role} and try again.")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(
            f"The {role} '{node.GetName()}' is a {node.GetClassName()}; choose a scalar volume "
            "(convert vector/RGB volumes to scalar first, e.g. with the Vector to Scalar Volume module)."
        )
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"The {role} '{node.GetName()}' holds no voxels; load or compute its image first.")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"The {role} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
            "choose a single-component (scalar) volume."
        )
    if min(image.GetDimensions()) < 2:
        raise ValueError(f"The {role} '{node.GetName()}' is not a 3D volume (dimensions {image.GetDimensions()}).")


def local_grid(node) -> Grid:
    """The node's own grid, ignoring any parent transform."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return Grid(matrix_from_vtk(matrix), tuple(node.GetImageData().GetDimensions()))  # type: ignore[arg-type]


def world_grid(node) -> Tuple[Grid, bool]:
    """Where the node's voxels are in world coordinates, and whether that is exact.

    Returns ``(grid, exact)``.  ``exact`` is True when the voxels need no resampling (no parent
    transform, or a linear one that keeps the grid orthogonal; it is baked into the grid).
    Otherwise the grid is the node's own grid enlarged to cover the transformed content, and
    :func:`sample_in_world` must resample the voxels onto it.
    """
    grid = local_grid(node)
    parent = node.GetParentTransformNode()
    if parent is None:
        return grid, True
    if parent.IsTransformToWorldLinear():
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        baked = Grid(matrix_from_vtk(to_world) @ grid.ijk_to_ras, grid.size)
        if baked.is_orthogonal(tolerance=1e-5):
            return baked, True
    return _grid_covering_transformed(node, grid), False


def _grid_covering_transformed(node, grid: Grid, samples_per_edge: int = 9) -> Grid:
    """The node's grid directions and spacing, shifted and enlarged to hold its transformed content."""
    to_world = vtk.vtkGeneralTransform()
    node.GetParentTransformNode().GetTransformToWorld(to_world)
    ras_to_ijk = np.linalg.inv(grid.ijk_to_ras)
    lattice = [np.linspace(0.0, n - 1.0, samples_per_edge) for n in grid.size]
    indices = []
    for axis in range(3):  # sample the six faces of the voxel box
        others = [lattice[a] for a in range(3) if a != axis]
        for value in (0.0, grid.size[axis] - 1.0):
            for u, v in itertools.product(*others):
                ijk = [u, v]
                ijk.insert(axis, value)
                ras = grid.ijk_to_ras @ np.array([*ijk, 1.0])
                moved = np.array([*to_world.TransformPoint(ras[:3]), 1.0])
                indices.append((ras_to_ijk @ moved)[:3])
    size = np.array(grid.size, dtype=float)
    margin = (MAX_GRID_GROWTH - 1) * size / 2
    tolerance = 1e-4  # a transform's round-off must not add a voxel
    low = np.floor(np.maximum(np.min(indices, axis=0), -margin) + tolerance)
    high = np.ceil(np.minimum(np.max(indices, axis=0), size - 1 + margin) - tolerance)
    shift = np.eye(4)
    shift[:3, 3] = low
    new_size = tuple(int(n) for n in (high - low + 1))
    return Grid(grid.ijk_to_ras @ shift, new_size)  # type: ignore[arg-type]


def sample_in_world(node, grid: Grid, interpolation: str = LINEAR, background: float = 0.0) -> np.ndarray:
    """Resample the node's voxels, as displayed in world coordinates, onto ``grid``.

    The chain maps each output voxel to world RAS (``grid``), through the node's parent transform
    from world into the node's own RAS, then to its voxel indices.  Returns a ``(K, J, I)`` array of
    the node's scalar type.
    """
    source = vtk.vtkImageData()
    source.ShallowCopy(node.GetImageData())
    source.SetOrigin(0.0, 0.0, 0.0)  # MRML keeps geometry in the node; voxel data is plain IJK
    source.SetSpacing(1.0, 1.0, 1.0)

    chain = vtk.vtkGeneralTransform()
    chain.PostMultiply()
    chain.Concatenate(grid.vtk_matrix())
    parent = node.GetParentTransformNode()
    if parent is not None:
        from_world = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(from_world)
        chain.Concatenate(from_world)
    ras_to_ijk = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(ras_to_ijk)
    chain.Concatenate(ras_to_ijk)

    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(source)
    reslice.SetResliceTransform(chain)
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    reslice.SetOutputExtent(0, grid.size[0] - 1, 0, grid.size[1] - 1, 0, grid.size[2] - 1)
    if interpolation == NEAREST:
        reslice.SetInterpolationModeToNearestNeighbor()
    elif interpolation == LINEAR:
        reslice.SetInterpolationModeToLinear()
    else:
        raise ValueError(f"Unknown interpolation '{interpolation}'; use '{LINEAR}' or '{NEAREST}'.")
    reslice.SetBackgroundLevel(background)
    reslice.Update()
    scalars = reslice.GetOutput().GetPointData().GetScalars()
    return numpy_support.vtk_to_numpy(scalars).reshape(grid.shape).copy()


def voxels(node) -> np.ndarray:
    """A copy of the node's voxels as a ``(K, J, I)`` array (never a view into the node)."""
    scalars = node.GetImageData().GetPointData().GetScalars()
    dims = node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()


def image_from_array(array: np.ndarray, grid: Grid) -> sitk.Image:
    """A SimpleITK image of ``array`` (shape ``grid.shape``) placed on ``grid``."""
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"Array shape {array.shape} does not match the grid's {grid.shape}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    grid.apply_to_sitk(image)
    return image


def export_volume(node, grid: Optional[Grid] = None, interpolation: str = LINEAR) -> sitk.Image:
    """The node's voxels as displayed in world coordinates, as a SimpleITK (LPS) image.

    With ``grid`` None the node's own world grid is used (see :func:`world_grid`); a given grid
    (e.g. the image grid a mask must share) is always honoured, resampling when needed.
    """
    own, exact = world_grid(node)
    target = own if grid is None else grid
    if exact and own.same_as(target):
        array = voxels(node)
    else:
        array = sample_in_world(node, target, interpolation)
    return image_from_array(array, target)


def update_volume_from_array(node, array: np.ndarray, grid: Grid) -> None:
    """Replace the node's voxels and geometry (used for output nodes only)."""
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"Array shape {array.shape} does not match the grid's {grid.shape}.")
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    flat = np.ascontiguousarray(array).reshape(-1)
    vtk_array = numpy_support.numpy_to_vtk(flat, deep=True)
    image.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(grid.vtk_matrix())


def update_volume_from_image(node, image: sitk.Image) -> None:
    """Replace the node's voxels and geometry with those of a SimpleITK image."""
    update_volume_from_array(node, sitk.GetArrayFromImage(image), Grid.from_sitk(image))
