"""Messages in the reader's terms (issue 14, item 5): the command line names its options and the valid ranges,
and a GPU that was asked for but cannot be used is reported before the work starts."""
from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import QUICK, learngn


def _error(run) -> str:
    assert run.returncode == 2, run.stderr
    assert len(run.stderr_lines) == 1 and run.stderr_lines[0].startswith("learngn: error: "), run.stderr
    return run.stderr_lines[0]


@pytest.mark.parametrize("words, expected", [
    (["--iterations", "0"], "--iterations 0 (must be >= 1)"),
    (["--grid-stride", "99"], "--grid-stride 99 (must be 1 to 16)"),
    (["--levels", "9"], "--levels 9 (must be 1 to 4)"),
    (["--set", "momentum=1.5"], "--set momentum=1.5 (must be >= 0 and < 1)"),
    (["--set", "cg_tolerance=x"], "--set cg_tolerance=x"),
    (["--set", "no_such=1"], "--set no_such=1: there is no setting 'no_such'"),
])
def test_settings_errors_name_the_option_and_the_valid_range(images, tmp_path, words, expected):
    line = _error(learngn("register", images["fixed"], images["moving"], "-o", tmp_path / "out", *words))
    assert expected in line
    assert "learngn.RegistrationSettings" not in line and "grid_stride=" not in line


def test_a_preset_that_needs_segmentations_names_the_missing_options(images, tmp_path):
    line = _error(learngn("register", images["fixed"], images["moving"], "-o", tmp_path / "out",
                          "--preset", "segmentation-guided"))
    assert "--fixed-segmentation and --moving-segmentation are missing" in line
    assert "--preset generic" in line and "fixed_segmentation" not in line and "'sdm'" not in line
    line = _error(learngn("register", images["fixed"], images["moving"], "-o", tmp_path / "out",
                          "--preset", "segmentation-guided", "--fixed-segmentation", images["fixed_labels"]))
    assert "--moving-segmentation is missing" in line


def test_batch_names_the_csv_columns_of_missing_segmentations(images, tmp_path):
    (tmp_path / "pairs.csv").write_text(f"id,fixed,moving\na,{images['fixed']},{images['moving']}\n")
    run = learngn("batch", tmp_path / "pairs.csv", "-o", tmp_path / "out", "--preset", "segmentation-guided", *QUICK)
    assert run.returncode == 1
    assert "the fixed_segmentation column and the moving_segmentation column" in (
        tmp_path / "out" / "a" / "error.txt").read_text()


def test_engine_keywords_become_options():
    from learngn.cli.options import cli_terms

    assert cli_terms("setting out of range: iterations=0 (must be >= 1), working_spacing=0.0 (must be > 0 (mm))") == (
        "setting out of range: --iterations 0 (must be >= 1), --working-spacing 0.0 (must be > 0 (mm))")
    assert cli_terms("give fixed_segmentation and moving_segmentation") == (
        "give --fixed-segmentation and --moving-segmentation")
    assert cli_terms("settings must be numbers: momentum='x'") == "settings must be numbers: --set momentum='x'"
    # plain words and paths stay as they are
    assert cli_terms("10 iterations in /data/fixed_mask.nii.gz") == "10 iterations in /data/fixed_mask.nii.gz"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the request can be honoured")
def test_an_unusable_gpu_is_reported_before_the_work_starts(images, tmp_path):
    run = learngn("register", images["fixed"], images["moving"], "-o", tmp_path / "out", *QUICK, "--prealign",
                  "none", "--device", "cuda", "--progress", "bar")
    assert run.returncode == 0, run.stderr
    lines = run.stderr_lines
    warned = [i for i, line in enumerate(lines) if "learngn: warning: --device cuda: a GPU was requested" in line]
    assert len(warned) == 1, run.stderr
    assert warned[0] == 0, "the warning must come before the first stage line"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"].startswith("cpu")
    assert any("--device cuda" in w for w in summary["warnings"])


def test_translated_errors_keep_their_type_and_attributes():
    from learngn import InputError
    from learngn.cli.options import in_cli_terms

    class Implausible(InputError):
        def __init__(self, message: str, check: str) -> None:
            super().__init__(message)
            self.check = check

    with pytest.raises(Implausible) as caught, in_cli_terms():
        raise Implausible("grid_stride=99 is too coarse", check="grid")
    assert str(caught.value) == "--grid-stride 99 is too coarse" and caught.value.check == "grid"
