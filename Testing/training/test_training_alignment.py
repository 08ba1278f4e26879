"""Training pairs pre-aligned as register() does (learngn.training.alignment), on tiny phantoms (CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from learngn.phantom import phantom_geometry, phantom_labels
from learngn.training import TrainConfig, train
from learngn.training.alignment import through, voxel_alignment
from learngn.training.augment import crop_coordinates
from learngn.training.trainer import (_channels_present, aligned_coordinates, case_tensors, hard_dice, prepare_data,
                                      training_sample)

SHIFT_VOXELS = 3


@pytest.fixture(scope="module")
def shifted_labels(tmp_path_factory) -> Path:
    """Case 0001 (a phantom with background around it) and, as 0002, the same labels moved by 3 voxels (30 mm)
    along x in the same grid; 0003 and 0004 other phantoms (validation)."""
    folder = tmp_path_factory.mktemp("shifted")
    geometry = phantom_geometry((32, 16, 24), 10.0)

    def placed(seed: int, offset: int) -> sitk.Image:
        body = sitk.GetArrayFromImage(phantom_labels(phantom_geometry((20, 16, 24), 10.0), seed=seed))
        array = np.zeros(geometry.GetSize()[::-1], dtype=body.dtype)
        array[:, :, offset:offset + body.shape[2]] = body
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(geometry)
        return image

    for name, image in (("0001", placed(1, 4)), ("0002", placed(1, 4 + SHIFT_VOXELS)), ("0003", placed(3, 6)),
                        ("0004", placed(4, 6))):
        sitk.WriteImage(image, str(folder / f"label_{name}.nii.gz"))
    return folder


def config_for(folder: Path, output: Path, **changes) -> TrainConfig:
    values = dict(output=str(output), labels_dir=str(folder), validation_cases=("0003", "0004"), setting="sdm",
                  working_spacing=10.0, grid_stride=2, iterations=2, lambda_start=0.05, lambda_end=0.01,
                  crop=None, augment=False, steps=2, val_pairs=0, checkpoint_every=1, threads=1)
    values.update(changes)
    return TrainConfig.from_dict(values)


def oblique_grid(size, spacing, origin, angle) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


def test_voxel_alignment_maps_fixed_voxels_to_the_moving_voxels_of_the_transform():
    fixed = oblique_grid((9, 7, 5), (2.0, 3.0, 4.0), (10.0, -5.0, 3.0), 0.3)
    moving = oblique_grid((8, 8, 6), (2.5, 2.0, 3.0), (-4.0, 6.0, -2.0), -0.2)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((1.05, 0.1, 0.0, -0.05, 0.95, 0.08, 0.02, 0.0, 1.1))
    transform.SetTranslation((3.0, -2.0, 5.0))
    transform.SetCenter((1.0, 2.0, 3.0))
    matrix = voxel_alignment(transform, fixed, moving)
    for index in [(0, 0, 0), (8, 6, 4), (3, 5, 1)]:  # (x, y, z)
        point = transform.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))
        expected = moving.TransformPhysicalPointToContinuousIndex(point)[::-1]  # (z, y, x)
        coords = torch.tensor(index[::-1], dtype=torch.float64).view(1, 3, 1, 1, 1)
        mapped = through(matrix, coords).view(3).numpy()
        np.testing.assert_allclose(mapped, expected, atol=1e-9)
    with pytest.raises(ValueError):
        voxel_alignment(sitk.DisplacementFieldTransform(3), fixed, moving)


def test_through_none_leaves_coordinates_alone():
    coords = crop_coordinates((1, 2, 3), (2, 3, 4))
    assert through(None, coords) is coords


@pytest.mark.parametrize("mode", ["com", "affine"])
def test_prealigned_pairs_undo_a_shift_that_unaligned_pairs_keep(shifted_labels, tmp_path, mode):
    unaligned = prepare_data(config_for(shifted_labels, tmp_path / "a"), validation=False)
    config = config_for(shifted_labels, tmp_path / "b", prealign=mode)
    aligned = prepare_data(config, validation=False)
    fixed, moving = aligned.training
    assert (fixed.name, moving.name) == ("0001", "0002")
    channels = _channels_present(fixed, moving, aligned.label_values)
    coordinates = aligned_coordinates(aligned, fixed, moving)
    assert aligned_coordinates(unaligned, fixed, moving) is None
    # the moving case is sampled about 3 voxels further along x (the last channel)
    shift = float((coordinates - crop_coordinates((0, 0, 0), fixed.shape))[0, 2].mean())
    assert abs(shift - SHIFT_VOXELS) < 0.5
    fixed_labels = case_tensors(config, aligned, fixed, None, None, channels).labels
    before = hard_dice(fixed_labels, case_tensors(config, aligned, moving, None, None, channels).labels)
    after = hard_dice(fixed_labels, case_tensors(config, aligned, moving, coordinates, None, channels).labels)
    assert before < 0.8 and after > 0.9


def test_training_samples_are_drawn_through_the_pair_alignment(shifted_labels, tmp_path):
    config = config_for(shifted_labels, tmp_path / "c", prealign="com", crop=(8, 8, 8))
    data = prepare_data(config, validation=False)
    dices = {}
    for step in range(1, 7):  # both orders of the pair come up
        sample = training_sample(config, data, step, 0)
        dices[sample.names] = hard_dice(sample.fixed.labels, sample.moving.labels)
    assert set(dices) == {("0001", "0002"), ("0002", "0001")}
    assert min(dices.values()) > 0.9


def test_prealigned_training_resumes_exactly_and_bad_modes_are_refused(shifted_labels, tmp_path):
    full = train(config_for(shifted_labels, tmp_path / "full", prealign="com", steps=2), progress=False)
    train(config_for(shifted_labels, tmp_path / "part", prealign="com", steps=1), progress=False)
    resumed = train(config_for(shifted_labels, tmp_path / "part", prealign="com", steps=2), resume=True,
                    progress=False)
    assert [r["loss"] for r in full.log] == [r["loss"] for r in resumed.log]
    with pytest.raises(learngn.InputError, match="pre-alignment"):
        config_for(shifted_labels, tmp_path / "x", prealign="rigid")
