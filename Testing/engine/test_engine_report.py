"""The report shows the difference fixed - moving before and after registration (issue 14, item 7)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk

from learngn import report


def _drawn_columns(monkeypatch, tmp_path, fixed, moving, warped) -> Dict[str, np.ndarray]:
    """Draw a report and return, per column title, the pixels of its axial panel."""
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(fixed)
    report.write_report(tmp_path / "report.png", fixed, moving, warped, field, "title")
    (figure,) = figures
    return {ax.get_title(): np.asarray(ax.images[0].get_array()) for ax in figure.axes
            if ax.get_title() and ax.images}


def test_report_has_difference_images_before_and_after(monkeypatch, tmp_path, phantom_pair):
    fixed, moving = phantom_pair[0], phantom_pair[1]
    columns = _drawn_columns(monkeypatch, tmp_path, fixed, moving, fixed)
    assert report.DIFFERENCE_BEFORE in columns and report.DIFFERENCE_AFTER in columns
    before, after = columns[report.DIFFERENCE_BEFORE], columns[report.DIFFERENCE_AFTER]
    assert np.abs(before).mean() > 0.01, "the phantom pair differs before registration"
    assert np.abs(after).max() == pytest.approx(0.0), "a perfect match leaves no difference"
    assert list(columns).index(report.DIFFERENCE_BEFORE) == list(columns).index("warped") + 1
