"""The PNG report of a registration: one picture to judge a result without opening a viewer.

Rows are the axial, coronal and sagittal mid slices of the fixed grid (reoriented to LPS, drawn with
their physical aspect ratio); columns are fixed, moving before registration (resampled onto the fixed
grid), warped, the difference fixed - moving before and after registration, a fixed/warped checkerboard and
the Jacobian determinant (folding shows in green).
Drawn with matplotlib's Agg canvas directly, so no GUI backend and no global pyplot state is touched.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import List, Sequence, Tuple, Union

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


def write_report(path: Union[str, Path], fixed: sitk.Image, moving_on_fixed: sitk.Image, warped: sitk.Image,
                 displacement: sitk.Image, title: str = "", warnings: Sequence[str] = ()) -> None:
    """Save the report PNG; all images must be on the fixed grid.  ``warnings`` (the result's) go under the
    title, which is then drawn in WARNING_COLOUR."""
    import matplotlib
    from matplotlib.figure import Figure

    oriented = sitk.DICOMOrient(fixed, "LPS")
    spacing = oriented.GetSpacing()
    fixed_window, moving_window = _window(fixed), _window(moving_on_fixed)
    jacobian = sitk.GetImageFromArray(jacobian_determinant(displacement).astype(np.float32))
    jacobian.CopyInformation(fixed)
    columns = {
        "fixed": _slices(_scaled(fixed, fixed_window)),
        "moving (before)": _slices(_scaled(moving_on_fixed, moving_window)),
        "warped": _slices(_scaled(warped, moving_window)),
        DIFFERENCE_BEFORE: None,
        DIFFERENCE_AFTER: None,
        "checkerboard fixed/warped": None,
        "Jacobian determinant": _slices(sitk.GetArrayFromImage(sitk.DICOMOrient(jacobian, "LPS"))),
    }
    aspects = _aspects(spacing)
    pixel_mm = [(spacing[1], spacing[0]), (spacing[2], spacing[0]), (spacing[2], spacing[1])]
    columns["checkerboard fixed/warped"] = [
        _checkerboard(f, w, mm) for f, w, mm in zip(columns["fixed"], columns["warped"], pixel_mm)]
    columns[DIFFERENCE_BEFORE] = differences(columns["fixed"], _slices(_scaled(moving_on_fixed, fixed_window)))
    columns[DIFFERENCE_AFTER] = differences(columns["fixed"], _slices(_scaled(warped, fixed_window)))

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(under=FOLDING_COLOUR)
    figure = Figure(figsize=(3.2 * len(columns), 3.0 * 3 + 0.6), layout="constrained")
    axes = figure.subplots(3, len(columns), squeeze=False)
    row_names = ("axial", "coronal", "sagittal")
    for col, (name, slices) in enumerate(columns.items()):
        for row, (slice_, aspect) in enumerate(zip(slices, aspects)):
            ax = axes[row][col]
            origin = "upper" if row == 0 else "lower"  # superior up in coronal and sagittal views
            if name == "Jacobian determinant":
                shown = ax.imshow(slice_, cmap=cmap, vmin=1e-6, vmax=2.0, aspect=aspect, origin=origin,
                                  interpolation="nearest")
                if row == 0:
                    figure.colorbar(shown, ax=[axes[r][col] for r in range(3)], shrink=0.6, extend="both",
                                    label=f"det J ({FOLDING_COLOUR}: folding)")
            elif name in (DIFFERENCE_BEFORE, DIFFERENCE_AFTER):
                shown = ax.imshow(slice_, cmap="PuOr_r", vmin=-DIFFERENCE_RANGE, vmax=DIFFERENCE_RANGE,
                                  aspect=aspect, origin=origin, interpolation="nearest")
                if row == 0 and name == DIFFERENCE_AFTER:
                    figure.colorbar(shown, ax=[axes[r][c] for r in range(3) for c in (col - 1, col)], shrink=0.6,
                                    extend="both", label="fixed - moving (in the fixed window)")
            else:
                ax.imshow(slice_, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, origin=origin,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.set_ylabel(row_names[row], fontsize=10)
    if title or warnings:
        figure.suptitle(report_title(title, warnings), fontsize=11, color=WARNING_COLOUR if warnings else "black")
    figure.savefig(str(path), dpi=90)
