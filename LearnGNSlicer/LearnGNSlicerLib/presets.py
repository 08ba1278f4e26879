"""Presets for the GUI (names, descriptions, whether they need segmentations), found without importing the engine.

``learngn.list_presets()`` is the authority, but importing ``learngn`` imports torch, which may not
be installed yet when the widget is built (and takes seconds).  So the list is the engine's
built-in presets plus one per model card in ``Resources/Models`` (``<model>.json`` with a
``"preset"`` entry, the engine's convention); if the engine is already imported (e.g. by a script)
its own list is used.  A test compares this list with the engine's.  The worker rejects an unknown
name with a clear message, so a stale list cannot cause silent mistakes.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .resources import resources_dir
from .settings import DEFAULT_PRESET

@dataclass(frozen=True)
class PresetInfo:
    """What the panel shows of a preset: its description, and whether it registers segmentations."""

    name: str
    description: str = ""
    needs_segmentations: bool = False


#: The engine's presets that need no model file (learngn/settings.py; a test compares them).
BUILT_IN = [
    PresetInfo(DEFAULT_PRESET, "Any modality (CT, MRI, CT to MRI): affine pre-alignment, then classic Gauss-Newton "
                               "on MIND-SSC features, coarse to fine (control points every 2 working voxels at the "
                               "finest level, the result smoothed over about one control point); no learned "
                               "weights."),
    PresetInfo("brain-mri", "Brain MRI of different people or sessions: the generic method with less regularisation, "
                            "for the detail of cortical and deep structures (more folding, still far below "
                            "0.1 %)."),
    PresetInfo("segmentation-guided", "The paper's 3D setting: signed distance maps of segmentations of both images, "
                                      "classic Gauss-Newton.", needs_segmentations=True),
]
BUILT_IN_PRESETS = [info.name for info in BUILT_IN]


def _card_preset(card: Any) -> Optional[PresetInfo]:
    """The preset a model card offers, or None; like the engine (learngn.models.check_card), a card without
    the checksum of its weights offers none."""
    if not isinstance(card, dict) or not isinstance(card.get("preset"), str) or not card["preset"].strip():
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", str(card.get("sha256", ""))):
        return None
    settings = card.get("settings") if isinstance(card.get("settings"), dict) else {}
    features = settings.get("features") or ()
    return PresetInfo(str(card["preset"]), str(card.get("description", "")),
                      needs_segmentations="sdm" in (features if isinstance(features, (list, tuple)) else ()))


def model_preset_infos(models_dir: Optional[Path]) -> Dict[str, PresetInfo]:
    """Preset name -> info of every readable model card with a preset in ``models_dir``."""
    presets: Dict[str, PresetInfo] = {}
    if models_dir is None or not models_dir.is_dir():
        return presets
    for card_path in sorted(models_dir.glob("*.json")):
        try:
            info = _card_preset(json.loads(card_path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # the engine reports a broken card when the preset is used
        if info is not None:
            presets.setdefault(info.name, info)
    return presets


def model_presets(models_dir: Optional[Path]) -> Dict[str, str]:
    """Preset name -> description of every readable model card in ``models_dir``."""
    return {name: info.description for name, info in model_preset_infos(models_dir).items()}


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


def _engine_infos() -> Optional[Dict[str, PresetInfo]]:
    """The already imported engine's presets, or None."""
    settings = sys.modules.get("learngn.settings")
    engine = sys.modules.get("learngn")
    if settings is None or engine is None or not hasattr(engine, "list_presets"):
        return None
    try:
        engine.list_presets()  # registers the learned presets
        return {name: PresetInfo(name, preset.description, bool(preset.needs_segmentations))
                for name, preset in settings.PRESETS.items()}
    except Exception:  # a half-imported engine must not break the GUI
        return None


def preset_info(name: str, models_dir: Optional[Path] = None) -> PresetInfo:
    """Description and needs of preset ``name`` (an unknown name: no description, nothing required)."""
    infos = _engine_infos()
    if infos is None:
        infos = {info.name: info for info in BUILT_IN}
        for card_name, info in model_preset_infos(models_dir or _default_models_dir()).items():
            infos.setdefault(card_name, info)
    return infos.get(name, PresetInfo(name))
