"""Registration settings chosen in the module and their ``learngn register`` arguments.

Values left at ``None`` (GUI: "preset default") are not passed, so the preset decides them.
The enums carry translatable labels for the GUI's combo boxes (``label()`` is what Slicer's
parameter node wrapper shows).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import List, Optional

from .i18n import tr as _

DEFAULT_PRESET = "generic"


class Device(enum.Enum):
    AUTO = "auto"
    GPU = "cuda"
    CPU = "cpu"

    def label(self) -> str:
        return {
            Device.AUTO: _("Automatic (GPU if usable)"),
            Device.GPU: _("GPU (CUDA)"),
            Device.CPU: _("CPU"),
        }[self]


class Prealign(enum.Enum):
    PRESET = "preset"
    AFFINE = "affine"
    CENTER_OF_MASS = "com"
    NONE = "none"

    def label(self) -> str:
        return {
            Prealign.PRESET: _("Preset default"),
            Prealign.AFFINE: _("Affine"),
            Prealign.CENTER_OF_MASS: _("Center of mass"),
            Prealign.NONE: _("None"),
        }[self]


@dataclass
class RegistrationSettings:
    """What to ask the engine for; ``None`` means "the preset's value"."""

    preset: str = DEFAULT_PRESET
    device: str = Device.AUTO.value
    iterations: Optional[int] = None
    grid_stride: Optional[int] = None
    regularisation: Optional[float] = None
    prealign: Optional[str] = None

    def __post_init__(self) -> None:
        self.device = _enum_value(Device, self.device, "device")
        if self.prealign is not None:
            self.prealign = _enum_value(Prealign, self.prealign, "prealign")
            if self.prealign == Prealign.PRESET.value:
                self.prealign = None
        if not self.preset or not str(self.preset).strip():
            raise ValueError("No preset chosen: pick a preset (e.g. 'generic').")
        for name in ("iterations", "grid_stride"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer (or None for the preset's value), got {value}.")
        if self.regularisation is not None and float(self.regularisation) <= 0:
            raise ValueError(f"regularisation must be positive (or None for the preset's value), got {self.regularisation}.")

    def cli_arguments(self) -> List[str]:
        """Options of ``learngn register`` for these settings."""
        args = ["--preset", str(self.preset), "--device", self.device]
        if self.iterations is not None:
            args += ["--iterations", str(int(self.iterations))]
        if self.grid_stride is not None:
            args += ["--grid-stride", str(int(self.grid_stride))]
        if self.regularisation is not None:
            args += ["--regularisation", repr(float(self.regularisation))]
        if self.prealign is not None:
            args += ["--prealign", self.prealign]
        return args


def _enum_value(enum_type, value, name: str) -> str:
    """Accept an enum member or its value (also the member name, any case); return the value."""
    if isinstance(value, enum_type):
        return value.value
    text = str(value).strip()
    for member in enum_type:
        if text.lower() in (member.value.lower(), member.name.lower()):
            return member.value
    choices = ", ".join(m.value for m in enum_type)
    raise ValueError(f"Unknown {name} '{value}'; choose one of: {choices}.")


def optional_positive(value) -> Optional[float]:
    """GUI spin boxes use 0 for "preset default"; turn that into None."""
    return None if value is None or value <= 0 else value
