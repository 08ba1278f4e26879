"""Direction of the output transform, and saving/reloading it (.h5 read by Slicer and SimpleITK)."""
import numpy as np
import pytest
import SimpleITK as sitk

from LearnGNSlicerLib.geometry import Grid, sample_in_world
from LearnGNSlicerLib.transforms import (
    load_transform, save_transform, set_registration_references, set_resampling_field,
)
from slicer_test_helpers import add_volume, blob, ijk_to_ras, rotation

LPS = np.array([-1.0, -1.0, 1.0])
FIXED_GRID = Grid(ijk_to_ras(spacing=(1.0, 1.0, 1.0), origin=(-10.0, -15.0, -12.0)), (40, 30, 25))
OBLIQUE_GRID = Grid(ijk_to_ras(spacing=(1.5, 2.0, 2.5), origin=(3.0, -20.0, -9.0), directions=rotation(2, 35) @ rotation(1, 10)), (20, 18, 16))


def constant_field(grid: Grid, ras_vector) -> np.ndarray:
    """LPS displacement array (K, J, I, 3) equal to ``ras_vector`` (RAS mm) everywhere."""
    return np.broadcast_to(np.asarray(ras_vector, float) * LPS, (*grid.shape, 3)).copy()


def voxel_positions_ras(grid: Grid) -> np.ndarray:
    """(K, J, I, 3) RAS position of every voxel of ``grid``."""
    k, j, i = np.indices(grid.shape)
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ grid.ijk_to_ras.T)[..., :3]


AFFINE = np.array([[0.02, -0.01, 0.03], [0.01, 0.015, -0.02], [-0.025, 0.01, 0.01]])
OFFSET = np.array([1.5, -2.0, 0.5])


def affine_field(grid: Grid) -> np.ndarray:
    """LPS displacements of the RAS field ``d(x) = AFFINE x + OFFSET`` (linear interpolation is exact for it)."""
    return (voxel_positions_ras(grid) @ AFFINE.T + OFFSET) * LPS


def interior_points(grid: Grid, count=20, seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ijk = rng.uniform(1.0, np.array(grid.size) - 2.0, size=(count, 3))
    return (np.c_[ijk, np.ones(count)] @ grid.ijk_to_ras.T)[:, :3]


def test_constant_plus_5mm_right_maps_fixed_points_5mm_right(scene):
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    set_resampling_field(node, constant_field(FIXED_GRID, (5.0, 0.0, 0.0)), FIXED_GRID)

    from_parent = node.GetTransformFromParent()
    to_parent = node.GetTransformToParent()
    np.testing.assert_allclose(from_parent.TransformPoint(0.0, 0.0, 0.0), (5.0, 0.0, 0.0), atol=1e-9)
    np.testing.assert_allclose(to_parent.TransformPoint(5.0, 0.0, 0.0), (0.0, 0.0, 0.0), atol=1e-3)
    assert from_parent.IsA("vtkOrientedGridTransform")
    assert from_parent.GetInterpolationModeAsString() == "Linear"


def test_moving_blob_at_10mm_right_appears_at_5mm_right_on_the_fixed_grid(scene):
    """DESIGN §5: d = +5 mm R set as FromParent gives warped(x) = moving(x + d)."""
    moving_array = blob(shape=(25, 30, 40), center=(12, 15, 20))  # voxel (i=20) is R = -10 + 20 = +10 mm
    moving = add_volume(scene, moving_array, FIXED_GRID.ijk_to_ras, "moving")
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    set_resampling_field(transform, constant_field(FIXED_GRID, (5.0, 0.0, 0.0)), FIXED_GRID)
    moving.SetAndObserveTransformNodeID(transform.GetID())

    warped = sample_in_world(moving, FIXED_GRID)

    k, j, i = np.unravel_index(np.argmax(warped), warped.shape)
    peak_ras = FIXED_GRID.ijk_to_ras @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(peak_ras[:3], (5.0, 0.0, 0.0), atol=1e-9)


def test_oblique_grid_places_a_position_dependent_field_correctly(scene):
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    set_resampling_field(node, affine_field(OBLIQUE_GRID), OBLIQUE_GRID)

    for point in interior_points(OBLIQUE_GRID):
        expected = point + AFFINE @ point + OFFSET
        np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(point), expected, atol=1e-5)


def test_references_name_the_registered_volumes(scene):
    fixed = add_volume(scene, blob(), ijk_to_ras(), "fixed")
    moving = add_volume(scene, blob(), ijk_to_ras(), "moving")
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")

    set_registration_references(node, fixed, moving)

    assert node.GetNodeReference("spatialRegistrationFixed").GetID() == fixed.GetID()
    assert node.GetNodeReference("spatialRegistrationMoving").GetID() == moving.GetID()


@pytest.mark.parametrize("grid", [FIXED_GRID, OBLIQUE_GRID], ids=["axial", "oblique"])
def test_h5_saves_and_reloads_in_slicer_and_simpleitk(scene, tmp_path, grid):
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "result")
    set_resampling_field(node, affine_field(grid), grid)
    path = str(tmp_path / "result.h5")

    save_transform(node, path)
    reloaded = load_transform(scene, path)
    itk_transform = sitk.ReadTransform(path)

    reloaded_from_parent = reloaded.GetTransformFromParent()
    assert reloaded_from_parent.GetInterpolationModeAsString() == "Linear"
    assert "DisplacementField" in itk_transform.GetName() or "DisplacementField" in str(itk_transform)
    for point in interior_points(grid):
        expected_ras = point + AFFINE @ point + OFFSET
        np.testing.assert_allclose(reloaded_from_parent.TransformPoint(point), expected_ras, atol=1e-6)
        np.testing.assert_allclose(itk_transform.TransformPoint(tuple(point * LPS)), expected_ras * LPS, atol=1e-6)


def test_unreadable_transform_file_raises_and_leaves_no_node(scene, tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"not a transform")
    count = scene.GetNumberOfNodes()

    with pytest.raises(OSError, match="Could not read a transform"):
        load_transform(scene, str(path))

    assert scene.GetNumberOfNodes() == count
