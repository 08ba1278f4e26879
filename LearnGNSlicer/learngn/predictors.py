"""Compact CNNs that predict the Gauss-Newton terms: the Jacobian J and the residual f.

Each predictor sees one feature channel at a time (the warped moving and the fixed channel), so one
model serves any number of channels (12 MIND channels, one distance map per organ, ...).  A predictor
is two linear 3x3x3 convolutions initialised to a stencil (central differences for J, the difference
warped minus fixed for f, then identity) plus a small non-linear branch whose output layer starts at
zero: an untrained predictor is exactly classic Gauss-Newton, and training can only add to it.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN_CHANNELS = 8


def central_differences(volume: torch.Tensor) -> torch.Tensor:
    """Derivatives along the three array axes, edges replicated: ``(N, 1, ...) -> (N, 3, ...)``."""
    p = F.pad(volume, (1, 1, 1, 1, 1, 1), mode="replicate")
    dz = p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]
    dy = p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]
    dx = p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]
    return 0.5 * torch.cat([dz, dy, dx], dim=1)


def _difference_stencils() -> torch.Tensor:
    """Weights (3, 2, 3, 3, 3) of central differences of the first input channel (warped moving)."""
    weight = torch.zeros(3, 2, 3, 3, 3)
    for axis in range(3):
        low = [1, 1, 1]
        high = [1, 1, 1]
        low[axis], high[axis] = 0, 2
        weight[(axis, 0) + tuple(low)] = -0.5
        weight[(axis, 0) + tuple(high)] = 0.5
    return weight


def _residual_stencil() -> torch.Tensor:
    """Weights (1, 2, 3, 3, 3) of warped minus fixed at the centre voxel."""
    weight = torch.zeros(1, 2, 3, 3, 3)
    weight[0, 0, 1, 1, 1] = 1.0
    weight[0, 1, 1, 1, 1] = -1.0
    return weight


def _identity_stencil(channels: int) -> torch.Tensor:
    weight = torch.zeros(channels, channels, 3, 3, 3)
    for c in range(channels):
        weight[c, c, 1, 1, 1] = 1.0
    return weight


class StencilPredictor(nn.Module):
    """Two stencil-initialised linear convolutions plus a zero-initialised non-linear branch."""

    def __init__(self, first_stencil: torch.Tensor):
        super().__init__()
        out_channels, in_channels = first_stencil.shape[:2]
        self.first = nn.Conv3d(in_channels, out_channels, 3, bias=False)
        self.second = nn.Conv3d(out_channels, out_channels, 3, bias=False)
        self.branch_in = nn.Conv3d(in_channels, HIDDEN_CHANNELS, 3)
        self.branch_out = nn.Conv3d(HIDDEN_CHANNELS, out_channels, 1)
        with torch.no_grad():
            self.first.weight.copy_(first_stencil)
            self.second.weight.copy_(_identity_stencil(out_channels))
            nn.init.zeros_(self.branch_out.weight)
            nn.init.zeros_(self.branch_out.bias)

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        linear = self.second(self._pad(self.first(self._pad(pair))))
        branch = self.branch_out(F.leaky_relu(self.branch_in(self._pad(pair)), 0.1))
        return linear + branch


class GaussNewtonPredictors(nn.Module):
    """The learned model: predictors of J (3 outputs) and f (1 output) per feature channel."""

    def __init__(self) -> None:
        super().__init__()
        self.jacobian = StencilPredictor(_difference_stencils())
        self.residual = StencilPredictor(_residual_stencil())

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``warped``, ``fixed``: ``(N, 1, D, H, W)``; returns f ``(N, 1, ...)`` and J ``(N, 3, ...)``."""
        pair = torch.cat([warped, fixed], dim=1)
        return self.residual(pair), self.jacobian(pair)


def classic_terms(warped: torch.Tensor, fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Classic Gauss-Newton terms (what an untrained predictor computes), without convolutions."""
    return warped - fixed, central_differences(warped)


def state_dict_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
