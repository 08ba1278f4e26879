"""Engine messages name the Python keywords and the valid range of every bad setting (issue 14, item 5)."""
from __future__ import annotations

import pytest
import torch

import learngn
from learngn.device import unusable_gpu


@pytest.mark.parametrize("setting, value, valid", [
    ("iterations", 0, ">= 1"), ("levels", 9, "1 to 4"), ("grid_stride", 0, "1 to 16"),
    ("regularisation", -1.0, "> 0"), ("lambda_start", 0.0, "> 0"), ("lambda_end", 0.0, "> 0"),
    ("momentum", 1.0, ">= 0 and < 1"), ("update_smoothing", -0.5, ">= 0"),
    ("max_working_voxels", 100, ">= 32768"), ("working_spacing", 0.0, "> 0"),
])
def test_out_of_range_names_the_keyword_and_its_valid_range(setting, value, valid):
    with pytest.raises(learngn.InputError) as error:
        learngn.RegistrationSettings(**{setting: value})
    assert f"{setting}={value!r} (must be {valid}" in str(error.value)
    assert "see learngn.RegistrationSettings" not in str(error.value)


def test_each_bad_setting_gets_its_own_range():
    with pytest.raises(learngn.InputError, match=r"iterations=0 \(must be >= 1\), levels=7 \(must be 1 to 4\)"):
        learngn.RegistrationSettings(iterations=0, levels=7)


def test_an_unusable_gpu_request_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert unusable_gpu("cpu") is None and unusable_gpu("auto") is None
    message = unusable_gpu("cuda:0")
    assert message and "running on the CPU" in message
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in unusable_gpu("cuda")


def test_an_unusable_gpu_is_reported_before_the_work_starts(monkeypatch, tiny_pair):
    """register() repeats its warnings at the end; the GPU fallback is logged when it is decided."""
    import logging

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    order = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            order.append(("log", record.getMessage()))

    handler = Recorder(logging.WARNING)
    logging.getLogger("learngn.device").addHandler(handler)
    try:
        with pytest.warns(RuntimeWarning, match="no usable CUDA device"):
            learngn.register(*tiny_pair, device="cuda", prealign="none", iterations=1,
                             progress=lambda event: order.append(("progress", event.stage)))
    finally:
        logging.getLogger("learngn.device").removeHandler(handler)
    logged = [i for i, (kind, text) in enumerate(order) if kind == "log" and "GPU was requested" in text]
    first_work = next(i for i, (kind, stage) in enumerate(order) if kind == "progress" and stage != "prepare")
    assert logged and logged[0] < first_work, order
