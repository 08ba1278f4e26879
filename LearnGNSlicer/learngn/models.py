"""Shipped learned models: where they live, how their cards turn into presets, how weights load safely.

A model is two files in a models folder: ``<name>.json`` (the model card: preset name, description,
settings, file checksum, how it was trained) and ``<name>.pt`` (a state dict, loaded with
``weights_only=True`` so a file can never execute code).  Nothing is downloaded.

Every card is checked on its own against ``check_card`` (the schema): a card that fails is reported
in a warning and skipped, and the other cards still load.  A card in ``$LEARNGN_MODEL_DIR`` that takes
the name or the preset of a shipped model is used instead of it, with a warning that names both.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from .errors import InputError
from .predictors import GaussNewtonPredictors, predictors_for, state_dict_shapes

MODEL_DIR_VARIABLE = "LEARNGN_MODEL_DIR"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Card entries whose type is checked (others, such as the training record, are free-form).
_TYPED_ENTRIES = {"name": str, "preset": str, "description": str, "settings": dict, "weights": str, "sha256": str}


@dataclass(frozen=True)
class ModelCard:
    """A card that passed the schema: its content, where it lies, and whether a user folder holds it."""

    name: str
    path: Path
    content: Dict[str, Any]
    user: bool

    @property
    def weights(self) -> Path:
        return self.path.with_name(self.content.get("weights", f"{self.name}.pt"))


def _user_dirs() -> List[Path]:
    return [Path(p) for p in os.environ.get(MODEL_DIR_VARIABLE, "").split(os.pathsep) if p]


def _shipped_dirs() -> List[Path]:
    """The checkout's or the Slicer build's ``Resources/Models``, and the copy installed with the package."""
    here = Path(__file__).resolve().parent
    return [here.parents[1] / "Resources" / "Models", here.parent / "Resources" / "Models", here / "_models"]


def model_dirs() -> List[Path]:
    """Folders searched for models, first match wins: $LEARNGN_MODEL_DIR, then the shipped folders."""
    return [c for c in _user_dirs() + _shipped_dirs() if c.is_dir()]


def _settings_problem(settings: Dict[str, Any]) -> Optional[str]:
    """Why a card's ``settings`` cannot fill RegistrationSettings, or None."""
    from .settings import RegistrationSettings

    allowed = {f.name for f in dataclasses.fields(RegistrationSettings)} - {"model"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        return f"unknown settings key(s) {', '.join(unknown)} (valid: {', '.join(sorted(allowed))})"
    try:
        settings_from_card(settings)
    except (InputError, TypeError, ValueError) as error:
        return f"invalid settings: {error}"
    return None


def check_card(card: Any, stem: str) -> List[str]:
    """The schema of a model card: the problems of ``card`` (the JSON of ``<stem>.json``), empty when valid.

    Required: a JSON object with ``sha256`` (64 lower-case hex digits, the checksum of the weights).
    Optional, typed: ``name`` (equal to the file name), ``preset``, ``description`` (text), ``weights``
    (a file name beside the card, default ``<stem>.pt``) and ``settings`` (fields of RegistrationSettings
    other than ``model``, with valid values).
    """
    if not isinstance(card, dict):
        return [f"a card must be a JSON object, not {type(card).__name__}"]
    problems = [f"'{key}' must be {kind.__name__ if kind is not dict else 'an object'}"
                for key, kind in _TYPED_ENTRIES.items() if key in card and not isinstance(card[key], kind)]
    if problems:
        return problems
    if "sha256" not in card:
        problems.append("no 'sha256' checksum of the weights (required; `learngn train --export` writes it)")
    elif not _SHA256.match(card["sha256"]):
        problems.append("'sha256' must be 64 lower-case hexadecimal digits")
    if "name" in card and card["name"] != stem:
        problems.append(f"'name' is {card['name']!r} but the file is {stem}.json")
    if "preset" in card and not card["preset"].strip():
        problems.append("'preset' is empty")
    weights = card.get("weights", f"{stem}.pt")
    if Path(weights).name != weights or weights in ("", ".", ".."):
        problems.append(f"'weights' must be a file name beside the card, not {weights!r}")
    settings_problem = _settings_problem(card.get("settings", {}))
    if settings_problem:
        problems.append(settings_problem)
    return problems


#: (card path, problem) pairs already reported, so a problem is warned about once per process.
_REPORTED: Set[Tuple[str, str]] = set()


def _warn_once(key: Tuple[str, str], message: str) -> None:
    if key not in _REPORTED:
        _REPORTED.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def _load_card(path: Path, user: bool) -> Tuple[Optional[ModelCard], str]:
    """The checked card at ``path``, or None and why it was skipped."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"cannot be read as JSON ({error})"
    problems = check_card(content, path.stem)
    if problems:
        return None, "; ".join(problems)
    return ModelCard(path.stem, path, content, user), ""


def scan_model_cards() -> Tuple[Dict[str, ModelCard], Dict[Path, str]]:
    """Valid cards by model name (first folder wins) and the skipped cards with the reason.

    Each skipped card and each user card that shadows a shipped name or preset is reported in a
    warning, once per process.
    """
    cards: Dict[str, ModelCard] = {}
    skipped: Dict[Path, str] = {}
    shipped = [d.resolve() for d in _shipped_dirs() if d.is_dir()]
    for folder in model_dirs():
        user = folder.resolve() not in shipped
        for path in sorted(folder.glob("*.json")):
            card, reason = _load_card(path, user)
            if card is None:
                skipped[path] = reason
                _warn_once((str(path), reason), f"model card {path} skipped: {reason}")
                continue
            taken = cards.get(card.name)
            if taken is None:
                cards[card.name] = card
            elif taken.user and not card.user:
                _warn_once((str(taken.path), str(path)),
                           f"model card {taken.path} in {MODEL_DIR_VARIABLE} shadows the shipped model {card.name} "
                           f"({path}); rename the user card to use both")
    _warn_preset_shadows(cards)
    return cards, skipped


def _built_in_presets() -> Set[str]:
    """Presets defined in learngn.settings (no learned model): a card cannot replace them."""
    from .settings import PRESETS

    return {name for name, preset in PRESETS.items() if preset.settings.model is None}


def _warn_preset_shadows(cards: Dict[str, ModelCard]) -> None:
    """A user card naming the preset of a shipped card or a built-in preset takes (or loses) that name."""
    built_in = _built_in_presets()
    shipped_presets = {c.content["preset"]: c for c in cards.values() if not c.user and "preset" in c.content}
    for card in cards.values():
        preset = card.content.get("preset")
        if not card.user or preset is None:
            continue
        if preset in built_in:
            _warn_once((str(card.path), preset), f"model card {card.path} names the built-in preset {preset!r}; "
                       "the built-in one is kept and this card's preset is skipped: give it another preset name")
        elif preset in shipped_presets:
            other = shipped_presets[preset]
            _warn_once((str(card.path), preset),
                       f"model card {card.path} in {MODEL_DIR_VARIABLE} shadows the shipped preset {preset!r} "
                       f"(model {other.name}, {other.path}); rename the preset in the user card to use both")


def find_model_cards() -> Dict[str, Path]:
    """Model name -> path of its (valid) card, over all model folders."""
    return {name: card.path for name, card in scan_model_cards()[0].items()}


def read_card(name: str) -> dict:
    cards, skipped = scan_model_cards()
    if name not in cards:
        bad = [f"{path} ({reason})" for path, reason in skipped.items() if path.stem == name]
        if bad:
            raise InputError(f"the model card of {name!r} is invalid: {'; '.join(bad)}. Fix the card or restore "
                             "it from the repository")
        searched = ", ".join(str(p) for p in model_dirs()) or "(no model folder found)"
        raise InputError(f"no learned model named {name!r}; searched {searched}. Set {MODEL_DIR_VARIABLE} to the "
                         "folder holding <name>.json and <name>.pt, or pick a preset without a model")
    card = dict(cards[name].content)
    card["_path"] = str(cards[name].path)
    return card


def settings_from_card(settings: Dict[str, Any]):
    """RegistrationSettings from a card's ``settings`` (lists become tuples)."""
    from .settings import RegistrationSettings

    values = dict(settings)
    if "features" in values and isinstance(values["features"], list):
        values["features"] = tuple(values["features"])
    return RegistrationSettings(**values)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_predictors_file(path: Path) -> GaussNewtonPredictors:
    """Load weights without executing code; a corrupt or mismatched file gives an InputError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "not a usable weights file"
        raise InputError(f"cannot read model weights {path}: {error}. The file is corrupt or not a LearnGN "
                         "weights file; restore it from the repository or retrain with `learngn train`") from None
    tensors = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = predictors_for(state) if tensors else GaussNewtonPredictors()
    expected = state_dict_shapes(model)
    found = {k: tuple(v.shape) for k, v in state.items()} if tensors else {}
    if found != expected:
        raise InputError(f"model weights {path} do not match this version of LearnGN (expected tensors "
                         f"{sorted(expected)}, found {sorted(found)}); retrain with `learngn train`")
    model.load_state_dict(state)
    return model.eval()


@lru_cache(maxsize=4)
def load_model(name: str) -> GaussNewtonPredictors:
    """The predictors of a model, checked against the checksum its card must hold."""
    card = read_card(name)
    weights = Path(card["_path"]).with_name(card.get("weights", f"{name}.pt"))
    if not weights.is_file():
        raise InputError(f"model card {card['_path']} names weights {weights.name}, which are missing")
    if sha256(weights) != card["sha256"]:
        raise InputError(f"model weights {weights} do not match the checksum in their card; the file is "
                         "corrupt or was replaced - restore it from the repository")
    return load_predictors_file(weights)


def register_model_presets() -> None:
    """Make every valid model card with a ``preset`` entry available as a preset; when several cards name
    the same preset, the first folder's card wins (a user's card over a shipped one)."""
    from .settings import PRESETS, Preset

    built_in = _built_in_presets()
    winners: Dict[str, ModelCard] = {}
    for card in scan_model_cards()[0].values():
        preset_name = card.content.get("preset")
        if preset_name and preset_name not in built_in:
            winners.setdefault(preset_name, card)
    for preset_name, card in winners.items():
        settings = settings_from_card(card.content.get("settings", {})).replace(model=card.name)
        PRESETS[preset_name] = Preset(preset_name, card.content.get("description", f"learned model {card.name}"),
                                      settings, needs_segmentations="sdm" in settings.features)
