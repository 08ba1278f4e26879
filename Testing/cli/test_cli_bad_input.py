"""Bad input: one ``learngn: error:`` line, exit code 2, and nothing written or overwritten."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import learngn


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("bad")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((30, 30)).astype(np.float32)),
                    str(folder / "slice2d.nii.gz"))
    sitk.WriteImage(sitk.Image([48, 40, 48], sitk.sitkUInt8), str(folder / "empty_mask.nii.gz"))
    sitk.WriteImage(sitk.Image([20, 20, 20], sitk.sitkUInt8) + 1, str(folder / "small_mask.nii.gz"))
    (folder / "garbage.nii.gz").write_bytes(b"not an image" * 50)
    (folder / "empty_dicom").mkdir()
    (folder / "existing").mkdir()
    (folder / "existing" / "keep.txt").write_text("old")
    (folder / "no_moving.csv").write_text("id,fixed\na,fixed.nii.gz\n")
    return folder


CASES = {
    "missing file": (["register", "{folder}/nope.nii.gz", "{moving}"], "does not exist"),
    "unreadable format": (["register", "{folder}/garbage.nii.gz", "{moving}"], "cannot read the fixed image"),
    "2D image": (["register", "{fixed}", "{folder}/slice2d.nii.gz"], "moving image is 2D"),
    "mask on another grid": (["register", "{fixed}", "{moving}", "--fixed-mask", "{folder}/small_mask.nii.gz"],
                             "fixed mask"),
    "empty mask": (["register", "{fixed}", "{moving}", "--fixed-mask", "{folder}/empty_mask.nii.gz"], "empty"),
    "folder without DICOM": (["register", "{folder}/empty_dicom", "{moving}"], "no DICOM series"),
    "unreadable transform": (["register", "{fixed}", "{moving}", "--initial-transform", "{folder}/garbage.nii.gz"],
                             "initial transform"),
    "existing output": (["register", "{fixed}", "{moving}", "-o", "{folder}/existing"], "--overwrite"),
    "unknown preset": (["register", "{fixed}", "{moving}", "--preset", "no-such-preset"], "no-such-preset"),
    "unknown --set name": (["register", "{fixed}", "{moving}", "--set", "no_such=1"], "no_such"),
    "--set value of the wrong type": (["register", "{fixed}", "{moving}", "--set", "iterations=many"], "iterations"),
    "--set value outside its choices": (["register", "{fixed}", "{moving}", "--set", "intensity_normalisation=pet"],
                                        "intensity_normalisation"),
    "setting out of range": (["register", "{fixed}", "{moving}", "--grid-stride", "99"], "--grid-stride 99"),
    "unknown device": (["register", "{fixed}", "{moving}", "--device", "tpu"], "tpu"),
    "missing argument": (["register", "{fixed}"], "MOVING"),
    "batch CSV without moving column": (["batch", "{folder}/no_moving.csv"], "moving"),
    "bad shard": (["batch", "{folder}/no_moving.csv", "--shard", "3/2"], "I/N"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_code_2(case, bad_files, images, tmp_path):
    template, expected = CASES[case]
    words = [w.format(folder=bad_files, fixed=images["fixed"], moving=images["moving"]) for w in template]
    if "-o" not in words and case != "missing argument":
        words += ["-o", str(tmp_path / "out")]
    before = sorted(os.listdir(bad_files))
    run = learngn(*words, "--progress", "bar")  # the default; stage lines must not add to the error
    assert run.returncode == 2, run.stderr
    assert len(run.stderr_lines) == 1 and run.stderr_lines[0].startswith("learngn: error: "), run.stderr
    assert expected in run.stderr_lines[0]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not (tmp_path / "out").exists() and sorted(os.listdir(bad_files)) == before
    assert (Path(bad_files) / "existing" / "keep.txt").read_text() == "old"


def test_bad_input_in_jsonl_mode_is_also_an_error_event(images, tmp_path):
    run = learngn("register", images["fixed"], images["moving"], "-o", tmp_path / "out", "--preset", "nope",
                  "--progress", "jsonl")
    assert run.returncode == 2
    (event,) = run.events()
    assert event["event"] == "error" and "nope" in event["message"]
