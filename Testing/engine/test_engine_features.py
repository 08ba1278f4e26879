"""Feature maps: MIND-SSC, signed distance maps, intensity windows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from learngn.features import (CT_WINDOW, MR_PERCENTILES, gaussian_smooth, intensity_window, looks_like_ct,
                              mind_ssc, normalise_intensity, signed_distance_maps, union_labels)


@pytest.fixture(scope="module")
def textured_volume():
    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(size=(24, 20, 28)), 1.5)
    volume += np.linspace(0, 1, 28)[None, None, :]  # some large-scale structure as well
    return torch.from_numpy(volume.astype(np.float32))[None, None]


# -- MIND-SSC ----------------------------------------------------------------------------------------

def test_mind_has_twelve_channels_in_unit_range(textured_volume):
    mind = mind_ssc(textured_volume)
    assert mind.shape == (1, 12, 24, 20, 28)
    assert torch.isfinite(mind).all()
    assert float(mind.min()) >= 0.0 and float(mind.max()) <= 1.0
    # the minimum distance maps to exp(0) = 1 in every voxel: each voxel has a channel equal to 1
    assert torch.allclose(mind.max(dim=1).values, torch.ones(1, 24, 20, 28))
    assert float(mind.std()) > 0.05, "a descriptor of a textured volume should not be flat"


@pytest.mark.parametrize("scale, offset", [(3.0, 0.5), (0.2, -40.0), (1000.0, -1000.0)])
def test_mind_is_invariant_to_affine_intensity_changes(textured_volume, scale, offset):
    mind = mind_ssc(textured_volume.double())
    changed = mind_ssc(scale * textured_volume.double() + offset)
    assert float((mind - changed).abs().max()) < 1e-6


def test_mind_is_not_invariant_to_a_nonlinear_change(textured_volume):
    """The invariance test above is not vacuous."""
    mind = mind_ssc(textured_volume)
    changed = mind_ssc(textured_volume ** 3)
    assert float((mind - changed).abs().max()) > 0.05


def test_mind_of_a_constant_image_is_finite():
    mind = mind_ssc(torch.full((1, 1, 10, 10, 10), 3.0))
    assert torch.isfinite(mind).all()


def test_gaussian_smooth_preserves_constants_and_mass():
    constant = torch.full((1, 2, 9, 10, 11), 4.0)
    assert torch.allclose(gaussian_smooth(constant, 1.3), constant)
    impulse = torch.zeros(1, 1, 21, 21, 21)
    impulse[0, 0, 10, 10, 10] = 1.0
    smoothed = gaussian_smooth(impulse, 1.5)
    assert float(smoothed.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(smoothed[0, 0, 10, 10, 10]) < 0.2
    assert gaussian_smooth(impulse, 0.0) is impulse


def test_gaussian_smooth_equals_scipy_with_nearest_edges(textured_volume):
    """The separable sums match SciPy's Gaussian filter (edges replicated, the same truncation radius)."""
    sigma = 1.2
    expected = ndimage.gaussian_filter(textured_volume[0, 0].numpy().astype(np.float64), sigma, mode="nearest",
                                       truncate=np.ceil(2.0 * sigma) / sigma)
    np.testing.assert_allclose(gaussian_smooth(textured_volume, sigma)[0, 0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.5, 2.5])
@pytest.mark.parametrize("shape", [(1, 12, 9, 7, 5), (2, 3, 17, 4, 3), (1, 1, 1, 5, 6), (1, 3, 30, 2, 29)])
def test_gaussian_smooth_is_the_padded_sum_bit_for_bit(shape, sigma):
    """Registration filters without padded copies, training (with gradients) over padded copies by the
    definition; both must give the same bits: MIND, and so every registration, depends on it (edges wider
    than a short axis included)."""
    volume = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        smoothed = gaussian_smooth(volume.clone(), sigma)
    tracked = gaussian_smooth(volume.clone().requires_grad_(True), sigma)
    assert tracked.requires_grad
    assert torch.equal(smoothed, tracked.detach())


def test_mind_equals_its_definition(textured_volume):
    """Each channel is exp(-D/V) of one SSC pair: D the smoothed squared difference of the image shifted by
    the pair's two offsets (edges replicated), minus the smallest over channels; V their mean per voxel."""
    image = textured_volume[0, 0].numpy().astype(np.float64)
    dilation, sigma = 2, 0.8
    six = [(dilation, 0, 0), (-dilation, 0, 0), (0, dilation, 0), (0, -dilation, 0), (0, 0, dilation),
           (0, 0, -dilation)]
    pairs = [(a, b) for i, a in enumerate(six) for b in six[i + 1:]
             if sum((p - q) ** 2 for p, q in zip(a, b)) == 2 * dilation ** 2]
    padded = np.pad(image, dilation, mode="edge")

    def shifted(offset):
        return padded[tuple(slice(dilation + o, dilation + o + n) for o, n in zip(offset, image.shape))]

    truncate = np.ceil(2.0 * sigma) / sigma
    d = np.stack([ndimage.gaussian_filter((shifted(a) - shifted(b)) ** 2, sigma, mode="nearest", truncate=truncate)
                  for a, b in pairs])
    d -= d.min(axis=0)
    variance = d.mean(axis=0)
    variance = np.clip(variance, variance.mean() * 1e-3 + 1e-12, variance.mean() * 1e3 + 1e-12)
    expected = np.exp(-d / variance)
    assert len(pairs) == 12
    np.testing.assert_allclose(mind_ssc(textured_volume, dilation=dilation, sigma=sigma)[0].numpy(), expected,
                               atol=1e-4)


# -- signed distance maps ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sphere_labels():
    """Label 3: a ball of radius 8 voxels (16 mm at 2 mm spacing); label 5: a box elsewhere."""
    z, y, x = np.mgrid[:40, :36, :44]
    labels = np.zeros((40, 36, 44), dtype=np.int32)
    labels[(z - 20) ** 2 + (y - 18) ** 2 + (x - 14) ** 2 <= 64] = 3
    labels[5:12, 25:32, 33:40] = 5
    return labels


def test_signed_distance_signs_and_bounds(sphere_labels):
    sdm = signed_distance_maps(sphere_labels, [3, 5], spacing_mm=2.0, clip_mm=40.0)
    assert sdm.shape == (2, 40, 36, 44) and sdm.dtype == np.float32
    assert float(sdm.min()) >= -1.0 and float(sdm.max()) <= 1.0
    for channel, value in enumerate([3, 5]):
        inside = sphere_labels == value
        assert (sdm[channel][inside] > 0).all(), f"label {value}: not positive inside"
        assert (sdm[channel][~inside] < 0).all(), f"label {value}: not negative outside"


def test_signed_distance_crosses_zero_at_the_boundary(sphere_labels):
    """Along the x axis through the ball's centre the sign flips exactly where the label does, and
    the values grow with the distance from the boundary on both sides."""
    sdm = signed_distance_maps(sphere_labels, [3], spacing_mm=2.0, clip_mm=40.0)[0]
    line = sdm[20, 18, :]
    inside = sphere_labels[20, 18, :] == 3
    flips = np.nonzero(np.diff(np.sign(line)))[0]
    label_changes = np.nonzero(np.diff(inside.astype(int)))[0]
    assert np.array_equal(flips, label_changes) and len(flips) == 2
    # monotone from the left edge to the centre (x=14)
    assert np.all(np.diff(line[:15]) >= 0)
    # the centre: sqrt(depth / clip) with depth the distance to the nearest outside voxel centre,
    # sqrt(65) voxels = 16.1 mm (the ball is r^2 <= 64 voxels)
    assert line[14] == pytest.approx(np.sqrt(2.0 * np.sqrt(65.0) / 40.0), abs=1e-4)


def test_signed_distance_is_clipped_far_away(sphere_labels):
    sdm = signed_distance_maps(sphere_labels, [3], spacing_mm=2.0, clip_mm=10.0)[0]
    far = ndimage.distance_transform_edt(sphere_labels != 3, sampling=2.0) > 10.0
    assert np.allclose(sdm[far], -1.0)
    deep = ndimage.distance_transform_edt(sphere_labels == 3, sampling=2.0) >= 10.0
    assert deep.any() and np.allclose(sdm[deep], 1.0)


def test_absent_label_is_all_outside(sphere_labels):
    sdm = signed_distance_maps(sphere_labels, [7], spacing_mm=2.0)
    assert np.all(sdm == -1.0)


def test_union_labels():
    a = np.array([[0, 1], [2, 2]])
    b = np.array([[0, 5], [1, 0]])
    assert union_labels(a, None, b) == [1, 2, 5]
    assert union_labels(None) == []


# -- intensity window --------------------------------------------------------------------------------

def test_ct_is_detected_and_windowed():
    rng = np.random.default_rng(1)
    ct = np.concatenate([np.full(4000, -1000.0), rng.normal(40.0, 30.0, 6000), rng.normal(700, 100, 500)])
    assert looks_like_ct(ct)
    assert intensity_window(ct, "auto") == CT_WINDOW
    window = intensity_window(ct, "auto")
    normalised = normalise_intensity(torch.tensor([-2000.0, -1000.0, 250.0, 1500.0, 3000.0]), window)
    assert torch.allclose(normalised, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_mr_uses_robust_percentiles():
    rng = np.random.default_rng(2)
    mr = np.abs(rng.normal(300.0, 120.0, 20000))
    mr[:5] = 1e6  # a few hot voxels must not set the window
    assert not looks_like_ct(mr)
    low, high = intensity_window(mr, "auto")
    assert (low, high) == pytest.approx(tuple(np.percentile(mr, MR_PERCENTILES)))
    assert high < 1e5
    assert intensity_window(mr, "ct") == CT_WINDOW  # forced


def test_ct_forced_to_mr_and_constant_values():
    ct = np.array([-1000.0] * 50 + [40.0] * 50)
    low, high = intensity_window(ct, "mr")
    assert low == pytest.approx(-1000.0) and high == pytest.approx(40.0)
    low, high = intensity_window(np.full(100, 7.0), "mr")
    assert high > low  # no division by zero later
    with pytest.raises(ValueError, match="normalisation"):
        intensity_window(ct, "pet")
