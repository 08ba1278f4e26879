"""The accuracy benchmark's pieces (learngn evaluate --suite): splits, per-pair labels, known deformations."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from learngn.errors import InputError
from learngn.phantom import phantom_ct, phantom_geometry, phantom_labels
from learngn.training.accuracy import (BRAIN_FOLDER, BRAIN_IMAGE, BRAIN_LABELS, BRAIN_SPLITS, body_mask,
                                       brain_dataset, brain_training_dataset, field_error, known_deformation,
                                       run_suites)
from learngn.training.data import open_dataset
from learngn.training.evaluation import markdown_summary, shared_labels


def _fake_brains(root):
    for person in range(1, 16):
        folder = root / BRAIN_FOLDER / f"OASIS-TRT-20-{person}"
        folder.mkdir(parents=True)
        (folder / BRAIN_IMAGE).write_bytes(b"")
        (folder / BRAIN_LABELS).write_bytes(b"")


def test_brain_splits_are_disjoint_and_pairs_stay_inside_their_split(tmp_path):
    _fake_brains(tmp_path)
    assert not set(BRAIN_SPLITS["tuning"]) & set(BRAIN_SPLITS["reporting"])
    tuning, reporting = brain_dataset(tmp_path, "tuning"), brain_dataset(tmp_path, "reporting")
    assert len(tuning.validation_pairs) == 10 and len(reporting.validation_pairs) == 5
    for dataset in (tuning, reporting):
        for pair in dataset.validation_pairs:
            assert pair.fixed != pair.moving and {pair.fixed, pair.moving} <= set(dataset.cases)
    assert not set(tuning.cases) & set(reporting.cases)


def test_brain_training_reads_only_tuning_people_and_monitors_two_of_them(tmp_path):
    _fake_brains(tmp_path)
    dataset = open_dataset(brain_data=str(tmp_path))
    assert dataset.training == brain_training_dataset(tmp_path).training
    reporting = set(brain_dataset(tmp_path, "reporting").cases)
    assert not (set(dataset.training) | set(dataset.validation_cases)) & reporting
    assert set(dataset.training) | set(dataset.validation_cases) == set(brain_dataset(tmp_path, "tuning").cases)
    assert len(dataset.validation_pairs) == 2 and not set(dataset.training) & set(dataset.validation_cases)
    with pytest.raises(InputError, match="one source"):
        open_dataset(labels_dir=str(tmp_path), brain_data=str(tmp_path))


def test_missing_brain_data_names_the_folder(tmp_path):
    with pytest.raises(InputError, match=BRAIN_FOLDER):
        brain_dataset(tmp_path, "reporting")


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown suite"):
        run_suites(tmp_path, ["lungs"], ["identity"], tmp_path / "out", split="tuning")


def test_shared_labels_keep_labels_large_in_both_maps():
    fixed = np.zeros((10, 10, 10), np.int32)
    moving = np.zeros((10, 10, 10), np.int32)
    fixed[:5], moving[:6] = 1, 1           # 500 and 600 voxels
    fixed[5:7], moving[6:7] = 2, 2          # 200 and 100 voxels
    fixed[7:8, :5] = 3                      # 50 voxels, absent from the moving map
    moving[7:8] = 4                         # absent from the fixed map
    images = [sitk.GetImageFromArray(a) for a in (fixed, moving)]
    assert shared_labels(*images, 100) == [1, 2]
    assert shared_labels(*images, 150) == [1]
    assert shared_labels(None, images[1], 1) == []


def test_known_deformation_is_exact_and_scored_inside_the_body(tmp_path):
    labels = phantom_labels(phantom_geometry((40, 32, 40), 4.0), seed=3)
    ct = phantom_ct(labels, seed=3)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(path))
    pair = known_deformation(path, None, seed=5, max_mm=8.0)
    magnitude = np.linalg.norm(sitk.GetArrayFromImage(pair.truth), axis=-1)
    assert magnitude.max() == pytest.approx(8.0, rel=1e-6)
    # fixed(x) = moving(x + truth(x)): resampling the moving CT through the truth gives the fixed CT
    again = sitk.Resample(pair.moving, pair.fixed, sitk.DisplacementFieldTransform(sitk.Image(pair.truth)),
                          sitk.sitkLinear, -1024.0)
    assert np.allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(pair.fixed), atol=1e-3)
    assert pair.body.any() and not pair.body.all()
    perfect = field_error(pair.truth, pair.truth, pair.body)
    assert perfect["error_mean"] == pytest.approx(0.0, abs=1e-6)
    identity = field_error(None, pair.truth, pair.body)
    assert identity["error_mean"] == pytest.approx(float(magnitude[pair.body].mean()), rel=1e-5)
    assert identity["error_p95"] >= identity["error_mean"] > 0


def test_body_mask_fills_the_lungs():
    volume = np.full((6, 40, 40), -1000.0, np.float32)
    volume[:, 5:35, 5:35] = 40.0              # body
    volume[:, 12:28, 12:28] = -850.0          # lungs inside it
    volume[:, 0:2, 0:2] = 200.0               # a small object outside (the table)
    mask = body_mask(sitk.GetImageFromArray(volume))
    assert mask[:, 20, 20].all() and mask[:, 6, 6].all()
    assert not mask[:, 0, 0].any() and not mask[:, 38, 38].any()


def test_summary_reports_field_errors():
    rows = [{"method": "a", "status": "ok", "error_mean": 1.25, "error_p95": 3.5, "seconds": 2.0,
             "negative_jacobian_percent": 0.0, "log_jacobian_std": 0.1}]
    text = markdown_summary(rows, [], {}, [], "t")
    assert "error mm (mean)" in text and "| a | 1 | 1.25 | 3.50 |" in text
