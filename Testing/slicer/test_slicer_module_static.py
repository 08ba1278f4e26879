"""Static checks of the module file, its .ui and the build: what only fails inside Slicer otherwise.

LearnGNSlicer.py imports qt and Slicer's application-only packages, so it is read, not imported.
"""
import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest

from slicer_test_helpers import MODULE_DIR, REPO

MODULE_FILE = os.path.join(MODULE_DIR, "LearnGNSlicer.py")
UI_FILE = os.path.join(REPO, "Resources", "UI", "LearnGNSlicer.ui")
CMAKE_FILE = os.path.join(REPO, "CMakeLists.txt")


@pytest.fixture(scope="module")
def source():
    with open(MODULE_FILE, encoding="utf-8") as file:
        return file.read()


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()  # fails if the .ui is not well-formed XML


def widgets(ui):
    return {w.get("name"): w for w in ui.iter("widget")}


def parameter_bindings(ui):
    """objectName -> SlicerParameterName of every bound widget."""
    bindings = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.findtext("string")
    return bindings


def wrapper_fields(source):
    """name -> annotation source of the @parameterNodeWrapper class."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", getattr(d, "attr", None)) == "parameterNodeWrapper" for d in node.decorator_list):
            return {stmt.target.id: ast.get_source_segment(source, stmt.annotation)
                    for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in LearnGNSlicer.py")


def test_module_file_parses_and_defines_slicer_classes(source):
    classes = {node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    assert {"LearnGNSlicer", "LearnGNSlicerWidget", "LearnGNSlicerLogic", "LearnGNSlicerTest"} <= classes


def test_every_ui_attribute_used_by_the_code_exists_in_the_ui(source, ui):
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    names = set(widgets(ui))
    assert used, "the widget code uses no self.ui attributes?"
    assert used <= names, f"missing in the .ui: {sorted(used - names)}"


def test_every_bound_widget_names_a_parameter_of_the_wrapper(source, ui):
    fields = wrapper_fields(source)
    bindings = parameter_bindings(ui)
    assert set(bindings.values()) <= set(fields), f"unknown parameters: {sorted(set(bindings.values()) - set(fields))}"
    assert len(set(bindings.values())) == len(bindings), "two widgets bound to one parameter"
    # every parameter is shown somewhere: bound in the .ui, or (preset) handled by the widget code
    unbound = set(fields) - set(bindings.values())
    for name in unbound:
        assert re.search(rf"\.{name}\b", source), f"parameter {name} is neither bound nor used"


def test_bound_widgets_match_their_parameter_types(source, ui):
    """The parameter node wrapper only connects certain widget classes to each type."""
    fields = wrapper_fields(source)
    all_widgets = widgets(ui)
    for object_name, parameter in parameter_bindings(ui).items():
        widget = all_widgets[object_name]
        annotation = fields[parameter]
        node_class = re.search(r"(vtkMRML\w+)", annotation)
        if node_class:
            assert widget.get("class") == "qMRMLNodeComboBox", object_name
            node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert node_types == [node_class.group(1)], f"{object_name} shows {node_types}, parameter is {annotation}"
        elif annotation.startswith("Annotated[int"):
            assert widget.get("class") in ("QSpinBox", "QSlider"), object_name
        elif annotation.startswith("Annotated[float"):
            assert widget.get("class") in ("QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"), object_name
        elif annotation in ("Device", "Prealign"):
            assert widget.get("class") == "QComboBox", object_name
        else:
            pytest.fail(f"no rule for {parameter}: {annotation}")


def test_node_selectors_receive_the_scene(ui):
    """Each qMRMLNodeComboBox needs the mrmlSceneChanged -> setMRMLScene connection."""
    selectors = {w.get("name") for w in ui.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in ui.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors <= connected


def test_custom_widgets_are_declared(ui):
    used = {w.get("class") for w in ui.iter("widget")}
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    assert {c for c in used if c.startswith(("q", "ctk"))} <= declared


def test_user_visible_strings_in_the_module_go_through_translation(source):
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr in ("title", "helpText", "text", "toolTip") for t in node.targets):
            assert not isinstance(node.value, ast.Constant) or node.value.value in ("",), ast.get_source_segment(source, node)


def cmake_list(text, variable):
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def test_cmake_lists_every_module_script_and_resource():
    with open(CMAKE_FILE, encoding="utf-8") as file:
        text = file.read()
    scripts = set(cmake_list(text, "MODULE_SCRIPTS"))
    on_disk = {os.path.relpath(os.path.join(root, f), MODULE_DIR).replace(os.sep, "/")
               for root, _, files in os.walk(MODULE_DIR) for f in files
               if f.endswith(".py") and "__pycache__" not in root and not root.startswith(os.path.join(MODULE_DIR, "learngn"))}
    assert scripts == on_disk
    assert "learngn/*.py" in text  # the engine is globbed on purpose (see the comment there)
    for resource in cmake_list(text, "MODULE_PYTHON_RESOURCES"):
        if resource.startswith("${"):
            continue
        assert os.path.isfile(os.path.join(REPO, resource.replace("${MODULE_NAME}", "LearnGNSlicer"))), resource
    assert "slicer_add_python_unittest" in text and "WITH_GENERIC_TESTS" in text


def test_only_the_module_file_is_directly_in_the_module_folder():
    """Slicer loads every .py directly in the folder as a module."""
    direct = [f for f in os.listdir(MODULE_DIR) if f.endswith(".py")]
    assert direct == ["LearnGNSlicer.py"]
