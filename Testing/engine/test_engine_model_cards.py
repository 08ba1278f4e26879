"""Model cards are checked one by one (issue 14, item 2): a bad card is reported and skipped, the rest load;
a checksum is required; a user card that shadows a shipped model or preset is named in a warning."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

import learngn
import learngn.settings
from learngn import models
from learngn.predictors import GaussNewtonPredictors

REPOSITORY_MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
#: The stand-in for a shipped model: these tests check the registry, not what the product ships.
SHIPPED_MODEL = "learngn_test_shipped"
SHIPPED_PRESET = "test-shipped-preset"


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A shipped-models folder holding one model (``SHIPPED_MODEL``, preset ``SHIPPED_PRESET``)."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    weights = folder / f"{SHIPPED_MODEL}.pt"
    torch.save(GaussNewtonPredictors(feature_net="mind").state_dict(), weights)
    card = {"name": SHIPPED_MODEL, "preset": SHIPPED_PRESET, "description": "a shipped test model",
            "settings": {"features": ["mind"], "iterations": 3}, "weights": weights.name,
            "sha256": models.sha256(weights)}
    (folder / f"{SHIPPED_MODEL}.json").write_text(json.dumps(card), encoding="utf-8")
    monkeypatch.setattr(models, "_shipped_dirs", lambda: [folder])
    return folder


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch, shipped):
    """Presets and reported problems of this test only; no cached model."""
    monkeypatch.setattr(learngn.settings, "PRESETS", dict(learngn.settings.PRESETS))
    monkeypatch.setattr(models, "_REPORTED", set(), raising=False)
    models.load_model.cache_clear()
    yield
    models.load_model.cache_clear()


def _user_model(folder: Path, name: str, preset: str, **changes: Any) -> Path:
    """A copy of the shipped model under another name (weights included), with ``changes`` to its card."""
    shipped_folder = models._shipped_dirs()[0]
    folder.mkdir(parents=True, exist_ok=True)
    card: Dict[str, Any] = json.loads((shipped_folder / f"{SHIPPED_MODEL}.json").read_text(encoding="utf-8"))
    card.update({"name": name, "preset": preset, "weights": f"{name}.pt", **changes})
    card = {k: v for k, v in card.items() if v is not None}
    shutil.copyfile(shipped_folder / f"{SHIPPED_MODEL}.pt", folder / f"{name}.pt")
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    return path


def _messages(caught: List[warnings.WarningMessage]) -> str:
    return "\n".join(str(w.message) for w in caught)


def test_shipped_cards_pass_the_schema():
    for path in REPOSITORY_MODELS.glob("*.json"):
        assert models.check_card(json.loads(path.read_text(encoding="utf-8")), path.stem) == [], path


@pytest.mark.parametrize("change, reason", [
    ({"settings": {"no_such_setting": 1}}, "unknown settings key"),
    ({"settings": {"iterations": 0}}, "iterations"),
    ({"sha256": None}, "sha256"),
    ({"sha256": "abc"}, "sha256"),
    ({"description": 3}, "'description' must be str"),
    ({"weights": "../elsewhere.pt"}, "weights"),
])
def test_a_bad_card_is_reported_and_skipped_and_the_others_still_load(tmp_path, monkeypatch, change, reason):
    user = tmp_path / "models"
    _user_model(user, "good_model", "good-preset")
    bad = _user_model(user, "bad_model", "bad-preset", **change)
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        presets = learngn.list_presets()
        assert learngn.settings.get_preset("generic").name == "generic"
    assert "good-preset" in presets and "bad-preset" not in presets
    assert SHIPPED_PRESET in presets
    text = _messages(caught)
    assert str(bad) in text and "skipped" in text and reason in text
    assert text.count(str(bad)) == 1, "a problem is reported once, not at every look-up"
    with pytest.raises(learngn.InputError, match="bad_model"):
        models.read_card("bad_model")


def test_unreadable_json_is_skipped(tmp_path, monkeypatch):
    user = tmp_path / "models"
    user.mkdir()
    (user / "broken.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    with pytest.warns(UserWarning, match="broken.json skipped"):
        assert "generic" in learngn.list_presets()


def test_the_loader_refuses_weights_without_a_checksum(tmp_path, monkeypatch):
    user = tmp_path / "models"
    path = _user_model(user, "unsigned", "unsigned-preset")
    card = json.loads(path.read_text(encoding="utf-8"))
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    assert models.load_model("unsigned") is not None
    models.load_model.cache_clear()
    card.pop("sha256")
    path.write_text(json.dumps(card), encoding="utf-8")
    with pytest.warns(UserWarning, match="sha256"), pytest.raises(learngn.InputError, match="unsigned"):
        models.load_model("unsigned")


def test_a_user_card_shadowing_a_shipped_model_is_named(tmp_path, monkeypatch):
    user = tmp_path / "models"
    path = _user_model(user, SHIPPED_MODEL, "my-preset", description="my own retraining")
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    with pytest.warns(UserWarning) as caught:
        cards = models.find_model_cards()
    assert cards[SHIPPED_MODEL] == path
    text = _messages(list(caught))
    assert str(path) in text and "shadows the shipped model" in text and SHIPPED_MODEL in text


def test_a_user_card_shadowing_a_shipped_preset_is_named_and_used(tmp_path, monkeypatch):
    user = tmp_path / "models"
    path = _user_model(user, "my_model", SHIPPED_PRESET)
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    with pytest.warns(UserWarning) as caught:
        preset = learngn.settings.get_preset(SHIPPED_PRESET)
    assert preset.settings.model == "my_model"
    text = _messages(list(caught))
    assert str(path) in text and f"'{SHIPPED_PRESET}'" in text and SHIPPED_MODEL in text


def test_a_user_card_cannot_take_a_built_in_preset(tmp_path, monkeypatch):
    user = tmp_path / "models"
    _user_model(user, "my_model", "generic")
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(user))
    with pytest.warns(UserWarning, match="built-in preset 'generic'"):
        assert learngn.settings.get_preset("generic").settings.model is None
