"""Writing a small DICOM series with SimpleITK, so the DICOM-folder reader is tested without data files."""
from __future__ import annotations

import time
from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
                       description: str = "learngn test") -> None:
    """One CT slice per file with the tags a reader needs to rebuild the volume (position, orientation)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    common = {
        "0008|0021": time.strftime("%Y%m%d"), "0008|0031": time.strftime("%H%M%S"), "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY", "0008|103e": description,
        "0020|000d": series_uid + ".0", "0020|000e": series_uid,
        "0020|0037": "\\".join(map(str, direction[0:7:3] + direction[1:8:3])),
        "0018|0050": str(image.GetSpacing()[2]),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in common.items():
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{description.replace(' ', '_')}_{k:03d}.dcm"))
        writer.Execute(slice_)
