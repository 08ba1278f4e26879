"""Segmentations that guide the registration, turned into label maps on an image's grid.

The engine compares the fixed and moving label maps label by label, so label values must mean
the same structure on both sides: when both segmentations are given, segments are matched by
name and numbered in the same order (segments present on one side only are left out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import SimpleITK as sitk
import vtk

import slicer

from .geometry import NEAREST, Grid, export_volume
from .scene import temporary_nodes


@dataclass
class SegmentSelection:
    """Segment IDs to export from each segmentation (label value = position + 1)."""

    fixed_ids: List[str]
    moving_ids: List[str]
    names: List[str]
    warnings: List[str] = field(default_factory=list)


def _segments(segmentation_node) -> List[Tuple[str, str]]:
    """(segment ID, name) pairs in the segmentation's order."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
    return [(segment_id, segmentation.GetSegment(segment_id).GetName()) for segment_id in ids]


def _key(name: str) -> str:
    return name.strip().casefold()


def select_segments(fixed_node, moving_node) -> SegmentSelection:
    """Segments to export: all of a lone segmentation, or those named alike in both."""
    fixed = _segments(fixed_node) if fixed_node is not None else []
    moving = _segments(moving_node) if moving_node is not None else []
    for node, segments in ((fixed_node, fixed), (moving_node, moving)):
        if node is not None and not segments:
            raise ValueError(f"The segmentation '{node.GetName()}' has no segments; add segments or clear the selection.")
    if fixed_node is None or moving_node is None:
        return SegmentSelection([s for s, _ in fixed], [s for s, _ in moving], [n for _, n in fixed or moving])

    moving_by_name = {}
    for segment_id, name in moving:
        moving_by_name.setdefault(_key(name), segment_id)
    fixed_ids, moving_ids, names, unmatched = [], [], [], []
    for segment_id, name in fixed:
        if _key(name) in moving_by_name:
            fixed_ids.append(segment_id)
            moving_ids.append(moving_by_name.pop(_key(name)))  # pop: a name pairs once
            names.append(name)
        else:
            unmatched.append(name)
    matched = {_key(n) for n in names}
    unmatched += [name for _, name in moving if _key(name) not in matched]
    if not names:
        raise ValueError(
            f"The fixed segmentation '{fixed_node.GetName()}' and the moving segmentation "
            f"'{moving_node.GetName()}' share no segment names. Corresponding structures are matched by "
            "name: rename the segments (e.g. 'liver' in both) or select only one segmentation."
        )
    warnings = []
    if unmatched:
        warnings.append("Segments without a counterpart of the same name are not used: " + ", ".join(sorted(set(unmatched))))
    return SegmentSelection(fixed_ids, moving_ids, names, warnings)


def export_segments(segmentation_node, segment_ids: List[str], reference_volume, grid: Optional[Grid] = None) -> sitk.Image:
    """A label map (1..N in ``segment_ids`` order) of the segments on the reference volume's world grid.

    Segments are first rasterised on the reference volume's own grid (Slicer accounts for both
    nodes' parent transforms), then placed in world coordinates like the reference volume itself.
    The temporary label map node is removed again.
    """
    scene = reference_volume.GetScene()
    if scene is None:
        raise ValueError(f"The volume '{reference_volume.GetName()}' is not in a scene.")
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LearnGNSlicer_temporary_labelmap__")
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_volume):
            raise RuntimeError(
                f"Could not turn the segmentation '{segmentation_node.GetName()}' into a label map on "
                f"'{reference_volume.GetName()}'; check that it has a binary labelmap or closed surface representation."
            )
        return export_volume(labelmap, grid, NEAREST)
