"""Installing dependencies at Apply time, with an injected installer instead of the application."""
import pytest

from LearnGNSlicerLib.dependencies import (
    DependencyError, SlicerInstaller, ensure_dependencies, read_requirements, unmet_requirements,
)
from slicer_test_helpers import REPO


class FakeInstaller:
    """Records what would be installed; ``accept`` is the user's answer."""

    def __init__(self, torch=True, accept=True, installs_work=True):
        self.torch = torch
        self.accept = accept
        self.installs_work = installs_work
        self.calls = []
        self.installed = {}

    def torch_installed(self):
        return self.torch

    def install_torch(self):
        self.calls.append("torch")
        if self.accept and self.installs_work:
            self.torch = True
        return self.accept

    def install_requirements(self, requirements):
        self.calls.append(("pip", list(requirements)))
        if self.accept and self.installs_work:
            self.installed.update({r.split(">")[0].split("=")[0]: "9.9" for r in requirements})
        return self.accept

    def version(self, name):
        return self.installed.get(name, {"numpy": "2.1.0"}.get(name))


def test_nothing_is_installed_when_everything_is_there():
    installer = FakeInstaller()
    ensure_dependencies(installer, ["numpy>=1.20"], installer.version)
    assert installer.calls == []


def test_missing_torch_is_installed_through_pytorch_utils_first():
    installer = FakeInstaller(torch=False)
    ensure_dependencies(installer, ["somepkg>=1.0"], installer.version)
    assert installer.calls == ["torch", ("pip", ["somepkg>=1.0"])]


def test_declining_torch_stops_with_a_clear_message():
    installer = FakeInstaller(torch=False, accept=False)
    with pytest.raises(DependencyError, match="PyTorch is not installed.*Press Apply again"):
        ensure_dependencies(installer, [], installer.version)
    assert installer.calls == ["torch"]


def test_declining_packages_names_them():
    installer = FakeInstaller(accept=False)
    with pytest.raises(DependencyError, match="somepkg>=1.0"):
        ensure_dependencies(installer, ["somepkg>=1.0", "numpy"], installer.version)
    assert installer.calls == [("pip", ["somepkg>=1.0"])]  # only what is missing


def test_failed_installation_is_reported():
    installer = FakeInstaller(installs_work=False)
    with pytest.raises(DependencyError, match="Installing somepkg failed"):
        ensure_dependencies(installer, ["somepkg"], installer.version)


def test_requirements_respect_versions_and_markers():
    versions = {"numpy": "1.19.0", "scipy": "1.17.1"}.get
    requirements = ["numpy>=1.20", "scipy>=1.10", "winonly; sys_platform == 'nonexistent-os'", "absent"]
    assert unmet_requirements(requirements, versions) == ["numpy>=1.20", "absent"]


def test_shipped_requirements_file_parses_and_excludes_torch():
    requirements = read_requirements(f"{REPO}/Resources/requirements.txt")
    unmet_requirements(requirements, lambda name: "1.0")  # every line is a valid PEP 508 requirement
    assert not any(r.lower().startswith("torch") for r in requirements)  # torch comes via PyTorchUtils


def test_read_requirements_drops_comments_and_blank_lines(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\nfoo>=1.0  # why\n  bar\n")
    assert read_requirements(str(path)) == ["foo>=1.0", "bar"]


def test_without_the_pytorch_extension_the_user_is_told_to_install_it(monkeypatch):
    import LearnGNSlicerLib.dependencies as dependencies

    monkeypatch.setattr(dependencies, "_pytorch_utils_logic", lambda: None)
    with pytest.raises(DependencyError, match="Install the 'PyTorch' extension"):
        SlicerInstaller().install_torch()


def test_pytorch_utils_is_asked_with_confirmation(monkeypatch):
    import LearnGNSlicerLib.dependencies as dependencies

    calls = []

    class Logic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            return None  # the user said no

    monkeypatch.setattr(dependencies, "_pytorch_utils_logic", Logic)
    assert SlicerInstaller().install_torch() is False
    assert calls == [(True, dependencies.TORCH_REQUIREMENT)]
