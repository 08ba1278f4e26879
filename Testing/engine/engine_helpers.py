"""Helpers shared by the engine tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import SimpleITK as sitk


def image_state(image: sitk.Image) -> Dict[str, Any]:
    """Voxels and geometry of an image, to check later that nobody modified it."""
    return {
        "array": sitk.GetArrayFromImage(image).copy(),
        "origin": image.GetOrigin(),
        "spacing": image.GetSpacing(),
        "direction": image.GetDirection(),
        "pixel": image.GetPixelIDValue(),
    }


def assert_same_state(image: sitk.Image, before: Dict[str, Any], name: str) -> None:
    after = image_state(image)
    for key in ("origin", "spacing", "direction", "pixel"):
        assert after[key] == before[key], f"register() changed the {key} of the {name}"
    assert np.array_equal(after["array"], before["array"]), f"register() changed the voxels of the {name}"


def make_phantom(size=(48, 40, 48), spacing=6.0, seed=0, noise_hu=15.0):
    """A CT-like phantom (HU, float32) and its labels (uint8)."""
    from learngn.phantom import add_noise, phantom_ct, phantom_geometry, phantom_labels

    labels = phantom_labels(phantom_geometry(size, spacing), seed=seed)
    image = phantom_ct(labels, seed=seed, noise_hu=0.0)
    return add_noise(image, noise_hu, seed + 7), labels


def with_geometry(array: np.ndarray, origin, spacing, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return image


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about a coordinate axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def oblique_direction() -> np.ndarray:
    """A proper rotation that mixes all three axes (what an oblique MR acquisition carries)."""
    return rotation("z", 25.0) @ rotation("x", -15.0) @ rotation("y", 10.0)


def displacement_error_mm(field: sitk.Image, truth: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Length of (recovered - true) displacement, in mm, at the voxels of ``mask``."""
    difference = sitk.GetArrayFromImage(field) - sitk.GetArrayFromImage(truth)
    return np.linalg.norm(difference, axis=-1)[mask]
