"""The learned predictors and the shipped-model machinery (cards, checksums, safe loading)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import learngn
from learngn import models, settings
from learngn.models import load_model, load_predictors_file, sha256
from learngn.features import mind_ssc
from learngn.predictors import FeatureNet, GaussNewtonPredictors, central_differences, classic_terms


def random_pair(seed=0, shape=(2, 1, 9, 10, 11)):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def perturbed_model(seed=0) -> GaussNewtonPredictors:
    """A model whose weights differ from the initial ones (what training produces)."""
    torch.manual_seed(seed)
    model = GaussNewtonPredictors()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """An empty models folder searched first, a clean model cache and a private preset table."""
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(settings, "PRESETS", dict(settings.PRESETS))
    load_model.cache_clear()
    yield tmp_path
    load_model.cache_clear()


def write_model(folder, name, model, **card):
    weights = folder / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    card.setdefault("sha256", sha256(weights))
    (folder / f"{name}.json").write_text(json.dumps(card), encoding="utf-8")
    return weights


# -- the predictors ----------------------------------------------------------------------------------

def test_untrained_predictors_equal_classic_terms():
    warped, fixed = random_pair()
    with torch.no_grad():
        residual, jacobian = GaussNewtonPredictors()(warped, fixed)
    classic_residual, classic_jacobian = classic_terms(warped, fixed)
    assert residual.shape == (2, 1, 9, 10, 11) and jacobian.shape == (2, 3, 9, 10, 11)
    assert torch.allclose(residual, classic_residual, atol=1e-6)
    assert torch.allclose(jacobian, classic_jacobian, atol=1e-6)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_fused_forward_equals_the_separate_predictors(grad):
    """The three fused convolutions compute what the two predictors compute one by one, with and without
    gradients (without them, an all-zero branch is skipped)."""
    model = perturbed_model()
    with torch.no_grad():
        model.jacobian.branch_out.weight.zero_()  # one branch zero, one not: both code paths
        model.jacobian.branch_out.bias.zero_()
    warped, fixed = random_pair()
    pair = torch.cat([warped, fixed], dim=1)
    with torch.set_grad_enabled(grad):
        residual, jacobian = model(warped, fixed)
        expected_residual, expected_jacobian = model.residual(pair), model.jacobian(pair)
    assert torch.allclose(residual, expected_residual, atol=1e-5)
    assert torch.allclose(jacobian, expected_jacobian, atol=1e-5)
    if grad:
        residual.sum().backward()
        assert model.residual.branch_in.weight.grad is not None


def test_central_differences_of_a_ramp():
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (6, 7, 8)], indexing="ij")
    ramp = (2.0 * z - 3.0 * y + 0.5 * x)[None, None]
    d = central_differences(ramp)[0, :, 1:-1, 1:-1, 1:-1]
    assert torch.allclose(d[0], torch.tensor(2.0)) and torch.allclose(d[1], torch.tensor(-3.0))
    assert torch.allclose(d[2], torch.tensor(0.5))


def test_trained_predictors_differ_from_classic():
    """The equality above is not vacuous: changed weights change the output."""
    warped, fixed = random_pair()
    with torch.no_grad():
        _, jacobian = perturbed_model()(warped, fixed)
    assert not torch.allclose(jacobian, classic_terms(warped, fixed)[1], atol=1e-3)


def test_state_dict_round_trip(tmp_path):
    model = perturbed_model()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = GaussNewtonPredictors()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_predictors_file(tmp_path):
    model = perturbed_model(1)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = load_predictors_file(path)
    assert isinstance(loaded, GaussNewtonPredictors) and not loaded.training
    warped, fixed = random_pair(2)
    with torch.no_grad():
        for a, b in zip(model(warped, fixed), loaded(warped, fixed)):
            assert torch.equal(a, b)


def test_corrupt_weights_file_is_an_input_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a torch file\x00\x01\x02" * 10)
    with pytest.raises(learngn.InputError, match="cannot read model weights.*corrupt"):
        load_predictors_file(path)


def test_truncated_weights_file_is_an_input_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(perturbed_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(learngn.InputError, match="cannot read model weights"):
        load_predictors_file(path)


def test_mismatched_state_dict_is_an_input_error(tmp_path):
    path = tmp_path / "other.pt"
    state = GaussNewtonPredictors().state_dict()
    state["jacobian.first.weight"] = torch.zeros(3, 2, 5, 5, 5)  # other kernel size
    torch.save(state, path)
    with pytest.raises(learngn.InputError, match="do not match this version"):
        load_predictors_file(path)
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(learngn.InputError, match="do not match this version"):
        load_predictors_file(path)
    torch.save({"features.mix.weight": 3, "features.out.weight": [1, 2]}, path)  # not tensors
    with pytest.raises(learngn.InputError, match="do not match this version"):
        load_predictors_file(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a file that would run code on unpickling is refused, not executed."""
    import pickle

    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"jacobian.first.weight": Exploit()}, handle)
    with pytest.raises(learngn.InputError):
        load_predictors_file(path)
    assert not marker.exists()


# -- models found through their cards ----------------------------------------------------------------

def test_model_card_with_correct_checksum_loads(model_dir):
    model = perturbed_model(2)
    write_model(model_dir, "mymodel", model)
    loaded = load_model("mymodel")
    assert torch.equal(loaded.jacobian.first.weight, model.jacobian.first.weight)


def test_model_card_with_wrong_checksum_is_an_input_error(model_dir):
    write_model(model_dir, "tampered", perturbed_model(), sha256="0" * 64)
    with pytest.raises(learngn.InputError, match="checksum"):
        load_model("tampered")


def test_missing_model_and_missing_weights_are_input_errors(model_dir):
    with pytest.raises(learngn.InputError, match="no learned model named 'absent'"):
        load_model("absent")
    (model_dir / "noweights.json").write_text(json.dumps({"weights": "gone.pt"}), encoding="utf-8")
    with pytest.raises(learngn.InputError, match="missing"):
        load_model("noweights")


def test_model_card_with_a_preset_becomes_a_preset(model_dir):
    write_model(model_dir, "learned-test", GaussNewtonPredictors(), preset="learned-test-preset",
                description="test model", settings={"features": ["mind"], "iterations": 3})
    presets = learngn.list_presets()
    assert presets["learned-test-preset"] == "test model"
    preset = settings.get_preset("learned-test-preset")
    assert preset.settings.model == "learned-test" and preset.settings.iterations == 3
    assert preset.settings.features == ("mind",)


def test_untrained_model_preset_registers_like_classic(model_dir, tiny_pair):
    """End to end through a model card: an untrained model gives the classic result."""
    write_model(model_dir, "untrained", GaussNewtonPredictors(), preset="untrained-preset",
                settings={"iterations": 2, "prealign": "none"})
    fixed, moving = tiny_pair
    learned = learngn.register(fixed, moving, preset="untrained-preset")
    classic = learngn.register(fixed, moving, iterations=2, prealign="none")
    assert learned.settings.model == "untrained"
    a = sitk.GetArrayFromImage(learned.displacement)
    b = sitk.GetArrayFromImage(classic.displacement)
    assert np.abs(b).max() > 0.5, "the classic run did not move; the comparison would be vacuous"
    assert np.allclose(a, b, atol=1e-2), f"max difference {np.abs(a - b).max():.3g} mm"


# -- the feature network ----------------------------------------------------------------------------------

def feature_net_model(seed=0) -> GaussNewtonPredictors:
    """Stencil predictors plus a feature network whose output layer is no longer zero."""
    torch.manual_seed(seed)
    model = GaussNewtonPredictors(feature_net="mind")
    with torch.no_grad():
        model.features.out.weight.normal_(0.0, 0.3)
    return model


def test_only_stencil_predictors_count_as_classic():
    assert GaussNewtonPredictors().computes_classic_terms()
    assert feature_net_model().computes_classic_terms()  # only its feature network was trained
    assert not perturbed_model().computes_classic_terms()
    model = GaussNewtonPredictors()
    with torch.no_grad():
        model.residual.branch_out.bias.fill_(0.01)
    assert not model.computes_classic_terms()


def test_untrained_feature_net_leaves_mind_as_it_is():
    intensity = torch.rand((1, 1, 8, 9, 10), generator=torch.Generator().manual_seed(0))
    mind = mind_ssc(intensity)
    with torch.no_grad():
        assert torch.equal(FeatureNet().refine(mind, intensity), mind)
        changed = feature_net_model().features.refine(mind, intensity)
    assert changed.shape == mind.shape and not torch.allclose(changed, mind, atol=1e-3)
    with pytest.raises(ValueError, match="12 MIND channels"):
        FeatureNet().refine(mind[:, :5], intensity)


def test_deeper_wider_feature_net_starts_as_classic_and_loads_at_its_size(tmp_path):
    intensity = torch.rand((1, 1, 9, 10, 11), generator=torch.Generator().manual_seed(3))
    mind = mind_ssc(intensity)
    model = GaussNewtonPredictors(feature_net="mind", feature_width=12, feature_depth=3)
    assert (model.features.width, model.features.depth) == (12, 3)
    with torch.no_grad():
        assert torch.equal(model.features.refine(mind, intensity), mind)  # untrained: MIND as it is
        model.features.out.weight.normal_(0.0, 0.3)
        for layer in model.features.context:
            layer.weight.normal_(0.0, 0.1)
        refined = model.features.refine(mind, intensity)
    path = tmp_path / "deep.pt"
    torch.save(model.state_dict(), path)
    loaded = load_predictors_file(path)
    assert (loaded.features.width, loaded.features.depth) == (12, 3)
    with torch.no_grad():
        assert torch.equal(loaded.features.refine(mind, intensity), refined)
    # the dilated layers see further: a change 4 voxels away reaches a voxel only through them
    far = intensity.clone()
    far[0, 0, 4, 5, 9] += 0.5
    with torch.no_grad():
        deep = model.features._correction(far) - model.features._correction(intensity)
        shallow_model = GaussNewtonPredictors(feature_net="mind", feature_width=12, feature_depth=1)
        shallow_model.features.out.weight.normal_(0.0, 0.3)
        shallow = (shallow_model.features._correction(far) - shallow_model.features._correction(intensity))
    assert shallow[0, :, 4, 5, 5].abs().max() == 0 and deep[0, :, 4, 5, 5].abs().max() > 0
    with pytest.raises(ValueError, match="width and depth"):
        FeatureNet(width=0)


def test_the_shipped_brain_models_feature_net_loads_as_trained_reading_mind():
    """The card does not say the network's size or inputs: the weights do, and they must load as trained."""
    model = load_model("learngn_brain_mri_v2")
    assert (model.features.width, model.features.depth) == (8, 1)
    assert model.features.reads_features


def test_feature_net_reading_mind_can_scale_it_and_loads_as_such(tmp_path):
    intensity = torch.rand((1, 1, 9, 10, 11), generator=torch.Generator().manual_seed(5))
    mind = mind_ssc(intensity)
    model = GaussNewtonPredictors(feature_net="mind", feature_reads_features=True)
    assert model.features.reads_features
    with torch.no_grad():
        assert torch.equal(model.features.refine(mind, intensity), mind)  # untrained: MIND as it is
        model.features.out.weight.normal_(0.0, 0.3)
        model.features.mix.weight.normal_(0.0, 0.3)
        refined = model.features.refine(mind, intensity)
        # the same intensity with other MIND values gets another correction: it reads the channels
        other = model.features.refine(0.5 * mind, intensity) - 0.5 * mind
    assert not torch.allclose(other, refined - mind, atol=1e-4)
    path = tmp_path / "reads.pt"
    torch.save(model.state_dict(), path)
    loaded = load_predictors_file(path)
    assert loaded.features.reads_features
    with torch.no_grad():
        assert torch.equal(loaded.features.refine(mind, intensity), refined)
    with pytest.raises(ValueError, match="only the MIND feature network"):
        FeatureNet("sdm", reads_features=True)


def test_distance_map_feature_net_refines_each_map_alike_and_loads_as_its_kind(tmp_path):
    maps = 2 * torch.rand((1, 4, 6, 7, 8), generator=torch.Generator().manual_seed(1)) - 1
    with torch.no_grad():
        assert torch.equal(FeatureNet("sdm").refine(maps), maps)
        model = GaussNewtonPredictors(feature_net="sdm")
        model.features.out.weight.normal_(0.0, 0.3)
        refined = model.features.refine(maps)
        # the same network for every map: refining one map alone gives that map's channel
        alone = model.features.refine(maps[:, 2:3])
    assert refined.shape == maps.shape and not torch.allclose(refined, maps, atol=1e-3)
    assert torch.allclose(alone[0, 0], refined[0, 2], atol=1e-6)
    path = tmp_path / "sdm.pt"
    torch.save(model.state_dict(), path)
    loaded = load_predictors_file(path)
    assert loaded.features.kind == "sdm" and torch.equal(loaded.features.out.weight, model.features.out.weight)


def test_feature_net_weights_load_through_a_card_and_change_the_result(model_dir, tiny_pair):
    write_model(model_dir, "withfeatures", feature_net_model(), preset="features-preset",
                settings={"iterations": 2, "prealign": "none"})
    write_model(model_dir, "untrainedfeatures", GaussNewtonPredictors(feature_net="mind"),
                preset="untrained-features-preset", settings={"iterations": 2, "prealign": "none"})
    loaded = load_model("withfeatures")
    assert loaded.features is not None
    assert torch.equal(loaded.features.out.weight, feature_net_model().features.out.weight)
    fixed, moving = tiny_pair
    classic = sitk.GetArrayFromImage(learngn.register(fixed, moving, iterations=2, prealign="none").displacement)
    untrained = learngn.register(fixed, moving, preset="untrained-features-preset").displacement
    learned = learngn.register(fixed, moving, preset="features-preset").displacement
    assert np.abs(classic).max() > 0.5, "the classic run did not move; the comparison would be vacuous"
    assert np.allclose(sitk.GetArrayFromImage(untrained), classic, atol=1e-2)
    assert np.abs(sitk.GetArrayFromImage(learned) - classic).max() > 0.05


def test_feature_net_model_without_mind_features_is_an_input_error(model_dir, tiny_pair):
    write_model(model_dir, "withfeatures", feature_net_model(), preset="features-preset",
                settings={"iterations": 2, "prealign": "none"})
    fixed, moving = tiny_pair
    with pytest.raises(learngn.InputError, match="refines mind features"):
        learngn.register(fixed, moving, preset="features-preset", features="intensity")


def test_mismatched_feature_net_weights_are_an_input_error(tmp_path):
    state = feature_net_model().state_dict()
    state["features.windows.weight"] = torch.zeros(4, 1, 1, 1, 1)  # fewer windows
    path = tmp_path / "features.pt"
    torch.save(state, path)
    with pytest.raises(learngn.InputError, match="do not match this version"):
        load_predictors_file(path)


# -- the shipped models ---------------------------------------------------------------------------------

SHIPPED_CARDS = sorted((Path(__file__).resolve().parents[2] / "Resources" / "Models").glob("*.json"))


@pytest.mark.parametrize("card_path", SHIPPED_CARDS, ids=lambda p: p.stem)
def test_shipped_model_loads_safely_and_its_card_is_complete(card_path):
    """Every model in Resources/Models loads without executing code, matches its checksum, defines a
    preset with valid settings, and its card says how it was made and how it scored."""
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model = load_model(card["name"])
    assert isinstance(model, GaussNewtonPredictors)
    trained_features = model.features is not None and bool(model.features.out.weight.any())
    assert trained_features or not model.computes_classic_terms(), \
        "the shipped weights are the untrained initialisation: they compute classic Gauss-Newton"
    assert card["preset"] in learngn.list_presets()
    preset = settings.get_preset(card["preset"])
    assert preset.settings.model == card["name"]
    assert card["command"].startswith("learngn train ") and "--resume" not in card["command"]
    validation = card["validation"]
    assert validation["pairs"] >= 5 and validation["command"].startswith("learngn evaluate ")
    for method in ("learned", "untrained"):
        assert 0.0 < validation[method]["dice"] < 1.0
    # what ships beats its untrained twin on its reporting split, at no more folding
    assert validation["learned"]["dice"] > validation["untrained"]["dice"]
    assert validation["learned"]["negative_jacobian_percent"] <= validation["untrained"]["negative_jacobian_percent"] + 0.01
    peers = card["peers"]["table"]  # the issue asks for the model beside the peers, in the card too
    assert f"| {card['preset']} |" in peers and "| ConvexAdam |" in peers
