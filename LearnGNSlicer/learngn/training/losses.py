"""Training losses: weak label supervision of the warped moving labels, and smoothness of the field."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(D, H, W)`` integers -> ``(1, n_classes, D, H, W)`` float."""
    return F.one_hot(labels.long().clamp(0, n_classes - 1), n_classes).permute(3, 0, 1, 2)[None].float()


def soft_dice(warped: torch.Tensor, fixed: torch.Tensor, present: Optional[torch.Tensor] = None,
              eps: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over the foreground classes (channel 0 is background); ``present`` masks classes."""
    dims = (0, 2, 3, 4)
    intersection = (warped * fixed).sum(dims)
    total = warped.sum(dims) + fixed.sum(dims)
    dice = (2 * intersection + eps) / (total + eps)
    dice = dice[1:]
    if present is not None:
        keep = present[1:].bool()
        return dice[keep].mean() if keep.any() else dice.mean()
    return dice.mean()


def weighted_cross_entropy(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of warped soft labels against the fixed one-hot, classes weighted by 1/frequency."""
    frequency = fixed.mean((0, 2, 3, 4)).clamp_min(1e-4)
    weights = (1.0 / frequency) / (1.0 / frequency).sum()
    log_probability = torch.log(warped.clamp_min(1e-6))
    per_class = -(fixed * log_probability).mean((0, 2, 3, 4))
    return (weights * per_class / frequency).sum()


def smoothness(displacement: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a ``(1, 3, D, H, W)`` displacement (diffusion energy, voxels)."""
    dz = displacement[:, :, 1:] - displacement[:, :, :-1]
    dy = displacement[:, :, :, 1:] - displacement[:, :, :, :-1]
    dx = displacement[:, :, :, :, 1:] - displacement[:, :, :, :, :-1]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Determinant of ``I + grad u`` (forward differences, voxels) of a ``(1, 3, D, H, W)`` displacement."""
    u = displacement[0]
    dz = (u[:, 1:, :-1, :-1] - u[:, :-1, :-1, :-1])
    dy = (u[:, :-1, 1:, :-1] - u[:, :-1, :-1, :-1])
    dx = (u[:, :-1, :-1, 1:] - u[:, :-1, :-1, :-1])
    # rows: components (z, y, x); columns: derivative axes (z, y, x)
    a, b, c = 1 + dz[0], dy[0], dx[0]
    d, e, f = dz[1], 1 + dy[1], dx[1]
    g, h, i = dz[2], dy[2], 1 + dx[2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def folding(displacement: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Mean of ``relu(margin - det J)``: zero unless the field comes close to folding."""
    return torch.relu(margin - jacobian_determinant(displacement)).mean()
