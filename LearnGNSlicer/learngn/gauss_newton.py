"""Differentiable Gauss-Newton registration on a coarse control grid, over feature volumes.

Reads like the method: warp the moving features with the current displacement, predict the residual f
and the Jacobian J, pool ``J^2`` and ``f J`` to the control grid, solve
``(lam L + diag(J_k^2)) delta_k = -(f J_k) - lam L u_k`` per axis, and apply the update with momentum.
Displacements are in voxels of the working grid, channels ordered like the array axes (z, y, x).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .features import gaussian_smooth
from .predictors import GaussNewtonPredictors, classic_terms
from .settings import RegistrationSettings
from .solver import SolverOptions, apply_laplacian, solve_regularised

#: Called after each iteration with (level index, iteration index, iterations per level).
IterationCallback = Callable[[int, int, int], None]


def lambda_schedule(start: float, end: float, iterations: int) -> List[float]:
    """Regularisation weights log-spaced from ``start`` to ``end``: coarse motion first, detail later."""
    return [float(v) for v in np.geomspace(start, end, max(iterations, 1))]


def settings_schedule(settings: RegistrationSettings) -> List[float]:
    """The lambda schedule of one level: the settings' schedule times their ``regularisation``."""
    return lambda_schedule(settings.lambda_start * settings.regularisation,
                           settings.lambda_end * settings.regularisation, settings.iterations)


def identity_grid(shape: Tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, D, H, W)`` in (z, y, x) order."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def _sampling_grid(displacement: torch.Tensor, depth: Optional[int] = None) -> torch.Tensor:
    """``grid_sample``'s grid ``(N, depth, H, W, 3)``: ``x + displacement(x)`` normalised to [-1, 1], (x, y, z)
    last; planes beyond the displacement's depth repeat its last plane.  Without gradients it is written axis
    by axis into its final layout: no identity grid, no permuted or padded copy."""
    batch, _, *shape = displacement.shape
    differentiable = torch.is_grad_enabled() and displacement.requires_grad
    depth = shape[0] if depth is None else depth
    planes = []
    grid = None if differentiable else displacement.new_empty((batch, depth, *shape[1:], 3))
    for last, axis in enumerate((2, 1, 0)):  # grid order x, y, z is array axis 2, 1, 0
        n = shape[axis]
        scale = 2.0 / max(n - 1, 1)
        view = [1, 1, 1, 1]
        view[axis + 1] = n
        positions = torch.arange(n, device=displacement.device, dtype=displacement.dtype).view(view)
        if grid is None:
            planes.append((displacement[:, axis] + positions) * scale - 1.0)
        else:
            torch.add(displacement[:, axis], positions, out=grid[:, :shape[0], ..., last]).mul_(scale).sub_(1.0)
    if grid is None:
        grid = torch.stack(planes, dim=-1)
        if depth > shape[0]:
            grid = torch.cat([grid, grid[:, -1:].expand(batch, depth - shape[0], *grid.shape[2:])], dim=1)
    elif depth > shape[0]:
        grid[:, shape[0]:] = grid[:, shape[0] - 1:shape[0]]
    return grid


def _cpu_chunks(volume: torch.Tensor, displacement: torch.Tensor) -> int:
    """How many depth slabs a CPU warp is cut into: PyTorch's 3D CPU sampler runs its batch entries in
    parallel but each entry on one thread, so one image uses one core unless its grid is cut up."""
    if volume.device.type != "cpu" or volume.shape[0] != 1 or displacement.shape[0] != 1:
        return 1
    return max(1, min(torch.get_num_threads(), displacement.shape[2]))


def warp_in_slabs(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """:func:`warp` before its slabs are joined: ``(slabs, C, planes, H, W)``, slab ``k`` holding the planes from
    ``k * planes`` on (the last slab's planes beyond the depth repeat the last plane).  On the CPU the depth is
    cut into one slab per thread (see :func:`_cpu_chunks`); elsewhere it is one slab, the warp itself.  The
    classic Gauss-Newton terms read the slabs as they are, which saves joining them into one copy."""
    chunks = _cpu_chunks(volume, displacement)
    if chunks == 1:
        grid = _sampling_grid(displacement)
        if grid.shape[0] != volume.shape[0]:
            grid = grid.expand(volume.shape[0], *grid.shape[1:])
        return F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=True)
    slab = -(-displacement.shape[2] // chunks)
    grid = _sampling_grid(displacement, slab * chunks)
    slabs = grid.reshape(chunks, slab, *grid.shape[2:])
    return F.grid_sample(volume.expand(chunks, *volume.shape[1:]), slabs, mode=mode, padding_mode="border",
                         align_corners=True)


def joined_slabs(slabs: torch.Tensor, depth: int) -> torch.Tensor:
    """The ``(1, C, depth, H, W)`` volume that :func:`warp_in_slabs`'s slabs cut up (itself when uncut)."""
    if slabs.shape[0] == 1 and slabs.shape[2] == depth:
        return slabs
    chunks, channels, planes = slabs.shape[:3]
    return slabs.transpose(0, 1).reshape(1, channels, chunks * planes, *slabs.shape[3:])[:, :, :depth]


def warp(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``volume`` at ``x + displacement(x)`` (voxels), edges replicated.

    On the CPU the sampling runs in depth slabs, one per thread (:func:`warp_in_slabs`); a ``volume`` stored
    channels-last (:func:`prepared_for_warp`) is sampled several times faster than a contiguous one.
    """
    sampled = warp_in_slabs(volume, displacement, mode)
    return sampled if sampled.shape[0] == volume.shape[0] else joined_slabs(sampled, displacement.shape[2])


def prepared_for_warp(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` laid out for repeated warps: channels-last on the CPU, where the sampler then reads the
    channels of a corner from one cache line (measured 1.4x faster with 12 channels); unchanged elsewhere."""
    if volume.device.type != "cpu" or volume.dim() != 5:
        return volume
    return volume.contiguous(memory_format=torch.channels_last_3d)


def pool_to_grid(volume: torch.Tensor, stride: int) -> torch.Tensor:
    return F.avg_pool3d(volume, stride, stride, ceil_mode=True)


def upsample_from_grid(field: torch.Tensor, stride: int, shape: Tuple[int, ...]) -> torch.Tensor:
    """Trilinear interpolation of a control-grid field back to the voxels it was pooled from."""
    up = F.interpolate(field, scale_factor=stride, mode="trilinear", align_corners=False)
    return up[:, :, : shape[0], : shape[1], : shape[2]]


# Feature channels are processed in batches of at most this many voxels (channels x voxels): batched
# convolutions are several times faster than one channel at a time, and the cap bounds the memory.
CHANNEL_BATCH_VOXELS = 2_000_000


def _classic_sums(warped: torch.Tensor, fixed: torch.Tensor,
                  out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``sum_c J_c^2`` and ``sum_c f_c J_c``, each ``(1, 3, D, H, W)``, of the classic terms (central differences
    of the warped channel, edges replicated; residual warped minus fixed), accumulated in place one channel and
    one axis at a time.  Without gradients only: it is :func:`classic_terms` without its padded copy, its
    concatenation and its per-channel products, about three times faster on a 4 M-voxel working grid.

    ``warped`` may be the depth slabs of :func:`warp_in_slabs` (``fixed`` gives the depth); each voxel's sums
    are formed in the same order either way, so the slabs give the same bits as the joined volume.  ``out``:
    two ``(1, 3, D, H, W)`` tensors to sum into (overwritten), so that a level's steps reuse one pair."""
    depth = fixed.shape[2]
    chunks, channels, planes = warped.shape[:3]
    if out is None:
        hessian = warped.new_zeros((1, 3, depth, *warped.shape[3:]))
        gradient = warped.new_zeros((1, 3, depth, *warped.shape[3:]))
    else:
        hessian, gradient = out[0].zero_(), out[1].zero_()
    derivative = warped.new_empty(warped.shape[2:])
    residual = warped.new_empty(warped.shape[2:])

    def plane(channel: int, z: int) -> torch.Tensor:
        """Plane ``z`` of a channel, clamped to the volume (replicated edges), whichever slab holds it."""
        z = min(max(z, 0), depth - 1)
        return warped[z // planes, channel, z % planes]

    for chunk in range(chunks):
        start = chunk * planes
        count = min(planes, depth - start)
        if count <= 0:
            break
        rows = slice(start, start + count)
        for channel in range(channels):
            block = warped[chunk, channel, :count]
            difference = derivative[:count]
            torch.sub(block, fixed[0, channel, rows], out=residual[:count])
            for axis in range(3):
                if axis == 0:  # across slabs: the planes before and after the block may lie in the neighbours
                    torch.sub(plane(channel, start + 1), plane(channel, start - 1), out=difference[0])
                    if count > 1:
                        torch.sub(block[2:], block[:-2], out=difference[1:-1])
                        torch.sub(plane(channel, start + count), block[-2], out=difference[-1])
                elif block.shape[axis] < 2:
                    difference.zero_()
                else:  # replicate padding: one-sided differences at the two edges
                    n = block.shape[axis]
                    torch.sub(block.narrow(axis, 2, n - 2), block.narrow(axis, 0, n - 2),
                              out=difference.narrow(axis, 1, n - 2))
                    torch.sub(block.narrow(axis, 1, 1), block.narrow(axis, 0, 1), out=difference.narrow(axis, 0, 1))
                    torch.sub(block.narrow(axis, n - 1, 1), block.narrow(axis, n - 2, 1),
                              out=difference.narrow(axis, n - 1, 1))
                hessian[0, axis, rows].addcmul_(difference, difference)
                gradient[0, axis, rows].addcmul_(residual[:count], difference)
    # the differences above are twice the derivatives; halving by a power of two is exact, so scaling the
    # sums once gives the same bits as halving every difference, in 36 fewer passes over the grid
    return hessian.mul_(0.25), gradient.mul_(0.5)


def _batched_sums(warped: torch.Tensor, fixed: torch.Tensor, weight: Optional[torch.Tensor],
                  predictors: Optional[GaussNewtonPredictors]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weighted ``sum_c J_c^2`` and ``sum_c f_c J_c`` from the predictors (or the differentiable classic terms),
    channels in batches of at most CHANNEL_BATCH_VOXELS voxels; the path that carries gradients."""
    hessian = None
    gradient = None
    batch = max(1, CHANNEL_BATCH_VOXELS // max(1, warped[0, 0].numel()))
    for first in range(0, warped.shape[1], batch):
        # channels become the batch dimension: (C, 1, D, H, W)
        w_c = warped[0, first:first + batch].unsqueeze(1)
        f_c = fixed[0, first:first + batch].unsqueeze(1)
        residual, jacobian = predictors(w_c, f_c) if predictors is not None else classic_terms(w_c, f_c)
        h_c = (jacobian * jacobian).sum(dim=0, keepdim=True)
        g_c = (residual * jacobian).sum(dim=0, keepdim=True)
        if weight is not None:
            h_c, g_c = h_c * weight, g_c * weight
        hessian = h_c if hessian is None else hessian + h_c
        gradient = g_c if gradient is None else gradient + g_c
    return hessian, gradient


def gauss_newton_terms(warped: torch.Tensor, fixed: torch.Tensor, weight: Optional[torch.Tensor],
                       predictors: Optional[GaussNewtonPredictors], stride: int,
                       workspace: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled ``mean_c J_c^2`` and ``mean_c f_c J_c`` on the control grid, each ``(3, d, h, w)``.

    ``warped``: the warped moving features, ``(1, C, D, H, W)`` or the depth slabs of :func:`warp_in_slabs`.
    ``workspace``: two working-grid ``(1, 3, D, H, W)`` tensors that the classic sums may overwrite, instead of
    fresh memory at every step (the system maps fresh memory page by page: seconds per registration)."""
    if predictors is None and not (torch.is_grad_enabled() and (warped.requires_grad or fixed.requires_grad)):
        hessian, gradient = _classic_sums(warped, fixed, workspace)
        if weight is not None:
            hessian, gradient = hessian.mul_(weight), gradient.mul_(weight)
    else:
        hessian, gradient = _batched_sums(joined_slabs(warped, fixed.shape[2]), fixed, weight, predictors)
    # in place: each working-grid temporary is fresh memory that the system must map (page faults cost
    # seconds per registration on a 6 M-voxel grid); the sums are this function's own
    channels = warped.shape[1]
    return pool_to_grid(hessian.div_(channels), stride)[0], pool_to_grid(gradient.div_(channels), stride)[0]


def usable_levels(shape: Tuple[int, ...], levels: int, stride: int) -> int:
    """At most ``levels``, fewer where a thin working grid (a slab) cannot be halved that often: every axis of
    the coarsest level must still hold one control cell (``stride`` voxels)."""
    usable = 1
    sizes = list(shape)
    while usable < levels:
        sizes = [int(np.ceil(n / 2)) for n in sizes]
        if min(sizes) < max(stride, 2):
            break
        usable += 1
    return usable


def _pyramid(volume: Optional[torch.Tensor], levels: int) -> List[Optional[torch.Tensor]]:
    """Finest first; each coarser level halves the resolution."""
    out = [volume]
    for _ in range(levels - 1):
        out.append(None if out[-1] is None else F.avg_pool3d(out[-1], 2, 2, ceil_mode=True))
    return out


def _run_level(fixed: torch.Tensor, moving: torch.Tensor, weight: Optional[torch.Tensor],
               control: torch.Tensor, settings: RegistrationSettings,
               predictors: Optional[GaussNewtonPredictors], on_iteration: Callable[[int], None],
               backend: str) -> torch.Tensor:
    shape = tuple(fixed.shape[2:])
    stride = settings.grid_stride
    options = SolverOptions(settings.cg_tolerance, settings.cg_max_iterations)
    velocity = torch.zeros_like(control)
    moving = prepared_for_warp(moving)
    workspace = None if predictors is not None or torch.is_grad_enabled() else \
        (fixed.new_empty((1, 3, *shape)), fixed.new_empty((1, 3, *shape)))
    for iteration, lam in enumerate(settings_schedule(settings)):
        displacement = upsample_from_grid(control, stride, shape)
        warped = warp_in_slabs(moving, displacement)
        hessian, gradient = gauss_newton_terms(warped, fixed, weight, predictors, stride, workspace)
        rhs = -gradient - lam * apply_laplacian(control[0])
        delta = solve_regularised(hessian, rhs, lam, backend=backend, options=options)
        if settings.update_smoothing > 0:
            delta = gaussian_smooth(delta.unsqueeze(0), settings.update_smoothing)[0]
        velocity = settings.momentum * velocity + delta.unsqueeze(0)
        control = control + velocity
        on_iteration(iteration)
    return control


def gauss_newton_control(fixed: torch.Tensor, moving: torch.Tensor, settings: RegistrationSettings, *,
                         weight: Optional[torch.Tensor] = None, predictors: Optional[GaussNewtonPredictors] = None,
                         on_iteration: Optional[IterationCallback] = None, backend: str = "torch") -> torch.Tensor:
    """The finest level's control grid ``(1, 3, d, h, w)`` (displacements in working voxels, ``settings.grid_stride``
    working voxels apart) that warps ``moving`` onto ``fixed`` (both ``(1, C, ...)``); :func:`upsample_from_grid`
    turns it into the displacement of every working voxel, and it is what the result stores.

    Reads the Gauss-Newton fields of ``settings`` (the same type the presets, the model cards and training
    use); ``backend`` is the resolved solver (see :func:`learngn.solver.resolve_backend`).  Differentiable
    with respect to the predictors' weights and the inputs, for training.
    """
    stride = settings.grid_stride
    levels = usable_levels(tuple(fixed.shape[2:]), settings.levels, stride)
    fixed_levels = _pyramid(fixed, levels)
    moving_levels = _pyramid(moving, levels)
    weight_levels = _pyramid(weight, levels)
    control = None
    for level in reversed(range(levels)):
        shape = tuple(fixed_levels[level].shape[2:])
        if control is None:
            grid_shape = [int(np.ceil(n / stride)) for n in shape]
            control = fixed.new_zeros((1, 3, *grid_shape))
        else:
            coarser = upsample_from_grid(control, stride, tuple(fixed_levels[level + 1].shape[2:]))
            finer = 2.0 * F.interpolate(coarser, size=shape, mode="trilinear", align_corners=False)
            control = pool_to_grid(finer, stride)

        def report(iteration: int, level: int = level) -> None:
            if on_iteration is not None:
                on_iteration(settings.levels - 1 - level, iteration, settings.iterations)

        control = _run_level(fixed_levels[level], moving_levels[level], weight_levels[level], control,
                             settings, predictors, report, backend)
    # the last steps leave kinks between neighbouring control points that the data do not support
    return gaussian_smooth(control, settings.result_smoothing)


def gauss_newton(fixed: torch.Tensor, moving: torch.Tensor, settings: RegistrationSettings, *,
                 weight: Optional[torch.Tensor] = None, predictors: Optional[GaussNewtonPredictors] = None,
                 on_iteration: Optional[IterationCallback] = None, backend: str = "torch") -> torch.Tensor:
    """Displacement ``(1, 3, D, H, W)`` in voxels that warps ``moving`` onto ``fixed``: the control grid of
    :func:`gauss_newton_control` (same arguments) at every working voxel."""
    control = gauss_newton_control(fixed, moving, settings, weight=weight, predictors=predictors,
                                   on_iteration=on_iteration, backend=backend)
    return upsample_from_grid(control, settings.grid_stride, tuple(fixed.shape[2:]))
