"""Pre-alignment: centre of mass and affine fits, reproducibility, and the identity on identical images."""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from engine_helpers import rotation
from learngn.phantom import add_noise
from learngn.prealign import centre_of_mass, prealign


def normalised(image: sitk.Image) -> sitk.Image:
    return sitk.IntensityWindowing(sitk.Cast(image, sitk.sitkFloat32), -1000.0, 1500.0, 0.0, 1.0)


def field_of(transform, reference: sitk.Image) -> np.ndarray:
    if transform is None:
        return np.zeros(sitk.GetArrayViewFromImage(reference).shape + (3,))
    return sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection()))


@pytest.fixture(scope="module")
def known_affine(small_phantom):
    """The small phantom and a copy resampled through a known fixed->moving affine (5% scale, 6 degrees,
    a translation)."""
    image, labels = small_phantom
    truth = sitk.AffineTransform(3)
    truth.SetMatrix(tuple((1.05 * rotation("z", 6.0)).ravel()))
    truth.SetCenter(tuple(np.mean(np.array(
        [image.TransformIndexToPhysicalPoint((0, 0, 0)),
         image.TransformIndexToPhysicalPoint(tuple(n - 1 for n in image.GetSize()))]), axis=0)))
    truth.SetTranslation((8.0, -5.0, 4.0))
    # moving(truth^-1(y)) = image(y'): sample image through the inverse so moving(truth(x)) = image(x)
    moving = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, -1000.0)
    return image, moving, labels, truth


def test_centre_of_mass_of_a_point():
    image = sitk.Image([10, 12, 14], sitk.sitkFloat32)
    image.SetOrigin((5.0, -3.0, 2.0))
    image.SetSpacing((2.0, 1.0, 0.5))
    image[3, 7, 11] = 4.0
    expected = image.TransformIndexToPhysicalPoint((3, 7, 11))
    assert np.allclose(centre_of_mass(image), expected)


def test_none_returns_the_initial_transform(small_phantom):
    image, _ = small_phantom
    initial = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    assert prealign(normalised(image), normalised(image), "none") is None
    assert prealign(normalised(image), normalised(image), "none", initial=initial) is initial


def test_centre_of_mass_alignment_finds_a_translation(small_phantom):
    image, _ = small_phantom
    moving = sitk.Image(image)
    moving.SetOrigin(tuple(np.array(image.GetOrigin()) + [10.0, -4.0, 7.0]))  # content moved by +shift
    transform = prealign(normalised(image), normalised(moving), "com")
    assert np.allclose(transform.TransformPoint((0.0, 0.0, 0.0)), (10.0, -4.0, 7.0), atol=0.5)


def test_affine_alignment_recovers_a_known_affine(known_affine):
    image, moving, labels, truth = known_affine
    transform = prealign(normalised(image), normalised(moving), "affine")
    body = sitk.GetArrayFromImage(labels) > 0
    error = np.linalg.norm(field_of(transform, image) - field_of(truth, image), axis=-1)[body]
    print(f"affine pre-alignment: error mean {error.mean():.2f} mm, max {error.max():.2f} mm")
    assert error.mean() < 1.5, f"mean error {error.mean():.2f} mm of the affine fit"


def test_affine_alignment_includes_the_initial_transform(known_affine):
    image, moving, labels, truth = known_affine
    initial = sitk.TranslationTransform(3, (3.0, 0.0, 0.0))
    transform = prealign(normalised(image), normalised(moving), "affine", initial=initial)
    body = sitk.GetArrayFromImage(labels) > 0
    error = np.linalg.norm(field_of(transform, image) - field_of(truth, image), axis=-1)[body]
    assert error.mean() < 1.5, f"mean error {error.mean():.2f} mm with an initial transform"


def test_affine_alignment_through_a_dense_initial_transform(known_affine):
    """A displacement-field initial transform (a translation written as a field) is honoured: the fit
    sees the moving image through it and the result composes both."""
    image, moving, labels, truth = known_affine
    shift = np.zeros(sitk.GetArrayViewFromImage(image).shape + (3,))
    shift[..., 0] = 3.0
    field = sitk.GetImageFromArray(shift, isVector=True)
    field.CopyInformation(image)
    initial = sitk.DisplacementFieldTransform(field)
    transform = prealign(normalised(image), normalised(moving), "affine", initial=initial)
    body = sitk.GetArrayFromImage(labels) > 0
    error = np.linalg.norm(field_of(transform, image) - field_of(truth, image), axis=-1)[body]
    print(f"affine pre-alignment through a dense initial transform: error mean {error.mean():.2f} mm")
    assert error.mean() < 1.5, f"mean error {error.mean():.2f} mm with a dense initial transform"


@pytest.mark.parametrize("mode", ["affine", "com"])
def test_identical_images_are_left_alone(small_phantom, mode):
    image, _ = small_phantom
    transform = prealign(normalised(image), normalised(sitk.Image(image)), mode)
    largest = float(np.abs(field_of(transform, image)).max())
    assert largest < 0.5, f"{mode} pre-alignment of an image with itself moves points by {largest:.2f} mm"


def test_affine_alignment_is_reproducible(small_phantom):
    """The same inputs give the same pre-alignment, whenever the call is made (a run can be repeated).
    The calls are more than a second apart: a wall-clock seed of the point subset would differ."""
    image, _ = small_phantom
    fixed, moving = normalised(image), normalised(add_noise(image, 15.0, seed=99))
    fields = []
    for attempt in range(3):
        if attempt:
            time.sleep(1.1)
        fields.append(field_of(prealign(fixed, moving, "affine"), image))
    spread = max(float(np.abs(f - fields[0]).max()) for f in fields[1:])
    assert spread < 1e-6, f"three pre-alignments of the same images differ by up to {spread:.3f} mm"
