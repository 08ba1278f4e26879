"""The panel guides the user (issue 14, item 6): preset descriptions, segmentations a preset needs, no label
maps as fixed or moving volumes, a screenshot URL that points to a real file.  Headless: the .ui and the module
file are read, the Lib's rules run without Qt, requests run against slicer-core's MRML."""
from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from slicer_test_helpers import MODULE_DIR, REPO

from LearnGNSlicerLib.presets import BUILT_IN, preset_info
from LearnGNSlicerLib.ui_state import guidance_title, missing_input

UI_FILE = os.path.join(REPO, "Resources", "UI", "LearnGNSlicer.ui")
MODULE_FILE = os.path.join(MODULE_DIR, "LearnGNSlicer.py")


def _widget(name: str):
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        if widget.get("name") == name:
            return widget
    raise AssertionError(f"no widget {name} in the .ui")


def _property(widget, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


@pytest.mark.parametrize("selector", ["fixedVolumeSelector", "movingVolumeSelector"])
def test_fixed_and_moving_selectors_offer_scalar_volumes_but_not_label_maps(selector):
    """Slicer's way: vtkMRMLScalarVolumeNode without its child classes (label maps, vector volumes)."""
    widget = _widget(selector)
    assert [s.text for s in _property(widget, "nodeTypes").iter("string")] == ["vtkMRMLScalarVolumeNode"]
    assert _property(widget, "showChildNodeTypes").findtext("bool") == "false"


def test_the_panel_shows_the_description_under_the_selector_and_as_tooltips():
    label = _widget("presetDescriptionLabel")
    assert _property(label, "wordWrap").findtext("bool") == "true"
    with open(MODULE_FILE, encoding="utf-8") as handle:
        source = handle.read()
    assert re.search(r"setItemData\(index, .*description, qt\.Qt\.ToolTipRole\)", source)
    assert "self.ui.presetDescriptionLabel.text = info.description" in source
    assert "self.ui.presetComboBox.toolTip = info.description" in source
    assert re.search(r"needs_segmentations:\s*\n\s*self\.ui\.guidanceCollapsibleButton\.collapsed = False", source)
    assert "missing_input(" in source and "guidance_title(info.needs_segmentations)" in source


def test_a_learned_distance_map_preset_needs_segmentations(tmp_path):
    """A model card whose features are distance maps offers a preset that needs segmentations."""
    import json

    from LearnGNSlicerLib.presets import model_preset_infos

    for name, features in (("guided", ["sdm"]), ("imaging", ["mind"])):
        card = {"name": name, "preset": f"{name}-preset", "sha256": "0" * 64, "settings": {"features": features}}
        (tmp_path / f"{name}.json").write_text(json.dumps(card), encoding="utf-8")
    infos = model_preset_infos(tmp_path)
    assert infos["guided-preset"].needs_segmentations and not infos["imaging-preset"].needs_segmentations


def test_preset_descriptions_and_needs_without_the_engine_match_the_engine(monkeypatch):
    learngn = pytest.importorskip("learngn", reason="the engine needs torch")
    from learngn.settings import get_preset

    engine = {name: (description, get_preset(name).needs_segmentations)
              for name, description in learngn.list_presets().items()}
    for name in [n for n in list(sys.modules) if n == "learngn" or n.startswith("learngn.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, (description, needs) in engine.items():
        info = preset_info(name)
        assert (info.description, info.needs_segmentations) == (description, needs), name
    assert {info.name for info in BUILT_IN} <= set(engine)
    assert preset_info("segmentation-guided").needs_segmentations
    assert not preset_info("generic").needs_segmentations


def test_apply_waits_for_the_segmentations_a_preset_needs_and_says_why():
    assert missing_input("f", "m", "generic") == ""
    reason = missing_input("f", "m", "segmentation-guided", needs_segmentations=True)
    assert "segmentation-guided" in reason and "the fixed and the moving segmentation" in reason
    assert "the moving segmentation" in missing_input("f", "m", "p", True, fixed_segmentation=True)
    assert missing_input("f", "m", "p", True, fixed_segmentation=True, moving_segmentation=True) == ""
    assert missing_input(None, "m") == "Select the fixed volume." and "two different" in missing_input("a", "a")
    assert "required" in guidance_title(True) and "optional" in guidance_title(False)


def test_screenshot_url_points_to_a_file_in_the_repository():
    with open(os.path.join(REPO, "CMakeLists.txt"), encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s+"([^"]*)"\)', text)
    if match is None:
        return  # no screenshot announced: nothing can be broken
    for url in match.group(1).split():
        path = re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/", "", url)
        assert path != url, f"{url} is not a file of this repository's main branch"
        assert os.path.isfile(os.path.join(REPO, path)), f"EXTENSION_SCREENSHOTURLS names {path}, which is missing"


# -- the logic refuses what the panel does not offer, before anything runs -----------------------------------

@pytest.mark.parametrize("case, message", [
    ("label map as fixed", "is a label map; choose an intensity volume"),
    ("segmentation-guided without segmentations", "registers segmentations of both volumes"),
])
def test_the_logic_refuses_label_maps_and_missing_segmentations(scene, case, message):
    from LearnGNSlicerLib.logic import RegistrationLogic
    from slicer_test_helpers import add_volume, blob, fake_launcher, ijk_to_ras

    grid = ijk_to_ras(spacing=(1.0, 1.0, 1.0), origin=(-14.0, -12.0, -10.0))
    image = blob((20, 24, 28), center=(10, 12, 14))
    fixed = add_volume(scene, (image > 0.5).astype(np.uint8) if "label" in case else image, grid, "fixed",
                       label="label" in case)
    moving = add_volume(scene, blob((20, 24, 28), center=(10, 12, 18)), grid, "moving")
    preset = "segmentation-guided" if "segmentation" in case else "generic"
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=message):
        RegistrationLogic(launcher=fake_launcher(), probe_gpu=False).register(fixed, moving, device="cpu",
                                                                               preset=preset)
    assert scene.GetNumberOfNodes() == count
