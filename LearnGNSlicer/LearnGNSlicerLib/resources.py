"""Locate the module's ``Resources`` folder in a built extension and in a source checkout.

Built and installed, Slicer's ``slicerMacroBuildScriptedModule`` puts ``Resources/`` next to
``LearnGNSlicer.py`` (this repository's CMakeLists.txt arranges that).  When the checkout's
``LearnGNSlicer/`` folder is added to "Additional module paths" instead, ``Resources/`` is one level
up, at the repository's top.  ``ScriptedLoadableModule.resourcePath`` only knows the first layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

#: Folder holding ``LearnGNSlicer.py``, ``LearnGNSlicerLib/`` and ``learngn/``.
MODULE_DIR = Path(__file__).resolve().parent.parent


def resource_dir_candidates(module_dir: Union[str, Path, None] = None) -> List[Path]:
    """Folders that may hold the resources, in the order they are tried."""
    base = Path(module_dir) if module_dir is not None else MODULE_DIR
    return [base / "Resources", base.parent / "Resources"]


def resources_dir(module_dir: Union[str, Path, None] = None) -> Path:
    """The first candidate folder that holds the module's UI file."""
    candidates = resource_dir_candidates(module_dir)
    for candidate in candidates:
        if (candidate / "UI" / "LearnGNSlicer.ui").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"LearnGNSlicer resources (UI/LearnGNSlicer.ui) not found; looked in: {tried}. "
        "Reinstall the extension, or add the checkout's LearnGNSlicer folder (not its parent) "
        "to the additional module paths."
    )


def resource_path(relative: str, module_dir: Union[str, Path, None] = None) -> str:
    """Absolute path of ``relative`` (e.g. ``"UI/LearnGNSlicer.ui"``) inside the resources folder."""
    return str(resources_dir(module_dir) / relative)


def optional_resource_path(relative: str, module_dir: Union[str, Path, None] = None) -> Optional[str]:
    """Like :func:`resource_path` but ``None`` when the file does not exist (e.g. an optional icon)."""
    try:
        path = Path(resource_path(relative, module_dir))
    except FileNotFoundError:
        return None
    return str(path) if path.exists() else None
