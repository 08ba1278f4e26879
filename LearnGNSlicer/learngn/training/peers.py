"""Peer registration methods behind one small interface, each skipped with a note when not installed.

An adapter takes SimpleITK images (fixed, moving, their label maps) and returns the displacement field
on the fixed grid in the engine's convention (LPS mm, resampling: ``x_moving = x_fixed + d(x_fixed)``),
so every method is scored by the same code.  The peers exchange images through temporary NIfTI files,
which every toolkit reads with the same physical-space conventions.
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..geometry import compose_to_field


@dataclass(frozen=True)
class Peer:
    name: str
    module: str            # the import that must succeed
    package: str           # what to pip install
    description: str
    run: Callable[[sitk.Image, sitk.Image, Optional[sitk.Image], Optional[sitk.Image]], sitk.Image]
    has_affine: bool = True   # False: deformable only, needs images that are already affinely aligned

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def missing_note(self) -> str:
        return f"{self.name} skipped: the Python module '{self.module}' is not installed (pip install {self.package})"


def _float_copy(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32)


def _convexadam(fixed, moving, fixed_labels=None, moving_labels=None) -> sitk.Image:
    """ConvexAdam (MIND features, coupled convex optimisation then Adam), CPU or GPU."""
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt  # type: ignore

    if fixed.GetSize() != moving.GetSize() or fixed.GetSpacing() != moving.GetSpacing():
        moving = sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, float(np.min(sitk.GetArrayViewFromImage(moving))))
    f = sitk.GetArrayFromImage(_float_copy(fixed)).transpose(2, 1, 0)   # (x, y, z) as the package expects
    m = sitk.GetArrayFromImage(_float_copy(moving)).transpose(2, 1, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # the package's default half precision has no CPU kernels for its pooling
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    displacement = convex_adam_pt(img_fixed=f, img_moving=m, device=device, dtype=dtype)  # voxels, (x, y, z, 3)
    displacement = np.asarray(displacement, dtype=np.float64)
    voxels_xyz = displacement.transpose(2, 1, 0, 3)                          # back to (z, y, x, 3)
    direction = np.array(fixed.GetDirection()).reshape(3, 3)
    physical = (voxels_xyz * np.array(fixed.GetSpacing())) @ direction.T
    field = sitk.GetImageFromArray(physical, isVector=True)
    field.CopyInformation(fixed)
    return field


def _ants_transforms(fixed: sitk.Image, moving: sitk.Image, kind: str) -> list:
    """ANTs registration of one ``type_of_transform``: its forward transforms as SimpleITK transforms, in
    ANTs' order ([warp, affine]: applied to points last to first)."""
    import ants  # type: ignore

    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for key, image in (("fixed", fixed), ("moving", moving)):
            paths[key] = str(Path(folder) / f"{key}.nii.gz")
            sitk.WriteImage(_float_copy(image), paths[key])
        result = ants.registration(fixed=ants.image_read(paths["fixed"]), moving=ants.image_read(paths["moving"]),
                                   type_of_transform=kind, outprefix=str(Path(folder) / "ants_"))
        transforms = []
        for name in result["fwdtransforms"]:
            if name.endswith((".nii.gz", ".nii")):
                transforms.append(sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(name), sitk.sitkVectorFloat64)))
            else:
                transforms.append(sitk.ReadTransform(name))
        return transforms


def _ants_syn(fixed, moving, fixed_labels=None, moving_labels=None) -> sitk.Image:
    """ANTs SyN (affine + symmetric normalisation); the forward transforms composed into one field."""
    return compose_to_field(_ants_transforms(fixed, moving, "SyN"), fixed)


def ants_affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """ANTs' affine registration (rigid then affine, antspyx defaults): fixed points to moving points."""
    return _ants_transforms(fixed, moving, "Affine")[0]


def _elastix_bspline(fixed, moving, fixed_labels=None, moving_labels=None) -> sitk.Image:
    """elastix B-spline (default multi-resolution parameter map) through itk-elastix."""
    import itk  # type: ignore

    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for key, image in (("fixed", fixed), ("moving", moving)):
            paths[key] = str(Path(folder) / f"{key}.nii.gz")
            sitk.WriteImage(_float_copy(image), paths[key])
        f = itk.imread(paths["fixed"], itk.F)
        m = itk.imread(paths["moving"], itk.F)
        parameters = itk.ParameterObject.New()
        parameters.AddParameterMap(parameters.GetDefaultParameterMap("affine"))
        parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
        # both write files (deformationField.nii, logs) into their output directory, the cwd by default
        _, result = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False,
                                                    output_directory=folder)
        field = itk.transformix_deformation_field(m, result, output_directory=folder)
        out = str(Path(folder) / "field.nii.gz")
        itk.imwrite(field, out)
        image = sitk.Cast(sitk.ReadImage(out), sitk.sitkVectorFloat64)
        image.CopyInformation(fixed)
        return image


PEERS: Dict[str, Peer] = {
    "convexadam": Peer("ConvexAdam", "convexAdam", "convexAdam", "MIND + convex optimisation + Adam", _convexadam,
                       has_affine=False),
    "ants": Peer("ANTs SyN", "ants", "antspyx", "affine + SyN (antspyx defaults)", _ants_syn),
    "elastix": Peer("elastix B-spline", "itk", "itk-elastix", "affine + B-spline (elastix default maps)",
                    _elastix_bspline),
}
