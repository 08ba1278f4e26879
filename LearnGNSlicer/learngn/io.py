"""Reading and writing images, transforms and displacement fields, with errors a user can act on.

Readers turn every failure (missing file, unknown format, empty DICOM folder) into
:class:`learngn.InputError` naming the file and the remedy, so front ends never show an ITK traceback.
Writers follow docs/ENGINE_API.md: fields are LPS millimetres in the resampling convention.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

SUPPORTED_IMAGES = ("NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
                    "a DICOM file, or a folder holding a DICOM series")
SUPPORTED_TRANSFORMS = "ITK transform files (.h5, .hdf5, .tfm, .txt, .mat)"

#: Written into NRRD displacement fields so other tools (3D Slicer) know how to apply them.
FIELD_CONVENTION = "LPS mm, x_moving = x_fixed + d(x_fixed)"


def _itk_reason(error: RuntimeError) -> str:
    """The useful last line of an ITK exception ("Unable to determine ImageIO reader ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line.split("ERROR:", 1)[1] for line in reversed(lines) if "ERROR:" in line),
                  lines[-1] if lines else type(error).__name__)
    return re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", reason).strip()  # ITK's "ClassName(0x55...): " prefix


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """ITK prints warnings (e.g. "No Series were found") straight to stderr; we report problems ourselves."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"the {what} {str(p)!r} does not exist; check the path")
    return p


def read_image(path: PathLike, what: str = "image") -> sitk.Image:
    """An image file, or the DICOM series in a folder (the largest one if there are several)."""
    p = _existing(path, what)
    if p.is_dir():
        return read_dicom_series(p, what)
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as error:
        raise InputError(f"cannot read the {what} {str(p)!r} ({_itk_reason(error)}); "
                         f"give {SUPPORTED_IMAGES}") from None


def read_dicom_series(folder: PathLike, what: str = "image") -> sitk.Image:
    """The DICOM series in ``folder``; with several series the one with most slices, with a warning."""
    reader = sitk.ImageSeriesReader()
    with _itk_warnings_off():
        series = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series:
        raise InputError(f"the {what} folder {str(folder)!r} holds no DICOM series; give a folder of DICOM "
                         f"slices (not its parent folder) or an image file: {SUPPORTED_IMAGES}")
    files = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    chosen = max(series, key=lambda uid: len(files[uid]))
    if len(series) > 1:
        warnings.warn(f"the {what} folder {str(folder)!r} holds {len(series)} DICOM series; using the largest "
                      f"({len(files[chosen])} slices, series {chosen}). Put each series in its own folder to "
                      "choose another", UserWarning, stacklevel=2)
    reader.SetFileNames(files[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {str(folder)!r} ({_itk_reason(error)}); check that "
                         "the slices are complete and belong to one volume") from None


def read_transform(path: PathLike, what: str = "initial transform") -> sitk.Transform:
    """An ITK transform file (fixed -> moving physical points), checked to be 3D."""
    p = _existing(path, what)
    try:
        transform = sitk.ReadTransform(str(p))
    except RuntimeError as error:
        raise InputError(f"cannot read the {what} {str(p)!r} ({_itk_reason(error)}); "
                         f"give one of {SUPPORTED_TRANSFORMS}") from None
    if transform.GetDimension() != 3:
        raise InputError(f"the {what} {str(p)!r} is {transform.GetDimension()}D; a 3D transform is needed")
    return transform


def write_image(image: sitk.Image, path: PathLike, compress: bool = True) -> None:
    """Write an image; ``compress`` gzips NRRD and MetaImage files (a ``.nii.gz`` name is always gzipped)."""
    sitk.WriteImage(image, str(path), compress)


def in_pixel_type(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    """``image`` in ``like``'s pixel type: rounded and clipped to its range when that is an integer type
    (a warped CT in int16 is half the size of float32 and writes three times faster), else unchanged."""
    target = sitk.GetArrayViewFromImage(like).dtype
    if not np.issubdtype(target, np.integer):
        return image
    limits = np.iinfo(target)
    array = np.rint(sitk.GetArrayViewFromImage(image))
    np.clip(array, limits.min, limits.max, out=array)
    converted = sitk.GetImageFromArray(array.astype(target))
    converted.CopyInformation(image)
    return converted


def write_transform(transform: sitk.Transform, path: PathLike) -> None:
    sitk.WriteTransform(transform, str(path))


def write_displacement(field: sitk.Image, path: PathLike, compress: bool = True) -> None:
    """A displacement field image (float32); NRRD files carry the convention in their header (Slicer reads it)."""
    path = Path(path)
    if path.name.endswith((".nrrd", ".nhdr")):
        field = sitk.Cast(field, sitk.sitkVectorFloat32)  # a new image: metadata must not leak into the caller's
        field.SetMetaData("displacement field type", "resampling")
        field.SetMetaData("NRRD_content", f"learngn displacement field: {FIELD_CONVENTION}")
        field.SetMetaData("learngn convention", FIELD_CONVENTION)
    elif field.GetPixelID() != sitk.sitkVectorFloat32:
        field = sitk.Cast(field, sitk.sitkVectorFloat32)
    write_image(field, path, compress)


def image_info(image: sitk.Image) -> Dict[str, Any]:
    """Geometry of an image for summaries: enough to tell which scan and grid was used."""
    return {
        "size": list(image.GetSize()),
        "spacing": [round(s, 6) for s in image.GetSpacing()],
        "origin": [round(o, 6) for o in image.GetOrigin()],
        "direction": [round(d, 6) for d in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf turned into None and tuples into lists, so strict JSON parsers accept it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_json(data: Any, path: PathLike) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(json_safe(data), handle, indent=2, allow_nan=False)
        handle.write("\n")


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
