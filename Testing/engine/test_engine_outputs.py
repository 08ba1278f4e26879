"""The compact result (pre-alignment + float32 field on Gauss-Newton's control grid) against the engine's
displacement and the full-grid field it replaces, the output stage on both resampling paths, sampled input checks, the pre-alignment's progress and
the out-of-memory fallback that re-plans the working grid for the CPU."""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from engine_helpers import oblique_direction, rotation, with_geometry
from learngn.device import DEFAULT_WORKING_VOXELS
from learngn.gauss_newton import upsample_from_grid
from learngn.geometry import (compose_to_field, displacement_transform, image_field_to_voxels, voxel_field_to_image,
                              working_grid, working_spacing)
from learngn.output import CompactTransform, compact_transform, compose_on_device, output_stage
from learngn.sampling import subgrid, voxel_sample
from learngn.validation import check_image
from test_engine_sampling import a_dense_transform, an_affine, smooth_volume

CPU = torch.device("cpu")
register_module = importlib.import_module("learngn.register")  # the module (the package exports the function)
#: The compact transform must map 99 % of the fixed voxels like the previous full-grid field within this
#: distance (mm), and all of them within MEAN_MM on average: the two interpolate the same control points
#: differently between working voxels (docs/ENGINE_API.md), most near kinks of the field and the image edge.
EXACT_MM = 0.05
MEAN_MM = 0.01


def ct_like_fixed() -> sitk.Image:
    """An oblique, anisotropic CT-like grid (0.8 x 0.8 x 2.5 mm), where axis-order mistakes show."""
    values = smooth_volume((40, 96, 88), 11)
    return with_geometry(values, origin=(-40.0, -30.0, 10.0), spacing=(0.8, 0.8, 2.5),
                         direction=rotation("z", 10.0) @ oblique_direction())


#: Control points are this many working voxels apart in these tests (the engine's default).
STRIDE = 2


def control_points(grid: sitk.Image, seed: int, scale_voxels: float = 1.5, sigma_nodes: float = 3.0) -> torch.Tensor:
    """A smooth displacement of a few millimetres at the control points of ``grid`` (every STRIDE working
    voxels), in working voxels ``(1, 3, d, h, w)``: what Gauss-Newton returns.  Smooth over ``sigma_nodes``
    control points, like the regularised fields the engine returns (docs/BENCHMARKS.md)."""
    shape = [-(-n // STRIDE) for n in sitk.GetArrayViewFromImage(grid).shape]
    rng = np.random.default_rng(seed)
    axes = [sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(0.0, 1.0, shape)), sigma_nodes)) for _ in range(3)]
    field = np.stack(axes)
    return torch.from_numpy(field / np.abs(field).max() * scale_voxels)[None].float()


def working_displacement(control: torch.Tensor, grid: sitk.Image) -> torch.Tensor:
    """The engine's displacement at every working voxel (working voxels ``(1, 3, z, y, x)``)."""
    return upsample_from_grid(control, STRIDE, sitk.GetArrayViewFromImage(grid).shape)


def previous_full_grid_field(prealignment, control: torch.Tensor, grid: sitk.Image, fixed: sitk.Image) -> np.ndarray:
    """The full-grid field as the engine wrote it before the control grid was stored: the working-voxel
    displacement interpolated linearly, then the pre-alignment, at every fixed voxel."""
    working = displacement_transform(voxel_field_to_image(working_displacement(control, grid), grid))
    return sitk.GetArrayFromImage(compose_to_field([prealignment, working], fixed))


def assert_maps_like_previous(field: np.ndarray, previous: np.ndarray, what: str) -> None:
    difference = np.linalg.norm(field - previous, axis=-1)
    print(f"{what} vs the previous full-grid field: mean {difference.mean():.2e}, "
          f"99th percentile {np.percentile(difference, 99):.2e}, max {difference.max():.2e} mm; "
          f"|d| up to {np.linalg.norm(previous, axis=-1).max():.1f} mm")
    assert np.percentile(difference, 99) < EXACT_MM and difference.mean() < MEAN_MM


def written_and_read(transform: sitk.Transform, tmp_path) -> sitk.Transform:
    path = tmp_path / "transform.h5"
    sitk.WriteTransform(transform, str(path))
    return sitk.ReadTransform(str(path))


def field_of(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection()))


@pytest.mark.parametrize("prealignment", ["affine", "affine+dense initial", "none"])
def test_compact_transform_file_maps_points_like_the_engine_and_the_full_grid_field(prealignment, tmp_path):
    """The written composite (control-grid field, then the pre-alignment) gives the engine's displacement at
    every working voxel to float rounding, and maps every fixed voxel like the full-grid field written before
    (which interpolated between working voxels rather than between control points)."""
    fixed = ct_like_fixed()
    grid = working_grid(fixed, 2.0)
    control = control_points(grid, 5)
    transform = {"affine": an_affine(), "none": None,
                 "affine+dense initial": sitk.CompositeTransform([an_affine(), a_dense_transform(fixed)])}[prealignment]
    compact, _ = compact_transform(transform, control, STRIDE, grid, fixed)
    read = written_and_read(compact.transform(), tmp_path)
    assert read.GetName() == "CompositeTransform"
    engine = compose_on_device(transform, voxel_field_to_image(working_displacement(control, grid), grid), grid,
                               CPU).tensor.numpy()
    assert np.abs(field_of(read, grid) - engine).max() < 1e-3
    previous = previous_full_grid_field(transform, control, grid, fixed)
    assert np.linalg.norm(previous, axis=-1).max() > 3.0
    assert_maps_like_previous(field_of(read, fixed), previous, prealignment)


def test_composed_control_grid_field_is_exact_under_linear_interpolation():
    """What the Slicer module receives: the whole displacement at the control points alone (affine included),
    which linear interpolation turns back into the transform's field at every fixed voxel."""
    fixed = ct_like_fixed()
    grid = working_grid(fixed, 2.0)
    compact, composed = compact_transform(an_affine(), control_points(grid, 8), STRIDE, grid, fixed)
    image = compact.composed_on_control_grid()
    assert image.GetPixelID() == sitk.sitkVectorFloat32 and image.GetSize() == compact.control_field.GetSize()
    assert image.GetSpacing()[0] == pytest.approx(STRIDE * grid.GetSpacing()[0])
    interpolated = field_of(sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64)), fixed)
    assert np.abs(interpolated - field_of(compact.transform(), fixed)).max() < 1e-3
    working = field_of(sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64)), grid)
    assert np.abs(working - composed.numpy()).max() < 1e-3


def test_compact_result_is_float32_on_the_control_grid(phantom_registration, phantom_pair, tmp_path):
    result, fixed = phantom_registration.result, phantom_pair[0]
    compact = result.compact
    assert isinstance(compact, CompactTransform)
    stride = result.settings.grid_stride
    assert compact.control_field.GetPixelID() == sitk.sitkVectorFloat32
    assert compact.working_grid.GetSpacing()[0] == pytest.approx(result.metrics["working_spacing_mm"])
    assert compact.control_field.GetSpacing()[0] == pytest.approx(stride * result.metrics["working_spacing_mm"])
    read = written_and_read(result.transform(), tmp_path)
    parts = [read.GetNthTransform(i).GetName() for i in range(read.GetNumberOfTransforms())]
    assert parts == ["AffineTransform", "DisplacementFieldTransform"], parts
    # the whole registration, as the previous full-grid field would have held it
    control = stride * image_field_to_voxels(compact.control_field, CPU)[:, :, 1:-1, 1:-1, 1:-1]
    previous = previous_full_grid_field(result.prealignment, control, compact.working_grid, fixed)
    assert_maps_like_previous(field_of(read, fixed), previous, "phantom registration")
    assert np.abs(sitk.GetArrayViewFromImage(result.displacement) - field_of(read, fixed)).max() < 1e-3


def test_both_resampling_paths_of_the_output_stage_agree():
    """SimpleITK through the compact transform (CPU) and torch through the full-grid field (a device)."""
    fixed = ct_like_fixed()
    moving = with_geometry(smooth_volume((44, 90, 90), 4), origin=(-42.0, -28.0, 8.0), spacing=(0.9, 0.85, 2.4),
                           direction=oblique_direction())
    grid = working_grid(fixed, 3.5)
    control = control_points(grid, 2)
    runs = [output_stage(fixed, moving, an_affine(), control, STRIDE, grid, None, None, None, [], with_torch=flag)
            for flag in (False, True)]
    (_, warped_sitk, metrics_sitk), (_, warped_torch, metrics_torch) = runs
    low = float(sitk.GetArrayViewFromImage(moving).min())
    a, b = sitk.GetArrayFromImage(warped_sitk), sitk.GetArrayFromImage(warped_torch)
    assert (a != low).mean() > 0.3
    assert np.abs(a - b).max() < 1e-2 * float(np.ptp(a))
    for key in ("ncc_before", "ncc_prealigned", "ncc_after", "negative_jacobian_percent", "log_jacobian_std"):
        assert metrics_sitk[key] == pytest.approx(metrics_torch[key], abs=1e-3), key


def test_similarity_subset_holds_exactly_the_voxels_it_places():
    fixed = ct_like_fixed()
    sample, steps = subgrid(fixed, 5_000)
    assert np.prod(sample.GetSize()) <= 5_000 and min(steps) >= 1
    array = sitk.GetArrayViewFromImage(fixed)[::steps[2], ::steps[1], ::steps[0]]
    assert array.shape == sitk.GetArrayViewFromImage(sample).shape
    resampled = sitk.GetArrayFromImage(sitk.Resample(fixed, sample, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32))
    assert np.allclose(resampled, array, atol=1e-3)


# -- input checks on a sample ----------------------------------------------------------------------------

def test_input_checks_look_at_a_sample_of_a_large_scan(monkeypatch):
    """The label-map guess sorts at most about a million values, not every voxel of the scan."""
    values = (np.arange(160 * 256 * 256) % 6).astype(np.int16).reshape(160, 256, 256)
    big = sitk.GetImageFromArray(values)  # 10.5 M voxels, 6 distinct values
    sizes = []
    original = np.unique

    def recording_unique(values, *args, **kwargs):
        sizes.append(np.asarray(values).size)
        return original(values, *args, **kwargs)

    monkeypatch.setattr(np, "unique", recording_unique)
    with pytest.warns(RuntimeWarning, match="label map"):
        check_image(big, "fixed image")
    assert sizes and max(sizes) <= 1_100_000, sizes


def test_input_checks_still_find_a_single_nan():
    array = np.random.default_rng(0).normal(0, 100, (20, 30, 40)).astype(np.float32)
    array[7, 11, 13] = np.nan
    with pytest.raises(learngn.InputError, match="1 NaN"):
        check_image(sitk.GetImageFromArray(array), "moving image")


def test_percentile_sample_is_small_and_keeps_the_mask():
    array = np.arange(200 * 200 * 100, dtype=np.float32).reshape(100, 200, 200)
    mask = np.zeros(array.shape, np.uint8)
    mask[40:60, 50:150, 50:150] = 1
    assert voxel_sample(array).size <= 1_100_000
    inside = voxel_sample(array, mask)
    assert inside.size >= 10_000 and set(np.unique(mask.ravel()[np.isin(array.ravel(), inside)])) == {1}


# -- progress during the pre-alignment ---------------------------------------------------------------------

def test_prealignment_reports_progress_while_it_runs(tiny_pair):
    fixed, moving = tiny_pair
    events = []
    learngn.register(fixed, moving, iterations=1, progress=events.append)
    prealign = [e for e in events if e.stage == "prealign"]
    fractions = [e.fraction for e in prealign]
    assert len(set(fractions)) >= 6, f"the pre-alignment reported {len(set(fractions))} distinct fractions"
    assert fractions == sorted(fractions)
    assert any("affine fit at" in e.message for e in prealign)


# -- out-of-memory fallback re-plans for the CPU -------------------------------------------------------------

@pytest.mark.parametrize("failing", ["prealign", "deformable"])
def test_gpu_out_of_memory_falls_back_to_the_cpu_with_the_cpu_budget(tiny_pair, monkeypatch, failing):
    """Simulated: the device resolves to CUDA and one stage runs out of memory there.  It runs again on the
    CPU, so does the rest, and the working grid is planned with the CPU's voxel budget, not the GPU's."""
    fixed, moving = tiny_pair
    monkeypatch.setitem(DEFAULT_WORKING_VOXELS, "cpu", 2_000)
    monkeypatch.setitem(DEFAULT_WORKING_VOXELS, "cuda", 60_000)
    monkeypatch.setattr(register_module, "resolve_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    calls = {"prealign": [], "deformable": []}
    real = {"prealign": register_module.prealign, "deformable": register_module._deformable}

    def recorded(name):
        def wrapped(*args, **kwargs):
            device = kwargs["device"] if name == "prealign" else args[4]
            calls[name].append((device.type, None if name == "prealign" else args[1].GetSize()))
            if device.type == "cuda":
                if name != failing:  # the stage that does not fail must not run on the missing GPU either
                    device = torch.device("cpu")
                    kwargs = {**kwargs, "device": device} if name == "prealign" else kwargs
                    args = args if name == "prealign" else (*args[:4], device, *args[5:])
                else:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real[name](*args, **kwargs)
        return wrapped

    monkeypatch.setattr(register_module, "prealign", recorded("prealign"))
    monkeypatch.setattr(register_module, "_deformable", recorded("deformable"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = learngn.register(fixed, moving, iterations=1)
    expected = {"prealign": {"prealign": ["cuda", "cpu"], "deformable": ["cpu"]},
                "deformable": {"prealign": ["cuda"], "deformable": ["cuda", "cpu"]}}[failing]
    assert {name: [device for device, _ in runs] for name, runs in calls.items()} == expected
    cpu_grid = working_grid(fixed, working_spacing(fixed, 2_000)).GetSize()
    gpu_grid = working_grid(fixed, working_spacing(fixed, 60_000)).GetSize()
    assert np.prod(cpu_grid) * 5 < np.prod(gpu_grid)
    assert [grid for _, grid in calls["deformable"]] == ([gpu_grid, cpu_grid] if failing == "deformable"
                                                         else [cpu_grid])
    assert result.compact.working_grid.GetSize() == cpu_grid
    assert result.device.startswith("cpu")
    stage = {"prealign": "pre-alignment", "deformable": "registration"}[failing]
    assert any(f"in the {stage}" in str(w.message) and "out of memory" in str(w.message) for w in caught)


def test_affine_fit_runs_on_one_cpu_thread_and_restores_the_count(tiny_pair, monkeypatch):
    """Its tensors are small: threads cost more than they gain (docs/BENCHMARKS.md); the caller's count stays."""
    import learngn.affine as affine

    seen = []
    real_level = affine._level
    monkeypatch.setattr(affine, "_level", lambda *args: seen.append(torch.get_num_threads()) or real_level(*args))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        learngn.register(*tiny_pair, iterations=1)
        assert seen and set(seen) == {affine.FIT_THREADS}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
