"""Python packages the engine needs, installed at Apply time with the user's consent.

PyTorch comes through the PyTorch extension's ``PyTorchUtils`` logic, which picks the build that
matches the GPU driver and asks the user first; everything else is listed in
``Resources/requirements.txt`` and installed with pip.  Nothing is installed at import or when the
widget is built.  The installer is injected, so the decisions are tested without the application.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from typing import Callable, List, Optional, Sequence

from .i18n import tr as _

#: PyTorch versions the engine supports.
TORCH_REQUIREMENT = ">=2.0"
REQUESTER = "LearnGN Registration"


class DependencyError(RuntimeError):
    """A required package is missing and was not installed; the message says how to get it."""


def read_requirements(path: str) -> List[str]:
    """Requirement lines of a requirements file, without comments and blank lines."""
    requirements = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            text = line.split("#", 1)[0].strip()
            if text:
                requirements.append(text)
    return requirements


def unmet_requirements(requirements: Sequence[str],
                       installed_version: Callable[[str], Optional[str]] = None) -> List[str]:
    """The requirements (PEP 508 strings) that apply to this platform and are not satisfied."""
    from packaging.requirements import Requirement

    installed_version = installed_version or _installed_version
    unmet = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed_version(requirement.name)
        if version is None or (requirement.specifier and not requirement.specifier.contains(version, prereleases=True)):
            unmet.append(text)
    return unmet


def _installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_installed() -> bool:
    """Whether ``import torch`` can succeed, without importing it (that takes seconds)."""
    return importlib.util.find_spec("torch") is not None


class SlicerInstaller:
    """Installs through the Slicer application; only used inside it."""

    def torch_installed(self) -> bool:
        return torch_installed()

    def install_torch(self) -> bool:
        """Ask PyTorchUtils to install PyTorch (it asks the user); True if torch is now there."""
        logic = _pytorch_utils_logic()
        if logic is None:
            raise DependencyError(_(
                "LearnGN Registration needs PyTorch. Install the 'PyTorch' extension with the Extensions Manager, "
                "restart Slicer and press Apply again (it will then offer to install PyTorch)."))
        torch = logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
        return torch is not None

    def install_requirements(self, requirements: List[str]) -> bool:
        """pip-install ``requirements`` after asking; False if the user declined."""
        import slicer

        try:
            import slicer.packaging as packaging
        except ImportError:  # Slicer before 5.10
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            try:
                packaging.pip_ensure(requirements, requester=REQUESTER)
            except RuntimeError as error:  # raised when the user declines
                logging.info("LearnGNSlicer: %s", error)
                return False
            return True
        message = _("LearnGN Registration needs these Python packages:\n{packages}\nInstall them now?").format(
            packages="\n".join(requirements))
        if not slicer.util.confirmOkCancelDisplay(message):
            return False
        slicer.util.pip_install(requirements)
        return True


def _pytorch_utils_logic():
    """The PyTorch extension's logic, or None when that extension is not installed."""
    try:
        import slicer

        logic = slicer.util.getModuleLogic("PyTorchUtils")
        if logic is not None:
            return logic
    except Exception:  # module missing or not loaded yet
        pass
    try:
        import PyTorchUtils

        return PyTorchUtils.PyTorchUtilsLogic()
    except ImportError:
        return None


def ensure_dependencies(installer, requirements: Sequence[str],
                        installed_version: Callable[[str], Optional[str]] = None) -> None:
    """Make sure PyTorch and ``requirements`` are importable, installing with consent.

    ``installer`` provides ``torch_installed()``, ``install_torch()`` and
    ``install_requirements(list)`` (see :class:`SlicerInstaller`); ``installed_version(name)``
    defaults to the installed distribution's version (``None`` if absent).  Raises
    :class:`DependencyError` when something is still missing.
    """
    if not installer.torch_installed():
        if not installer.install_torch() or not installer.torch_installed():
            raise DependencyError(_(
                "PyTorch is not installed, so the registration cannot run. Press Apply again and accept the "
                "installation, or install PyTorch in the 'PyTorch Utils' module."))
    missing = unmet_requirements(requirements, installed_version)
    if not missing:
        return
    if not installer.install_requirements(missing):
        raise DependencyError(_("The registration needs these Python packages, which were not installed: {packages}").format(
            packages=", ".join(missing)))
    importlib.invalidate_caches()
    still_missing = unmet_requirements(missing, installed_version)
    if still_missing:
        raise DependencyError(_("Installing {packages} failed; see the Python console for pip's messages.").format(
            packages=", ".join(still_missing)))
