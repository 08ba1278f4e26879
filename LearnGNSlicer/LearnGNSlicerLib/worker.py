"""How the module runs the engine: ``<Slicer's Python> -m learngn register ... --progress jsonl``.

The engine package ``learngn`` sits next to ``LearnGNSlicer.py`` (``MODULE_DIR``); that folder is put
first on the worker's ``PYTHONPATH``.  Inside Slicer the worker is ``PythonSlicer`` (Slicer's own
Python with the same packages); outside the application (tests, plain Python) it is
``sys.executable``.  The contract of the command line is docs/ENGINE_API.md.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .resources import MODULE_DIR

#: Exit codes of ``learngn register`` (docs/ENGINE_API.md).
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130

#: Files ``learngn register`` writes into its output folder with the hand-over options below: the warped
#: volume uncompressed, and the whole displacement at the engine's control points as raw float32 NRRD (exact
#: under linear interpolation, a few MB where the fixed grid's field in float64 took hundreds).
WARPED_FILE = "warped.nii"
TRANSFORM_FILE = "transform.h5"
DISPLACEMENT_FILE = "displacement_control_grid.nrrd"
SUMMARY_FILE = "summary.json"
#: What the worker is asked to write: files for this machine, read once, so nothing is compressed.
HANDOVER_OPTIONS = ("--field-format", "control-grid", "--uncompressed")


def find_python_executable() -> str:
    """Slicer's ``PythonSlicer`` inside the application, else the running interpreter."""
    try:
        import slicer

        app = slicer.app
    except (ImportError, AttributeError):  # headless slicer-core, or plain Python
        return sys.executable
    executable_name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer")  # Slicer puts its bin folder on PATH
    if found:
        return found
    candidate = os.path.join(app.slicerHome, "bin", executable_name)
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f"Slicer's Python executable ({executable_name}) was not found on PATH or in {candidate}; "
        "the Slicer installation looks incomplete, reinstall Slicer."
    )


@dataclass
class WorkerLauncher:
    """Builds the worker's command line and environment; injectable for tests."""

    python: Optional[str] = None
    module: str = "learngn"
    python_path: Sequence[str] = field(default_factory=lambda: [str(MODULE_DIR)])
    extra_environment: Dict[str, str] = field(default_factory=dict)

    def executable(self) -> str:
        return self.python or find_python_executable()

    def argv(self, arguments: Sequence[str]) -> List[str]:
        return [self.executable(), "-m", self.module, *arguments]

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*self.python_path, *existing])
        env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive when printed
        env["PYTHONIOENCODING"] = "utf-8"
        env.update(self.extra_environment)
        return env


def register_arguments(
    fixed: str,
    moving: str,
    outdir: str,
    options: Sequence[str] = (),
    fixed_mask: Optional[str] = None,
    moving_mask: Optional[str] = None,
    fixed_segmentation: Optional[str] = None,
    moving_segmentation: Optional[str] = None,
) -> List[str]:
    """Arguments of ``learngn register`` with progress as JSON lines, the hand-over files and no report.png.

    The report is drawn with matplotlib, which Slicer does not bundle, and the module does not use it.
    """
    args = ["register", fixed, moving, "-o", outdir]
    for flag, path in (
        ("--fixed-mask", fixed_mask),
        ("--moving-mask", moving_mask),
        ("--fixed-segmentation", fixed_segmentation),
        ("--moving-segmentation", moving_segmentation),
    ):
        if path:
            args += [flag, path]
    return [*args, *options, *HANDOVER_OPTIONS, "--progress", "jsonl", "--no-report", "--overwrite"]


def parse_event(line: str) -> Optional[dict]:
    """The JSON event on a stdout line, or None for any other line (logs, warnings)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
