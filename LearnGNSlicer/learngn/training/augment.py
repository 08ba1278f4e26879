"""Random spatial augmentation: an affine transform plus a smooth elastic field, as sampling coordinates.

The same coordinates resample every volume of a case (distance maps, one-hot labels, image), so the
augmented image and labels stay consistent.  Coordinates are in voxels of the source volume, channels
(z, y, x) like the engine's displacements; an output may be a crop of the source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from ..gauss_newton import identity_grid


@dataclass(frozen=True)
class AugmentOptions:
    rotation_degrees: float = 8.0
    scale: float = 0.08
    translation_mm: float = 8.0
    elastic_mm: float = 6.0
    elastic_spacing_mm: float = 48.0


def _rotation(angles: Sequence[float]) -> torch.Tensor:
    out = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def crop_coordinates(start: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Identity coordinates ``(1, 3, *shape)`` of a crop starting at voxel ``start``."""
    grid = identity_grid(tuple(shape), torch.device("cpu"), torch.float32)
    return grid + torch.tensor([float(s) for s in start]).view(1, 3, 1, 1, 1)


def random_coordinates(start: Sequence[int], shape: Sequence[int], spacing_mm: float, generator: torch.Generator,
                       options: AugmentOptions = AugmentOptions()) -> torch.Tensor:
    """Crop coordinates moved by a random affine (about the crop centre) and a smooth elastic field."""
    coords = crop_coordinates(start, shape)
    centre = torch.tensor([s + (n - 1) / 2.0 for s, n in zip(start, shape)], dtype=torch.float32).view(1, 3, 1, 1, 1)

    def uniform(size, bound):
        return (2 * torch.rand(size, generator=generator, dtype=torch.float64) - 1) * bound

    angles = uniform(3, math.radians(options.rotation_degrees)).tolist()
    scales = 1.0 + uniform(3, options.scale)
    matrix = (_rotation(angles) @ torch.diag(scales)).float()
    translation = uniform(3, options.translation_mm / spacing_mm).float().view(1, 3, 1, 1, 1)
    relative = coords - centre
    moved = torch.einsum("ij,bjzyx->bizyx", matrix, relative) + centre + translation
    if options.elastic_mm > 0:
        control = [max(2, int(round(n * spacing_mm / options.elastic_spacing_mm)) + 1) for n in shape]
        field = torch.randn((1, 3, *control), generator=generator)
        field = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)
        magnitude = field.norm(dim=1).max().clamp_min(1e-6)
        moved = moved + field * (options.elastic_mm / spacing_mm / magnitude)
    return moved


def sample(volume: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``volume`` ``(1, C, D, H, W)`` at voxel ``coords`` ``(1, 3, d, h, w)``, edges replicated."""
    shape = volume.shape[2:]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=coords.dtype).view(1, 3, 1, 1, 1)
    grid = (coords * scale - 1.0).flip(1).permute(0, 2, 3, 4, 1)
    return F.grid_sample(volume, grid.to(volume.dtype), mode=mode, padding_mode="border", align_corners=True)


def crop_start(shape: Sequence[int], crop: Sequence[int], centre: Sequence[float]) -> Tuple[int, int, int]:
    """The start of a crop of size ``crop`` centred near ``centre`` and kept inside the volume if it fits."""
    out = []
    for n, c, m in zip(shape, centre, crop):
        s = int(round(c - (m - 1) / 2.0))
        s = min(max(s, 0), max(n - m, 0)) if m <= n else -((m - n) // 2)
        out.append(s)
    return tuple(out)  # type: ignore[return-value]
