"""The torch resampling (what a GPU registration uses) against SimpleITK's (what a CPU one uses): same
points, same edge rules, same composition order, on oblique anisotropic grids where axis-order bugs show.
These tests force the torch path on the CPU, so it is checked on every machine."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import oblique_direction, rotation, with_geometry
from learngn.geometry import compose_to_field, displacement_transform, voxel_field_to_image, working_grid
from learngn.output import DenseField, compose_on_device, warp_moving
from learngn.quality import field_jacobian_determinant, jacobian_determinant
from learngn.sampling import field_image, field_tensor, linear_matrix, resample_on_device, scalar_image

CPU = torch.device("cpu")


def smooth_volume(shape, seed: int) -> np.ndarray:
    """Random but smooth values (a few hundred units over a few voxels), float32."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(0.0, 1.0, shape).astype(np.float32))
    return 300.0 * sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, 1.5))


def moving_image(seed: int = 0) -> sitk.Image:
    return with_geometry(smooth_volume((14, 18, 16), seed), origin=(-20.0, 5.0, 30.0), spacing=(2.5, 1.7, 3.1),
                         direction=rotation("y", 20.0) @ rotation("z", -35.0))


def fixed_grid() -> sitk.Image:
    """Larger than the moving image's field of view, so some points fall outside it."""
    return with_geometry(np.zeros((15, 17, 19), np.float32), origin=(-25.0, 0.0, 20.0), spacing=(2.2, 2.9, 3.3),
                         direction=oblique_direction())


def an_affine() -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple((1.05 * rotation("x", 12.0) @ rotation("z", 8.0)).ravel()))
    affine.SetCenter((3.0, 10.0, 40.0))
    affine.SetTranslation((2.0, -3.5, 1.5))
    return affine


def a_dense_transform(reference: sitk.Image, seed: int = 1) -> sitk.DisplacementFieldTransform:
    field = np.stack([smooth_volume(sitk.GetArrayViewFromImage(reference).shape, seed + axis) / 100.0
                      for axis in range(3)], axis=-1)
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.CopyInformation(reference)
    return displacement_transform(image)


def sitk_resample(image, reference, transform, interpolator=sitk.sitkLinear, default=-1000.0) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, transform or sitk.Transform(), interpolator,
                                                default, sitk.sitkFloat32))


def test_linear_matrix_reproduces_the_transform():
    affine = an_affine()
    composite = sitk.CompositeTransform([sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0)),
                                         affine])
    matrix = linear_matrix(composite)
    for point in [(0.0, 0.0, 0.0), (10.0, -20.0, 35.0), (-7.5, 3.0, 100.0)]:
        assert np.allclose(matrix[:3, :3] @ point + matrix[:3, 3], composite.TransformPoint(point), atol=1e-9)
    assert np.array_equal(linear_matrix(None), np.eye(4))
    assert linear_matrix(sitk.CompositeTransform([affine, a_dense_transform(fixed_grid())])) is None


@pytest.mark.parametrize("transform_kind", ["identity", "affine", "dense"])
@pytest.mark.parametrize("nearest", [False, True])
def test_resample_on_device_agrees_with_simpleitk(transform_kind, nearest):
    moving, reference = moving_image(), fixed_grid()
    transform = {"identity": None, "affine": an_affine(),
                 "dense": sitk.CompositeTransform([an_affine(), a_dense_transform(reference)])}[transform_kind]
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    expected = sitk_resample(moving, reference, transform, interpolator)
    ours = resample_on_device(moving, reference, transform, CPU, nearest=nearest, default_value=-1000.0,
                              with_torch=True)
    outside = expected == -1000.0
    assert 0.05 < outside.mean() < 0.95, "the test must cover points inside and outside the moving image"
    assert np.allclose(ours[0, 0].numpy(), expected, atol=1e-3)


def test_compose_on_device_applies_the_field_then_the_prealignment():
    """Same as compose_to_field([A, U]) with U a field on a coarser grid (so it is interpolated)."""
    fixed = fixed_grid()
    grid = working_grid(fixed, 4.5)
    rng = np.random.default_rng(3)
    working = torch.from_numpy(np.stack([smooth_volume(sitk.GetArrayViewFromImage(grid).shape, 7 + axis) / 150.0
                                         for axis in range(3)]) + rng.normal(0, 0.01, 1))[None].float()
    for prealignment in (an_affine(), sitk.CompositeTransform([an_affine(), a_dense_transform(fixed)]), None):
        expected = sitk.GetArrayFromImage(compose_to_field(
            [prealignment, displacement_transform(voxel_field_to_image(working, grid))], fixed))
        ours = compose_on_device(prealignment, voxel_field_to_image(working, grid), fixed, torch.device("cpu"),
                                 with_torch=True).tensor.numpy()
        assert np.abs(expected).max() > 1.0
        assert np.allclose(ours, expected, atol=1e-3), type(prealignment).__name__


def test_warp_moving_agrees_with_simpleitk_through_a_field():
    moving, fixed = moving_image(seed=5), fixed_grid()
    field = field_tensor(compose_to_field([an_affine(), a_dense_transform(fixed)], fixed), CPU)
    expected = sitk_resample(moving, fixed, displacement_transform(field_image(field, fixed)))
    ours = warp_moving(moving, DenseField(field, fixed), default_value=-1000.0, with_torch=True)
    assert np.allclose(sitk.GetArrayFromImage(scalar_image(ours, fixed)), expected, atol=1e-3)


def test_field_jacobian_determinant_of_an_affine_field_on_an_oblique_grid():
    """x -> Mx + t has det J = det M everywhere, whatever the grid's direction and spacing."""
    fixed = fixed_grid()
    affine = an_affine()
    field = field_tensor(compose_to_field([affine], fixed), CPU)
    expected = float(np.linalg.det(np.array(affine.GetMatrix()).reshape(3, 3)))
    determinant = field_jacobian_determinant(field, fixed)
    assert torch.allclose(determinant, torch.full_like(determinant, expected), atol=1e-4)
    assert np.array_equal(jacobian_determinant(field_image(field, fixed)), determinant.numpy())
