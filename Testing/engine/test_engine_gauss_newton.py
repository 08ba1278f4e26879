"""The Gauss-Newton stage on tensors: recovers a translation, is differentiable, warps as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from learngn.errors import InputError
from learngn.features import gaussian_smooth
from learngn.gauss_newton import (gauss_newton, gauss_newton_control, gauss_newton_terms, joined_slabs,
                                  lambda_schedule, pool_to_grid, prepared_for_warp, settings_schedule,
                                  upsample_from_grid, warp, warp_in_slabs)
from learngn.predictors import GaussNewtonPredictors
from learngn.settings import RegistrationSettings

SHAPE = (32, 32, 32)
CENTRE = (15.5, 15.5, 15.5)
SHIFT = (1.5, -1.0, 2.0)  # voxels along (z, y, x)


def blob(shape=SHAPE, centre=CENTRE, sigma=5.0, dtype=torch.float32) -> torch.Tensor:
    axes = [torch.arange(n, dtype=dtype) for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    squared = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.exp(-squared / (2 * sigma ** 2))[None, None]


@pytest.fixture(scope="module")
def blob_pair():
    """The moving blob is the fixed one moved by +SHIFT voxels: moving(x) = fixed(x - SHIFT), so the
    displacement u with moving(x + u(x)) = fixed(x) is u = +SHIFT."""
    fixed = blob()
    moving = blob(centre=tuple(c + s for c, s in zip(CENTRE, SHIFT)))
    return fixed, moving


@pytest.mark.parametrize("config", [RegistrationSettings(), RegistrationSettings(lambda_start=2.0, lambda_end=0.4),
                                    RegistrationSettings(levels=2, grid_stride=2)],
                         ids=["defaults", "smoother", "two-levels"])
def test_translation_of_a_blob_is_recovered(blob_pair, config):
    fixed, moving = blob_pair
    u = gauss_newton(fixed, moving, config)
    assert u.shape == (1, 3, *SHAPE)
    at_centre = u[0, :, 16, 16, 16].numpy()
    assert np.allclose(at_centre, SHIFT, atol=0.3), f"u at the centre {at_centre}, expected {SHIFT}"
    before = float(((moving - fixed) ** 2).mean())
    after = float(((warp(moving, u) - fixed) ** 2).mean())
    assert after < 0.05 * before, f"residual only went from {before:.3g} to {after:.3g}"


def test_identical_images_give_zero_displacement(blob_pair):
    fixed, _ = blob_pair
    u = gauss_newton(fixed, fixed.clone(), RegistrationSettings(iterations=3))
    assert float(u.abs().max()) < 1e-4  # float32 rounding of the solve, not motion


def test_iteration_callback_reports_every_step(blob_pair):
    fixed, moving = blob_pair
    calls = []
    gauss_newton(fixed, moving, RegistrationSettings(iterations=3, levels=2), on_iteration=lambda *a: calls.append(a))
    assert calls == [(0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 3), (1, 1, 3), (1, 2, 3)]


def test_gradients_reach_the_predictors(blob_pair):
    """Training back-propagates a loss through the unrolled steps into the predictors' weights."""
    fixed, moving = blob_pair
    small = (slice(None), slice(None), slice(8, 24), slice(8, 24), slice(8, 24))
    fixed, moving = fixed[small].contiguous(), moving[small].contiguous()
    predictors = GaussNewtonPredictors()
    config = RegistrationSettings(iterations=2, lambda_start=0.05, lambda_end=0.02, cg_tolerance=1e-4,
                                  cg_max_iterations=50)
    u = gauss_newton(fixed, moving, config, predictors=predictors)
    loss = ((warp(moving, u) - fixed) ** 2).mean()
    loss.backward()
    for name in ("jacobian.first.weight", "jacobian.branch_out.weight", "residual.first.weight"):
        grad = dict(predictors.named_parameters())[name].grad
        assert grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(grad).all(), f"non-finite gradient in {name}"
        assert float(grad.abs().max()) > 0, f"zero gradient in {name}"


def test_untrained_predictors_equal_classic_gauss_newton(blob_pair):
    fixed, moving = blob_pair
    config = RegistrationSettings(iterations=3)
    classic = gauss_newton(fixed, moving, config)
    with torch.no_grad():
        learned = gauss_newton(fixed, moving, config, predictors=GaussNewtonPredictors())
    assert torch.allclose(classic, learned, atol=1e-4)


def test_result_smoothing_filters_the_final_control_grid_once(blob_pair):
    """``result_smoothing`` smooths the returned control points and nothing else: the iterations run as without
    it, and the displacement is the smoothed grid interpolated."""
    fixed, moving = blob_pair
    plain = RegistrationSettings(iterations=3, result_smoothing=0.0)
    control = gauss_newton_control(fixed, moving, plain)
    smoothed = gauss_newton_control(fixed, moving, plain.replace(result_smoothing=0.7))
    assert torch.equal(smoothed, gaussian_smooth(control, 0.7))
    assert float((smoothed - control).abs().max()) > 1e-3  # it changed something
    displacement = gauss_newton(fixed, moving, plain.replace(result_smoothing=0.7))
    assert torch.equal(displacement, upsample_from_grid(smoothed, plain.grid_stride, SHAPE))
    with pytest.raises(InputError, match="result_smoothing"):
        plain.replace(result_smoothing=-1.0)


def test_lambda_schedule_is_log_spaced():
    values = lambda_schedule(2.0, 0.4, 5)
    assert len(values) == 5
    assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(0.4)
    ratios = np.array(values[1:]) / np.array(values[:-1])
    assert np.allclose(ratios, ratios[0]) and ratios[0] < 1.0  # geometric, decreasing
    assert lambda_schedule(0.05, 0.01, 1) == [pytest.approx(0.05)]


def test_regularisation_scales_the_whole_schedule():
    """``regularisation`` is the user's one knob: it multiplies every lambda of the settings' schedule."""
    base = settings_schedule(RegistrationSettings(regularisation=1.0))
    assert np.allclose(settings_schedule(RegistrationSettings(regularisation=3.0)), 3.0 * np.array(base))


def test_warp_with_zero_displacement_is_identity():
    volume = torch.rand(2, 3, 7, 9, 11, generator=torch.Generator().manual_seed(0))
    out = warp(volume, torch.zeros(1, 3, 7, 9, 11))
    assert torch.allclose(out, volume, atol=1e-5)


def test_warp_with_integer_shift_is_a_roll_in_the_interior():
    """warp samples volume(x + u): u = +2 along x (last axis) and -1 along z reads the voxel 2 ahead in x
    and 1 behind in z, i.e. torch.roll by (-2, +1)."""
    volume = torch.rand(1, 1, 10, 12, 14, generator=torch.Generator().manual_seed(1))
    u = torch.zeros(1, 3, 10, 12, 14)
    u[:, 0] = -1.0  # z
    u[:, 2] = 2.0   # x
    out = warp(volume, u)
    rolled = torch.roll(volume, shifts=(1, -2), dims=(2, 4))
    interior = (slice(None), slice(None), slice(1, None), slice(None), slice(None, -2))
    assert torch.allclose(out[interior], rolled[interior], atol=1e-5)


def _warp_by_definition(volume: torch.Tensor, displacement: torch.Tensor, mode: str) -> torch.Tensor:
    """One ``grid_sample`` call over an identity grid plus the displacement, normalised as documented."""
    shape = volume.shape[2:]
    axes = [torch.arange(n, dtype=volume.dtype) for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None] + displacement
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape]).view(1, 3, 1, 1, 1)
    grid = (coords * scale - 1.0).flip(1).permute(0, 2, 3, 4, 1).expand(volume.shape[0], *shape, 3)
    return F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=True)


@pytest.mark.parametrize("shape", [(9, 8, 7), (10, 6, 5), (1, 6, 5)], ids=["odd-depth", "even-depth", "one-plane"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_warp_in_cpu_slabs_equals_one_sampler_call(shape, mode, threads):
    """The CPU warp cuts the depth into one slab per thread and may read a channels-last copy; neither may
    change a single value against one grid_sample call."""
    generator = torch.Generator().manual_seed(2)
    volume = torch.rand(1, 4, *shape, generator=generator)
    displacement = 3.0 * torch.randn(1, 3, *shape, generator=generator)
    expected = _warp_by_definition(volume, displacement, mode)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for layout in (volume, prepared_for_warp(volume)):
            assert torch.equal(warp(layout, displacement, mode), expected)
    finally:
        torch.set_num_threads(previous)


def test_warp_in_slabs_passes_gradients_like_one_sampler_call():
    generator = torch.Generator().manual_seed(3)
    volume = torch.rand(1, 2, 5, 6, 7, generator=generator, requires_grad=True)
    displacement = torch.randn(1, 3, 5, 6, 7, generator=generator, requires_grad=True)
    weights = torch.rand(1, 2, 5, 6, 7, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outputs = [sample(volume, displacement)
                   for sample in (lambda v, d: warp(v, d), lambda v, d: _warp_by_definition(v, d, "bilinear"))]
        gradients = [torch.autograd.grad((output * weights).sum(), (volume, displacement)) for output in outputs]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(outputs[0], outputs[1])
    for ours, reference in zip(*gradients):
        assert torch.allclose(ours, reference, atol=1e-5)


def test_pooling_and_upsampling_agree_on_control_point_positions():
    """A linear ramp pooled to the control grid and interpolated back is the ramp again (away from the
    far edge): the control points sit at the centres of the voxels they pool."""
    shape = (16, 12, 20)
    ramp = torch.arange(shape[2], dtype=torch.float32).view(1, 1, 1, 1, -1).expand(1, 3, *shape).contiguous()
    back = upsample_from_grid(pool_to_grid(ramp, 4), 4, shape)
    assert back.shape == ramp.shape
    assert torch.allclose(back[..., 2:-2], ramp[..., 2:-2], atol=1e-5)


def test_terms_are_zero_where_the_weight_is_zero(blob_pair):
    fixed, moving = blob_pair
    weight = torch.zeros(1, 1, *SHAPE)
    weight[..., :16] = 1.0
    hessian, gradient = gauss_newton_terms(moving, fixed, weight, None, 4)
    assert hessian.shape == (3, 8, 8, 8)
    assert float(hessian[..., 4:].abs().max()) == 0.0 and float(gradient[..., 4:].abs().max()) == 0.0
    assert float(hessian[..., :4].abs().max()) > 0.0


@pytest.mark.parametrize("shape", [(9, 7, 11), (2, 12, 10), (16, 16, 16)])
def test_in_place_classic_terms_equal_the_differentiable_ones(shape):
    """Registration (no gradients) sums the classic terms in place; training keeps the differentiable path.
    Both must give the same pooled terms, edges (replicated differences) and the mask weight included."""
    generator = torch.Generator().manual_seed(1)
    warped, fixed = torch.rand(2, 1, 5, *shape, generator=generator)
    weight = (torch.rand(1, 1, *shape, generator=generator) > 0.3).float()
    with torch.no_grad():
        fast = gauss_newton_terms(warped, fixed, weight, None, 2)
    tracked = warped.clone().requires_grad_(True)
    reference = gauss_newton_terms(tracked, fixed, weight, None, 2)
    for got, expected in zip(fast, reference):
        assert float(expected.abs().max()) > 0.0
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    assert reference[0].requires_grad  # the training path still carries gradients


@pytest.mark.parametrize("depth", [1, 2, 5, 7, 8])
@pytest.mark.parametrize("threads", [2, 3])
def test_classic_terms_read_the_warp_slabs_as_the_joined_volume(depth, threads):
    """Registration hands the warp's depth slabs to the classic terms without joining them, and lets them sum
    into one workspace per level; the terms must be the same bits as from the joined volume into fresh
    memory, derivatives across slab borders and the repeated planes of the last slab included."""
    generator = torch.Generator().manual_seed(4)
    moving, fixed = torch.rand(2, 1, 3, depth, 6, 5, generator=generator)
    displacement = torch.randn(1, 3, depth, 6, 5, generator=generator)
    weight = (torch.rand(1, 1, depth, 6, 5, generator=generator) > 0.3).float()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            slabs = warp_in_slabs(prepared_for_warp(moving), displacement)
            joined = warp(moving, displacement)
            from_slabs = gauss_newton_terms(slabs, fixed, weight, None, 1)
            from_joined = gauss_newton_terms(joined, fixed, weight, None, 1)
            workspace = (torch.full((1, 3, depth, 6, 5), 7.0), torch.full((1, 3, depth, 6, 5), -7.0))  # stale
            reusing = gauss_newton_terms(slabs, fixed, weight, None, 1, workspace)
    finally:
        torch.set_num_threads(previous)
    assert slabs.shape[0] == min(threads, depth)
    assert torch.equal(joined_slabs(slabs, depth), joined)
    for got, again, expected in zip(from_slabs, reusing, from_joined):
        assert float(expected.abs().max()) > 0.0
        assert torch.equal(got, expected) and torch.equal(again, expected)


def test_a_thin_slab_gets_the_levels_it_can_hold():
    """Three levels need every axis halved twice; a slab four voxels thick keeps the levels it can hold
    (here two) instead of failing in the pooling."""
    from learngn.gauss_newton import usable_levels

    assert usable_levels((64, 64, 64), 3, 2) == 3
    assert usable_levels((4, 64, 64), 3, 2) == 2
    assert usable_levels((3, 64, 64), 3, 2) == 2 and usable_levels((2, 64, 64), 3, 2) == 1
    fixed = blob((4, 32, 32), centre=(1.5, 15.5, 15.5))
    moving = blob((4, 32, 32), centre=(1.5, 16.5, 15.5))
    displacement = gauss_newton(fixed, moving, RegistrationSettings(levels=3, iterations=3))
    assert displacement.shape == (1, 3, 4, 32, 32) and torch.isfinite(displacement).all()
