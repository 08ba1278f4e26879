"""Representations the registration compares: normalised intensity, MIND-SSC, signed distance maps.

All functions take and return torch tensors shaped ``(1, C, D, H, W)`` on the working grid, which is
isotropic, so distances in voxels times the spacing are millimetres.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FEATURE_TYPES = ("intensity", "mind", "sdm")

#: HU window mapped to [0, 1] for CT: air to dense bone.
CT_WINDOW = (-1000.0, 1500.0)
#: Robust percentiles mapped to [0, 1] for MR and other arbitrary-unit images.
MR_PERCENTILES = (0.5, 99.5)


def looks_like_ct(values: np.ndarray) -> bool:
    """CT in Hounsfield units has air near -1000; other modalities are rarely that negative."""
    return float(np.percentile(values, 1)) < -500.0 and float(values.max()) > 0.0


def intensity_window(values: np.ndarray, normalisation: str) -> Tuple[float, float]:
    """The (low, high) intensities mapped to 0 and 1: a HU window for CT, robust percentiles else."""
    if normalisation == "auto":
        normalisation = "ct" if looks_like_ct(values) else "mr"
    if normalisation == "ct":
        return CT_WINDOW
    if normalisation != "mr":
        raise ValueError(f"unknown intensity normalisation {normalisation!r}; use auto, ct or mr")
    low, high = np.percentile(values, MR_PERCENTILES)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def normalise_intensity(image: torch.Tensor, window: Tuple[float, float]) -> torch.Tensor:
    low, high = window
    return ((image - low) / (high - low)).clamp(0.0, 1.0)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(np.ceil(2.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _accumulate_tap(result: torch.Tensor, source: torch.Tensor, dim: int, offset: int, weight: float,
                    first: bool) -> None:
    """``result[i] (+)= weight * source[clamp(i + offset)]`` along ``dim``: the tap of a filter whose input is
    padded by replicating its edges, without the padded copy (outputs that read beyond an edge read the edge)."""
    n = source.shape[dim]
    low = min(n, max(0, -offset))             # outputs before it read the first plane
    high = max(low, min(n, n - offset))       # outputs from it on read the last plane
    for start, length, values in ((low, high - low, None), (0, low, 0), (high, n - high, n - 1)):
        if length == 0:
            continue
        target = result.narrow(dim, start, length)
        if values is None:
            read = source.narrow(dim, start + offset, length)
        else:  # the edge plane repeated, as a copy: a broadcast operand can round differently (1 ulp)
            read = source.narrow(dim, values, 1).expand_as(target).contiguous()
        if first:
            torch.mul(read, weight, out=target)
        else:
            target.add_(read, alpha=weight)


def _smooth_axis_over_padded_copy(volume: torch.Tensor, kernel: List[float], axis: int) -> torch.Tensor:
    """One pass by the definition: pad by replicating the edges, sum the shifted views in tap order
    (differentiable; it holds a padded copy)."""
    radius = len(kernel) // 2
    dim, size = 2 + axis, volume.shape[2 + axis]
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
    padded = F.pad(volume, pad, mode="replicate")
    out = padded.narrow(dim, 0, size) * kernel[0]
    for tap in range(1, len(kernel)):
        out.add_(padded.narrow(dim, tap, size), alpha=kernel[tap])
    return out


def gaussian_smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of every channel, edges replicated.

    Each pass is a weighted sum of shifted views rather than a grouped ``conv3d`` (about twice as fast on the
    CPU for many channels).  Without gradients it reads the edges where a tap falls outside instead of
    padding a copy: the same bits, and it holds only the pass's input and output (MIND smooths 12 channels
    of the working grid, the features' peak of memory)."""
    if sigma <= 0:
        return volume
    kernel = _gaussian_kernel(sigma, volume.device, volume.dtype).tolist()
    radius = len(kernel) // 2
    if torch.is_grad_enabled() and volume.requires_grad:
        for axis in range(3):
            volume = _smooth_axis_over_padded_copy(volume, kernel, axis)
        return volume
    out = volume
    del volume  # a caller that passes a temporary lets it go after the first pass
    for axis in range(3):
        source, out = out, torch.empty_like(out)
        for tap, weight in enumerate(kernel):
            _accumulate_tap(out, source, 2 + axis, tap - radius, weight, first=tap == 0)
        del source
    return out


def _ssc_pairs(dilation: int) -> Iterable[Tuple[Tuple[int, int, int], Tuple[int, int, int]]]:
    """The 12 pairs of six-neighbourhood positions that are sqrt(2) apart (self-similarity context)."""
    six = [(dilation, 0, 0), (-dilation, 0, 0), (0, dilation, 0), (0, -dilation, 0), (0, 0, dilation), (0, 0, -dilation)]
    for i, a in enumerate(six):
        for b in six[i + 1:]:
            squared = sum((p - q) ** 2 for p, q in zip(a, b))
            if squared == 2 * dilation ** 2:
                yield a, b


def mind_ssc(image: torch.Tensor, *, dilation: int = 2, sigma: float = 0.8) -> torch.Tensor:
    """Modality independent neighbourhood descriptor, self-similarity context (12 channels in [0, 1]).

    Patch distances between the pairs of the six-neighbourhood, normalised by their local variance and
    mapped through exp(-D/V), so images of different modalities give comparable descriptors.
    """
    padded = F.pad(image, (dilation,) * 6, mode="replicate")  # every offset is at most `dilation` long
    size = image.shape[2:]

    def shifted(offset: Tuple[int, int, int]) -> torch.Tensor:
        """The image translated by ``offset`` voxels, edges replicated (a view of ``padded``)."""
        z, y, x = (dilation + o for o in offset)
        return padded[:, :, z:z + size[0], y:y + size[1], x:x + size[2]]

    pairs = list(_ssc_pairs(dilation))
    # the 12 squared differences written into one tensor, then worked on in place: on a 6 M-voxel working
    # grid every 12-channel temporary is 288 MB, and the features are the registration's peak of memory
    differences = image.new_empty((image.shape[0], len(pairs), *size))
    for channel, (a, b) in enumerate(pairs):
        torch.sub(shifted(a), shifted(b), out=differences[:, channel:channel + 1]).pow_(2)
    del padded
    d = gaussian_smooth(differences, sigma)  # the 12 channels in one pass
    del differences
    d.sub_(d.min(dim=1, keepdim=True).values)
    variance = d.mean(dim=1, keepdim=True)
    mean_variance = variance.mean()
    variance = variance.clamp(float(mean_variance) * 1e-3 + 1e-12, float(mean_variance) * 1e3 + 1e-12)
    return d.div_(variance).neg_().exp_()


def signed_distance_maps(labels: np.ndarray, label_values: Sequence[int], spacing_mm: float,
                         clip_mm: float = 40.0) -> np.ndarray:
    """One channel per label: (sqrt(distance inside) - sqrt(distance outside)) / sqrt(clip), in [-1, 1].

    The square root (as in the paper) keeps boundaries sharp and far regions flat; distances beyond
    ``clip_mm`` carry no information for registration, so each label is processed inside its bounding
    box plus that margin, which keeps this fast on large volumes.
    """
    out = np.full((len(label_values),) + labels.shape, -1.0, dtype=np.float32)
    margin = int(np.ceil(clip_mm / spacing_mm)) + 1
    scale = np.sqrt(clip_mm)
    for channel, value in enumerate(label_values):
        foreground = labels == value
        if not foreground.any():
            continue
        coords = np.nonzero(foreground)
        box = tuple(slice(max(0, int(c.min()) - margin), int(c.max()) + margin + 1) for c in coords)
        inside = foreground[box]
        dist_in = ndimage.distance_transform_edt(inside, sampling=spacing_mm)
        dist_out = ndimage.distance_transform_edt(~inside, sampling=spacing_mm)
        sdm = (np.sqrt(np.minimum(dist_in, clip_mm)) - np.sqrt(np.minimum(dist_out, clip_mm))) / scale
        out[(channel,) + box] = sdm
    return out


def union_labels(*label_maps: Optional[np.ndarray]) -> list:
    """Non-zero labels present in any of the maps, sorted: the channels of the distance maps."""
    values: set = set()
    for labels in label_maps:
        if labels is not None:
            values.update(int(v) for v in np.unique(labels) if v != 0)
    return sorted(values)
