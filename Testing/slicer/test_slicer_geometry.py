"""Volume nodes to engine images (SimpleITK, LPS) and back: spacing, oblique axes, parent transforms."""
import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer

from LearnGNSlicerLib.geometry import (
    LINEAR, NEAREST, Grid, check_scalar_volume, export_volume, sample_in_world, update_volume_from_image, world_grid,
)
from slicer_test_helpers import (
    add_constant_grid_transform, add_linear_transform, add_volume, assert_unchanged, blob, ijk_to_ras, rotation,
    snapshot, translation, voxel_ras,
)

LPS = np.array([-1.0, -1.0, 1.0])
OBLIQUE = ijk_to_ras(spacing=(0.8, 1.3, 2.5), origin=(12.0, -30.5, 7.25), directions=rotation(2, 30) @ rotation(0, -20))


def physical_lps(image: sitk.Image, ijk) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))


def random_voxels(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


CORNERS = [(0, 0, 0), (27, 0, 0), (0, 23, 0), (0, 0, 19), (27, 23, 19), (5, 7, 11)]


def test_oblique_volume_exports_exactly_in_lps(scene):
    array = random_voxels((20, 24, 28))
    node = add_volume(scene, array, OBLIQUE)
    image = export_volume(node)

    assert image.GetSize() == (28, 24, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 1.3, 2.5))
    for ijk in CORNERS:  # every voxel lands at its RAS position, mirrored to LPS
        np.testing.assert_allclose(physical_lps(image, ijk), voxel_ras(node, ijk) * LPS, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)  # copied, not resampled


def test_linear_parent_transform_is_baked_without_resampling(scene):
    array = random_voxels((20, 24, 28), seed=1)
    node = add_volume(scene, array, OBLIQUE)
    parent_matrix = translation(5.0, -3.0, 40.0)
    parent_matrix[:3, :3] = rotation(1, 25)
    parent = add_linear_transform(scene, parent_matrix)
    node.SetAndObserveTransformNodeID(parent.GetID())

    grid, exact = world_grid(node)
    image = export_volume(node)

    assert exact
    for ijk in CORNERS:
        np.testing.assert_allclose(physical_lps(image, ijk), voxel_ras(node, ijk) * LPS, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_known_shift_in_parent_transform_moves_the_exported_image(scene):
    node = add_volume(scene, blob(), ijk_to_ras())
    shifted = add_linear_transform(scene, translation(10.0, 0.0, 0.0))  # content moves 10 mm to the Right
    node.SetAndObserveTransformNodeID(shifted.GetID())

    image = export_volume(node)

    brightest = np.unravel_index(np.argmax(sitk.GetArrayFromImage(image)), (20, 24, 28))[::-1]  # (i, j, k)
    assert tuple(brightest) == (14, 12, 10)
    centre_lps = physical_lps(image, brightest)
    np.testing.assert_allclose(centre_lps, (-(14.0 + 10.0), -12.0, 10.0))  # R = 14 + 10 -> L = -24


def test_non_linear_parent_transform_is_resampled_onto_an_enlarged_grid(scene):
    node = add_volume(scene, blob(), ijk_to_ras(spacing=(2.0, 2.0, 2.0)))
    warp = add_constant_grid_transform(scene, (-6.0, 0.0, 0.0))  # FromParent -6 R: content moves 6 mm Right
    node.SetAndObserveTransformNodeID(warp.GetID())

    grid, exact = world_grid(node)
    image = export_volume(node)
    array = sitk.GetArrayFromImage(image)

    assert not exact
    assert grid.size == (28, 24, 20)  # follows the content: 3 voxels to the right, nothing cut off
    np.testing.assert_allclose(grid.origin, (6.0, 0.0, 0.0), atol=1e-6)
    np.testing.assert_allclose(grid.directions, np.eye(3))
    peak = np.unravel_index(np.argmax(array), array.shape)[::-1]
    peak_ras = physical_lps(image, peak) * LPS
    np.testing.assert_allclose(peak_ras, (14 * 2.0 + 6.0, 12 * 2.0, 10 * 2.0), atol=1e-6)
    assert array.max() == pytest.approx(100.0, rel=1e-3)


def test_sheared_linear_parent_is_resampled(scene):
    node = add_volume(scene, blob(), ijk_to_ras())
    shear = np.eye(4)
    shear[0, 1] = 0.3
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, shear).GetID())

    grid, exact = world_grid(node)
    image = export_volume(node)

    assert not exact and grid.is_orthogonal()
    peak = np.unravel_index(np.argmax(sitk.GetArrayFromImage(image)), sitk.GetArrayFromImage(image).shape)[::-1]
    np.testing.assert_allclose(physical_lps(image, peak) * LPS, (14 + 0.3 * 12, 12, 10), atol=0.51)


def test_engine_image_back_to_node_keeps_geometry_and_voxels(scene):
    array = random_voxels((20, 24, 28), seed=2)
    original = add_volume(scene, array, OBLIQUE)
    image = export_volume(original)
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")

    update_volume_from_image(copy, image)

    for ijk in CORNERS:
        np.testing.assert_allclose(voxel_ras(copy, ijk), voxel_ras(original, ijk), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), array)
    assert Grid.from_sitk(image).same_as(world_grid(original)[0])


def test_mask_is_resampled_onto_its_volume_grid_with_nearest_neighbour(scene):
    volume = add_volume(scene, random_voxels((20, 24, 28)), ijk_to_ras())
    mask_array = np.zeros((10, 12, 14), np.uint8)
    mask_array[2:5, 3:6, 4:8] = 3
    mask = add_volume(scene, mask_array, ijk_to_ras(spacing=(2.0, 2.0, 2.0)), "mask", label=True)
    grid, _ = world_grid(volume)

    resampled = sample_in_world(mask, grid, NEAREST)

    assert resampled.shape == (20, 24, 28)
    assert set(np.unique(resampled)) == {0, 3}  # no blended label values
    assert resampled[6, 8, 10] == 3 and resampled[0, 0, 0] == 0  # mask voxel (5, 4, 3) covers 2 mm voxels


def test_export_never_modifies_the_node(scene):
    node = add_volume(scene, blob(), OBLIQUE)
    node.SetAndObserveTransformNodeID(add_constant_grid_transform(scene, (1.0, 2.0, 3.0)).GetID())
    before = snapshot(node)

    export_volume(node, interpolation=LINEAR)

    assert_unchanged(before, node)


@pytest.mark.parametrize("problem", ["none", "empty", "vector"])
def test_unsuitable_volumes_are_rejected_with_a_clear_message(scene, problem):
    if problem == "none":
        node, expected = None, "No fixed volume selected"
    elif problem == "empty":
        node, expected = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"), "holds no voxels"
    else:
        node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        image = vtk.vtkImageData()
        image.SetDimensions(4, 4, 4)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
        node.SetAndObserveImageData(image)
        expected = "3 components per voxel; choose a single-component"
    with pytest.raises(ValueError, match=expected):
        check_scalar_volume(node, "fixed volume")
