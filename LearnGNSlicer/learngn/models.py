"""Shipped learned models: where they live, how their cards turn into presets, how weights load safely.

A model is two files in a models folder: ``<name>.json`` (the model card: preset name, description,
settings, file checksum, how it was trained) and ``<name>.pt`` (a state dict, loaded with
``weights_only=True`` so a file can never execute code).  Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import torch

from .errors import InputError
from .predictors import GaussNewtonPredictors, feature_net_kind, state_dict_shapes

MODEL_DIR_VARIABLE = "LEARNGN_MODEL_DIR"


def model_dirs() -> List[Path]:
    """Folders searched for models, first match wins: $LEARNGN_MODEL_DIR, the checkout's or the Slicer
    build's ``Resources/Models``, and the copy installed with the package."""
    here = Path(__file__).resolve().parent
    candidates = [Path(p) for p in os.environ.get(MODEL_DIR_VARIABLE, "").split(os.pathsep) if p]
    candidates += [here.parents[1] / "Resources" / "Models", here.parent / "Resources" / "Models",
                   here / "_models"]
    return [c for c in candidates if c.is_dir()]


def find_model_cards() -> Dict[str, Path]:
    """Model name -> path of its card, over all model folders."""
    cards: Dict[str, Path] = {}
    for folder in model_dirs():
        for card in sorted(folder.glob("*.json")):
            cards.setdefault(card.stem, card)
    return cards


def read_card(name: str) -> dict:
    cards = find_model_cards()
    if name not in cards:
        searched = ", ".join(str(p) for p in model_dirs()) or "(no model folder found)"
        raise InputError(f"no learned model named {name!r}; searched {searched}. Set {MODEL_DIR_VARIABLE} to the "
                         "folder holding <name>.json and <name>.pt, or pick a preset without a model")
    with open(cards[name], encoding="utf-8") as handle:
        card = json.load(handle)
    card["_path"] = str(cards[name])
    return card


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
    model = GaussNewtonPredictors(feature_net=feature_net_kind(state) if isinstance(state, dict) else None)
    expected = state_dict_shapes(model)
    found = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        raise InputError(f"model weights {path} do not match this version of LearnGN (expected tensors "
                         f"{sorted(expected)}, found {sorted(found)}); retrain with `learngn train`")
    model.load_state_dict(state)
    return model.eval()


@lru_cache(maxsize=4)
def load_model(name: str) -> GaussNewtonPredictors:
    """The predictors of a shipped model, checked against the checksum in its card."""
    card = read_card(name)
    weights = Path(card["_path"]).with_name(card.get("weights", f"{name}.pt"))
    if not weights.is_file():
        raise InputError(f"model card {card['_path']} names weights {weights.name}, which are missing")
    expected = card.get("sha256")
    if expected and sha256(weights) != expected:
        raise InputError(f"model weights {weights} do not match the checksum in their card; the file is "
                         "corrupt or was replaced - restore it from the repository")
    return load_predictors_file(weights)


def register_model_presets() -> None:
    """Make every model card with a ``preset`` entry available as a preset."""
    from .settings import PRESETS, Preset, RegistrationSettings

    for name, path in find_model_cards().items():
        try:
            with open(path, encoding="utf-8") as handle:
                card = json.load(handle)
        except (OSError, ValueError):
            continue  # an unreadable card is reported when someone asks for that model by name
        preset_name = card.get("preset")
        if not preset_name or preset_name in PRESETS:
            continue
        settings = dict(card.get("settings", {}))
        if "features" in settings:
            settings["features"] = tuple(settings["features"])
        settings["model"] = name
        PRESETS[preset_name] = Preset(preset_name, card.get("description", f"learned model {name}"),
                                      RegistrationSettings(**settings),
                                      needs_segmentations="sdm" in settings.get("features", ()))
