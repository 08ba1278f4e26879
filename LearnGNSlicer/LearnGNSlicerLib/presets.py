"""Preset names for the GUI, found without importing the engine.

``learngn.list_presets()`` is the authority, but importing ``learngn`` imports torch, which may not
be installed yet when the widget is built (and takes seconds).  So the list is the engine's
built-in presets plus one per model card in ``Resources/Models`` (``<model>.json`` with a
``"preset"`` entry, the engine's convention); if the engine is already imported (e.g. by a script)
its own list is used.  A test compares this list with the engine's.  The worker rejects an unknown
name with a clear message, so a stale list cannot cause silent mistakes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .resources import resources_dir
from .settings import DEFAULT_PRESET

#: The engine's presets that need no model file (learngn/settings.py).
BUILT_IN_PRESETS = [DEFAULT_PRESET, "segmentation-guided"]


def model_presets(models_dir: Optional[Path]) -> Dict[str, str]:
    """Preset name -> description of every readable model card in ``models_dir``."""
    presets: Dict[str, str] = {}
    if models_dir is None or not models_dir.is_dir():
        return presets
    for card_path in sorted(models_dir.glob("*.json")):
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the engine reports a broken card when the preset is used
        if isinstance(card, dict) and card.get("preset"):
            presets.setdefault(str(card["preset"]), str(card.get("description", "")))
    return presets


def _unique(names: Iterable[str]) -> List[str]:
    """Names without repeats or blanks, the default preset first when present."""
    unique = list(dict.fromkeys(str(n) for n in names if str(n).strip()))
    return sorted(unique, key=lambda name: name != DEFAULT_PRESET)


def _default_models_dir() -> Optional[Path]:
    try:
        return resources_dir() / "Models"
    except FileNotFoundError:
        return None


def available_presets(models_dir: Optional[Path] = None) -> List[str]:
    """Preset names, the default first."""
    engine = sys.modules.get("learngn")
    if engine is not None and hasattr(engine, "list_presets"):
        try:
            return _unique(engine.list_presets())  # a dict name -> description, or a list of names
        except Exception:  # a half-imported engine must not break the GUI
            pass
    return _unique([*BUILT_IN_PRESETS, *model_presets(models_dir or _default_models_dir())])
