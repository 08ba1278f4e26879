"""The PNG report of a registration: one picture to judge a result without opening a viewer.

Rows are the axial, coronal and sagittal mid slices of the fixed grid (reoriented to LPS, drawn with
their physical aspect ratio); columns are fixed, moving before registration (resampled onto the fixed
grid), warped, the difference fixed - moving before and after registration, a fixed/warped checkerboard and
the Jacobian determinant (folding shows in green).
The panels are coloured with matplotlib's colour maps and drawn as one image on its Agg canvas, so no GUI
backend and no global pyplot state is touched.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .quality import jacobian_determinant

#: Colour of voxels with a non-positive Jacobian determinant (folding) in the Jacobian panel.
FOLDING_COLOUR = "lime"
CHECKER_BLOCKS = 8
#: Columns of the difference images, fixed minus moving before and after registration (grey levels in the fixed
#: image's window, so 0 is a perfect match of a same-modality pair), shown within +-DIFFERENCE_RANGE.
DIFFERENCE_BEFORE = "difference before"
DIFFERENCE_AFTER = "difference after"
DIFFERENCE_RANGE = 0.5
JACOBIAN = "Jacobian determinant"
#: Colour of the title when the registration gave warnings (plausibility checks, fallbacks).
WARNING_COLOUR = "firebrick"


def _window(image: sitk.Image) -> Tuple[float, float]:
    values = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(values, [0.5, 99.8])  # keeps bone and air in range, soft tissue mid-grey
    return float(low), float(high if high > low else low + 1.0)


def _scaled(image: sitk.Image, window: Tuple[float, float]) -> np.ndarray:
    """Voxels (z, y, x) in LPS orientation, mapped to [0, 1] by ``window``."""
    array = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    return np.clip((array - window[0]) / (window[1] - window[0]), 0.0, 1.0)


def _slices(volume: np.ndarray) -> List[np.ndarray]:
    """Axial (y, x), coronal (z, x) and sagittal (z, y) mid slices."""
    z, y, x = (n // 2 for n in volume.shape)
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def _aspects(spacing_xyz: Tuple[float, float, float]) -> List[float]:
    """Height/width of one pixel of each slice, so anatomy keeps its physical proportions."""
    sx, sy, sz = spacing_xyz
    return [sy / sx, sz / sx, sz / sy]


def _checkerboard(a: np.ndarray, b: np.ndarray, pixel_mm: Tuple[float, float]) -> np.ndarray:
    """``a`` and ``b`` in alternating square blocks of about 1/8 of the slice's longer side."""
    block_mm = max(a.shape[0] * pixel_mm[0], a.shape[1] * pixel_mm[1]) / CHECKER_BLOCKS
    rows = (np.arange(a.shape[0]) * pixel_mm[0] // block_mm).astype(int)
    cols = (np.arange(a.shape[1]) * pixel_mm[1] // block_mm).astype(int)
    use_a = (rows[:, None] + cols[None, :]) % 2 == 0
    return np.where(use_a, a, b)


def report_title(title: str, warnings: Sequence[str] = (), width: int = 150) -> str:
    """The title, then each warning of the registration wrapped to ``width`` characters."""
    lines = [title] if title else []
    for warning in warnings:
        lines += textwrap.wrap(f"WARNING: {warning}", width)
    return "\n".join(lines)


def differences(fixed: List[np.ndarray], moving: List[np.ndarray]) -> List[np.ndarray]:
    """Slice by slice, fixed minus moving (both in [0, 1] grey levels of the same window)."""
    return [f - m for f, m in zip(fixed, moving)]


def report_columns(fixed: sitk.Image, moving_on_fixed: sitk.Image, warped: sitk.Image,
                   displacement: sitk.Image) -> Dict[str, List[np.ndarray]]:
    """Column title -> the axial, coronal and sagittal mid slices it shows (grey levels in [0, 1], differences
    in [-1, 1], Jacobian determinants); all images on the fixed grid."""
    spacing = sitk.DICOMOrient(fixed, "LPS").GetSpacing()
    fixed_window, moving_window = _window(fixed), _window(moving_on_fixed)
    jacobian = sitk.GetImageFromArray(jacobian_determinant(displacement).astype(np.float32))
    jacobian.CopyInformation(fixed)
    fixed_slices = _slices(_scaled(fixed, fixed_window))
    warped_slices = _slices(_scaled(warped, moving_window))
    pixel_mm = [(spacing[1], spacing[0]), (spacing[2], spacing[0]), (spacing[2], spacing[1])]
    return {
        "fixed": fixed_slices,
        "moving (before)": _slices(_scaled(moving_on_fixed, moving_window)),
        "warped": warped_slices,
        DIFFERENCE_BEFORE: differences(fixed_slices, _slices(_scaled(moving_on_fixed, fixed_window))),
        DIFFERENCE_AFTER: differences(fixed_slices, _slices(_scaled(warped, fixed_window))),
        "checkerboard fixed/warped": [_checkerboard(f, w, mm) for f, w, mm in zip(fixed_slices, warped_slices, pixel_mm)],
        JACOBIAN: _slices(sitk.GetArrayFromImage(sitk.DICOMOrient(jacobian, "LPS"))),
    }


def _square_pixels(slice_: np.ndarray, aspect: float) -> np.ndarray:
    """``slice_`` resampled (nearest neighbour) so a pixel is as tall as it is wide; ``aspect`` is the
    height/width of one of its pixels."""
    height = max(1, int(round(slice_.shape[0] * aspect)))
    rows = np.minimum((np.arange(height) / aspect).astype(int), slice_.shape[0] - 1)
    return slice_[rows]


def _mosaic(panels: List[List[np.ndarray]], gap: int) -> Tuple[np.ndarray, List[float], List[float]]:
    """RGB panels ``panels[row][col]`` on a white canvas; returns it and the centres of the columns and rows."""
    heights = [max(p.shape[0] for p in row) for row in panels]
    widths = [max(row[c].shape[1] for row in panels) for c in range(len(panels[0]))]
    canvas = np.ones((sum(heights) + gap * (len(heights) - 1), sum(widths) + gap * (len(widths) - 1), 3))
    top = 0
    for row, height in zip(panels, heights):
        left = 0
        for panel, width in zip(row, widths):
            canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
            left += width + gap
        top += height + gap
    col_centres = [sum(widths[:c]) + gap * c + widths[c] / 2 for c in range(len(widths))]
    row_centres = [sum(heights[:r]) + gap * r + heights[r] / 2 for r in range(len(heights))]
    return canvas, col_centres, row_centres


def write_report(path: Union[str, Path], fixed: sitk.Image, moving_on_fixed: sitk.Image, warped: sitk.Image,
                 displacement: sitk.Image, title: str = "", warnings: Sequence[str] = ()) -> None:
    """Save the report PNG; all images must be on the fixed grid.  ``warnings`` (the result's) go under the
    title, which is then drawn in WARNING_COLOUR.

    The panels are coloured here and drawn as one image: a figure of 21 axes with a constrained layout took
    most of the report's time (about 2 of 2.5 s for the demo), one image and two colour bars take a fraction.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    columns = report_columns(fixed, moving_on_fixed, warped, displacement)
    aspects = _aspects(sitk.DICOMOrient(fixed, "LPS").GetSpacing())
    jacobian_map = matplotlib.colormaps["RdBu_r"].with_extremes(under=FOLDING_COLOUR)
    maps = {JACOBIAN: (jacobian_map, Normalize(1e-6, 2.0)),
            DIFFERENCE_BEFORE: (matplotlib.colormaps["PuOr_r"], Normalize(-DIFFERENCE_RANGE, DIFFERENCE_RANGE))}
    maps[DIFFERENCE_AFTER] = maps[DIFFERENCE_BEFORE]
    grey = (matplotlib.colormaps["gray"], Normalize(0.0, 1.0))
    panels = []
    for row, aspect in enumerate(aspects):
        cells = []
        for name, slices in columns.items():
            colour_map, norm = maps.get(name, grey)
            shown = slices[row] if row == 0 else slices[row][::-1]  # superior up in coronal and sagittal views
            cells.append(colour_map(norm(_square_pixels(shown, aspect)))[..., :3])
        panels.append(cells)
    gap = max(2, panels[0][0].shape[1] // 40)
    canvas, col_centres, row_centres = _mosaic(panels, gap)

    scale = max(1.0, 260.0 / max(p.shape[1] for p in panels[0]))  # about 260 screen pixels per panel
    dpi, left, right, top, bottom = 90, 30, 210, 70, 10
    width, height = canvas.shape[1] * scale + left + right, canvas.shape[0] * scale + top + bottom
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = figure.add_axes((left / width, bottom / height, canvas.shape[1] * scale / width,
                          canvas.shape[0] * scale / height))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for name, x in zip(columns, col_centres):
        ax.text(x, -gap, name, ha="center", va="bottom", fontsize=10)
    for name, y in zip(("axial", "coronal", "sagittal"), row_centres):
        ax.text(-gap, y, name, ha="right", va="center", rotation=90, fontsize=10)
    bars = ((JACOBIAN, f"det J ({FOLDING_COLOUR}: folding)", "both"),
            (DIFFERENCE_AFTER, "fixed - moving (in the fixed window)", "both"))
    for index, (name, label, extend) in enumerate(bars):
        bar_axes = figure.add_axes(((width - right + 25 + 95 * index) / width, 0.2, 14 / width, 0.6))
        figure.colorbar(ScalarMappable(maps[name][1], maps[name][0]), cax=bar_axes, extend=extend, label=label)
    if title or warnings:
        figure.suptitle(report_title(title, warnings), fontsize=11, color=WARNING_COLOUR if warnings else "black",
                        y=1.0 - 8 / height, va="top")
    figure.savefig(str(path), dpi=dpi)
