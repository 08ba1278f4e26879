"""Tune classic Gauss-Newton's lambda schedule on training pairs, so the learned model meets a fair baseline.

Runs untrained GN (the same features, grid, stride and iterations as the training) over a grid of
``lambda_start`` values and start/end ratios on random pairs of *training* cases, whole volumes on the
working grid, and keeps the schedule with the best mean Dice among those whose folding stays below a
threshold.
"""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..gauss_newton import warp
from ..geometry import voxel_field_to_image
from ..quality import jacobian_statistics
from .config import TrainConfig
from .progressbar import ProgressBar
from .trainer import PreparedData, hard_dice, prepare_data, register_cases, score_pair, whole_pair


@dataclass
class TuningResult:
    rows: List[Dict[str, float]]
    best: Dict[str, float]


def tuning_pairs(n_cases: int, n_pairs: int, seed: int) -> List[tuple]:
    rng = np.random.default_rng([seed, 7919])
    pairs = [p for p in itertools.permutations(range(n_cases), 2)]
    order = rng.permutation(len(pairs))[:n_pairs]
    return [pairs[i] for i in order]


def tune_lambda(config: TrainConfig, starts: Sequence[float], ratios: Sequence[float] = (5.0,), n_pairs: int = 6,
                max_folding_percent: float = 0.05, data: Optional[PreparedData] = None, progress: bool = True,
                output: Optional[Path] = None) -> TuningResult:
    """Run untrained GN with every schedule on training pairs and keep the best Dice within the folding cap."""
    data = data or prepare_data(config, validation=False)
    pairs = tuning_pairs(len(data.training), n_pairs, config.seed)
    cached = {}
    for i, j in pairs:
        fixed, moving = data.training[i], data.training[j]
        cached[(i, j)] = (*whole_pair(config, data, fixed, moving), fixed.grid)
    rows = []
    grid = [(s, r) for s in starts for r in ratios]
    bar = ProgressBar(len(grid) * len(pairs), "tune", enabled=progress)
    for start, ratio in grid:
        candidate = config.replace(lambda_start=float(start), lambda_end=float(start) / float(ratio))
        dices, folds, stds = [], [], []
        for (i, j), (fixed_case, moving_case, reference) in cached.items():
            with torch.no_grad():
                displacement = register_cases(None, candidate.registration, fixed_case, moving_case)
                dices.append(hard_dice(fixed_case.labels, warp(moving_case.labels, displacement)))
            stats = jacobian_statistics(voxel_field_to_image(displacement, reference))
            folds.append(stats["negative_jacobian_percent"])
            stds.append(stats["log_jacobian_std"])
            bar.update(bar.done + 1, f"lambda {start:g}->{start / ratio:g} Dice {np.mean(dices):.3f}")
        rows.append({"lambda_start": float(start), "lambda_end": float(start) / float(ratio),
                     "dice": float(np.mean(dices)), "negative_jacobian_percent": float(np.mean(folds)),
                     "log_jacobian_std": float(np.mean(stds)), "pairs": len(cached)})
    bar.close()
    initial = []
    for fixed_case, moving_case, _ in cached.values():
        initial.append(hard_dice(fixed_case.labels, moving_case.labels))
    for row in rows:
        row["dice_initial"] = float(np.mean(initial))
    allowed = [r for r in rows if r["negative_jacobian_percent"] <= max_folding_percent] or rows
    best = max(allowed, key=lambda r: r["dice"])
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return TuningResult(rows, best)


def score_on_training_pairs(config: TrainConfig, model: Optional[torch.nn.Module], n_pairs: int = 6,
                            data: Optional[PreparedData] = None) -> Dict[str, float]:
    """Mean Dice and folding of a model (None: classic GN) on the tuning pairs (whole training volumes)."""
    data = data or prepare_data(config, validation=False)
    dices, folds = [], []
    with torch.no_grad():
        for i, j in tuning_pairs(len(data.training), n_pairs, config.seed):
            dice, displacement = score_pair(config, data, model, data.training[i], data.training[j])
            dices.append(dice)
            folds.append(jacobian_statistics(voxel_field_to_image(displacement, data.training[i].grid))
                         ["negative_jacobian_percent"])
    return {"dice": float(np.mean(dices)), "negative_jacobian_percent": float(np.mean(folds))}
