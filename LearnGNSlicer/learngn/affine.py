"""Affine pre-alignment by Gauss-Newton on MIND-SSC descriptors, in torch on the registration's device.

The same principle as the deformable stage, with twelve parameters: the moving descriptors are sampled
through the affine, the residual against the fixed descriptors is linearised with the moving image's
gradient, and a damped (Levenberg-Marquardt) normal equation gives the step.  MIND makes the fit
independent of the modality, and the 12x12 system converges in a handful of steps per pyramid level.
It replaced SimpleITK's Mattes mutual-information fit, which ran on the CPU only: on a 192x160x256 CT
the pre-alignment stage went from 5.3 s to 2.8 s on 2 CPU threads at the same accuracy
(docs/BENCHMARKS.md), and it can now run on the GPU with the rest of the registration.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .features import mind_ssc
from .sampling import image_tensor, resample_on_device, sample_at, voxel_points

#: Voxel sizes (mm) of the pyramid's levels: twelve parameters need no finer detail than 4 mm.
PYRAMID_SPACINGS_MM = (16.0, 8.0, 4.0)
#: Gauss-Newton steps per level, and the relative cost change under which a level has converged.
STEPS_PER_LEVEL = 25
CONVERGED = 1e-3
#: Fixed points per level at most (a seeded random subset beyond): plenty for twelve parameters, and it
#: bounds the cost of a step whatever the scan's size.
MAX_POINTS = 20_000
SUBSET_SEED = 20220706
#: Intra-op threads of the fit on a CPU.  Its tensors are small (at most MAX_POINTS points, images at 4 mm and
#: coarser), so threads cost more in synchronisation than they gain: on the 2-core development machine (with
#: other jobs running) the CT's pre-alignment took 5.5-6.1 s with 2 threads and 3.2-3.5 s with 1, the demo
#: pair's 3-14 s and 1.1-1.4 s, the CPU time falling by the same factor (docs/BENCHMARKS.md).
FIT_THREADS = 1

#: Called with the share of the fit done (0 to 1) and a message.
FitProgress = Callable[[float, str], None]

#: Levenberg-Marquardt damping: start, the factor by which a rejected step raises it, and the value at
#: which the steps have become too short to matter (the level has converged).
DAMPING_START, DAMPING_FACTOR, DAMPING_STOP = 1e-3, 10.0, 10.0


@dataclass
class _Level:
    """One pyramid level: fixed points and descriptors, the moving descriptors and their gradients."""

    points: torch.Tensor            # (n, 3) LPS points of the fixed voxels that count
    fixed: torch.Tensor             # (n, 12)
    moving: torch.Tensor            # (1, 12 + 36, z, y, x): descriptors then their LPS gradients
    moving_geometry: sitk.Image
    moving_mask: Optional[torch.Tensor]


def _shrunk(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    factors = [f if n >= 2 * f else 1 for f, n in zip(factors, image.GetSize())]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _descriptors(image: sitk.Image, device: torch.device) -> torch.Tensor:
    return mind_ssc(image_tensor(image, device), dilation=1)


def _physical_gradients(volume: torch.Tensor, geometry: sitk.Image) -> torch.Tensor:
    """LPS gradients ``(1, 3C, z, y, x)`` (channel c's x, y, z derivatives at 3c, 3c+1, 3c+2)."""
    direction = np.array(geometry.GetDirection()).reshape(3, 3)
    physical_from_index = torch.as_tensor(np.linalg.inv(direction @ np.diag(geometry.GetSpacing())),
                                          dtype=volume.dtype, device=volume.device)
    by_index = torch.stack(torch.gradient(volume[0], dim=(3, 2, 1)), dim=-1)  # (C, z, y, x, 3): d/di_x..z
    physical = by_index @ physical_from_index                                   # (C, z, y, x, 3): d/dx..z
    return physical.permute(0, 4, 1, 2, 3).reshape(1, -1, *volume.shape[2:])


def _level(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
           moving_mask: Optional[sitk.Image], spacing_mm: float, device: torch.device) -> _Level:
    fixed, moving = _shrunk(fixed, spacing_mm), _shrunk(moving, spacing_mm)
    fixed_descriptors = _descriptors(fixed, device)[0].flatten(1).T
    points = voxel_points(fixed, device).reshape(-1, 3)
    if fixed_mask is not None:
        keep = resample_on_device(fixed_mask, fixed, None, device, nearest=True).flatten() > 0
        points, fixed_descriptors = points[keep], fixed_descriptors[keep]
    if len(points) > MAX_POINTS:
        subset = torch.randperm(len(points), generator=torch.Generator().manual_seed(SUBSET_SEED))[:MAX_POINTS]
        subset = subset.sort().values.to(device)
        points, fixed_descriptors = points[subset], fixed_descriptors[subset]
    moving_descriptors = _descriptors(moving, device)
    mask = None
    if moving_mask is not None:
        mask = resample_on_device(moving_mask, moving, None, device, nearest=True)
    return _Level(points=points, fixed=fixed_descriptors,
                  moving=torch.cat([moving_descriptors, _physical_gradients(moving_descriptors, moving)], dim=1),
                  moving_geometry=moving, moving_mask=mask)


class _Residuals(NamedTuple):
    residual: torch.Tensor          # (n, 12)
    gradient: torch.Tensor          # (n, 12, 3) LPS gradients of the moving descriptors
    weight: torch.Tensor            # (n,) 1 where the point lands in the moving image (and its mask)
    cost: float                     # weighted mean squared residual


class _Fit:
    """The affine ``y = initial(A (x - c) + c + t)`` as a 3x4 parameter matrix ``[A | t]`` about ``c``."""

    def __init__(self, start: sitk.AffineTransform, initial: np.ndarray, device: torch.device):
        self.centre = torch.as_tensor(start.GetCenter(), dtype=torch.float64, device=device)
        self.initial = torch.as_tensor(initial, dtype=torch.float64, device=device)
        self.parameters = torch.zeros(3, 4, dtype=torch.float64, device=device)
        self.parameters[:, :3] = torch.as_tensor(np.array(start.GetMatrix()).reshape(3, 3))
        self.parameters[:, 3] = torch.as_tensor(start.GetTranslation())

    def moved(self, points: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        relative = points.double() - self.centre
        affine = relative @ parameters[:, :3].T + self.centre + parameters[:, 3]
        return (affine @ self.initial[:3, :3].T + self.initial[:3, 3]).float()

    def residuals(self, level: _Level, parameters: torch.Tensor) -> "_Residuals":
        """Residuals at ``parameters``, with the moving gradients and the weight of each point."""
        moved = self.moved(level.points, parameters)[None, None]                # (1, 1, n, 3)
        sampled = sample_at(level.moving, level.moving_geometry, moved, default_value=float("nan"))[0, :, 0, 0]
        weight = torch.isfinite(sampled[0]).float()
        if level.moving_mask is not None:
            weight = weight * sample_at(level.moving_mask, level.moving_geometry, moved, nearest=True)[0, 0, 0, 0]
        sampled = torch.nan_to_num(sampled).T                                     # (n, 48)
        channels = level.fixed.shape[1]
        residual = sampled[:, :channels] - level.fixed
        cost = float((residual.pow(2).sum(1) * weight).sum() / weight.sum().clamp_min(1.0))
        return _Residuals(residual, sampled[:, channels:].reshape(-1, channels, 3), weight, cost)

    def step(self, level: _Level, state: "_Residuals", damping: float) -> torch.Tensor:
        """The damped Gauss-Newton step on the parameters from the residuals at the current ones."""
        gradient = state.gradient.double() @ self.initial[:3, :3]     # through the initial transform's matrix
        relative = torch.cat([level.points.double() - self.centre,
                              torch.ones_like(level.points[:, :1], dtype=torch.float64)], dim=1)  # (n, 4)
        weight = state.weight.double()
        # the Jacobian of a point's residuals is gradient (12 x 3) times d(moved)/d(parameters) = I3 (x) relative
        weighted = gradient * weight[:, None, None]
        outer = (weighted.transpose(1, 2) @ gradient).reshape(-1, 9)                   # (n, 9): sum over channels
        pairs = (relative[:, :, None] * relative[:, None, :]).reshape(-1, 16)          # (n, 16)
        hessian = (outer.T @ pairs).reshape(3, 3, 4, 4).permute(0, 2, 1, 3).reshape(12, 12)
        along = (weighted.transpose(1, 2) @ state.residual.double()[:, :, None])[:, :, 0]  # (n, 3)
        slope = (along.T @ relative).reshape(12)
        damped = hessian + damping * torch.diag(hessian.diagonal().clamp_min(1e-12))
        return -torch.linalg.solve(damped, slope).reshape(3, 4)

    def transform(self) -> sitk.AffineTransform:
        parameters = self.parameters.cpu().numpy()
        affine = sitk.AffineTransform(3)
        affine.SetCenter(tuple(float(v) for v in self.centre.cpu()))
        affine.SetMatrix(tuple(float(v) for v in parameters[:, :3].ravel()))
        affine.SetTranslation(tuple(float(v) for v in parameters[:, 3]))
        return affine


@contextmanager
def _threads_for(device: torch.device) -> Iterator[None]:
    """FIT_THREADS intra-op threads on a CPU inside the block (restored after); other devices unchanged."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and previous > FIT_THREADS:
        torch.set_num_threads(FIT_THREADS)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def fit(fixed: sitk.Image, moving: sitk.Image, start: sitk.AffineTransform, initial: np.ndarray,
        device: torch.device, *, fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
        should_stop: Optional[Callable[[], bool]] = None, progress: Optional[FitProgress] = None
        ) -> Tuple[sitk.AffineTransform, float, float]:
    """The fitted affine, with the cost of ``start`` and of the fit at the finest level (to judge the gain).

    ``start`` maps fixed points before the linear ``initial`` (a 4x4 matrix on LPS points) is applied.
    ``should_stop`` is asked at every step; when it says yes the fit returns at once.  ``progress`` hears
    of every level and step (each level takes an equal share; a level that converges early jumps ahead).
    """
    solution = _Fit(start, initial, device)
    start_parameters = solution.parameters.clone()
    level = None
    with torch.no_grad(), _threads_for(device):
        for index, spacing in enumerate(PYRAMID_SPACINGS_MM):
            def report(step: int, message: str, index: int = index) -> None:
                if progress is not None:
                    progress((index + step / STEPS_PER_LEVEL) / len(PYRAMID_SPACINGS_MM), message)

            report(0, f"affine fit: descriptors at {spacing:g} mm")
            level = _level(fixed, moving, fixed_mask, moving_mask, spacing, device)
            damping, state = DAMPING_START, solution.residuals(level, solution.parameters)
            for step in range(STEPS_PER_LEVEL):
                if should_stop is not None and should_stop():
                    return solution.transform(), float("nan"), float("nan")
                report(step, f"affine fit at {spacing:g} mm, step {step + 1}")
                candidate = solution.parameters + solution.step(level, state, damping)
                candidate_state = solution.residuals(level, candidate)
                if candidate_state.cost < state.cost:
                    converged = state.cost - candidate_state.cost < CONVERGED * state.cost
                    solution.parameters, state, damping = candidate, candidate_state, damping / DAMPING_FACTOR
                    if converged:
                        break
                else:
                    damping *= DAMPING_FACTOR
                    if damping > DAMPING_STOP:
                        break
        start_cost = solution.residuals(level, start_parameters).cost
    return solution.transform(), start_cost, state.cost
