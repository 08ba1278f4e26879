"""Synthetic CT-like images from label maps (SynthMorph-style), so a model can be trained without images.

Every label gets a random intensity (Hounsfield-like units), the space around the organs a random
"body" tissue value and air beyond it; then within-label texture, noise, a smooth multiplicative bias
field and a blur.  ``mode="random"`` draws organ intensities uniformly (domain randomisation, for
training), lets some labels share one intensity (tissues that look alike) and resamples the image through
thick slices along a random axis (scans of another resolution); ``mode="ct"`` uses typical contrast-enhanced CT values of the 13 Learn2Reg abdomen organs
with a small jitter (a fixed, realistic appearance for evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..features import gaussian_smooth

#: Typical portal-venous CT values (HU) of the Learn2Reg abdomen labels 1..13.
ABDOMEN_CT_HU: Dict[int, float] = {1: 110.0, 2: 160.0, 3: 160.0, 4: 10.0, 5: 45.0, 6: 100.0, 7: 25.0, 8: 170.0,
                                   9: 140.0, 10: 150.0, 11: 80.0, 12: 35.0, 13: 35.0}
AIR_HU = -1000.0
BODY_HU = 10.0


@dataclass(frozen=True)
class SynthesisOptions:
    organ_range_hu: tuple = (-150.0, 300.0)   # uniform organ intensities ("random" mode)
    body_range_hu: tuple = (-120.0, 60.0)     # tissue around the organs ("random" mode)
    ct_jitter_hu: float = 10.0                # jitter of the table values ("ct" mode)
    body_margin_mm: tuple = (20.0, 40.0)      # how far the body extends beyond the organs
    texture_hu: tuple = (0.0, 25.0)           # std of the smooth within-label texture
    noise_hu: tuple = (0.0, 25.0)             # std of white noise
    bias: tuple = (0.0, 0.08)                 # std of the log bias field
    blur_voxels: tuple = (0.0, 0.8)           # Gaussian blur sigma
    merge_probability: float = 0.25           # a label takes another label's intensity ("random" mode)
    slice_thickness: tuple = (1.0, 3.0)       # voxels per slice along one random axis ("random" mode)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def synthetic_ct(labels: torch.Tensor, generator: torch.Generator, *, spacing_mm: float, mode: str = "random",
                 options: SynthesisOptions = SynthesisOptions(), n_labels: Optional[int] = None) -> torch.Tensor:
    """A CT-like image ``(1, 1, D, H, W)`` (HU) of an integer label map ``(D, H, W)``."""
    if mode not in ("random", "ct"):
        raise ValueError(f"unknown synthesis mode {mode!r}; use random or ct")
    labels = labels.long()
    n = int(n_labels if n_labels is not None else int(labels.max()) + 1)
    organs = (labels > 0).float()[None, None]
    margin_mm = _uniform(generator, *options.body_margin_mm)
    blob = gaussian_smooth(organs, max(margin_mm / spacing_mm / 2.0, 0.5))
    body = blob > 0.02

    if mode == "random":
        low, high = options.organ_range_hu
        values = low + (high - low) * torch.rand(n, generator=generator)
        if n > 2:  # merges: a model must not rely on every organ having a contrast of its own
            merged = torch.rand(n, generator=generator) < options.merge_probability
            values = torch.where(merged, values[torch.randint(1, n, (n,), generator=generator)], values)
        body_value = _uniform(generator, *options.body_range_hu)
    else:
        jitter = options.ct_jitter_hu * torch.randn(n, generator=generator)
        values = torch.tensor([ABDOMEN_CT_HU.get(i, 60.0) for i in range(n)]) + jitter
        body_value = BODY_HU + float(jitter[0])
    values[0] = body_value
    image = values[labels.clamp(0, n - 1)][None, None]
    image = torch.where(body | (organs > 0), image, torch.full_like(image, AIR_HU))

    inside = (body | (organs > 0)).float()
    texture = gaussian_smooth(torch.randn(image.shape, generator=generator), 1.5)
    texture = texture / texture.std().clamp_min(1e-6)
    image = image + inside * texture * _uniform(generator, *options.texture_hu)
    log_bias = F.interpolate(torch.randn((1, 1, 4, 4, 4), generator=generator), size=labels.shape,
                             mode="trilinear", align_corners=True) * _uniform(generator, *options.bias)
    image = (image - AIR_HU) * torch.exp(log_bias) + AIR_HU
    image = gaussian_smooth(image, _uniform(generator, *options.blur_voxels))
    if mode == "random":
        axis = int(torch.randint(0, 3, (), generator=generator))
        image = thick_slices(image, _uniform(generator, *options.slice_thickness), axis)
    image = image + torch.randn(image.shape, generator=generator) * _uniform(generator, *options.noise_hu)
    return image


def thick_slices(image: torch.Tensor, thickness: float, axis: int) -> torch.Tensor:
    """``image`` ``(1, 1, D, H, W)`` as a scan with ``thickness`` voxels per slice along ``axis`` would show
    it: averaged over slices along that axis, then linearly back to its grid."""
    size = list(image.shape[2:])
    slices = max(1, int(round(size[axis] / thickness)))
    if thickness <= 1.0 or slices == size[axis]:
        return image
    coarse = list(size)
    coarse[axis] = slices
    down = F.interpolate(image, size=coarse, mode="area")
    return F.interpolate(down, size=size, mode="trilinear", align_corners=True)


def case_seed(name: str) -> int:
    """The seed of a case's fixed synthetic CT: the digits of its name (``0007`` -> 7), so training and
    evaluation make the same image of a case."""
    return int("".join(ch for ch in name if ch.isdigit()) or 0)


def synthetic_ct_image(label_image, seed: int, mode: str = "ct"):
    """A SimpleITK CT-like image on the grid of a SimpleITK label map (for evaluation and demos)."""
    import SimpleITK as sitk

    labels = torch.from_numpy(sitk.GetArrayFromImage(label_image).astype(np.int64))
    generator = torch.Generator().manual_seed(int(seed))
    hu = synthetic_ct(labels, generator, spacing_mm=float(min(label_image.GetSpacing())), mode=mode,
                      n_labels=max(14, int(labels.max()) + 1))
    out = sitk.GetImageFromArray(hu[0, 0].numpy().astype(np.float32))
    out.CopyInformation(label_image)
    return out
