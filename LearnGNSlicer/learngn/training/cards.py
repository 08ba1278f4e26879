"""Export trained weights as a shipped model: ``<name>.pt`` (state dict) and ``<name>.json`` (model card)."""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..models import load_predictors_file, sha256
from .config import TrainConfig


def export_model(weights: Path, models_dir: Path, name: str, preset: str, description: str, config: TrainConfig,
                 extra: Optional[Dict[str, Any]] = None) -> Path:
    """Copy checked weights into ``models_dir`` and write the card; returns the card's path."""
    weights = Path(weights)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    load_predictors_file(weights)  # refuses a corrupt or mismatched file before it is shipped
    target = models_dir / f"{name}.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, target)
    card: Dict[str, Any] = {
        "name": name,
        "preset": preset,
        "description": description,
        "settings": config.registration_settings(),
        "weights": target.name,
        "sha256": sha256(target),
        "trained": {
            "date": datetime.date.today().isoformat(),
            "device": "cpu",
            "setting": config.setting,
            "config": {k: v for k, v in config.to_dict().items() if k not in ("output",)},
        },
    }
    if extra:
        card.update(extra)
    path = models_dir / f"{name}.json"
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


def copy_card_markdown(source: Path, models_dir: Path, name: str) -> None:
    shutil.copyfile(source, Path(models_dir) / f"{name}.md")


#: Figures of an evaluation that a model card records for its learned and its untrained method.
CARD_FIGURES = ("dice", "hd95", "negative_jacobian_percent", "log_jacobian_std", "seconds")


def record_validation(card_path: Path, rows: List[Dict[str, Any]], command: str, markdown: str) -> Dict[str, Any]:
    """Write the evaluation of a card's model (``learngn:PRESET`` against ``gn:PRESET[:overrides]``, the
    first such untrained method) into the card.

    The figures are means over the pairs where both methods ran; the card keeps the command that produced
    them and the whole Markdown table, so what it claims can be re-run and compared.
    """
    from ..errors import InputError
    from .evaluation import parse_method

    card_path = Path(card_path)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    preset = card.get("preset")
    parsed = ((r["spec"], parse_method(r["spec"])) for r in rows)
    untrained = next((spec for spec, method in parsed if method.kind == "gn" and method.preset == preset),
                     f"gn:{preset}")
    methods = {"learned": f"learngn:{preset}", "untrained": untrained}
    ok = {key: {(r["fixed"], r["moving"]): r for r in rows if r.get("spec") == spec and r.get("status") == "ok"}
          for key, spec in methods.items()}
    pairs = sorted(set(ok["learned"]) & set(ok["untrained"]))
    if not pairs:
        raise InputError(f"the evaluation has no pair where both {methods['learned']} and {methods['untrained']} "
                         f"ran; add both to --methods to record figures in {card_path.name}")
    validation: Dict[str, Any] = {"date": datetime.date.today().isoformat(), "command": command,
                                  "pairs": len(pairs), "methods": methods}
    for key in methods:
        validation[key] = {figure: float(np.nanmean([float(ok[key][p].get(figure, "nan")) for p in pairs]))
                           for figure in CARD_FIGURES}
    validation["table"] = markdown
    card["validation"] = validation
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return validation
