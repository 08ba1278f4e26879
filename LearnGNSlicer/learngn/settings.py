"""User-facing settings of a registration and the named presets that fill them."""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .errors import InputError
from .features import FEATURE_TYPES


@dataclass(frozen=True)
class RegistrationSettings:
    """Everything that decides the result; saved in every summary so a run can be repeated."""

    features: Tuple[str, ...] = ("mind",)
    intensity_normalisation: str = "auto"       # auto | ct | mr
    prealign: str = "affine"                    # affine | com | none
    iterations: int = 10                        # Gauss-Newton steps per level
    levels: int = 3                             # coarse to fine: each coarser level halves the working grid
    grid_stride: int = 2                        # control-point spacing in working voxels (finest level)
    lambda_start: float = 0.05
    lambda_end: float = 0.01
    regularisation: float = 0.5                 # multiplies the lambda schedule: higher is smoother
    momentum: float = 0.5
    update_smoothing: float = 0.0               # Gaussian sigma (control points) applied to each update
    result_smoothing: float = 0.5               # Gaussian sigma (control points) applied once to the result
    working_spacing: Optional[float] = None     # isotropic mm; None picks it from max_working_voxels
    max_working_voxels: Optional[int] = None    # voxel budget of the working grid; None: the device's default
    mind_dilation: int = 2
    sdm_clip_mm: float = 40.0
    solver: str = "auto"                        # auto | torch | cupy
    cg_tolerance: float = 1e-3
    cg_max_iterations: int = 15                 # per Gauss-Newton step; the coarse level supplies the smooth part
    model: Optional[str] = None                 # name of a shipped learned model, None for classic GN

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURE_TYPES]
        if not self.features or unknown:
            raise InputError(f"unknown feature type(s) {unknown or '(none)'}; choose from {', '.join(FEATURE_TYPES)}")
        choices = {"prealign": ("affine", "com", "none"), "solver": ("auto", "torch", "cupy"),
                   "intensity_normalisation": ("auto", "ct", "mr")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        numeric = ("iterations", "levels", "grid_stride", "lambda_start", "lambda_end", "regularisation", "momentum",
                   "update_smoothing", "result_smoothing", "mind_dilation", "sdm_clip_mm", "cg_tolerance",
                   "cg_max_iterations")
        numeric += tuple(name for name in ("working_spacing", "max_working_voxels") if getattr(self, name) is not None)
        not_numbers = [n for n in numeric
                       if isinstance(getattr(self, n), bool) or not isinstance(getattr(self, n), numbers.Real)]
        if not_numbers:
            raise InputError("settings must be numbers: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in not_numbers))
        checks = {
            "iterations": self.iterations >= 1, "levels": 1 <= self.levels <= 4,
            "grid_stride": 1 <= self.grid_stride <= 16, "regularisation": self.regularisation > 0,
            "lambda_start": self.lambda_start > 0, "lambda_end": self.lambda_end > 0,
            "momentum": 0 <= self.momentum < 1, "update_smoothing": self.update_smoothing >= 0,
            "result_smoothing": self.result_smoothing >= 0,
            "max_working_voxels": self.max_working_voxels is None or self.max_working_voxels >= 32 ** 3,
            "working_spacing": self.working_spacing is None or self.working_spacing > 0,
        }
        valid = {"iterations": ">= 1", "levels": "1 to 4", "grid_stride": "1 to 16", "regularisation": "> 0",
                 "lambda_start": "> 0", "lambda_end": "> 0", "momentum": ">= 0 and < 1", "update_smoothing": ">= 0",
                 "result_smoothing": ">= 0",
                 "max_working_voxels": f">= {32 ** 3} (32^3)", "working_spacing": "> 0 (mm)"}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r} (must be {valid.get(name, 'in range')})" for name in bad)
            raise InputError(f"setting out of range: {values}")

    def replace(self, **overrides: Any) -> "RegistrationSettings":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        if "features" in overrides and isinstance(overrides["features"], str):
            overrides["features"] = tuple(s.strip() for s in overrides["features"].split(",") if s.strip())
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["features"] = list(self.features)
        return out


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: RegistrationSettings = field(default_factory=RegistrationSettings)
    needs_segmentations: bool = False


PRESETS: Dict[str, Preset] = {}


def register_preset(preset: Preset) -> None:
    PRESETS[preset.name] = preset


register_preset(Preset(
    "generic",
    "Any modality (CT, MRI, CT to MRI): affine pre-alignment, then classic Gauss-Newton on MIND-SSC features, "
    "coarse to fine (control points every 2 working voxels at the finest level, the result smoothed over about "
    "one control point); no learned weights.",
))
register_preset(Preset(
    "brain-mri",
    "Brain MRI of different people or sessions: the generic method with less regularisation, for the detail "
    "of cortical and deep structures (more folding, still far below 0.1 %).",
    RegistrationSettings(regularisation=0.3, result_smoothing=0.0),
))
register_preset(Preset(
    "segmentation-guided",
    "The paper's 3D setting: signed distance maps of segmentations of both images, classic Gauss-Newton.",
    # the single-level engine this preset was validated with (docs/EVALUATION.md)
    RegistrationSettings(features=("sdm",), lambda_start=0.0008, lambda_end=0.00016, sdm_clip_mm=100.0,
                         levels=1, grid_stride=4, cg_max_iterations=40, regularisation=1.0,
                         max_working_voxels=1_500_000, result_smoothing=0.0),
    needs_segmentations=True,
))


def get_preset(name: str) -> Preset:
    from .models import register_model_presets  # learned presets appear once their weights are found

    register_model_presets()
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def list_presets() -> Dict[str, str]:
    """Preset names and one-line descriptions."""
    from .models import register_model_presets

    register_model_presets()
    return {name: preset.description for name, preset in sorted(PRESETS.items())}
