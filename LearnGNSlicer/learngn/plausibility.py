"""Plausibility checks: is the pairing sensible, and is the result believable?

A registration always returns *some* field.  These checks catch the ones nobody should trust: scans of
different body regions squeezed onto each other, a pre-alignment that shrinks or shears the anatomy, a field
that changes the volume throughout or folds, a registration that lowers the similarity.

Every figure has a plausible range (nothing is said), a grey zone (a :class:`PlausibilityWarning`, which
lands in ``result.warnings`` and so in summary.json, on the terminal, in the report's title and in the
Slicer status line) and, for most, a hard limit (an :class:`ImplausibleRegistration`, an
:class:`~learngn.errors.InputError`, so exit code 2 on the command line).  The pairing is judged right after
the pre-alignment, before the long work; the field and the similarity once the result exists.  The figures
are added to ``result.metrics``.  ``LEARNGN_PLAUSIBILITY=warn`` turns the errors into warnings and
``LEARNGN_PLAUSIBILITY=off`` skips the checks, for a pairing known to be unusual.
The limits and why each has its value: :class:`PlausibilityLimits` and docs/ENGINE_API.md.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError
from .geometry import compose_to_field, voxel_field_to_image, voxel_field_to_physical, working_grid, working_spacing
from .prealign import block_average
from .quality import field_jacobian_determinant, jacobian_determinant
from .sampling import linear_matrix, ones_on_grid, resample

#: Environment variable that sets what the hard limits do: error (default), warn or off (no checks).
MODE_VARIABLE = "LEARNGN_PLAUSIBILITY"
MODES = ("error", "warn", "off")
#: Voxels of the coarse grid (on the fixed image's extent) the overlap figures are measured on: content
#: overlap is a body-scale question, and 64^3 voxels keep the check well under a second.
CHECK_VOXELS = 64 ** 3
#: How to run anyway, appended to every error.
OVERRIDE_HINT = f"to register anyway, set the environment variable {MODE_VARIABLE}=warn"

INF = math.inf


class ImplausibleRegistration(InputError):
    """A pairing or a result beyond a hard plausibility limit; the message names the figure and the remedy."""


class PlausibilityWarning(UserWarning):
    """A pairing or a result in the grey zone of a plausibility figure."""


@dataclass(frozen=True)
class Band:
    """Values within ``plausible`` pass, within ``possible`` give a warning, outside it an error."""

    plausible: Tuple[float, float]
    possible: Tuple[float, float] = (-INF, INF)

    def verdict(self, value: float) -> Optional[str]:
        """None (plausible or not a number), "warning" or "error"."""
        if not math.isfinite(value) or self.plausible[0] <= value <= self.plausible[1]:
            return None
        return "warning" if self.possible[0] <= value <= self.possible[1] else "error"

    def describe(self) -> str:
        low, high = self.plausible
        if high == INF:
            return f"at least {low:g}"
        return f"at most {high:g}" if low in (0.0, -INF) else f"{low:g} to {high:g}"


@dataclass(frozen=True)
class PlausibilityLimits:
    """Plausible ranges and hard limits of the figures.  Measured on the shared real scans (docs/ENGINE_API.md):
    good pairs (a CT and a shifted copy; brain MRIs of different people) stay well inside every plausible
    range; the thorax CT against another person's abdomen-pelvis CT leaves two of them."""

    #: Normalised intensity (the registration's [0, 1] window) above which a voxel is content rather than
    #: background: -625 HU on CT (tissue, not air or lung), 15% of the robust range on MR (above noise).
    content_threshold: float = 0.15
    #: Share of the smaller field of view that lies inside the other after pre-alignment.  Under half means
    #: most of the scan has no counterpart; under 10% there is nothing left to register.
    extent_overlap: Band = Band((0.5, INF), (0.1, INF))
    #: Dice of the two images' content where both fields of view meet, after pre-alignment.  A scan and a
    #: moved copy reach 0.98, brains of different people 0.91 to 0.94; a thorax and another person's abdomen
    #: 0.72 to 0.78.  Under 0.3 the contents are mostly disjoint (a whole head against a skull-stripped brain: 0.45).
    content_overlap: Band = Band((0.85, INF), (0.3, INF))
    #: Principal stretches of the pre-alignment's matrix.  People's anatomy differs in size by up to about
    #: 20% per axis (brains of different people: 0.95 to 1.04); 0.6 or 1.6 is a fit to the wrong structure.
    axis_scale: Band = Band((0.8, 1.25), (0.6, 1.6))
    #: Largest shear of the pre-alignment's matrix (QR decomposition: matrix = rotation x upper triangle;
    #: off-diagonal over diagonal).  Anatomy is not sheared: brains of different people show at most 0.08;
    #: 0.2 is 11 degrees, 0.5 is 27 degrees.
    shear: Band = Band((0.0, 0.2), (0.0, 0.5))
    #: Median Jacobian determinant of the whole result (pre-alignment included) where both images have
    #: content: the volume ratio moving/fixed it implies.  Different adults reach about +-30%; 0.5 and 2 are
    #: the pre-alignment's own limits (learngn.prealign.PLAUSIBLE_DETERMINANT).
    volume_change: Band = Band((0.7, 1.43), (0.5, 2.0))
    #: % of voxels where the field folds (negative Jacobian determinant).  Good results fold well under 0.1%;
    #: beyond 10% the transform is not invertible in a tenth of the volume.
    folding_percent: Band = Band((0.0, 1.0), (0.0, 10.0))
    #: NCC after registration minus NCC after pre-alignment.  Good pairs change by -0.01 to +0.04.  A warning
    #: only: NCC cannot judge images of different modalities, where the registration may rightly lower it.
    similarity_change: Band = Band((-0.05, INF))


LIMITS = PlausibilityLimits()


@dataclass
class Finding:
    """One figure outside its plausible range."""

    verdict: str
    problem: str
    remedy: str

    def message(self) -> str:
        if self.verdict == "error":
            return f"implausible registration: {self.problem}. {self._remedy()}; {OVERRIDE_HINT}"
        return f"suspicious registration: {self.problem}. {self._remedy()}"

    def _remedy(self) -> str:
        return self.remedy[:1].upper() + self.remedy[1:]


@dataclass
class PairingCheck:
    """What the check after pre-alignment found, for the check of the result: the coarse grid and where
    both images have content on it (where volume change is judged), and the figures so far."""

    grid: sitk.Image
    region: np.ndarray
    figures: Dict[str, float] = field(default_factory=dict)


def mode() -> str:
    """The plausibility mode from ``LEARNGN_PLAUSIBILITY``: error (default), warn or off."""
    value = os.environ.get(MODE_VARIABLE, "error").strip().lower() or "error"
    if value not in MODES:
        raise InputError(f"{MODE_VARIABLE}={value!r} is not a plausibility mode; use one of {', '.join(MODES)}")
    return value


def raise_or_warn(findings: List[Finding], how: Optional[str] = None) -> None:
    """Raise the errors (all in one message) unless ``how`` is warn; warn about the rest."""
    how = how or mode()
    errors = [f for f in findings if f.verdict == "error"]
    if errors and how == "error":
        raise ImplausibleRegistration(" ".join(f.message() for f in errors))
    for finding in findings:
        warnings.warn(Finding("warning", finding.problem, finding.remedy).message(), PlausibilityWarning,
                      stacklevel=3)


# -- figures ------------------------------------------------------------------------------------------

def affine_scale_and_shear(matrix: np.ndarray) -> Tuple[float, float, float]:
    """Smallest and largest principal stretch (singular values) and largest shear (QR) of a 3x3 matrix."""
    stretches = np.linalg.svd(matrix, compute_uv=False)
    upper = np.linalg.qr(matrix)[1]
    upper = upper / np.diag(upper)[:, None]                # unit diagonal: what is left is shear
    shear = float(np.abs(upper[np.triu_indices(3, 1)]).max())
    return float(stretches.min()), float(stretches.max()), shear


def _field_of_view_mm3(image: sitk.Image) -> float:
    return float(np.prod(np.array(image.GetSize()) * np.array(image.GetSpacing())))


def _content(image: sitk.Image, grid: sitk.Image, transform: Optional[sitk.Transform],
             mask: Optional[sitk.Image], threshold: float) -> np.ndarray:
    """Where ``image`` (normalised to [0, 1]) seen through ``transform`` is content on ``grid``; the image is
    block averaged to about the grid's spacing first, so that the figure does not depend on its resolution."""
    image, mask = block_average(image, mask, grid.GetSpacing()[0])
    content = sitk.GetArrayFromImage(resample(image, grid, transform)) > threshold
    if mask is not None:
        content &= sitk.GetArrayFromImage(resample(mask, grid, transform, sitk.sitkNearestNeighbor)) > 0
    return content


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else float("nan")


def pairing_figures(fixed: sitk.Image, moving: sitk.Image, transform: Optional[sitk.Transform],
                    fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                    limits: PlausibilityLimits = LIMITS) -> PairingCheck:
    """Extent and content overlap after pre-alignment and the pre-alignment's scale and shear.

    ``fixed`` and ``moving`` are the normalised images (intensities in [0, 1]); ``transform`` maps fixed
    points to moving points."""
    grid = working_grid(fixed, working_spacing(fixed, CHECK_VOXELS))
    in_view = sitk.GetArrayFromImage(resample(ones_on_grid(moving), grid, transform, sitk.sitkNearestNeighbor,
                                              pixel_type=sitk.sitkUInt8)) > 0
    fixed_content = _content(fixed, grid, None, fixed_mask, limits.content_threshold) & in_view
    moving_content = _content(moving, grid, transform, moving_mask, limits.content_threshold) & in_view
    matrix = linear_matrix(transform)
    determinant = abs(float(np.linalg.det(matrix[:3, :3]))) if matrix is not None else 1.0
    moving_in_fixed_mm3 = _field_of_view_mm3(moving) / max(determinant, 1e-12)
    shared_mm3 = float(in_view.mean()) * _field_of_view_mm3(fixed)
    figures = {
        "extent_overlap": min(1.0, shared_mm3 / min(_field_of_view_mm3(fixed), moving_in_fixed_mm3)),
        "content_overlap": dice(fixed_content, moving_content),
    }
    if matrix is not None:
        figures["prealign_scale_min"], figures["prealign_scale_max"], figures["prealign_shear"] = \
            affine_scale_and_shear(matrix[:3, :3])
    region = fixed_content & moving_content
    return PairingCheck(grid=grid, region=region if region.any() else in_view, figures=figures)


def result_jacobian(displacement: torch.Tensor, grid: sitk.Image, transform: Optional[sitk.Transform]) -> sitk.Image:
    """Jacobian determinant of the whole result, ``x -> transform(x + u(x))``, on the working grid, from the
    deformable stage's displacement ``u`` in working voxels ``(1, 3, z, y, x)``."""
    matrix = linear_matrix(transform)
    if matrix is None:  # a dense initial transform: compose with SimpleITK
        composed = compose_to_field([transform, sitk.DisplacementFieldTransform(
            voxel_field_to_image(displacement, grid))], grid)
        values = jacobian_determinant(composed)
    else:
        physical = voxel_field_to_physical(displacement.detach().float().cpu(), grid)
        values = (field_jacobian_determinant(physical, grid) * abs(float(np.linalg.det(matrix[:3, :3])))).numpy()
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(grid)
    return image


def _figure(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else float("nan")


# -- judgements ---------------------------------------------------------------------------------------

SAME_REGION = ("check that both scans show the same body region and crop them to it, give masks of the "
               "region to compare, or give an initial transform")


def judge_pairing(figures: Mapping[str, float], limits: PlausibilityLimits = LIMITS) -> List[Finding]:
    """Findings about the pairing after pre-alignment."""
    findings = []

    def check(key: str, band: Band, problem: str, remedy: str) -> None:
        value = figures.get(key, float("nan"))
        verdict = band.verdict(value)
        if verdict:
            findings.append(Finding(verdict, problem.format(value=value, plausible=band.describe()), remedy))

    check("extent_overlap", limits.extent_overlap,
          "the images do not overlap enough: after pre-alignment only {value:.0%} of the smaller field of view "
          "lies inside the other (plausible: {plausible})", SAME_REGION)
    check("content_overlap", limits.content_overlap,
          "after pre-alignment the images' content overlaps with a Dice of only {value:.2f} where their "
          "fields of view meet (plausible: {plausible}); they may show different body regions",
          SAME_REGION)
    scales = (figures.get("prealign_scale_min", 1.0), figures.get("prealign_scale_max", 1.0))
    worst = max(scales, key=lambda s: abs(math.log(s)) if s > 0 else INF)
    verdict = limits.axis_scale.verdict(worst)
    if verdict:
        findings.append(Finding(verdict, f"the pre-alignment scales the moving image by {scales[0]:.2f} to "
                                f"{scales[1]:.2f} along its principal axes (plausible: "
                                f"{limits.axis_scale.describe()} each)",
                                "the images probably show different fields of view; " + SAME_REGION
                                + ", or use the centre-of-mass pre-alignment (prealign 'com')"))
    check("prealign_shear", limits.shear,
          "the pre-alignment shears the moving image by {value:.2f} (plausible: {plausible})",
          SAME_REGION + ", or use the centre-of-mass pre-alignment (prealign 'com')")
    return findings


def judge_result(figures: Mapping[str, float], limits: PlausibilityLimits = LIMITS) -> List[Finding]:
    """Findings about the result: volume change, folding, similarity."""
    findings = []
    volume = figures.get("jacobian_median", float("nan"))
    verdict = limits.volume_change.verdict(volume)
    if verdict:
        findings.append(Finding(verdict, f"the result {'shrinks' if volume < 1 else 'stretches'} the moving "
                                f"anatomy to {volume:.2f} times its volume (median Jacobian determinant where "
                                f"both images have content; plausible: {limits.volume_change.describe()})",
                                "the images probably do not show the same anatomy; " + SAME_REGION))
    folding = figures.get("negative_jacobian_percent", float("nan"))
    verdict = limits.folding_percent.verdict(folding)
    if verdict:
        findings.append(Finding(verdict, f"the field folds in {folding:.2f}% of the voxels (negative Jacobian "
                                f"determinant; plausible: {limits.folding_percent.describe()}%)",
                                "increase the regularisation, or give masks of the region to compare"))
    before, after = figures.get("ncc_prealigned", float("nan")), figures.get("ncc_after", float("nan"))
    verdict = limits.similarity_change.verdict(after - before)
    if verdict:
        findings.append(Finding(verdict, f"the deformable registration lowered the similarity (NCC {before:.3f} "
                                f"after pre-alignment, {after:.3f} after registration)",
                                "check the result; increase the regularisation or try another preset"))
    return findings


# -- the two hooks register() calls --------------------------------------------------------------------

def check_pairing(fixed: sitk.Image, moving: sitk.Image, transform: Optional[sitk.Transform],
                  fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                  limits: PlausibilityLimits = LIMITS) -> Optional[PairingCheck]:
    """After pre-alignment: raise :class:`ImplausibleRegistration` or warn about the pairing; None when the
    checks are off."""
    if mode() == "off":
        return None
    pairing = pairing_figures(fixed, moving, transform, fixed_mask, moving_mask, limits)
    raise_or_warn(judge_pairing(pairing.figures, limits))
    return pairing


def check_result(pairing: Optional[PairingCheck], displacement: torch.Tensor, grid: sitk.Image,
                 transform: Optional[sitk.Transform], metrics: Dict[str, float],
                 limits: PlausibilityLimits = LIMITS) -> None:
    """After the output stage: add the figures to ``metrics``, then raise or warn about the result."""
    if pairing is None or mode() == "off":
        return
    jacobian = resample(result_jacobian(displacement, grid, transform), pairing.grid, default_value=float("nan"))
    values = sitk.GetArrayFromImage(jacobian)[pairing.region]
    values = values[np.isfinite(values)]
    figures = dict(pairing.figures, jacobian_median=float(np.median(values)) if values.size else float("nan"))
    metrics.update(figures)
    judged = dict(figures, **{k: _figure(metrics, k) for k in ("negative_jacobian_percent", "ncc_prealigned",
                                                                 "ncc_after")})
    raise_or_warn(judge_result(judged, limits))
