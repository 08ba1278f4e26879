"""Export trained weights as a shipped model: ``<name>.pt`` (state dict) and ``<name>.json`` (model card)."""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

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
