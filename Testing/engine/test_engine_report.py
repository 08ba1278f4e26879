"""The report shows the difference fixed - moving before and after registration (issue 14, item 7)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk

from learngn import report


def _drawn_columns(fixed, moving, warped) -> Dict[str, np.ndarray]:
    """Per column title, the pixels of its axial panel."""
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(fixed)
    return {name: slices[0] for name, slices in report.report_columns(fixed, moving, warped, field).items()}


def test_report_has_difference_images_before_and_after(phantom_pair):
    fixed, moving = phantom_pair[0], phantom_pair[1]
    columns = _drawn_columns(fixed, moving, fixed)
    assert report.DIFFERENCE_BEFORE in columns and report.DIFFERENCE_AFTER in columns
    before, after = columns[report.DIFFERENCE_BEFORE], columns[report.DIFFERENCE_AFTER]
    assert np.abs(before).mean() > 0.01, "the phantom pair differs before registration"
    assert np.abs(after).max() == pytest.approx(0.0), "a perfect match leaves no difference"
    assert list(columns).index(report.DIFFERENCE_BEFORE) == list(columns).index("warped") + 1


def test_report_is_one_png_with_every_panel(tmp_path, phantom_pair):
    """The PNG holds the 7 columns x 3 views side by side, with room for titles and colour bars."""
    fixed, moving = phantom_pair[0], phantom_pair[1]
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(fixed)
    path = tmp_path / "report.png"
    report.write_report(path, fixed, moving, fixed, field, "NCC 0.1 -> 0.9", warnings=["a warning"])
    picture = sitk.ReadImage(str(path))
    width, height = picture.GetSize()[:2]
    assert width > 7 * 200 and height > 3 * 150 and width > 2 * height
