"""The settings of a training run; saved with every checkpoint so a run can be resumed and repeated."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import InputError
from ..predictors import HIDDEN_CHANNELS
from ..settings import RegistrationSettings

SETTINGS = ("sdm", "synthetic", "images")
#: What the MIND feature network reads: the intensity alone (the first models), or the MIND channels too.
FEATURE_INPUTS = ("intensity", "intensity+mind")
#: Parts a run may fit. ``branches``: the non-linear CNN branches of the J and f predictors, their
#: classic stencils held fixed (a drift of the stencils biases every residual, see docs/TRAINING.md).
TRAINABLE = ("all", "residual", "jacobian", "features", "branches", "branches+features")


def registration_settings_keys() -> set:
    """Field names of learngn.RegistrationSettings (what a model card's settings may hold)."""
    return {f.name for f in dataclasses.fields(RegistrationSettings)}


#: Training crops and augments on one working grid for every case (in working voxels), so a run fixes its
#: spacing; register() picks one per scan from its voxel budget.  Recorded in the model card.
TRAINING_WORKING_SPACING_MM = 6.0


def default_registration() -> RegistrationSettings:
    """The product's own Gauss-Newton settings (one source: RegistrationSettings) on the training grid."""
    return RegistrationSettings(working_spacing=TRAINING_WORKING_SPACING_MM)

#: The paper's validation cases of the shared Learn2Reg abdomen label maps: never trained on.
ABDOMEN_VALIDATION_CASES = ("0001", "0004", "0007", "0010", "0023")


@dataclass(frozen=True)
class TrainConfig:
    output: str
    dataset: Optional[str] = None                # Learn2Reg dataset.json
    labels_dir: Optional[str] = None             # or a folder of label maps
    brain_data: Optional[str] = None             # or the folder holding brain_mindboggle/ (its tuning people only)
    validation_cases: Tuple[str, ...] = ABDOMEN_VALIDATION_CASES
    setting: str = "sdm"                         # sdm | synthetic (MIND of synthetic CT) | images (MIND)
    # the registration the model is trained for, in the product's own type (it goes into the model card);
    # the features follow ``setting``
    registration: RegistrationSettings = field(default_factory=default_registration)
    # optimisation
    steps: int = 100
    batch_size: int = 1                          # pairs per optimiser step
    learning_rate: float = 1e-3
    schedule: str = "constant"                   # constant | cosine (decays the learning rate to 0 at the last step)
    trainable: str = "all"                       # all | residual (f only) | jacobian (J only) | features | branches | branches+features
    feature_net: bool = False                    # add a feature network that refines the features (MIND or distance maps)
    feature_width: int = HIDDEN_CHANNELS         # its hidden channels (the first models' 8)
    feature_depth: int = 1                       # its 3x3x3 layers (> 1: dilated residual layers for context)
    feature_input: str = "intensity"             # what the MIND feature network reads: intensity | intensity+mind
    optimizer: str = "nsgd"                      # nsgd: SGD (momentum 0.9) on the normalised gradient; adam
    loss: str = "dice"                           # dice | ce
    smoothness_weight: float = 0.1
    synthesis: str = "random"                    # synthetic appearance: random (SynthMorph-style) | ct (HU table + jitter)
    folding_weight: float = 0.0                  # weight of mean(relu(0.1 - det(I + grad u)))
    crop: Optional[Tuple[int, int, int]] = (40, 40, 40)   # working voxels; None = whole volume
    prealign: str = "none"                       # none | com | affine: pre-align each training pair as register() does
                                                 # (the card's prealign where not none; not moved into registration)
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
        if "features" in self.trainable.split("+") and not self.feature_net:
            raise InputError(f"--trainable {self.trainable} needs the feature network: add --feature-net")
        if self.feature_width < 1 or self.feature_depth < 1:
            raise InputError("--feature-width and --feature-depth must be at least 1")
        if self.feature_input not in FEATURE_INPUTS:
            raise InputError(f"unknown feature input {self.feature_input!r}; use {' or '.join(FEATURE_INPUTS)}")
        if self.feature_net_reads_mind and (not self.feature_net or self.features[0] != "mind"):
            raise InputError("--feature-input intensity+mind needs the MIND feature network: add --feature-net "
                             "with the images or synthetic setting")
        if self.optimizer not in ("nsgd", "adam"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; use nsgd or adam")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"unknown learning-rate schedule {self.schedule!r}; use constant or cosine")
        if self.prealign not in ("none", "com", "affine"):
            raise InputError(f"unknown pre-alignment {self.prealign!r}; use none, com or affine")
        if self.loss not in ("dice", "ce"):
            raise InputError(f"unknown loss {self.loss!r}; use dice or ce")
        if self.steps < 0 or self.batch_size < 1:
            raise InputError("steps must be >= 0 and the batch size >= 1")
        if self.registration.working_spacing is None:
            raise InputError("training needs a working spacing (--working-spacing MM): crops are in working voxels")
        consistent = {"features": self.features}
        if self.setting == "synthetic":
            consistent["intensity_normalisation"] = "ct"
        object.__setattr__(self, "registration", self.registration.replace(**consistent))

    @property
    def feature_net_reads_mind(self) -> bool:
        return self.feature_input == "intensity+mind"

    @property
    def features(self) -> Tuple[str, ...]:
        return ("sdm",) if self.setting == "sdm" else ("mind",)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["registration"] = self.registration.to_dict()
        out["validation_cases"] = list(self.validation_cases)
        out["crop"] = list(self.crop) if self.crop else None
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Options as saved by :meth:`to_dict`; registration settings may also stand at the top level (the
        command line's --iterations, --working-spacing ..., and configs written before they moved)."""
        values = dict(values)
        registration = dict(values.pop("registration", None) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for key in (registration_settings_keys() - names) & set(values):
            registration[key] = values.pop(key)
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown training option(s) {', '.join(unknown)}")
        if registration:
            if isinstance(registration.get("features"), list):
                registration["features"] = tuple(registration["features"])
            values["registration"] = default_registration().replace(**registration)
        if values.get("validation_cases") is not None:
            values["validation_cases"] = tuple(values["validation_cases"])
        if values.get("crop"):
            values["crop"] = tuple(int(c) for c in values["crop"])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; registration settings (``lambda_start=...``) go to ``registration``."""
        own = {f.name for f in dataclasses.fields(self)}
        moved = {k: changes.pop(k) for k in (registration_settings_keys() - own) & set(changes)}
        if moved:
            changes["registration"] = changes.get("registration", self.registration).replace(**moved)
        return dataclasses.replace(self, **changes)

    def registration_settings(self) -> Dict[str, Any]:
        """The RegistrationSettings fields that reproduce, in learngn.register, what the model was trained in
        (every field, so a later change of a default does not change what the card means)."""
        settings = self.registration.to_dict()
        settings.pop("model", None)
        if self.prealign != "none":
            settings["prealign"] = self.prealign
        return settings

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
