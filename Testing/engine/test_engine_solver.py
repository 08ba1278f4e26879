"""The differentiable solver of ``(lam L + diag(d)) x = b``: gradients, accuracy, backends, the stencil."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F

from learngn import solver
from learngn.solver import (DIAGONAL_EPSILON, SolverOptions, apply_laplacian, resolve_backend,
                            solve_regularised)

TIGHT = SolverOptions(tol=1e-12, maxiter=500)

HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_cupy = pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs CuPy and a CUDA GPU")


def system_matrix(lam: float, diag: torch.Tensor) -> scipy.sparse.csr_matrix:
    """The assembled matrix of one axis, from the same COO triplets the CSR backends use."""
    shape = tuple(diag.shape)
    rows, cols, values = solver._laplacian_coo(shape)
    n = int(np.prod(shape))
    laplacian = scipy.sparse.csr_matrix((values * lam, (rows, cols)), shape=(n, n))
    return laplacian + scipy.sparse.diags(diag.double().numpy().ravel() + lam * DIAGONAL_EPSILON)


def relative_residuals(lam: float, diag: torch.Tensor, rhs: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """||A x - b|| / ||b|| per axis, evaluated in float64 with the assembled matrix."""
    out = []
    for axis in range(rhs.shape[0]):
        a = system_matrix(lam, diag[axis])
        b = rhs[axis].double().numpy().ravel()
        r = a @ x[axis].double().numpy().ravel() - b
        out.append(np.linalg.norm(r) / np.linalg.norm(b))
    return np.array(out)


def random_system(shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    diag = 0.1 + torch.rand((3, *shape), generator=generator, dtype=dtype)
    rhs = torch.randn((3, *shape), generator=generator, dtype=dtype)
    return diag, rhs


@pytest.fixture(scope="module")
def realistic_terms(phantom_pair):
    """Gauss-Newton terms of a real misalignment (MIND of the 12 mm phantom pair, control grid of
    stride 4), interpolated onto a 48x40x64 grid: the size of a 192x160x256 scan's control grid, with
    the value range and the spatial structure of the data term the solver sees in practice."""
    from learngn.features import mind_ssc
    from learngn.gauss_newton import gauss_newton_terms
    import SimpleITK as sitk

    def features(image):
        hu = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))[None, None]
        return mind_ssc(((hu + 1000.0) / 2500.0).clamp(0, 1))

    fixed, moving = phantom_pair[0], phantom_pair[1]
    hessian, gradient = gauss_newton_terms(features(moving), features(fixed), None, None, 4)
    size = (48, 40, 64)
    diag = F.interpolate(hessian[None], size=size, mode="trilinear", align_corners=False)[0]
    rhs = -F.interpolate(gradient[None], size=size, mode="trilinear", align_corners=False)[0]
    return diag.contiguous(), rhs.contiguous()


# -- gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_gradcheck_float64(backend):
    """The adjoint backward pass (grad_b = A^-1 grad_x, grad_d = -x grad_b) matches finite differences.
    The scipy backend runs the CSR code that the CuPy GPU backend shares."""
    diag, rhs = random_system((2, 3, 3))
    diag.requires_grad_(True)
    rhs.requires_grad_(True)
    lam = 0.7

    def function(d, b):
        return solve_regularised(d, b, lam, backend=backend, options=TIGHT)

    assert torch.autograd.gradcheck(function, (diag, rhs), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_of_diag_is_not_zero():
    """gradcheck passes trivially for a zero gradient; make sure the diag really gets one."""
    diag, rhs = random_system((2, 3, 4))
    diag.requires_grad_(True)
    x = solve_regularised(diag, rhs, 0.5, options=TIGHT)
    x.square().sum().backward()
    assert diag.grad is not None and float(diag.grad.abs().max()) > 1e-3


# -- accuracy ----------------------------------------------------------------------------------------

def test_tight_solution_solves_the_system():
    diag, rhs = random_system((4, 5, 6))
    lam = 0.3
    for backend in ("torch", "scipy"):
        x = solve_regularised(diag, rhs, lam, backend=backend, options=TIGHT)
        residual = relative_residuals(lam, diag, rhs, x)
        assert residual.max() < 1e-10, f"{backend}: relative residuals {residual}"


@pytest.mark.parametrize("lam", [0.05, 0.01])  # the generic preset's schedule runs from 0.05 to 0.01
@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_default_options_reach_their_tolerance(realistic_terms, backend, lam):
    """With the default stopping rule (tol 1e-3, at most 40 iterations), float32 terms of a real
    misalignment on a 48x40x64 control grid are solved to ||A x - b|| <= tol ||b|| per axis (5% slack for
    the float32 recurrence of the torch solver, whose updated residual drifts from the true one)."""
    diag, rhs = realistic_terms
    assert diag.dtype == torch.float32 and tuple(diag.shape) == (3, 48, 40, 64)
    options = SolverOptions()
    x = solve_regularised(diag, rhs, lam, backend=backend, options=options)
    assert x.dtype == rhs.dtype and x.shape == rhs.shape
    residual = relative_residuals(lam, diag, rhs, x)
    assert residual.max() <= 1.05 * options.tol, f"relative residuals per axis {residual} exceed tol {options.tol}"


def test_torch_and_scipy_backends_agree(realistic_terms):
    diag, rhs = (t[:, :24, :20, :32].double().contiguous() for t in realistic_terms)
    options = SolverOptions(tol=1e-10, maxiter=2000)
    x_torch = solve_regularised(diag, rhs, 0.02, backend="torch", options=options)
    x_scipy = solve_regularised(diag, rhs, 0.02, backend="scipy", options=options)
    relative = float((x_torch - x_scipy).norm() / x_scipy.norm())
    assert relative < 1e-4, f"torch and scipy solutions differ by {relative:.2e} (relative)"


def test_backward_of_both_backends_agree():
    diag, rhs = random_system((3, 4, 5))
    grads = {}
    for backend in ("torch", "scipy"):
        d, b = diag.clone().requires_grad_(True), rhs.clone().requires_grad_(True)
        x = solve_regularised(d, b, 0.4, backend=backend, options=TIGHT)
        (x * torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view_as(x)).sum().backward()
        grads[backend] = (d.grad, b.grad)
    for t, s in zip(grads["torch"], grads["scipy"]):
        assert torch.allclose(t, s, rtol=1e-6, atol=1e-9)


# -- the operator ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 5, 6), (1, 3, 2), (7, 1, 1)])
def test_laplacian_stencil_equals_assembled_csr(shape):
    """apply_laplacian (torch solver) and _laplacian_coo (CSR backends) are the same matrix."""
    rows, cols, values = solver._laplacian_coo(shape)
    n = int(np.prod(shape))
    matrix = scipy.sparse.csr_matrix((values, (rows, cols)), shape=(n, n))
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = np.stack([matrix @ x[i].numpy().ravel() for i in range(2)]).reshape(2, *shape)
    assert np.allclose(apply_laplacian(x).numpy(), expected, atol=1e-12)
    # a graph Laplacian: symmetric, rows sum to zero, constants in its null space
    assert abs(matrix - matrix.T).max() == 0
    assert np.allclose(np.asarray(matrix.sum(axis=1)).ravel(), 0.0)
    assert float(apply_laplacian(torch.ones(1, *shape, dtype=torch.float64)).abs().max()) == 0.0


def test_invalid_arguments_raise():
    diag, rhs = random_system((2, 3, 3))
    with pytest.raises(ValueError, match="shape|axes"):
        solve_regularised(diag[:, :1], rhs, 1.0)
    with pytest.raises(ValueError, match="positive"):
        solve_regularised(diag, rhs, 0.0)


# -- backend choice ----------------------------------------------------------------------------------

def test_auto_backend_is_torch_without_cupy(monkeypatch):
    """Where CuPy is missing, 'auto' must pick the pure-torch solver, also for CUDA tensors."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    assert solver.cupy_available() is False
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="cupy"):
        resolve_backend("cupy", torch.device("cuda"))


def test_auto_backend_on_cpu_is_torch_even_with_cupy(monkeypatch):
    monkeypatch.setattr(solver, "cupy_available", lambda: True)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "cupy"


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown solver backend"):
        resolve_backend("magic", torch.device("cpu"))


# -- GPU (run on machines with CUDA; skipped elsewhere) ------------------------------------------------

@needs_cuda
def test_torch_solver_cuda_matches_cpu(realistic_terms):
    diag, rhs = realistic_terms
    options = SolverOptions(tol=1e-6, maxiter=500)
    x_cpu = solve_regularised(diag.double(), rhs.double(), 0.02, backend="torch", options=options)
    x_gpu = solve_regularised(diag.double().cuda(), rhs.double().cuda(), 0.02, backend="torch", options=options)
    relative = float((x_gpu.cpu() - x_cpu).norm() / x_cpu.norm())
    assert relative < 1e-4, f"CUDA and CPU torch solutions differ by {relative:.2e}"


@needs_cupy
def test_cupy_backend_matches_torch_on_cuda(realistic_terms):
    diag, rhs = (t.cuda() for t in realistic_terms)
    options = SolverOptions(tol=1e-6, maxiter=500)
    x_torch = solve_regularised(diag, rhs, 0.02, backend="torch", options=options)
    x_cupy = solve_regularised(diag, rhs, 0.02, backend="cupy", options=options)
    assert x_cupy.device == x_torch.device and x_cupy.dtype == x_torch.dtype
    relative = float((x_cupy - x_torch).norm() / x_torch.norm())
    assert relative < 1e-4, f"cupy and torch solutions differ by {relative:.2e}"


@needs_cupy
def test_cupy_gradcheck():
    diag, rhs = random_system((2, 3, 3))
    diag, rhs = diag.cuda().requires_grad_(True), rhs.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d, b: solve_regularised(d, b, 0.7, backend="cupy", options=TIGHT),
                                    (diag, rhs), eps=1e-6, atol=1e-6, rtol=1e-4)


@needs_cupy
def test_auto_backend_on_cuda_with_cupy_is_cupy():
    assert resolve_backend("auto", torch.device("cuda")) == "cupy"
