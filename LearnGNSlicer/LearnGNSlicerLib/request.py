"""What the user asked to register, checked before anything is written or started.

Every check raises ``ValueError`` with a message that names the problem and what to do, so the GUI
can show it as is and scripts fail early instead of inside the worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from .geometry import check_scalar_volume
from .presets import preset_info
from .settings import RegistrationSettings


@dataclass
class RegistrationRequest:
    fixed: object
    moving: object
    settings: RegistrationSettings = field(default_factory=RegistrationSettings)
    fixed_mask: Optional[object] = None
    moving_mask: Optional[object] = None
    fixed_segmentation: Optional[object] = None
    moving_segmentation: Optional[object] = None
    output_transform: Optional[object] = None
    output_volume: Optional[object] = None

    def inputs(self) -> Iterator[Tuple[str, object]]:
        """(role, node) of every input that is set."""
        for role, node in (
            ("fixed volume", self.fixed),
            ("moving volume", self.moving),
            ("fixed mask", self.fixed_mask),
            ("moving mask", self.moving_mask),
            ("fixed segmentation", self.fixed_segmentation),
            ("moving segmentation", self.moving_segmentation),
        ):
            if node is not None:
                yield role, node

    @property
    def scene(self):
        return self.fixed.GetScene()

    def validate(self) -> None:
        for role, node in (("fixed volume", self.fixed), ("moving volume", self.moving)):
            check_scalar_volume(node, role)
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ValueError(f"The {role} '{node.GetName()}' is a label map; choose an intensity volume (a label "
                                 "map can serve as a mask, or as a segmentation once imported into one).")
        if self.fixed is self.moving or self.fixed.GetID() == self.moving.GetID():
            raise ValueError(
                f"The fixed and the moving volume are the same volume ('{self.fixed.GetName()}'); "
                "choose two different volumes."
            )
        for role, node in (("fixed mask", self.fixed_mask), ("moving mask", self.moving_mask)):
            if node is not None:
                check_scalar_volume(node, role)
        for role, node in (("fixed segmentation", self.fixed_segmentation), ("moving segmentation", self.moving_segmentation)):
            if node is not None and not node.IsA("vtkMRMLSegmentationNode"):
                raise ValueError(f"The {role} '{node.GetName()}' is a {node.GetClassName()}; choose a segmentation node.")
        if preset_info(self.settings.preset).needs_segmentations and (
                self.fixed_segmentation is None or self.moving_segmentation is None):
            raise ValueError(f"The preset '{self.settings.preset}' registers segmentations of both volumes: select the "
                             "fixed and the moving segmentation, or choose another preset (e.g. 'generic').")
        scene = self.scene
        if scene is None:
            raise ValueError(f"The fixed volume '{self.fixed.GetName()}' is not in a scene; add it to the scene first.")
        for role, node in self.inputs():
            if node.GetScene() is not scene:
                raise ValueError(f"The {role} '{node.GetName()}' is in another scene than the fixed volume.")
        self._validate_outputs()

    def _validate_outputs(self) -> None:
        inputs = list(self.inputs())
        if self.output_volume is not None:
            volume = self.output_volume
            if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ValueError(
                    f"The output volume '{volume.GetName()}' is a {volume.GetClassName()}; "
                    "choose a scalar volume or let the module create a new one."
                )
            for role, node in inputs:
                if node is volume or node.GetID() == volume.GetID():
                    raise ValueError(
                        f"The output volume is the {role} '{node.GetName()}'; inputs are never overwritten: "
                        "choose another output volume or create a new one."
                    )
        if self.output_transform is not None:
            transform = self.output_transform
            if not transform.IsA("vtkMRMLTransformNode"):
                raise ValueError(f"The output transform '{transform.GetName()}' is a {transform.GetClassName()}; choose a transform node.")
            for role, node in inputs:
                if transform.GetID() in _ancestor_transform_ids(node):
                    raise ValueError(
                        f"The output transform '{transform.GetName()}' transforms the {role} '{node.GetName()}'; "
                        "overwriting it would move that input. Choose another output transform or create a new one."
                    )


def _ancestor_transform_ids(node) -> List[str]:
    """IDs of the transforms above ``node`` (its parent, the parent's parent, ...)."""
    ids = []
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    while parent is not None and parent.GetID() not in ids:
        ids.append(parent.GetID())
        parent = parent.GetParentTransformNode()
    return ids
