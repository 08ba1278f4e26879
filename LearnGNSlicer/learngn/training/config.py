"""The settings of a training run; saved with every checkpoint so a run can be resumed and repeated."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import InputError

SETTINGS = ("sdm", "synthetic", "images")
TRAINABLE = ("all", "residual", "jacobian", "features")


def registration_settings_keys() -> set:
    """Field names of learngn.RegistrationSettings (what a model card's settings may hold)."""
    from ..settings import RegistrationSettings

    return {f.name for f in dataclasses.fields(RegistrationSettings)}
#: The paper's validation cases of the shared Learn2Reg abdomen label maps: never trained on.
ABDOMEN_VALIDATION_CASES = ("0001", "0004", "0007", "0010", "0023")


@dataclass(frozen=True)
class TrainConfig:
    output: str
    dataset: Optional[str] = None                # Learn2Reg dataset.json
    labels_dir: Optional[str] = None             # or a folder of label maps
    validation_cases: Tuple[str, ...] = ABDOMEN_VALIDATION_CASES
    setting: str = "sdm"                         # sdm | synthetic (MIND of synthetic CT) | images (MIND)
    # the registration the model is trained for (these go into the model card's settings)
    working_spacing: float = 6.0
    grid_stride: int = 2
    iterations: int = 5
    lambda_start: float = 0.5
    lambda_end: float = 0.1
    momentum: float = 0.5
    sdm_clip_mm: float = 40.0
    mind_dilation: int = 2
    # optimisation
    steps: int = 100
    batch_size: int = 1                          # pairs per optimiser step
    learning_rate: float = 1e-3
    schedule: str = "constant"                   # constant | cosine (decays the learning rate to 0 at the last step)
    trainable: str = "all"                       # all | residual (f only) | jacobian (J only) | features
    feature_net: bool = False                    # add a feature network that refines the features (MIND or distance maps)
    optimizer: str = "nsgd"                      # nsgd: SGD (momentum 0.9) on the normalised gradient; adam
    loss: str = "dice"                           # dice | ce
    smoothness_weight: float = 0.1
    synthesis: str = "random"                    # synthetic appearance: random (SynthMorph-style) | ct (HU table + jitter)
    folding_weight: float = 0.0                  # weight of mean(relu(0.1 - det(I + grad u)))
    crop: Optional[Tuple[int, int, int]] = (40, 40, 40)   # working voxels; None = whole volume
    prealign: str = "none"                       # none | com | affine: pre-align each training pair as register() does
    augment: bool = True
    rotation_degrees: float = 8.0
    scale: float = 0.08
    translation_mm: float = 8.0
    elastic_mm: float = 6.0
    seed: int = 0
    threads: int = 0                             # 0 = torch's default
    # monitoring and checkpoints
    val_every: int = 25
    val_pairs: int = 2                           # validation pairs scored during training (0 = none)
    checkpoint_every: int = 10
    max_cases: Optional[int] = None              # use only the first N training cases (tests)
    init_weights: Optional[str] = None           # start from these weights (a model.pt) instead of classic GN

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise InputError(f"unknown training setting {self.setting!r}; choose from {', '.join(SETTINGS)}")
        if self.trainable not in TRAINABLE:
            raise InputError(f"unknown trainable part {self.trainable!r}; use {', '.join(TRAINABLE)}")
        if self.trainable == "features" and not self.feature_net:
            raise InputError("--trainable features needs the feature network: add --feature-net")
        if self.optimizer not in ("nsgd", "adam"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; use nsgd or adam")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"unknown learning-rate schedule {self.schedule!r}; use constant or cosine")
        if self.prealign not in ("none", "com", "affine"):
            raise InputError(f"unknown pre-alignment {self.prealign!r}; use none, com or affine")
        if self.loss not in ("dice", "ce"):
            raise InputError(f"unknown loss {self.loss!r}; use dice or ce")
        if self.steps < 0 or self.batch_size < 1 or self.iterations < 1:
            raise InputError("steps must be >= 0, batch size and iterations >= 1")

    @property
    def features(self) -> Tuple[str, ...]:
        return ("sdm",) if self.setting == "sdm" else ("mind",)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["validation_cases"] = list(self.validation_cases)
        out["crop"] = list(self.crop) if self.crop else None
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown training option(s) {', '.join(unknown)}")
        values = dict(values)
        if values.get("validation_cases") is not None:
            values["validation_cases"] = tuple(values["validation_cases"])
        if values.get("crop"):
            values["crop"] = tuple(int(c) for c in values["crop"])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def registration_settings(self) -> Dict[str, Any]:
        """The RegistrationSettings fields that reproduce, in learngn.register, what the model was trained in."""
        settings: Dict[str, Any] = {
            "features": list(self.features), "iterations": self.iterations, "levels": 1,
            "grid_stride": self.grid_stride, "lambda_start": self.lambda_start, "lambda_end": self.lambda_end,
            "momentum": self.momentum, "working_spacing": self.working_spacing,
        }
        if self.prealign != "none":
            settings["prealign"] = self.prealign
        if self.setting == "sdm":
            settings["sdm_clip_mm"] = self.sdm_clip_mm
        else:
            settings["mind_dilation"] = self.mind_dilation
        if self.setting == "synthetic":
            settings["intensity_normalisation"] = "ct"
        return settings

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
