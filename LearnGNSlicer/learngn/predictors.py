"""Compact CNNs that predict the Gauss-Newton terms: the Jacobian J and the residual f.

Each predictor sees one feature channel at a time (the warped moving and the fixed channel), so one
model serves any number of channels (12 MIND channels, one distance map per organ, ...).  A predictor
is two linear 3x3x3 convolutions initialised to a stencil (central differences for J, the difference
warped minus fixed for f, then identity) plus a small non-linear branch whose output layer starts at
zero: an untrained predictor is exactly classic Gauss-Newton, and training can only add to it.

For speed the two predictors run as one network: the convolutions of both that read the input pair run
as one convolution with their weights stacked (one for the linear path, one for the branches), and the
second and output layers as block-diagonal convolutions. The parameters (and so the saved weights) stay
those of the two separate predictors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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


@dataclass(frozen=True)
class FeatureNetKind:
    """What a feature network reads and corrects, and where its soft windows start."""

    outputs: int                        # corrections per voxel
    window_centres: Tuple[float, float]
    window_slope: float


#: ``mind``: reads the normalised intensity and corrects the 12 MIND channels; its windows cover the
#: soft-tissue part of the CT window (-250 to 500 HU), where organs differ by tens of HU.
#: ``sdm``: reads each signed distance map (in [-1, 1]) and corrects that map, the same network for every
#: organ, so it reshapes the distance profile that drives Gauss-Newton.
FEATURE_NET_KINDS: Dict[str, FeatureNetKind] = {
    "mind": FeatureNetKind(12, (0.3, 0.6), 60.0),
    "sdm": FeatureNetKind(1, (-1.0, 1.0), 8.0),
}
WINDOWS = 16


class FeatureNet(nn.Module):
    """A compact CNN that adds learned corrections to the features before Gauss-Newton.

    MIND is invariant to absolute intensity, yet absolute intensity is what tells organs apart in CT; a
    distance map's profile fixes how far and how hard each organ pulls.  The network starts with a bank of
    soft windows of its input (a 1x1x1 convolution and tanh, evenly spaced centres), mixes them over a
    3x3x3 neighbourhood into ``width`` channels, then (``depth`` > 1) widens its view with residual
    3x3x3 convolutions dilated by 2 (each adds 4 voxels of context, so a correction can depend on the
    tissue around a voxel, not only on its own), and adds one correction per feature channel.  It runs
    once per image, not once per Gauss-Newton step, so its size costs a registration little.  Its output
    layer starts at zero, so an untrained network leaves the features, and classic Gauss-Newton, as
    they are.
    """

    def __init__(self, kind: str = "mind", width: int = HIDDEN_CHANNELS, depth: int = 1,
                 reads_features: bool = False) -> None:
        super().__init__()
        if kind not in FEATURE_NET_KINDS:
            raise ValueError(f"unknown feature network kind {kind!r}; use {', '.join(FEATURE_NET_KINDS)}")
        if width < 1 or depth < 1:
            raise ValueError(f"a feature network needs width and depth >= 1, not {width} and {depth}")
        if reads_features and kind != "mind":
            raise ValueError("only the MIND feature network reads the features beside its input")
        self.kind = kind
        spec = FEATURE_NET_KINDS[kind]
        self.windows = nn.Conv3d(1, WINDOWS, 1)
        inputs = WINDOWS + (spec.outputs if reads_features else 0)
        self.mix = nn.Conv3d(inputs, width, 3, padding=1, padding_mode="replicate")
        self.context = nn.ModuleList(nn.Conv3d(width, width, 3, padding=2, dilation=2, padding_mode="replicate")
                                     for _ in range(depth - 1))
        self.out = nn.Conv3d(width, spec.outputs, 1)
        with torch.no_grad():
            self.windows.weight.fill_(spec.window_slope)
            self.windows.bias.copy_(-spec.window_slope * torch.linspace(*spec.window_centres, WINDOWS))
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def width(self) -> int:
        return self.mix.out_channels

    @property
    def depth(self) -> int:
        return 1 + len(self.context)

    @property
    def reads_features(self) -> bool:
        """True when the corrections depend on the MIND channels too, not on the intensity alone: only
        then can the network scale MIND where it misleads (an additive correction of the intensity
        alone cannot)."""
        return self.mix.in_channels > WINDOWS

    def _correction(self, source: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        bank = torch.tanh(self.windows(source))
        if self.reads_features:
            bank = torch.cat([bank, features], dim=1)
        hidden = F.leaky_relu(self.mix(bank), 0.1)
        for layer in self.context:
            hidden = hidden + F.leaky_relu(layer(hidden), 0.1)
        return self.out(hidden)

    def refine(self, features: torch.Tensor, intensity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features ``(1, C, ...)`` (MIND, with its ``intensity`` ``(1, 1, ...)`` in [0, 1]; or distance
        maps) -> corrected features of the same shape."""
        if self.kind == "sdm":
            per_channel = features.transpose(0, 1)  # each map through the same network: (C, 1, ...)
            return (per_channel + self._correction(per_channel)).transpose(0, 1)
        if intensity is None:
            raise ValueError("the MIND feature network needs the intensity image")
        if features.shape[1] != self.out.out_channels:
            raise ValueError(f"the feature network corrects {self.out.out_channels} MIND channels, "
                             f"the input has {features.shape[1]}")
        return features + self._correction(intensity, features)


def refined(model: Optional["GaussNewtonPredictors"], kind: str, features: torch.Tensor,
            intensity: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``features`` of ``kind`` (mind, sdm) through the model's feature network if it has one of that kind."""
    network = model.features if model is not None else None
    return network.refine(features, intensity) if network is not None and network.kind == kind else features


def feature_net_kind(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The kind of feature network a saved state dict holds (None: no feature network)."""
    out = state.get("features.out.weight")
    if out is None:
        return None
    return next((k for k, spec in FEATURE_NET_KINDS.items() if spec.outputs == out.shape[0]), "mind")


def feature_net_size(state: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """The (width, depth) of the feature network a saved state dict holds; (8, 1) is the first models'."""
    mix = state.get("features.mix.weight")
    width = int(mix.shape[0]) if mix is not None else HIDDEN_CHANNELS
    depth = 1 + len({key.split(".")[2] for key in state if key.startswith("features.context.")})
    return width, depth


def feature_net_reads_features(state: Dict[str, torch.Tensor]) -> bool:
    """Whether the saved feature network reads the MIND channels beside the intensity (the first models do not)."""
    mix = state.get("features.mix.weight")
    return mix is not None and int(mix.shape[1]) > WINDOWS


def predictors_for(state: Dict[str, torch.Tensor]) -> "GaussNewtonPredictors":
    """An untrained model of the shape that a saved state dict holds (its feature network's kind and size)."""
    width, depth = feature_net_size(state)
    return GaussNewtonPredictors(feature_net=feature_net_kind(state), feature_width=width, feature_depth=depth,
                                 feature_reads_features=feature_net_reads_features(state))


class GaussNewtonPredictors(nn.Module):
    """The learned model: predictors of J (3 outputs) and f (1 output) per feature channel, and optionally
    a feature network applied to the features before registration (``features``; None when not part of
    the model; ``feature_net`` names its kind, ``mind`` or ``sdm``, ``feature_width`` and ``feature_depth``
    its size, ``feature_reads_features`` whether it reads MIND beside the intensity)."""

    def __init__(self, feature_net: Optional[str] = None, feature_width: int = HIDDEN_CHANNELS,
                 feature_depth: int = 1, feature_reads_features: bool = False) -> None:
        super().__init__()
        self.jacobian = StencilPredictor(_difference_stencils())
        self.residual = StencilPredictor(_residual_stencil())
        self.features = (FeatureNet(feature_net, feature_width, feature_depth, feature_reads_features)
                         if feature_net else None)

    def computes_classic_terms(self) -> bool:
        """True when J and f are still the stencils of classic GN (e.g. a model that trained only its feature
        network): Gauss-Newton can then use the faster ``classic_terms``."""
        stencils = {"jacobian": _difference_stencils(), "residual": _residual_stencil()}
        with torch.no_grad():
            for name, first in stencils.items():
                part: StencilPredictor = getattr(self, name)
                second = _identity_stencil(first.shape[0])
                if (_branch_is_nonzero(part) or not torch.equal(part.first.weight.cpu(), first)
                        or not torch.equal(part.second.weight.cpu(), second)):
                    return False
        return True

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``warped``, ``fixed``: ``(N, 1, D, H, W)``; returns f ``(N, 1, ...)`` and J ``(N, 3, ...)``.

        Computes exactly what ``residual(pair), jacobian(pair)`` computes, in four convolutions instead
        of eight; a branch whose output layer is all zero is skipped unless it is being trained.
        """
        # channels-last: oneDNN's convolutions are about twice as fast with it for these few channels
        pair = StencilPredictor._pad(torch.cat([warped, fixed], dim=1)).contiguous(
            memory_format=torch.channels_last_3d)
        parts = {"jacobian": self.jacobian, "residual": self.residual}
        first = F.conv3d(pair, torch.cat([p.first.weight for p in parts.values()]))
        linear = F.conv3d(StencilPredictor._pad(first), _block_diagonal([p.second.weight for p in parts.values()]))
        terms = dict(zip(parts, torch.split(linear, [p.first.out_channels for p in parts.values()], dim=1)))
        branches = {n: p for n, p in parts.items()
                    if (torch.is_grad_enabled() and p.branch_out.weight.requires_grad) or _branch_is_nonzero(p)}
        if branches:
            hidden = F.conv3d(pair, torch.cat([p.branch_in.weight for p in branches.values()]),
                              torch.cat([p.branch_in.bias for p in branches.values()]))
            branch = F.conv3d(F.leaky_relu(hidden, 0.1),
                              _block_diagonal([p.branch_out.weight for p in branches.values()]),
                              torch.cat([p.branch_out.bias for p in branches.values()]))
            sizes = [p.first.out_channels for p in branches.values()]
            for name, extra in zip(branches, torch.split(branch, sizes, dim=1)):
                terms[name] = terms[name] + extra
        return terms["residual"], terms["jacobian"]


def _branch_is_nonzero(part: StencilPredictor) -> bool:
    return bool(part.branch_out.weight.any() or part.branch_out.bias.any())


def _block_diagonal(weights: List[torch.Tensor]) -> torch.Tensor:
    """Convolution weights ``(out_i, in_i, k...)`` as one ``(sum out, sum in, k...)`` weight with zero
    off-diagonal blocks: one convolution applies each to its own input channels."""
    out = weights[0].new_zeros((sum(w.shape[0] for w in weights), sum(w.shape[1] for w in weights),
                                *weights[0].shape[2:]))
    row = col = 0
    for w in weights:
        out[row:row + w.shape[0], col:col + w.shape[1]] = w
        row, col = row + w.shape[0], col + w.shape[1]
    return out


def classic_terms(warped: torch.Tensor, fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Classic Gauss-Newton terms (what an untrained predictor computes), without convolutions."""
    return warped - fixed, central_differences(warped)


def state_dict_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
