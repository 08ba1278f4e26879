"""Differentiable solver of the Gauss-Newton system ``(lam * L + diag(d)) x = b``.

``L`` is the graph Laplacian of the coarse control grid (6-neighbour diffusion regulariser with
Neumann boundaries).  The three displacement axes are independent systems solved together as a batch
of shape ``(3, D, H, W)``.  Two backends sit behind one interface:

* ``torch``: matrix-free conjugate gradients, the Laplacian applied as a 3D stencil (CPU and CUDA);
* ``cupy``: the seed's GPU path, a CSR matrix solved by ``cupyx.scipy.sparse.linalg.cg``.  The same
  code runs with NumPy/SciPy (``scipy`` backend) so the CSR assembly is tested without a GPU.

The backward pass is one more solve (the matrix is symmetric): ``grad_b = A^-1 grad_x`` and
``grad_d = -x * grad_b``.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from .errors import InputError

#: Added to the diagonal (times lam) so the system stays positive definite where the data term is zero.
DIAGONAL_EPSILON = 1e-6


def apply_laplacian(x: torch.Tensor) -> torch.Tensor:
    """Graph Laplacian (degree minus adjacency) of a 3D grid applied to each of ``x``'s volumes.

    Each edge between neighbours ``i`` and ``i+1`` adds ``x_i - x_{i+1}`` to ``i`` and its negative to
    ``i+1``; a missing neighbour adds nothing, which is the graph Laplacian's (Neumann) boundary rule.
    Differences of slices instead of a padded copy: several times faster on small control grids, where
    the padding dominated.  ``x`` has shape ``(B, D, H, W)``.
    """
    out = torch.zeros_like(x)
    for dim in (1, 2, 3):
        n = x.shape[dim]
        if n < 2:
            continue
        edge = x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)
        out.narrow(dim, 0, n - 1).sub_(edge)
        out.narrow(dim, 1, n - 1).add_(edge)
    return out


@dataclass(frozen=True)
class SolverOptions:
    """Stopping rule shared by the backends: ``||r|| <= tol * ||b||`` per axis, or ``maxiter``."""

    tol: float = 1e-3
    maxiter: int = 40


def _batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


def _grid_degree(shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Number of grid neighbours of every node (the Laplacian's diagonal), shape ``(1, D, H, W)``."""
    degree = torch.zeros((1, *shape), dtype=like.dtype, device=like.device)
    for dim in (1, 2, 3):
        n = degree.shape[dim]
        if n > 1:
            degree.narrow(dim, 0, n - 1).add_(1.0)
            degree.narrow(dim, 1, n - 1).add_(1.0)
    return degree


def solve_torch(lam: float, diag: torch.Tensor, rhs: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """Matrix-free conjugate gradients with a Jacobi preconditioner, one independent system per leading index.

    The data term makes the diagonal vary by orders of magnitude between edges and flat regions; scaling by
    it brings the solution closer to the exact one in the same number of steps (measured in the commit that
    added it: 0.39 against 0.52 relative error after 40 steps on a real brain pair, control stride 2).
    """
    diag = diag + lam * DIAGONAL_EPSILON
    inverse_diagonal = 1.0 / (lam * _grid_degree(tuple(diag.shape[1:]), diag) + diag)  # the system's diagonal

    def apply_a(v: torch.Tensor) -> torch.Tensor:
        return lam * apply_laplacian(v) + diag * v

    tiny = torch.finfo(rhs.dtype).tiny
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = inverse_diagonal * r
    p = z.clone()
    rz = _batched_dot(r, z)
    threshold = (options.tol ** 2) * _batched_dot(r, r)
    for _ in range(options.maxiter):
        active = _batched_dot(r, r) > threshold
        if not bool(active.any()):
            break
        ap = apply_a(p)
        p_ap = _batched_dot(p, ap)
        alpha = torch.where(active & (p_ap > 0), rz / p_ap.clamp_min(tiny), 0.0)
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        z = inverse_diagonal * r
        rz_new = _batched_dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), 0.0)
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_new, rz)
    return x


@lru_cache(maxsize=8)
def _laplacian_coo(shape: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and values of the grid's graph Laplacian (built once per grid shape)."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    rows, cols = [], []
    for axis in range(3):
        a = np.take(index, np.arange(shape[axis] - 1), axis=axis).ravel()
        b = np.take(index, np.arange(1, shape[axis]), axis=axis).ravel()
        rows += [a, b]
        cols += [b, a]
    rows_np = np.concatenate(rows)
    cols_np = np.concatenate(cols)
    degree = np.bincount(rows_np, minlength=index.size).astype(np.float64)
    all_rows = np.concatenate([rows_np, index.ravel()])
    all_cols = np.concatenate([cols_np, index.ravel()])
    values = np.concatenate([-np.ones(rows_np.size), degree])
    return all_rows, all_cols, values


@dataclass(frozen=True)
class _SparseModules:
    """The array and sparse modules of one CSR backend (CuPy on a GPU, NumPy/SciPy on the CPU)."""

    xp: object
    sparse: object
    cg: Callable
    to_backend: Callable[[torch.Tensor], object]
    to_torch: Callable[[object, torch.Tensor], torch.Tensor]


def _scipy_modules() -> _SparseModules:
    import scipy.sparse
    import scipy.sparse.linalg

    return _SparseModules(
        xp=np, sparse=scipy.sparse, cg=scipy.sparse.linalg.cg,
        to_backend=lambda t: t.detach().cpu().double().numpy(),
        to_torch=lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device),
    )


def _cupy_modules() -> _SparseModules:
    import cupy
    import cupyx.scipy.sparse
    import cupyx.scipy.sparse.linalg

    return _SparseModules(
        xp=cupy, sparse=cupyx.scipy.sparse, cg=cupyx.scipy.sparse.linalg.cg,
        to_backend=lambda t: cupy.from_dlpack(t.detach().contiguous()),
        to_torch=lambda a, like: torch.from_dlpack(a).to(dtype=like.dtype, device=like.device),
    )


def _tolerance_keyword(cg: Callable) -> str:
    """SciPy and CuPy renamed ``tol`` to ``rtol``; use whichever this version takes."""
    parameters = inspect.signature(cg).parameters
    return "rtol" if "rtol" in parameters else "tol"


def _solve_csr(modules: _SparseModules, lam: float, diag: torch.Tensor, rhs: torch.Tensor,
               options: SolverOptions) -> torch.Tensor:
    xp, sparse = modules.xp, modules.sparse
    shape = tuple(int(s) for s in rhs.shape[1:])
    rows, cols, values = _laplacian_coo(shape)
    n = int(np.prod(shape))
    d_b = modules.to_backend(diag)
    b_b = modules.to_backend(rhs)
    dtype = b_b.dtype
    laplacian = sparse.csr_matrix(
        (xp.asarray(values, dtype=dtype) * lam, (xp.asarray(rows), xp.asarray(cols))), shape=(n, n))
    keyword = _tolerance_keyword(modules.cg)
    solutions = []
    for axis in range(rhs.shape[0]):
        diagonal = d_b[axis].reshape(-1) + lam * DIAGONAL_EPSILON
        system = laplacian + sparse.diags(diagonal, format="csr")
        preconditioner = sparse.diags(1.0 / system.diagonal(), format="csr")   # Jacobi, as the torch solver
        kwargs = {keyword: options.tol, "maxiter": options.maxiter, "M": preconditioner}
        solution, _ = modules.cg(system, b_b[axis].reshape(-1), **kwargs)
        solutions.append(solution.reshape(shape))
    return modules.to_torch(xp.stack(solutions), rhs)


def solve_scipy(lam: float, diag: torch.Tensor, rhs: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """CSR backend on the CPU (NumPy/SciPy); the reference for the CuPy path."""
    return _solve_csr(_scipy_modules(), lam, diag, rhs, options)


def solve_cupy(lam: float, diag: torch.Tensor, rhs: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """CSR backend on the GPU (the seed's ``cupyx.scipy.sparse.linalg.cg``)."""
    return _solve_csr(_cupy_modules(), lam, diag, rhs, options)


BACKENDS = {"torch": solve_torch, "scipy": solve_scipy, "cupy": solve_cupy}


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        cupy = importlib.import_module("cupy")
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDA driver errors: all mean "not usable"
        return False


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` picks CuPy on CUDA tensors when it is usable, the torch solver otherwise."""
    if name == "auto":
        return "cupy" if device.type == "cuda" and cupy_available() else "torch"
    if name not in BACKENDS:
        raise InputError(f"unknown solver backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    if name == "cupy" and (device.type != "cuda" or not cupy_available()):
        raise InputError("the cupy solver needs CuPy (pip install cupy-cuda12x) and a CUDA device; "
                         "use solver='torch' or 'auto'")
    return name


class _RegularisedSolve(torch.autograd.Function):
    """Autograd wrapper: the backward pass is the adjoint solve of the seed."""

    @staticmethod
    def forward(ctx, diag: torch.Tensor, rhs: torch.Tensor, lam: float, backend: str,  # type: ignore[override]
                options: SolverOptions) -> torch.Tensor:
        x = BACKENDS[backend](lam, diag.detach(), rhs.detach(), options)
        ctx.save_for_backward(diag, x)
        ctx.lam, ctx.backend, ctx.options = lam, backend, options
        return x

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):  # type: ignore[override]
        diag, x = ctx.saved_tensors
        grad_b = BACKENDS[ctx.backend](ctx.lam, diag, grad_x.contiguous(), ctx.options)
        grad_d = -x * grad_b
        return grad_d, grad_b, None, None, None


def solve_regularised(diag: torch.Tensor, rhs: torch.Tensor, lam: float, *, backend: str = "torch",
                      options: Optional[SolverOptions] = None) -> torch.Tensor:
    """Solve ``(lam * L + diag(diag)) x = rhs`` per leading index; differentiable in ``diag`` and ``rhs``.

    ``diag`` and ``rhs`` have shape ``(3, D, H, W)`` (one system per displacement axis).
    """
    if diag.shape != rhs.shape or rhs.dim() != 4:
        raise ValueError(f"diag and rhs must both be (axes, D, H, W); got {tuple(diag.shape)} and {tuple(rhs.shape)}")
    if lam <= 0:
        raise ValueError(f"the regularisation weight must be positive, got {lam}")
    return _RegularisedSolve.apply(diag, rhs, float(lam), backend, options or SolverOptions())
