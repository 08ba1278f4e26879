"""Generated sample data: a CT-like abdominal phantom and smooth random deformations.

The project ships no patient data; the demo and the tests use these instead.  Everything is seeded so
the same call gives the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: (label, centre (x, y, z) as a fraction of the field of view, semi-axes in mm, HU)
PHANTOM_ORGANS = (
    (1, (0.50, 0.50, 0.50), (150.0, 105.0, 150.0), 40.0),   # body (soft tissue)
    (2, (0.33, 0.45, 0.55), (55.0, 50.0, 60.0), 60.0),      # liver
    (3, (0.70, 0.45, 0.58), (28.0, 22.0, 35.0), 45.0),      # spleen
    (4, (0.36, 0.62, 0.40), (18.0, 16.0, 28.0), 150.0),     # right kidney (enhancing)
    (5, (0.64, 0.62, 0.40), (18.0, 16.0, 28.0), 150.0),     # left kidney
    (6, (0.50, 0.70, 0.50), (14.0, 14.0, 130.0), 500.0),    # spine (bone)
    (7, (0.55, 0.35, 0.52), (30.0, 20.0, 25.0), -600.0),    # bowel gas
)


def phantom_geometry(size: Tuple[int, int, int] = (96, 80, 96), spacing: float = 3.0) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing([spacing] * 3)
    image.SetOrigin([-(n - 1) * spacing / 2.0 for n in size])
    return image


def _physical_grid(reference: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel centre, shape (3, z, y, x) with components (x, y, z)."""
    size = reference.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    points = (direction @ (index * np.array(reference.GetSpacing())).T).T + np.array(reference.GetOrigin())
    return points.reshape(size + (3,)).transpose(3, 2, 1, 0)


def phantom_labels(reference: sitk.Image, seed: int = 0) -> sitk.Image:
    """Label map of the phantom organs, with small seeded variations of position and size."""
    rng = np.random.default_rng(seed)
    points = _physical_grid(reference)
    size = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    corner = np.array(reference.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    labels = np.zeros(points.shape[1:], dtype=np.uint8)
    for label, centre, axes, _ in PHANTOM_ORGANS:
        jitter = 1.0 if label == 1 else rng.uniform(0.9, 1.1, 3)
        c = corner + np.array(centre) * size + (0 if label == 1 else rng.normal(0, 3.0, 3))
        r = np.array(axes) * jitter
        inside = sum(((points[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0
        labels[inside] = label
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(reference)
    return out


def phantom_ct(labels: sitk.Image, seed: int = 0, noise_hu: float = 15.0) -> sitk.Image:
    """CT-like intensities (HU) for a phantom label map: air outside, organ values, tissue texture, noise."""
    rng = np.random.default_rng(seed)
    lab = sitk.GetArrayFromImage(labels)
    hu = np.full(lab.shape, -1000.0, dtype=np.float32)
    for label, _, _, value in PHANTOM_ORGANS:
        hu[lab == label] = value
    texture = ndimage.gaussian_filter(rng.normal(0, 1, lab.shape), 1.5)
    hu += np.where(lab > 0, 60.0 * texture / (texture.std() + 1e-6), 0.0)
    hu = ndimage.gaussian_filter(hu, 0.7)
    out = sitk.GetImageFromArray(hu.astype(np.float32))
    out.CopyInformation(labels)
    return add_noise(out, noise_hu, seed + 1000)


def add_noise(image: sitk.Image, sigma: float, seed: int) -> sitk.Image:
    """The image plus independent Gaussian noise (a new acquisition of the same anatomy)."""
    rng = np.random.default_rng(seed)
    array = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray((array + rng.normal(0, sigma, array.shape)).astype(np.float32))
    out.CopyInformation(image)
    return out


def random_smooth_displacement(reference: sitk.Image, max_mm: float, control_spacing_mm: float = 50.0,
                               seed: int = 0) -> sitk.Image:
    """A smooth random displacement field (LPS mm, resampling convention) with max magnitude ``max_mm``.

    Random vectors on a control grid about ``control_spacing_mm`` apart, interpolated cubically, so the
    motion is spread over the whole volume rather than peaked in one place.
    """
    rng = np.random.default_rng(seed)
    shape = sitk.GetArrayViewFromImage(reference).shape
    extent = np.array(shape) * np.array(reference.GetSpacing())[::-1]
    control_shape = np.maximum(2, np.round(extent / control_spacing_mm).astype(int) + 1)
    zoom = (np.array(shape) - 1) / (control_shape - 1)
    components = [ndimage.zoom(rng.normal(0, 1, control_shape), zoom, order=3, mode="nearest",
                               grid_mode=False)[: shape[0], : shape[1], : shape[2]] for _ in range(3)]
    field = np.stack(components, axis=-1)
    field *= max_mm / np.linalg.norm(field, axis=-1).max()
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def warp_image(image: sitk.Image, displacement: sitk.Image, interpolator: int = sitk.sitkLinear,
               default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` through a displacement field given on the output grid."""
    transform = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    return sitk.Resample(image, displacement, transform, interpolator, default_value, image.GetPixelID())


@dataclass(frozen=True)
class Motion:
    """A global motion on top of the smooth deformation: a rotation about the superior axis and an isotropic
    scaling, both about the centre of the field of view, then a translation (LPS mm)."""

    translation_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: float = 0.0
    scale: float = 1.0

    def matrix(self) -> np.ndarray:
        angle = np.deg2rad(self.rotation_deg)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                             [0.0, 0.0, 1.0]])
        return self.scale * rotation


def with_motion(smooth: sitk.Image, motion: Motion) -> sitk.Image:
    """The displacement of ``x -> A(x + s(x))`` (the smooth field ``s`` first, then the motion ``A``) on the
    grid of ``smooth``, in the resampling convention: ``d(x) = A(x + s(x)) - x``."""
    points = _physical_grid(smooth).transpose(1, 2, 3, 0)  # (z, y, x, 3) LPS
    centre = np.array(smooth.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in smooth.GetSize()]))
    moved = (points + sitk.GetArrayFromImage(smooth) - centre) @ motion.matrix().T + centre
    image = sitk.GetImageFromArray(moved + np.array(motion.translation_mm) - points, isVector=True)
    image.CopyInformation(smooth)
    return image


def sample_pair(size: Tuple[int, int, int] = (96, 80, 96), spacing: float = 3.0, max_mm: float = 12.0,
                seed: int = 0, motion: Optional[Motion] = None):
    """A fixed phantom, a moving phantom deformed by a known field, their labels, and the field.

    The field is smooth with at most ``max_mm`` of displacement, followed by ``motion`` when given (a global
    rotation, scaling and translation, as between two scans of one patient).  It maps fixed points to moving
    points (``moving(x + d(x))`` is the fixed anatomy), which is what a registration of moving to fixed
    should recover.
    """
    fixed_labels = phantom_labels(phantom_geometry(size, spacing), seed=seed)
    fixed = phantom_ct(fixed_labels, seed=seed, noise_hu=0.0)
    truth = random_smooth_displacement(fixed, max_mm, seed=seed + 1)
    if motion is not None:
        truth = with_motion(truth, motion)
    inverse = sitk.InvertDisplacementField(sitk.Image(truth), maximumNumberOfIterations=20,
                                           enforceBoundaryCondition=False)
    moving_labels = warp_image(fixed_labels, inverse, sitk.sitkNearestNeighbor)
    moving = add_noise(warp_image(fixed, inverse, default_value=-1000.0), 15.0, seed + 2)
    return add_noise(fixed, 15.0, seed + 3), moving, fixed_labels, moving_labels, truth
