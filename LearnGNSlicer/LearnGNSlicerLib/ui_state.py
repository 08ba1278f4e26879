"""The widget's processing states and how the Apply button looks in each.

Idle -> Running (Apply became Cancel) -> Cancelling (button disabled until the worker is gone)
-> Idle.  Kept out of the widget so the rules are tested without Qt.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional
from typing import Sequence

from .i18n import tr as _


class ProcessingState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"


@dataclass(frozen=True)
class ButtonLook:
    text: str
    tooltip: str
    enabled: bool


def apply_button(state: ProcessingState, can_apply: bool, missing: str = "") -> ButtonLook:
    """The Apply/Cancel button for ``state``; ``missing`` says what the user must still select."""
    if state == ProcessingState.RUNNING:
        return ButtonLook(_("Cancel"), _("Stop the registration; nothing is added to the scene."), True)
    if state == ProcessingState.CANCELLING:
        return ButtonLook(_("Cancelling..."), _("Waiting for the registration to stop."), False)
    if can_apply:
        return ButtonLook(_("Apply"), _("Register the moving volume to the fixed volume."), True)
    return ButtonLook(_("Apply"), missing or _("Select the fixed and the moving volume."), False)


def missing_input(fixed_id: Optional[str], moving_id: Optional[str], preset: str = "",
                  needs_segmentations: bool = False, fixed_segmentation: bool = False,
                  moving_segmentation: bool = False) -> str:
    """What the user must still select before Apply can run (the button's tooltip), or "" when ready."""
    if not fixed_id:
        return _("Select the fixed volume.")
    if not moving_id:
        return _("Select the moving volume.")
    if fixed_id == moving_id:
        return _("Select two different volumes.")
    if needs_segmentations and not (fixed_segmentation and moving_segmentation):
        which = (_("the fixed and the moving segmentation") if not (fixed_segmentation or moving_segmentation)
                 else _("the fixed segmentation") if not fixed_segmentation else _("the moving segmentation"))
        return _("The preset '{preset}' registers segmentations of both volumes: select {which} under "
                 "'Masks and segmentations', or choose another preset.").format(preset=preset, which=which)
    return ""


def guidance_title(needs_segmentations: bool) -> str:
    """Title of the masks and segmentations section: segmentations are optional unless the preset needs them."""
    if needs_segmentations:
        return _("Masks and segmentations (segmentations required by this preset)")
    return _("Masks and segmentations (optional)")


def inputs_editable(state: ProcessingState) -> bool:
    """Inputs are locked while a registration runs, so what is shown is what runs."""
    return state == ProcessingState.IDLE


def stage_label(stage: str) -> str:
    """Human name of a progress stage (the engine's, or the module's own)."""
    labels = {
        "export": _("Writing inputs"),
        "device": _("Checking the GPU"),
        "start": _("Starting"),
        "prepare": _("Preparing"),
        "prealign": _("Pre-aligning"),
        "features": _("Computing features"),
        "gauss-newton": _("Gauss-Newton optimisation"),
        "output": _("Writing results"),
        "load": _("Loading results"),
        "cancelling": _("Cancelling"),
        "cancelled": _("Cancelled"),
        "failed": _("Failed"),
        "done": _("Done"),
    }
    return labels.get(stage, stage)


def finished_status(warnings: Sequence[str]) -> str:
    """The status line after a successful run: 'Done', or the warnings (a suspicious pairing or result, say)
    after it, so that they are seen where the user looks for the outcome."""
    if not warnings:
        return stage_label("done")
    return _("Done, with warnings: {warnings}").format(warnings=" | ".join(warnings))
