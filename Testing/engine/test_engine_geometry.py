"""Physical space and conventions: working grid, voxel <-> millimetre fields, composition order, and the
sign of the displacement register() returns."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from engine_helpers import make_phantom, oblique_direction, rotation, with_geometry
from learngn.geometry import (compose_to_field, displacement_transform, image_field_to_voxels,
                              physical_bounds, voxel_field_to_image, working_grid, working_spacing)
from learngn.quality import jacobian_determinant, jacobian_statistics


def oblique_reference(size=(13, 11, 9), spacing=(0.8, 1.3, 2.5), origin=(12.0, -40.0, 7.5)) -> sitk.Image:
    """An oblique (rotated), anisotropic grid: where axis-order and direction bugs show."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(oblique_direction().ravel()))
    return image


def voxel_points(reference: sitk.Image) -> np.ndarray:
    """LPS points of every voxel centre, array (z, y, x, 3)."""
    size = reference.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    return (index * np.array(reference.GetSpacing())) @ direction.T + np.array(reference.GetOrigin())


# -- voxel fields and millimetre fields --------------------------------------------------------------

def test_voxel_field_round_trip_on_an_oblique_anisotropic_grid():
    reference = oblique_reference()
    size = reference.GetSize()
    voxels = torch.randn(1, 3, size[2], size[1], size[0], generator=torch.Generator().manual_seed(0))
    field = voxel_field_to_image(voxels, reference)
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetPixelID() == sitk.sitkVectorFloat32
    assert field.GetSize() == size and field.GetDirection() == reference.GetDirection()
    assert field.GetSpacing() == reference.GetSpacing() and field.GetOrigin() == reference.GetOrigin()
    back = image_field_to_voxels(field, torch.device("cpu"))
    assert torch.allclose(back, voxels, atol=1e-5)


def test_voxel_field_means_a_move_in_index_space():
    """A displacement of (dz, dy, dx) voxels at index i is the physical vector P(i + d) - P(i)."""
    reference = oblique_reference()
    size = reference.GetSize()
    voxels = torch.zeros(1, 3, size[2], size[1], size[0])
    dz, dy, dx = 0.5, -2.0, 1.25
    voxels[0, 0], voxels[0, 1], voxels[0, 2] = dz, dy, dx
    field = sitk.GetArrayFromImage(voxel_field_to_image(voxels, reference))
    start = np.array(reference.TransformContinuousIndexToPhysicalPoint((3.0, 4.0, 5.0)))
    end = np.array(reference.TransformContinuousIndexToPhysicalPoint((3.0 + dx, 4.0 + dy, 5.0 + dz)))
    assert np.allclose(field[5, 4, 3], end - start)


# -- composition ---------------------------------------------------------------------------------------

def test_compose_applies_the_last_transform_first():
    """compose_to_field([A, U]) is x -> A(x + u(x)): the field U first, then A (ITK's composite order,
    which register() relies on: deformable field on the pre-aligned grid, then the pre-alignment)."""
    reference = oblique_reference(size=(12, 10, 8), spacing=(2.0, 3.0, 4.0))
    points = voxel_points(reference)
    rng = np.random.default_rng(0)
    u = rng.normal(0.0, 3.0, points.shape)  # arbitrary (non-smooth) field, read at voxel centres only
    field_u = sitk.GetImageFromArray(u, isVector=True)
    field_u.CopyInformation(reference)

    matrix = 1.1 * rotation("z", 30.0) @ rotation("x", 10.0)
    centre = np.array([5.0, -2.0, 3.0])
    translation = np.array([4.0, -7.0, 2.5])
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetCenter(tuple(centre))
    affine.SetTranslation(tuple(translation))

    def apply_affine(p):
        return (p - centre) @ matrix.T + centre + translation

    composed = sitk.GetArrayFromImage(compose_to_field([affine, displacement_transform(field_u)], reference))
    u_first = apply_affine(points + u) - points
    assert np.allclose(composed, u_first, atol=1e-6)
    # and the other order is really different (the check above can fail)
    a_first = apply_affine(points) - points  # + u(A(x)), which is not u(x)
    assert np.abs(composed - a_first).max() > 1.0


def test_compose_skips_missing_transforms():
    reference = oblique_reference(size=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    translation = sitk.TranslationTransform(3, (1.0, -2.0, 3.0))
    field = sitk.GetArrayFromImage(compose_to_field([None, translation], reference))
    assert np.allclose(field, [1.0, -2.0, 3.0])


def test_displacement_transform_keeps_the_field():
    """SimpleITK's DisplacementFieldTransform empties the image it is given; the helper must copy."""
    reference = oblique_reference(size=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    field = sitk.GetImageFromArray(np.ones((8, 8, 8, 3)), isVector=True)
    field.CopyInformation(reference)
    transform = displacement_transform(field)
    assert field.GetSize() == (8, 8, 8) and float(sitk.GetArrayViewFromImage(field).min()) == 1.0
    assert np.allclose(transform.TransformPoint(reference.TransformIndexToPhysicalPoint((3, 3, 3))),
                       np.array(reference.TransformIndexToPhysicalPoint((3, 3, 3))) + 1.0)


# -- working grid --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [0.7, 1.7, 4.0])
def test_working_grid_covers_every_fixed_voxel_centre(spacing):
    fixed = oblique_reference(size=(37, 23, 11), spacing=(0.8, 1.3, 2.5))
    grid = working_grid(fixed, spacing)
    assert grid.GetDirection() == fixed.GetDirection() and grid.GetOrigin() == fixed.GetOrigin()
    assert grid.GetSpacing() == (spacing,) * 3
    size = np.array(grid.GetSize())
    corners = physical_bounds(fixed)
    index = np.array([grid.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in corners])
    assert (index >= -1e-6).all() and (index <= size - 1 + 1e-6).all(), "a fixed voxel centre is outside the grid"
    # and no more than one extra voxel per axis
    assert (index.max(axis=0) > size - 2).all()


def test_working_spacing_respects_the_budget_and_the_scan():
    fixed = oblique_reference(size=(512, 512, 141), spacing=(0.98, 0.98, 2.0))
    spacing = working_spacing(fixed, 4_000_000)
    grid = working_grid(fixed, spacing)
    assert np.prod(grid.GetSize()) <= 4_000_000 * 1.05
    coarse = oblique_reference(size=(40, 40, 40), spacing=(3.0, 3.0, 3.0))
    assert working_spacing(coarse, 4_000_000) == 3.0  # never finer than the scan
    assert working_spacing(coarse, 4_000_000, requested=5.5) == 5.5


# -- Jacobian of a known field -------------------------------------------------------------------------

def test_jacobian_determinant_of_an_affine_field_on_an_oblique_grid():
    """d(p) = (S - I)(p - c) gives x -> S (x - c) + c, whose Jacobian determinant is det(S) everywhere."""
    reference = oblique_reference(size=(10, 9, 8), spacing=(1.5, 2.0, 3.0))
    points = voxel_points(reference)
    s = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.05], [0.1, 0.0, 1.1]])
    d = (points - 3.0) @ (s - np.eye(3)).T
    field = sitk.GetImageFromArray(d, isVector=True)
    field.CopyInformation(reference)
    det = jacobian_determinant(field)
    assert np.allclose(det, np.linalg.det(s), atol=1e-8)
    stats = jacobian_statistics(field)
    assert stats["negative_jacobian_percent"] == 0.0 and stats["log_jacobian_std"] < 1e-6  # float32 rounding
    folded = sitk.GetImageFromArray((points - 3.0) @ (np.diag([-1.0, 1.0, 1.0]) - np.eye(3)).T, isVector=True)
    folded.CopyInformation(reference)
    assert jacobian_statistics(folded)["negative_jacobian_percent"] == 100.0


# -- the sign convention of register()'s output, end to end ------------------------------------------

SHIFT_MM = 6.0


@pytest.fixture(scope="module")
def shift_phantom():
    """A 60x50x60 phantom at 5 mm; the 6 mm shift below is 1.2 voxels."""
    return make_phantom(size=(60, 50, 60), spacing=5.0, seed=1)


def shifted_copy(image: sitk.Image, shift_lps) -> sitk.Image:
    """The same voxels with the origin moved by ``shift_lps``: the content moves by +shift in LPS,
    i.e. moved(p) = image(p - shift)."""
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.array(image.GetOrigin()) + np.asarray(shift_lps, dtype=float)))
    return out


@pytest.mark.parametrize("case", ["axis-aligned", "oblique", "com-prealign", "initial-transform"])
def test_displacement_follows_the_resampling_convention(shift_phantom, case):
    """The moving image is the fixed content moved by +6 mm along LPS x: moving(p) = fixed(p - s) with
    s = (6, 0, 0).  In the resampling convention warped(x) = moving(x + d(x)) = fixed(x + d(x) - s), so
    warped = fixed needs d = +s: the expected mean displacement in the body is (+6, 0, 0) mm, positive x.
    (The modelling convention, moving -> fixed, would give -6.)

    'oblique' puts both images on a rotated grid, so voxel axes and LPS axes differ; 'com-prealign' lets
    the centre-of-mass pre-alignment find the shift and checks that it is included in the output;
    'initial-transform' gives the shift as an initial fixed->moving transform and checks the same."""
    image, labels = shift_phantom
    array, label_array = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    direction = oblique_direction() if case == "oblique" else np.eye(3)
    fixed = with_geometry(array, image.GetOrigin(), image.GetSpacing(), direction)
    shift = np.array([SHIFT_MM, 0.0, 0.0])
    moving = shifted_copy(fixed, shift)
    options = {"prealign": "none"}
    if case == "com-prealign":
        options = {"prealign": "com"}
    elif case == "initial-transform":
        options["initial_transform"] = sitk.TranslationTransform(3, tuple(shift))
    result = learngn.register(fixed, moving, **options)

    d = sitk.GetArrayFromImage(result.displacement)
    body = label_array > 0
    mean = d[body].mean(axis=0)
    print(f"{case}: mean displacement in the body {np.round(mean, 3)} mm (expected {shift})")
    assert mean[0] > 0, f"mean displacement {mean} has the wrong sign: the field is not fixed -> moving"
    assert np.allclose(mean, shift, atol=1.0), f"mean displacement in the body {mean} mm, expected {shift}"
    # the warped moving image lies on the fixed one
    warped = sitk.GetArrayFromImage(result.warped)
    before = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, -1000.0))
    error_after = np.abs(warped - array)[body].mean()
    error_before = np.abs(before - array)[body].mean()
    assert error_after < 0.6 * error_before, f"mean |warped - fixed| {error_after:.1f} HU vs {error_before:.1f} before"
