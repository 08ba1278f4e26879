"""Training, synthesis, data parsing and evaluation on tiny generated label maps (fast, CPU)."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from learngn.models import load_predictors_file
from learngn.phantom import phantom_geometry, phantom_labels
from learngn.training import TrainConfig, labels_folder, read_dataset_json, train
from learngn.training.config import registration_settings_keys
from learngn.training.evaluation import evaluate, hd95, parse_method
from learngn.training.peers import PEERS, Peer
from learngn.training.synthesis import SynthesisOptions, synthetic_ct, synthetic_ct_image
from learngn.training.trainer import prepare_data, sample_loss, training_sample

CASES = 5


@pytest.fixture(scope="module")
def tiny_labels(tmp_path_factory) -> Path:
    """Five phantom label maps (7 labels, 20x16x20 voxels of 10 mm) named like the Learn2Reg ones."""
    folder = tmp_path_factory.mktemp("labels")
    geometry = phantom_geometry((20, 16, 20), 10.0)
    for i in range(1, CASES + 1):
        sitk.WriteImage(phantom_labels(geometry, seed=i), str(folder / f"label_{i:04d}.nii.gz"))
    return folder


def tiny_config(folder: Path, output: Path, **changes) -> TrainConfig:
    values = dict(output=str(output), labels_dir=str(folder), validation_cases=("0001", "0002"),
                  setting="sdm", working_spacing=10.0, grid_stride=2, iterations=2, lambda_start=0.05,
                  lambda_end=0.01, crop=(12, 12, 12), steps=3, learning_rate=5e-3, val_every=2, val_pairs=1,
                  checkpoint_every=1, threads=1)
    values.update(changes)
    return TrainConfig.from_dict(values)


def state_of(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_labels_folder_keeps_validation_cases_out(tiny_labels):
    dataset = labels_folder(tiny_labels, ["0001", "0002", "0003"])
    assert dataset.training == ["0004", "0005"]
    assert [(p.fixed, p.moving) for p in dataset.validation_pairs] == [("0001", "0002"), ("0001", "0003"),
                                                                        ("0002", "0003")]


def test_dataset_json_parsing(tmp_path):
    spec = {
        "name": "AbdomenCTCT", "labels": {"0": "background", "1": "spleen"},
        "training": [{"image": f"./imagesTr/AbdomenCTCT_{i:04d}_0000.nii.gz",
                      "label": f"./labelsTr/AbdomenCTCT_{i:04d}_0000.nii.gz"} for i in range(1, 6)]
        + [{"label": "./labelsTr/extra_0009.nii.gz"}],
        "registration_val": [{"fixed": "./imagesTr/AbdomenCTCT_0004_0000.nii.gz",
                              "moving": "./imagesTr/AbdomenCTCT_0005_0000.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    dataset = read_dataset_json(tmp_path / "dataset.json")
    assert dataset.training == ["0001", "0002", "0003", "0009"]
    assert [(p.fixed, p.moving) for p in dataset.validation_pairs] == [("0004", "0005")]
    assert dataset.cases["0004"].image == (tmp_path / "imagesTr/AbdomenCTCT_0004_0000.nii.gz").resolve()
    assert dataset.cases["0009"].image is None
    assert dataset.label_names == {0: "background", 1: "spleen"}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(learngn.InputError):
        read_dataset_json(tmp_path / "bad.json")


def test_synthetic_ct_is_label_consistent():
    labels = torch.zeros((24, 24, 24), dtype=torch.long)
    labels[4:12, 4:20, 4:20] = 1
    labels[12:20, 4:20, 4:20] = 2
    labels[8:16, 8:16, 8:16] = 3
    quiet = SynthesisOptions(texture_hu=(0, 0), noise_hu=(0, 0), bias=(0, 0), blur_voxels=(0, 0),
                             merge_probability=0.0, slice_thickness=(1.0, 1.0))
    image = synthetic_ct(labels, torch.Generator().manual_seed(1), spacing_mm=4.0, options=quiet)[0, 0]
    means = []
    for label in (1, 2, 3):
        values = image[labels == label]
        assert torch.allclose(values, values[0].expand_as(values)), "a label must have one intensity"
        means.append(float(values[0]))
    assert len(set(np.round(means, 3))) == 3
    assert float(image[0, 0, 0]) == pytest.approx(-1000.0)  # air far from the organs
    thin = SynthesisOptions(merge_probability=0.0, slice_thickness=(1.0, 1.0))
    noisy = synthetic_ct(labels, torch.Generator().manual_seed(1), spacing_mm=4.0, options=thin)[0, 0]
    for label, mean in zip((1, 2, 3), means):  # same draws: noise and bias only perturb the label's value
        assert abs(float(noisy[labels == label].mean()) - mean) < 40.0
    again = synthetic_ct(labels, torch.Generator().manual_seed(1), spacing_mm=4.0, options=thin)
    assert torch.equal(again[0, 0], noisy)


def test_random_synthesis_merges_labels_and_thickens_slices():
    """Appearance randomisation: some labels share an intensity, and the image is seen through thick slices."""
    from learngn.training.synthesis import thick_slices

    labels = torch.zeros((24, 24, 24), dtype=torch.long)
    for label in range(1, 9):
        labels[2 + 2 * label: 4 + 2 * label, 4:20, 4:20] = label
    merge_all = SynthesisOptions(texture_hu=(0, 0), noise_hu=(0, 0), bias=(0, 0), blur_voxels=(0, 0),
                                 merge_probability=1.0, slice_thickness=(1.0, 1.0))
    image = synthetic_ct(labels, torch.Generator().manual_seed(3), spacing_mm=4.0, options=merge_all)[0, 0]
    values = {round(float(image[labels == label][0]), 3) for label in range(1, 9)}
    assert len(values) < 8, "with every label merged some must share an intensity"
    slab = torch.zeros((1, 1, 12, 6, 6))
    slab[:, :, ::2] = 1.0  # alternating slices: a thick-slice scan cannot resolve them
    thick = thick_slices(slab, 3.0, axis=0)
    assert thick.shape == slab.shape and float(thick.std()) < 0.5 * float(slab.std())
    assert torch.equal(thick_slices(slab, 3.0, axis=1), slab), "constant along the other axes"
    assert torch.equal(thick_slices(slab, 1.0, axis=0), slab)


def test_synthetic_ct_image_keeps_geometry(tiny_labels):
    label_image = sitk.ReadImage(str(tiny_labels / "label_0001.nii.gz"))
    image = synthetic_ct_image(label_image, seed=1)
    assert image.GetSize() == label_image.GetSize() and image.GetOrigin() == label_image.GetOrigin()
    again = synthetic_ct_image(label_image, seed=1)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(again))


def test_training_steps_reduce_the_loss(tiny_labels, tmp_path):
    config = tiny_config(tiny_labels, tmp_path / "run", steps=6, augment=False, crop=None, max_cases=2,
                         learning_rate=1e-3, val_pairs=0)
    data = prepare_data(config, validation=False)
    sample = training_sample(config, data, 1, 0)
    before, _ = sample_loss(config, learngn.training.trainer.GaussNewtonPredictors(), sample)
    result = train(config, progress=False)
    model = learngn.training.trainer.GaussNewtonPredictors()
    model.load_state_dict(state_of(result.weights))
    after, _ = sample_loss(config, model, sample)
    assert float(after.detach()) < float(before.detach())
    for name in ("log.csv", "curves.png", "config.json", "summary.json", "checkpoint.pt", "model.pt"):
        assert (tmp_path / "run" / name).is_file()


def test_fixed_seed_reproduces_and_resume_is_identical(tiny_labels, tmp_path):
    full = train(tiny_config(tiny_labels, tmp_path / "a", steps=3), progress=False)
    again = train(tiny_config(tiny_labels, tmp_path / "b", steps=3), progress=False)
    first, second = state_of(full.weights), state_of(again.weights)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [r["loss"] for r in full.log] == [r["loss"] for r in again.log]
    train(tiny_config(tiny_labels, tmp_path / "c", steps=1), progress=False)
    resumed = train(tiny_config(tiny_labels, tmp_path / "c", steps=3), resume=True, progress=False)
    third = state_of(resumed.weights)
    assert all(torch.equal(first[k], third[k]) for k in first)
    assert [r["loss"] for r in full.log] == [r["loss"] for r in resumed.log]
    other = train(tiny_config(tiny_labels, tmp_path / "d", steps=1, seed=5), progress=False)
    assert not all(torch.equal(first[k], state_of(other.weights)[k]) for k in first)
    with pytest.raises(learngn.InputError):
        train(tiny_config(tiny_labels, tmp_path / "c", steps=4, grid_stride=3), resume=True, progress=False)


def test_best_weights_score_the_best_validation_dice_and_survive_a_resume(tiny_labels, tmp_path):
    from learngn.training.trainer import BEST_WEIGHTS, validate

    config = tiny_config(tiny_labels, tmp_path / "a", steps=4, val_every=1, learning_rate=2e-2)
    full = train(config, progress=False)
    scores = {r["step"]: r["val_dice"] for r in full.log if r.get("val_dice") is not None}
    assert sorted(scores) == [0, 1, 2, 3, 4]
    assert full.val_dice_best == max(scores.values()) and scores[full.best_step] == full.val_dice_best
    assert full.best_weights == tmp_path / "a" / BEST_WEIGHTS
    model = learngn.training.trainer.GaussNewtonPredictors()
    model.load_state_dict(state_of(full.best_weights))
    model.eval()
    assert validate(config, prepare_data(config), model) == pytest.approx(full.val_dice_best, abs=1e-6)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text(encoding="utf-8"))
    assert (summary["best_step"], summary["val_dice_best"]) == (full.best_step, full.val_dice_best)
    train(tiny_config(tiny_labels, tmp_path / "b", steps=1, val_every=1, learning_rate=2e-2), progress=False)
    (tmp_path / "b" / BEST_WEIGHTS).unlink()  # the checkpoint carries the best weights
    resumed = train(config.replace(output=str(tmp_path / "b")), resume=True, progress=False)
    assert resumed.best_step == full.best_step
    best, again = state_of(full.best_weights), state_of(resumed.best_weights)
    assert all(torch.equal(best[k], again[k]) for k in best)
    unmonitored = train(tiny_config(tiny_labels, tmp_path / "a", steps=1, val_pairs=0), progress=False)
    assert unmonitored.best_weights is None and not (tmp_path / "a" / BEST_WEIGHTS).exists(), \
        "a fresh run without validation must not leave an earlier run's best weights"


def test_synthetic_setting_trains(tiny_labels, tmp_path):
    result = train(tiny_config(tiny_labels, tmp_path / "syn", setting="synthetic", steps=1), progress=False)
    assert np.isfinite(result.log[-1]["loss"]) and result.val_dice_final is not None


def test_feature_network_training_fits_only_the_feature_network(tiny_labels, tmp_path):
    from learngn.predictors import GaussNewtonPredictors

    config = tiny_config(tiny_labels, tmp_path / "fn", setting="synthetic", feature_net=True, trainable="features",
                         optimizer="adam", steps=2, val_pairs=0, feature_width=6, feature_depth=2)
    trained = state_of(train(config, progress=False).weights)
    torch.manual_seed(0)  # train() seeds torch with config.seed (0) before building its model
    initial = GaussNewtonPredictors(feature_net="mind", feature_width=6, feature_depth=2).state_dict()
    assert set(trained) == set(initial) and "features.context.0.weight" in trained
    assert all(torch.equal(trained[k], initial[k]) for k in initial if not k.startswith("features."))
    assert trained["features.out.weight"].abs().max() > 0, "the feature network's output layer did not move"
    assert not torch.equal(trained["features.context.0.weight"], initial["features.context.0.weight"])


def test_cosine_schedule_decays_to_zero_and_constant_stays():
    from learngn.training.trainer import learning_rate

    cosine = TrainConfig(output="x", labels_dir="y", steps=100, learning_rate=0.01, schedule="cosine")
    rates = [learning_rate(cosine, step) for step in range(1, 101)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] < 1e-5
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(cosine.replace(schedule="constant"), 100) == 0.01
    with pytest.raises(learngn.InputError, match="schedule"):
        cosine.replace(schedule="linear")


def test_distance_map_feature_network_trains(tiny_labels, tmp_path):
    config = tiny_config(tiny_labels, tmp_path / "sdmfn", feature_net=True, trainable="features", optimizer="adam",
                         steps=2, val_pairs=0)
    trained = state_of(train(config, progress=False).weights)
    assert trained["features.out.weight"].shape[0] == 1  # one correction per distance map
    assert trained["features.out.weight"].abs().max() > 0


def test_init_weights_adds_a_feature_network_to_trained_predictors(tiny_labels, tmp_path):
    first = train(tiny_config(tiny_labels, tmp_path / "first", setting="synthetic", trainable="residual",
                              steps=2, val_pairs=0), progress=False)
    second = train(tiny_config(tiny_labels, tmp_path / "second", setting="synthetic", feature_net=True,
                               trainable="features", optimizer="adam", steps=2, val_pairs=0,
                               init_weights=str(first.weights)), progress=False)
    before, after = state_of(first.weights), state_of(second.weights)
    assert all(torch.equal(before[k], after[k]) for k in before), "the predictors must stay as trained"
    assert after["features.out.weight"].abs().max() > 0
    with pytest.raises(learngn.InputError, match="does not fit"):
        train(tiny_config(tiny_labels, tmp_path / "third", init_weights=str(second.weights)), progress=False)


def test_init_weights_deepens_a_trained_feature_network_without_changing_it(tiny_labels, tmp_path):
    from learngn.predictors import GaussNewtonPredictors
    from learngn.training.trainer import start_from

    first = train(tiny_config(tiny_labels, tmp_path / "shallow", setting="synthetic", feature_net=True,
                              trainable="features", optimizer="adam", steps=2, val_pairs=0), progress=False)
    shallow = load_predictors_file(first.weights)
    deeper = GaussNewtonPredictors(feature_net="mind", feature_width=8, feature_depth=3)
    start_from(deeper, first.weights)
    intensity = torch.rand((1, 1, 10, 11, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert shallow.features._correction(intensity).abs().max() > 0
        assert torch.equal(deeper.features._correction(intensity), shallow.features._correction(intensity))
    assert all(not layer.weight.any() for layer in deeper.features.context)


def test_init_weights_lets_a_trained_feature_network_read_mind_without_changing_it(tiny_labels, tmp_path):
    from learngn.predictors import GaussNewtonPredictors
    from learngn.training.trainer import start_from

    first = train(tiny_config(tiny_labels, tmp_path / "intensity", setting="synthetic", feature_net=True,
                              trainable="features", optimizer="adam", steps=2, val_pairs=0), progress=False)
    alone = load_predictors_file(first.weights)
    reading = GaussNewtonPredictors(feature_net="mind", feature_reads_features=True)
    start_from(reading, first.weights)
    generator = torch.Generator().manual_seed(6)
    intensity = torch.rand((1, 1, 10, 11, 12), generator=generator)
    mind = torch.rand((1, 12, 10, 11, 12), generator=generator)
    with torch.no_grad():
        assert alone.features._correction(intensity).abs().max() > 0
        # the added MIND inputs start at zero (only the order of the sums may differ)
        assert torch.allclose(reading.features.refine(mind, intensity), alone.features.refine(mind, intensity),
                              atol=1e-6)
    assert not reading.features.mix.weight[:, alone.features.mix.in_channels:].any()
    second = train(tiny_config(tiny_labels, tmp_path / "reading", setting="synthetic", feature_net=True,
                               feature_input="intensity+mind", trainable="features", optimizer="adam", steps=2,
                               val_pairs=0, init_weights=str(first.weights)), progress=False)
    assert state_of(second.weights)["features.mix.weight"][:, alone.features.mix.in_channels:].abs().max() > 0


def test_feature_network_options_are_checked():
    with pytest.raises(learngn.InputError, match="add --feature-net"):
        TrainConfig(output="x", labels_dir="y", setting="synthetic", trainable="features")
    with pytest.raises(learngn.InputError, match="--feature-depth"):
        TrainConfig(output="x", labels_dir="y", feature_net=True, feature_depth=0)
    with pytest.raises(learngn.InputError, match="needs the MIND feature network"):
        TrainConfig(output="x", labels_dir="y", setting="sdm", feature_net=True, feature_input="intensity+mind")
    with pytest.raises(learngn.InputError, match="unknown feature input"):
        TrainConfig(output="x", labels_dir="y", feature_net=True, feature_input="mind")


def test_crop_start_centres_the_crop_inside_the_volume():
    from learngn.training.augment import crop_start

    assert crop_start((86, 54, 65), (40, 40, 40), (74.2, 15.0, 20.6)) == (46, 0, 1)
    assert crop_start((86, 54, 65), (40, 40, 40), (40.0, 27.0, 32.0)) == (20, 8, 12)
    assert crop_start((20, 20, 20), (24, 24, 24), (10.0, 10.0, 10.0)) == (-2, -2, -2)


def test_hd95_of_shifted_boxes():
    a = np.zeros((20, 20, 20), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 3, axis=2)
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert np.isnan(hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


def test_evaluate_writes_markdown_csv_png_and_skips_missing_peers(tiny_labels, tmp_path, monkeypatch):
    monkeypatch.setitem(PEERS, "ants", Peer("ANTs SyN", "module_that_is_not_installed_xyz", "antspyx", "", None))
    dataset = labels_folder(tiny_labels, ["0001", "0002"])
    result = evaluate(dataset, ["identity", "gn:segmentation-guided:working_spacing=10;iterations=2", "ants"],
                      tmp_path / "eval", images="synthetic-ct", progress=False, title="tiny")
    for key in ("csv", "markdown", "png"):
        assert result.files[key].is_file() and result.files[key].stat().st_size > 0
    text = result.files["markdown"].read_text(encoding="utf-8")
    assert "initial (no registration)" in text and "untrained GN" in text and "ANTs SyN skipped" in text
    rows = [r for r in result.rows if r["status"] == "ok"]
    assert len(rows) == 2 and all(0.0 <= r["dice"] <= 1.0 for r in rows)
    assert all(np.isfinite(r["hd95"]) for r in rows)


def test_evaluate_resamples_every_case_to_the_requested_spacing(tiny_labels, tmp_path):
    from learngn.training.evaluation import load_eval_case

    dataset = labels_folder(tiny_labels, ["0001", "0002"])
    case = load_eval_case(dataset, "0001", "synthetic-ct", None, spacing=20.0)
    assert case.image.GetSpacing() == case.labels.GetSpacing() == (20.0, 20.0, 20.0)
    assert case.image.GetSize() == case.labels.GetSize() == (11, 9, 11)  # voxel centres span 190x150x190 mm
    native = sitk.ReadImage(str(tiny_labels / "label_0001.nii.gz"))
    assert set(np.unique(sitk.GetArrayViewFromImage(case.labels))) <= set(np.unique(sitk.GetArrayViewFromImage(native)))
    result = evaluate(dataset, ["identity"], tmp_path / "eval", images="synthetic-ct", progress=False, spacing=20.0)
    assert any("resampled to 20 mm" in note for note in result.notes)
    with pytest.raises(learngn.InputError, match="spacing"):
        evaluate(dataset, ["identity"], tmp_path / "bad", images="synthetic-ct", progress=False, spacing=0.0)


def test_parse_method():
    method = parse_method("learngn:abdomen-ct:iterations=3,working_spacing=6.5")
    assert method.kind == "learngn" and method.preset == "abdomen-ct"
    assert dict(method.overrides) == {"iterations": 3, "working_spacing": 6.5}
    with pytest.raises(learngn.InputError):
        parse_method("nonsense")


def test_methods_that_differ_only_in_overrides_get_different_labels():
    """Rows of the summary are grouped by label: two settings of one method must not merge."""
    specs = ["gn:p", "gn:p:regularisation=0.5", "gn:p:regularisation=2", "learngn:p", "learngn:p:iterations=3"]
    labels = [parse_method(spec).label for spec in specs]
    assert len(set(labels)) == len(specs), labels
    assert "regularisation=0.5" in labels[1]


def test_peer_adapters_report_missing_packages():
    for peer in PEERS.values():
        if not peer.available():
            assert peer.package in peer.missing_note()


def _export(tiny_labels, tmp_path, name):
    from learngn.training.cards import export_model

    config = tiny_config(tiny_labels, tmp_path / "run", steps=1, val_pairs=0)
    result = train(config, progress=False)
    models = tmp_path / "models"
    export_model(result.weights, models, name, name + "-preset", "test model", config)
    return models


def test_exported_card_loads_through_register_and_corrupt_weights_fail(tiny_labels, tmp_path, monkeypatch):
    from learngn import models as model_registry

    monkeypatch.setattr(learngn.settings, "PRESETS", dict(learngn.settings.PRESETS))  # the exported preset stays here
    name = f"tinytest{np.random.randint(1 << 30)}"
    models = _export(tiny_labels, tmp_path, name)
    monkeypatch.setenv("LEARNGN_MODEL_DIR", str(models))
    model_registry.load_model.cache_clear()
    card = json.loads((models / f"{name}.json").read_text())
    assert set(card["settings"]) <= registration_settings_keys()
    labels = sitk.ReadImage(str(tiny_labels / "label_0001.nii.gz"))
    moving_labels = sitk.ReadImage(str(tiny_labels / "label_0003.nii.gz"))
    image, moving = synthetic_ct_image(labels, 1), synthetic_ct_image(moving_labels, 3)
    assert f"{name}-preset" in learngn.list_presets()
    result = learngn.register(image, moving, preset=f"{name}-preset", prealign="none", device="cpu",
                              fixed_segmentation=labels, moving_segmentation=moving_labels)
    assert result.settings.model == name and result.metrics["dice_after"] >= 0.0
    (models / f"{name}.pt").write_bytes(b"not a torch file")
    model_registry.load_model.cache_clear()
    with pytest.raises(learngn.InputError):
        learngn.register(image, moving, preset=f"{name}-preset", prealign="none", device="cpu",
                         fixed_segmentation=labels, moving_segmentation=moving_labels)
    card.pop("sha256")  # without the checksum the loader itself must refuse the file
    (models / f"{name}.json").write_text(json.dumps(card))
    model_registry.load_model.cache_clear()
    with pytest.raises(learngn.InputError):
        model_registry.load_model(name)
    model_registry.load_model.cache_clear()


def test_train_and_evaluate_commands(tiny_labels, tmp_path, capsys, monkeypatch):
    from learngn.cli import evaluate as evaluate_command

    monkeypatch.setattr(learngn.settings, "PRESETS", dict(learngn.settings.PRESETS))  # the exported preset stays here
    from learngn.cli import train as train_command

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    train_command.add_parser(subparsers)
    evaluate_command.add_parser(subparsers)
    argv = ["train", "--labels-dir", str(tiny_labels), "--validation-cases", "0001,0002",
            "-o", str(tmp_path / "run"), "--working-spacing", "10", "--iterations", "2",
            "--crop", "12", "--steps", "1", "--val-pairs", "0", "--progress", "none",
            "--tune-lambda", "0.05,0.5", "--tune-pairs", "1", "--feature-net", "--feature-width", "5",
            "--feature-depth", "2", "--export", "clitest", "--models-dir", str(tmp_path / "models")]
    args = parser.parse_args(argv)
    args.command_line = ["learngn", *argv, "--resume"]  # what learngn.cli.main records
    assert train_command.run(args) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["crop"] == [12, 12, 12] and saved["registration"]["lambda_start"] in (0.05, 0.5)
    assert (tmp_path / "run" / "tuning.csv").is_file()
    assert (saved["feature_width"], saved["feature_depth"]) == (5, 2)
    shipped = load_predictors_file(tmp_path / "models" / "clitest.pt")
    assert (shipped.features.width, shipped.features.depth) == (5, 2)
    card = json.loads((tmp_path / "models" / "clitest.json").read_text(encoding="utf-8"))
    assert shlex.split(card["command"]) == ["learngn", *argv], "the card must hold the command that reproduces it"
    monkeypatch.setenv("LEARNGN_MODEL_DIR", str(tmp_path / "models"))
    argv = ["evaluate", "--labels-dir", str(tiny_labels), "--validation-cases", "0001,0002", "--images",
            "synthetic-ct", "--methods", "identity,learngn:clitest,gn:clitest", "-o", str(tmp_path / "eval"),
            "--progress", "none", "--title", "a title with spaces", "--record-in-card", "clitest"]
    args = parser.parse_args(argv)
    args.command_line = ["learngn", *argv]
    assert evaluate_command.run(args) == 0
    assert "initial (no registration)" in capsys.readouterr().out
    validation = json.loads((tmp_path / "models" / "clitest.json").read_text(encoding="utf-8"))["validation"]
    assert validation["pairs"] == 1 and shlex.split(validation["command"]) == ["learngn", *argv]
    assert 0.0 <= validation["learned"]["dice"] <= 1.0 and "untrained GN" in validation["table"]
    args = parser.parse_args(argv[:-1] + ["no_such_model"])
    with pytest.raises(learngn.InputError, match="no_such_model"):
        evaluate_command.run(args)


def test_export_weights_best_ships_the_best_validated_step(tiny_labels, tmp_path):
    from learngn.cli import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers(dest="command"))
    argv = ["train", "--labels-dir", str(tiny_labels), "--validation-cases", "0001,0002", "-o", str(tmp_path / "run"),
            "--working-spacing", "10", "--iterations", "2", "--crop", "12", "--steps", "3", "--val-every", "1",
            "--learning-rate", "0.02", "--progress", "none", "--export", "besttest", "--models-dir",
            str(tmp_path / "models"), "--export-weights", "best"]
    with pytest.raises(learngn.InputError, match="--val-pairs"):
        train_command.run(parser.parse_args(argv + ["--val-pairs", "0"]))
    assert not (tmp_path / "run").exists(), "the option is checked before any training"
    assert train_command.run(parser.parse_args(argv + ["--val-pairs", "1"])) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    card = json.loads((tmp_path / "models" / "besttest.json").read_text(encoding="utf-8"))
    assert card["weights_step"] == summary["best_step"]
    shipped, best = state_of(tmp_path / "models" / "besttest.pt"), state_of(tmp_path / "run" / "best.pt")
    assert all(torch.equal(shipped[k], best[k]) for k in best)


def test_export_weights_best_refuses_a_best_step_whose_weights_were_not_kept(tiny_labels, tmp_path, monkeypatch):
    """A run resumed from a checkpoint older than best.pt logs its best Dice without the weights: exporting
    "best" then must fail clearly, not ship another step's weights or nothing."""
    from learngn.cli import train as train_command
    from learngn.training import trainer

    weights = tmp_path / "run" / "model.pt"
    monkeypatch.setattr(trainer, "train", lambda config, resume, progress: trainer.TrainResult(
        tmp_path / "run", weights, [], 0.5, 0.55, 3, best_weights=None, best_step=2, val_dice_best=0.6))
    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers(dest="command"))
    argv = ["train", "--labels-dir", str(tiny_labels), "--validation-cases", "0001,0002", "-o", str(tmp_path / "run"),
            "--steps", "3", "--val-every", "1", "--val-pairs", "1", "--progress", "none", "--export", "stale",
            "--models-dir", str(tmp_path / "models"), "--export-weights", "best", "--resume"]
    with pytest.raises(learngn.InputError, match=r"step 2.*--export-weights last"):
        train_command.run(parser.parse_args(argv))
    assert not (tmp_path / "models" / "stale.json").exists()


def test_suite_figures_go_into_the_card_from_the_suite_where_the_model_ran(tmp_path):
    """``evaluate --suite ... --record-in-card``: the card takes the first suite where both its learned
    method and its untrained twin ran, and an evaluation where neither ran is an error."""
    from learngn.cli.evaluate import _record_in_cards

    card = tmp_path / "suite_model.json"
    card.write_text(json.dumps({"name": "suite_model", "preset": "suite-preset"}), encoding="utf-8")
    figures = dict(status="ok", hd95=3.0, negative_jacobian_percent=0.0, log_jacobian_std=0.1, seconds=1.0)
    other = [dict(fixed="a", moving="b", spec="learngn:generic", dice=0.2, **figures)]
    ran = [dict(fixed="a", moving="b", spec=spec, dice=dice, **figures)
           for spec, dice in (("learngn:suite-preset", 0.6), ("gn:suite-preset", 0.5))]
    args = argparse.Namespace(command_line=["learngn", "evaluate", "--suite", "ct,brain"])
    _record_in_cards(args, [card], [(other, "ct table"), (ran, "brain table")])
    validation = json.loads(card.read_text(encoding="utf-8"))["validation"]
    assert validation["table"] == "brain table" and validation["learned"]["dice"] == 0.6
    assert validation["untrained"]["dice"] == 0.5 and validation["command"].startswith("learngn evaluate --suite")
    with pytest.raises(learngn.InputError, match="suite-preset"):
        _record_in_cards(args, [card], [(other, "ct table")])


@pytest.mark.data
def test_abdomen_split_excludes_validation_cases(data_dir):
    folder = data_dir / "abdomen_ctct_labels"
    if not folder.is_dir():
        pytest.skip("abdomen label maps not available")
    from learngn.training import ABDOMEN_VALIDATION_CASES

    dataset = labels_folder(folder, list(ABDOMEN_VALIDATION_CASES))
    assert len(dataset.validation_pairs) == 10
    assert not set(dataset.training) & set(ABDOMEN_VALIDATION_CASES)
    assert len(dataset.training) == 20


def test_large_label_values_get_one_channel_each(tmp_path):
    """Brain label maps number their labels up to 2035: one-hot channels follow the labels that occur."""
    geometry = phantom_geometry((20, 16, 20), 10.0)
    for i in range(1, 4):
        labels = phantom_labels(geometry, seed=i)
        array = sitk.GetArrayFromImage(labels).astype(np.int32)
        array[array == 3] = 2035
        big = sitk.GetImageFromArray(array)
        big.CopyInformation(labels)
        sitk.WriteImage(big, str(tmp_path / f"label_{i:04d}.nii.gz"))
    config = tiny_config(tmp_path, tmp_path / "run", validation_cases=("0001",), val_pairs=0)
    data = prepare_data(config, validation=False)
    assert 2035 in data.label_values and data.n_classes == len(data.label_values) + 1
    sample_ = training_sample(config, data, 1, 0)
    assert sample_.fixed.labels.shape[1] == data.n_classes
    assert sample_.fixed.features.shape[1] == len(data.label_values)


def test_residual_only_training_keeps_the_jacobian_stencils(tiny_labels, tmp_path):
    from learngn.predictors import GaussNewtonPredictors

    result = train(tiny_config(tiny_labels, tmp_path / "f", steps=2, trainable="residual", val_pairs=0),
                   progress=False)
    torch.manual_seed(0)  # train() seeds torch with config.seed (0) before building its model
    trained, initial = state_of(result.weights), GaussNewtonPredictors().state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("jacobian."))
    assert not all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("residual."))


def test_branch_training_keeps_the_classic_stencils(tiny_labels, tmp_path):
    """--trainable branches fits only the CNN branches of J and f: the stencils stay classic GN's."""
    from learngn.predictors import GaussNewtonPredictors

    result = train(tiny_config(tiny_labels, tmp_path / "b", steps=2, trainable="branches", val_pairs=0,
                               optimizer="adam"), progress=False)
    torch.manual_seed(0)
    trained, initial = state_of(result.weights), GaussNewtonPredictors().state_dict()
    stencils = [k for k in initial if ".first." in k or ".second." in k]
    branches = [k for k in initial if ".branch_" in k]
    assert stencils and all(torch.equal(trained[k], initial[k]) for k in stencils)
    assert not all(torch.equal(trained[k], initial[k]) for k in branches)
    with pytest.raises(learngn.InputError, match="feature network"):
        tiny_config(tiny_labels, tmp_path / "c", trainable="branches+features")


def test_training_reads_the_products_gauss_newton_settings():
    """One source for the Gauss-Newton settings: training trains the registration the presets run, and a
    flat option (--lambda-start, an older config.json) lands in that one type."""
    config = TrainConfig(output="x", labels_dir="y")
    product = learngn.RegistrationSettings()
    for name in ("iterations", "levels", "grid_stride", "lambda_start", "lambda_end", "momentum", "regularisation"):
        assert getattr(config.registration, name) == getattr(product, name), name
    flat = TrainConfig.from_dict({"output": "x", "labels_dir": "y", "lambda_start": 0.3, "iterations": 3})
    assert (flat.registration.lambda_start, flat.registration.iterations) == (0.3, 3)
    assert TrainConfig.from_dict(flat.to_dict()) == flat
    assert flat.replace(grid_stride=3).registration.grid_stride == 3
    assert flat.registration_settings()["lambda_start"] == 0.3
