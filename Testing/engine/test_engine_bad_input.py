"""Bad input fails early with a learngn.InputError that names the problem; degraded environments (no
GPU, GPU out of memory, no CuPy) fall back with a warning instead of failing."""
from __future__ import annotations

import importlib
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from learngn import solver
from learngn.validation import check_image, check_label_image

# the module (``learngn.register`` as an attribute is the function of the same name)
register_module = importlib.import_module("learngn.register")


def volume(array: np.ndarray, like: sitk.Image = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def fixed(tiny_pair):
    return tiny_pair[0]


@pytest.fixture(scope="module")
def moving(tiny_pair):
    return tiny_pair[1]


def fast(**extra):
    """Settings that keep a registration that does run short."""
    return {"prealign": "none", "iterations": 2, **extra}


# -- images --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0.0, 40.0])
def test_constant_image(fixed, value):
    constant = volume(np.full(sitk.GetArrayViewFromImage(fixed).shape, value, np.float32), fixed)
    with pytest.raises(learngn.InputError, match="moving image is constant"):
        learngn.register(fixed, constant)
    with pytest.raises(learngn.InputError, match="fixed image is constant"):
        learngn.register(constant, fixed)


def test_two_dimensional_image(fixed):
    slice_2d = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32))
    with pytest.raises(learngn.InputError, match=r"moving image is 2D.*3D volumes"):
        learngn.register(fixed, slice_2d)


def test_four_dimensional_image(fixed):
    series = sitk.Image([16, 16, 16, 3], sitk.sitkFloat32)
    assert series.GetDimension() == 4
    with pytest.raises(learngn.InputError, match=r"fixed image is 4D.*time point"):
        learngn.register(series, fixed)


def test_vector_image(fixed):
    rgb = sitk.Image([16, 16, 16], sitk.sitkVectorFloat32, 3)
    with pytest.raises(learngn.InputError, match=r"3 components per voxel.*scalar"):
        learngn.register(fixed, rgb)


def test_thin_slab(fixed):
    slab = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32))
    with pytest.raises(learngn.InputError, match="at least"):
        learngn.register(fixed, slab)


def test_not_an_image(fixed):
    with pytest.raises(learngn.InputError, match="must be a SimpleITK image, got ndarray"):
        learngn.register(fixed, np.zeros((16, 16, 16)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(fixed, bad):
    array = sitk.GetArrayFromImage(fixed).copy()
    array[3, 4, 5] = bad
    array[6, 7, 8] = bad
    with pytest.raises(learngn.InputError, match="2 NaN or infinite voxels"):
        learngn.register(fixed, volume(array, fixed))


def test_images_that_do_not_overlap(fixed, moving):
    far = sitk.Image(moving)
    far.SetOrigin(tuple(np.array(moving.GetOrigin()) + [10_000.0, 0.0, 0.0]))  # 10 m away
    with pytest.raises(learngn.InputError, match="do not overlap"):
        learngn.register(fixed, far, prealign="none")


def test_label_map_given_as_image_warns(small_phantom):
    """An integer label map passed as the moving image works but warns that it looks like a label map."""
    image, labels = small_phantom
    with pytest.warns(RuntimeWarning, match="label map"):
        result = learngn.register(image, labels, **fast())
    assert any("label map" in w for w in result.warnings)


def test_integer_ct_is_not_taken_for_a_label_map(fixed):
    """Integer CT (int16 HU, the usual storage) has far more distinct values: no warning."""
    ct = sitk.Cast(sitk.Round(fixed), sitk.sitkInt16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_image(ct, "fixed image")
    assert not [w for w in caught if "label map" in str(w.message)]


# -- masks and segmentations ---------------------------------------------------------------------------

def test_segmentation_with_non_integer_values(small_phantom):
    image, labels = small_phantom
    fractional = sitk.Cast(labels, sitk.sitkFloat32) * 0.5 + 0.25
    with pytest.raises(learngn.InputError, match="non-integer values"):
        learngn.register(image, image, preset="segmentation-guided", fixed_segmentation=fractional,
                         moving_segmentation=labels)


def test_mask_with_nan_is_refused():
    array = np.ones((10, 10, 10), np.float32)
    array[0, 0, 0] = np.nan
    with pytest.raises(learngn.InputError, match="non-integer"):
        check_label_image(volume(array), "fixed mask")


@pytest.mark.parametrize("given", ["none", "fixed only"])
def test_distance_maps_without_segmentations(small_phantom, given):
    image, labels = small_phantom
    segmentations = {"fixed_segmentation": labels} if given == "fixed only" else {}
    with pytest.raises(learngn.InputError, match="fixed_segmentation= and moving_segmentation="):
        learngn.register(image, image, preset="segmentation-guided", **segmentations)
    with pytest.raises(learngn.InputError, match="fixed_segmentation= and moving_segmentation="):
        learngn.register(image, image, features="mind,sdm", **segmentations)


# -- settings ------------------------------------------------------------------------------------------

def test_unknown_preset(fixed):
    with pytest.raises(learngn.InputError, match=r"unknown preset 'fancy'.*generic"):
        learngn.register(fixed, fixed, preset="fancy")


def test_unknown_setting(fixed):
    with pytest.raises(learngn.InputError, match=r"unknown setting\(s\) iteratoins"):
        learngn.register(fixed, fixed, iteratoins=5)


@pytest.mark.parametrize("setting, value", [
    ("iterations", 0), ("grid_stride", 0), ("grid_stride", 99), ("regularisation", -1.0),
    ("levels", 9), ("momentum", 1.0), ("max_working_voxels", 100), ("working_spacing", 0.0),
    ("lambda_start", 0.0), ("update_smoothing", -0.5),
])
def test_out_of_range_setting(fixed, setting, value):
    with pytest.raises(learngn.InputError, match=f"setting out of range: {setting}="):
        learngn.register(fixed, fixed, **{setting: value})


@pytest.mark.parametrize("setting, value", [("features", "mind,colour"), ("features", ""), ("prealign", "rigid")])
def test_invalid_choice(fixed, setting, value):
    with pytest.raises(learngn.InputError, match="feature|prealign"):
        learngn.register(fixed, fixed, **{setting: value})


@pytest.mark.parametrize("setting, value", [
    ("solver", "magic"),                    # not a backend
    ("solver", "cupy"),                     # the GPU solver asked for on the CPU
    ("intensity_normalisation", "pet"),     # not auto, ct or mr
    ("iterations", "ten"),                  # a string where a number belongs (as from a form or file)
])
def test_other_invalid_settings_are_input_errors(fixed, setting, value):
    """Every setting a user can get wrong must give an InputError (ENGINE_API: 'Errors the user can
    fix raise learngn.InputError'), not a bare ValueError or TypeError from deep inside."""
    with pytest.raises(learngn.InputError, match=setting):
        learngn.register(fixed, fixed, device="cpu", **fast(**{setting: value}))


def test_unknown_device(fixed):
    with pytest.raises(learngn.InputError, match="unknown device 'tpu'"):
        learngn.register(fixed, fixed, device="tpu")


# -- degraded environments -----------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the CPU fallback cannot be seen")
def test_cuda_requested_without_cuda_warns_and_runs_on_cpu(fixed, moving):
    with pytest.warns(RuntimeWarning, match="no usable CUDA device"):
        result = learngn.register(fixed, moving, device="cuda", **fast())
    assert result.device.startswith("cpu")
    assert any("CUDA" in w for w in result.warnings)


def test_gpu_out_of_memory_falls_back_to_cpu(fixed, moving, monkeypatch):
    """The deformable stage runs out of GPU memory: register() warns and runs it again on the CPU.

    resolve_device is patched to hand register() a CUDA device (torch.device('cuda') can be created on
    any machine, it is only never used for tensors here), and _deformable to fail with PyTorch's real
    OutOfMemoryError when given that device, so register()'s own fallback code path runs; the CPU
    attempt is the real _deformable."""
    real_deformable = register_module._deformable
    devices = []

    def deformable(inputs, grid, transform, settings, device, tracker):
        devices.append(str(device))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return real_deformable(inputs, grid, transform, settings, device, tracker)

    monkeypatch.setattr(register_module, "resolve_device", lambda requested: torch.device("cuda", 0))
    monkeypatch.setattr(register_module, "_deformable", deformable)
    with pytest.warns(RuntimeWarning, match="out of memory.*CPU"):
        result = learngn.register(fixed, moving, device="cuda", **fast())
    assert devices == ["cuda:0", "cpu"]
    assert result.device.startswith("cpu")
    assert any("out of memory" in w for w in result.warnings)
    assert float(np.abs(sitk.GetArrayFromImage(result.displacement)).max()) > 0.0


def test_other_gpu_errors_are_not_swallowed(fixed, moving, monkeypatch):
    def deformable(inputs, grid, transform, settings, device, tracker):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(register_module, "resolve_device", lambda requested: torch.device("cuda", 0))
    monkeypatch.setattr(register_module, "_deformable", deformable)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        learngn.register(fixed, moving, device="cuda", **fast())


def test_cpu_out_of_memory_is_not_retried(fixed, moving, monkeypatch):
    calls = []

    def deformable(*args):
        calls.append(1)
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB; out of memory")

    monkeypatch.setattr(register_module, "_deformable", deformable)
    with pytest.raises(RuntimeError, match="out of memory"):
        learngn.register(fixed, moving, device="cpu", **fast())
    assert calls == [1]


def test_without_cupy_the_auto_solver_is_torch(fixed, moving, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    assert solver.cupy_available() is False
    assert solver.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert solver.resolve_backend("auto", torch.device("cuda")) == "torch"
    result = learngn.register(fixed, moving, solver="auto", **fast())
    assert result.settings.solver == "auto"
    assert float(np.abs(sitk.GetArrayFromImage(result.displacement)).max()) > 0.0
