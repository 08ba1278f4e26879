"""``learngn register``: the files it writes are right, usable by other tools, and all-or-nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import QUICK, learngn, learngn_env, ncc

STAGES = ["prepare", "prealign", "features", "gauss-newton", "output"]
# Measured on the shifted 48 x 40 x 48 phantom: NCC 0.897 -> 0.992, mean Dice 0.63 -> 0.96.
MIN_NCC_GAIN = 0.05
MIN_NCC_AFTER = 0.97
MIN_DICE_AFTER = 0.9


def test_transform_file_warps_moving_onto_fixed_in_simpleitk(images, registered):
    outdir, _ = registered
    fixed, moving = sitk.ReadImage(str(images["fixed"])), sitk.ReadImage(str(images["moving"]))
    transform = sitk.ReadTransform(str(outdir / "transform.h5"))  # fixed -> moving points, as ITK expects
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0)
    before = ncc(fixed, sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, -1000.0))
    after = ncc(fixed, warped)
    assert after > before + MIN_NCC_GAIN and after > MIN_NCC_AFTER, (before, after)

    written = sitk.ReadImage(str(outdir / "warped.nii.gz"))
    assert written.GetSize() == fixed.GetSize() and np.allclose(written.GetOrigin(), fixed.GetOrigin())
    assert ncc(written, warped) > 0.999

    labels = sitk.Resample(sitk.ReadImage(str(images["moving_labels"])), fixed, transform, sitk.sitkNearestNeighbor)
    reference = sitk.ReadImage(str(images["fixed_labels"]))
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(reference, sitk.Cast(labels, reference.GetPixelID()))
    assert overlap.GetDiceCoefficient() > MIN_DICE_AFTER


def test_displacement_file_is_the_transform_as_a_field(images, registered):
    outdir, _ = registered
    field = sitk.ReadImage(str(outdir / "displacement.nii.gz"))
    fixed = sitk.ReadImage(str(images["fixed"]))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == fixed.GetSize()
    transform = sitk.ReadTransform(str(outdir / "transform.h5"))
    point = fixed.TransformIndexToPhysicalPoint((20, 17, 25))
    displacement = np.array(field[20, 17, 25])
    assert np.allclose(np.array(transform.TransformPoint(point)) - point, displacement, atol=1e-3)
    assert np.linalg.norm(displacement) > 1.0  # the 8/-6/5 mm shift is part of it


def test_summary_holds_metrics_inputs_timings_and_settings(images, registered):
    outdir, _ = registered
    summary = json.loads((outdir / "summary.json").read_text())
    metrics = summary["metrics"]
    for key in ("ncc_before", "ncc_after", "negative_jacobian_percent", "dice_before", "dice_after"):
        assert isinstance(metrics[key], float), key
    assert metrics["dice_after"] > metrics["dice_before"]
    for stage in ("read", *STAGES, "write", "report", "wall"):
        assert summary["timings_s"][stage] >= 0.0, stage
    fixed = summary["inputs"]["fixed"]
    assert fixed["path"] == str(images["fixed"]) and fixed["size"] == [48, 40, 48] and fixed["spacing"] == [5.0] * 3
    assert set(summary["inputs"]) == {"fixed", "moving", "fixed_segmentation", "moving_segmentation"}
    assert summary["device"].startswith("cpu") and summary["settings"]["iterations"] >= 1
    assert {"learngn", "torch", "SimpleITK", "numpy", "python"} <= set(summary["versions"])
    assert summary["outputs"]["transform"] == "transform.h5" and summary["command"][:2] == ["learngn", "register"]
    assert (outdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jsonl_progress_stream_follows_the_contract(registered):
    outdir, run = registered
    events = run.events()  # every stdout line is JSON
    progress, final = events[:-1], events[-1]
    assert all(e["event"] == "progress" and set(e) == {"event", "stage", "fraction", "message"} for e in progress)
    stages = [e["stage"] for e in progress]
    assert list(dict.fromkeys(stages)) == STAGES
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert final["event"] == "done" and final["outdir"] == str(outdir)
    assert final["summary"]["metrics"] == json.loads((outdir / "summary.json").read_text())["metrics"]


def test_initial_transform_and_nrrd_field(images, tmp_path):
    shift = sitk.TranslationTransform(3, (8.0, -6.0, 5.0))  # the moving image's shift, fixed -> moving
    sitk.WriteTransform(shift, str(tmp_path / "initial.tfm"))
    outdir = tmp_path / "out"
    run = learngn("register", images["fixed"], images["moving"], "-o", outdir, "--initial-transform",
                  tmp_path / "initial.tfm", "--prealign", "none", "--field-format", "nrrd", *QUICK)
    assert run.returncode == 0, run.stderr
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["metrics"]["ncc_before"] < 0.93 < summary["metrics"]["ncc_prealigned"]
    assert not (outdir / "displacement.nii.gz").exists()
    field = sitk.ReadImage(str(outdir / "displacement.nrrd"))
    assert field.GetMetaData("displacement field type") == "resampling"
    assert "x_moving = x_fixed + d(x_fixed)" in (outdir / "displacement.nrrd").read_bytes()[:1000].decode("latin-1")


def test_dicom_folder_is_read_as_a_volume(images, tmp_path):
    from dicom_helpers import write_dicom_series

    fixed = sitk.ReadImage(str(images["fixed"]))
    write_dicom_series(fixed, tmp_path / "dicom")
    outdir = tmp_path / "out"
    run = learngn("register", tmp_path / "dicom", images["moving"], "-o", outdir, *QUICK)
    assert run.returncode == 0, run.stderr
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["inputs"]["fixed"]["size"] == [48, 40, 48]
    assert np.allclose(summary["inputs"]["fixed"]["origin"], fixed.GetOrigin())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_cancels_and_leaves_nothing(images, tmp_path, signal_number):
    outdir = tmp_path / "new" / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "learngn", "register", str(images["fixed"]), str(images["moving"]), "-o",
         str(outdir), "--iterations", "500", "--progress", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=learngn_env())
    for line in process.stdout:
        if json.loads(line).get("stage") == "gauss-newton":
            break
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert json.loads(stdout.splitlines()[-1])["event"] == "error"
    assert os.listdir(tmp_path) == []  # neither the folder, nor its parent, nor a staging folder


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(images, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "precious.txt").write_text("keep me")
    refused = learngn("register", images["fixed"], images["moving"], "-o", outdir, *QUICK)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert os.listdir(outdir) == ["precious.txt"]

    replaced = learngn("register", images["fixed"], images["moving"], "-o", outdir, "--overwrite", *QUICK)
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(os.listdir(outdir)) == ["summary.json", "transform.h5", "warped.nii.gz"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old copy left beside it
