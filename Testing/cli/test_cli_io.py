"""learngn.io in process: DICOM folders with several series, strict JSON."""
from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from dicom_helpers import write_dicom_series


def test_folder_with_several_series_reads_the_largest_and_says_so(images, tmp_path):
    from learngn.io import read_image

    fixed = sitk.ReadImage(str(images["fixed"]))
    write_dicom_series(fixed, tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.7.1", description="full")
    write_dicom_series(fixed[:, :, :10], tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.7.2", description="part")
    with pytest.warns(UserWarning, match="holds 2 DICOM series; using the largest"):
        image = read_image(tmp_path, "fixed image")
    assert image.GetSize() == fixed.GetSize()


def test_summaries_are_strict_json(tmp_path):
    from learngn.io import read_json, write_json

    write_json({"dice": float("nan"), "values": (1.0, float("inf"))}, tmp_path / "s.json")
    assert read_json(tmp_path / "s.json") == {"dice": None, "values": [1.0, None]}
    json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(c))
