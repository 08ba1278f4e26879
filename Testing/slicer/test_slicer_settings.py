"""Small pure pieces: settings to CLI options, presets, device choice, result line, button states, resources."""
import json
import sys
import types

import pytest

from LearnGNSlicerLib.devices import GpuInfo, choose_device, required_gpu_bytes
from LearnGNSlicerLib.presets import available_presets
from LearnGNSlicerLib.resources import optional_resource_path, resource_path, resources_dir
from LearnGNSlicerLib.settings import Device, Prealign, RegistrationSettings, optional_positive
from LearnGNSlicerLib.summary import describe, engine_warnings
from LearnGNSlicerLib.ui_state import ProcessingState, apply_button, inputs_editable, stage_label
from slicer_test_helpers import MODULE_DIR, REPO


def test_default_settings_leave_choices_to_the_preset():
    assert RegistrationSettings().cli_arguments() == ["--preset", "generic", "--device", "auto"]


def test_all_settings_become_cli_options():
    settings = RegistrationSettings(preset="abdomen", device=Device.GPU, iterations=12, grid_stride=2,
                                    regularisation=40.0, prealign=Prealign.AFFINE)
    assert settings.cli_arguments() == ["--preset", "abdomen", "--device", "cuda", "--iterations", "12",
                                        "--grid-stride", "2", "--regularisation", "40.0", "--prealign", "affine"]


@pytest.mark.parametrize("value, expected", [("PRESET", None), (Prealign.PRESET, None), ("com", "com"),
                                             ("center_of_mass", "com"), ("None", "none")])
def test_prealign_accepts_names_values_and_members(value, expected):
    assert RegistrationSettings(prealign=value).prealign == expected


@pytest.mark.parametrize("kwargs, message", [({"iterations": 0}, "iterations must be a positive"),
                                             ({"regularisation": -1.0}, "regularisation must be positive"),
                                             ({"preset": " "}, "No preset chosen"),
                                             ({"prealign": "rigid"}, "Unknown prealign 'rigid'")])
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegistrationSettings(**kwargs)


def test_spin_box_zero_means_preset_default():
    assert optional_positive(0) is None and optional_positive(0.0) is None and optional_positive(7) == 7


def test_enum_labels_are_readable():
    assert Device.AUTO.label().startswith("Automatic") and Prealign.CENTER_OF_MASS.label() == "Center of mass"


def test_presets_without_engine_come_from_model_cards(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "learngn", raising=False)
    (tmp_path / "abdomen_ct_v1.json").write_text(json.dumps({"preset": "abdomen-ct", "description": "trained",
                                                              "sha256": "0" * 64}))
    (tmp_path / "unsigned.json").write_text(json.dumps({"preset": "unsigned", "description": "no checksum"}))
    (tmp_path / "abdomen_ct_v1.pt").write_bytes(b"")
    (tmp_path / "no_preset.json").write_text(json.dumps({"description": "a model card without preset"}))
    (tmp_path / "broken.json").write_text("{")
    assert available_presets(tmp_path) == ["generic", "brain-mri", "segmentation-guided", "abdomen-ct"]


def test_presets_come_from_an_already_imported_engine(monkeypatch):
    engine = types.SimpleNamespace(list_presets=lambda: {"fast": "quick", "generic": "default"})
    monkeypatch.setitem(sys.modules, "learngn", engine)
    assert available_presets() == ["generic", "fast"]


def test_preset_list_without_the_engine_matches_the_engine(monkeypatch):
    """The GUI's torch-free list must not drift from ``learngn.list_presets()``."""
    learngn = pytest.importorskip("learngn", reason="the engine needs torch")
    engine_names = set(learngn.list_presets())
    monkeypatch.delitem(sys.modules, "learngn")
    assert set(available_presets()) == engine_names


GPU = GpuInfo(torch=True, cuda=True, name="Test GPU", free_bytes=8 * 2**30, total_bytes=12 * 2**30)


@pytest.mark.parametrize("requested, gpu, voxels, device, message", [
    ("cpu", None, 10**6, "cpu", ""),
    ("auto", None, 10**6, "auto", ""),  # not probed: the engine decides
    ("auto", GPU, 10**6, "auto", ""),
    ("cuda", GPU, 10**6, "cuda", ""),
    ("auto", GpuInfo(torch=True, reason="the installed PyTorch is a CPU-only build"), 10**6, "cpu", "CPU-only build"),
    ("cuda", GPU, 10**9, "cpu", "needs about"),
])
def test_device_choice(requested, gpu, voxels, device, message):
    decision = choose_device(requested, gpu, voxels)
    assert decision.device == device
    assert (message in decision.message) if message else decision.message == ""


def test_gpu_memory_estimate_grows_with_volume_size():
    assert required_gpu_bytes(2 * 10**7) > required_gpu_bytes(10**7) > required_gpu_bytes(0) > 0


def test_probe_output_parsing():
    assert GpuInfo.from_probe_output('warning\n{"torch": true, "cuda": true, "name": "X", "free_bytes": 5}').cuda
    broken = GpuInfo.from_probe_output("Segmentation fault")
    assert not broken.cuda and "Segmentation fault" in broken.reason


def test_result_line_has_time_device_folding_and_similarity():
    summary = {"device": "cuda", "metrics": {"negative_jacobian_percent": 0.0123, "similarity_before": 0.41,
                                             "similarity_after": 0.785}, "timings": {"prealign": 0.5, "gauss-newton": 1.0}}
    assert describe(summary, elapsed=3.14) == ("Done in 3.1 s from the request to the result (registration 1.5 s) on cuda. Negative Jacobian: 0.01 % of voxels. "
                                               "Similarity 0.410 -> 0.785.")
    assert describe({}) == "Done on unknown device."
    assert describe({"device": "cpu", "metrics": {"dice_before": 0.5, "dice_after": 0.8}}).endswith("Dice 0.500 -> 0.800.")
    assert describe({"device": "cpu", "timings_s": {"total": 2.0, "features": 1.5}}) == "Done in 2.0 s on cpu."
    assert engine_warnings({"warnings": ["masks are small"]}) == ["masks are small"] and engine_warnings({}) == []


def test_apply_button_through_the_processing_states():
    assert apply_button(ProcessingState.IDLE, False, "Select the fixed volume.").enabled is False
    assert apply_button(ProcessingState.IDLE, True).text == "Apply"
    running = apply_button(ProcessingState.RUNNING, True)
    assert running.text == "Cancel" and running.enabled
    assert apply_button(ProcessingState.CANCELLING, True).enabled is False
    assert inputs_editable(ProcessingState.IDLE) and not inputs_editable(ProcessingState.RUNNING)
    assert stage_label("gauss-newton") == "Gauss-Newton optimisation" and stage_label("new-stage") == "new-stage"


def test_resources_are_found_from_a_checkout():
    assert str(resources_dir()) == f"{REPO}/Resources"
    assert resource_path("UI/LearnGNSlicer.ui").endswith("Resources/UI/LearnGNSlicer.ui")
    assert optional_resource_path("Icons/LearnGNSlicer.png") is not None
    assert optional_resource_path("Icons/absent.png") is None


def test_resources_are_found_next_to_the_module_when_installed(tmp_path):
    """Built layout: qt-scripted-modules/{LearnGNSlicer.py, Resources/}; a parent Resources/ is ignored."""
    installed = tmp_path / "qt-scripted-modules"
    for root in (installed / "Resources", tmp_path / "Resources"):
        (root / "UI").mkdir(parents=True)
        (root / "UI" / "LearnGNSlicer.ui").write_text("<ui/>")
    assert resources_dir(installed) == installed / "Resources"


def test_missing_resources_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked in"):
        resources_dir(tmp_path / "LearnGNSlicer")
    assert MODULE_DIR.endswith("LearnGNSlicer")
