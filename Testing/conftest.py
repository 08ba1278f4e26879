"""Test-wide setup: import the checkout's packages (engine and Slicer helpers), find the shared data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LearnGNSlicer"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (LEARNGN_DATA); tests that need it are skipped when it is absent."""
    location = os.environ.get("LEARNGN_DATA") or str(ROOT.parent / "shared" / "data")
    path = Path(location)
    if not path.is_dir():
        pytest.skip("real data not available: set LEARNGN_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def phantom_pair():
    """A generated fixed/moving pair with labels and the true field (12 mm maximum)."""
    from learngn.phantom import sample_pair

    return sample_pair(size=(64, 56, 64), spacing=4.0, max_mm=12.0, seed=0)


def _mrml_source() -> str:
    try:
        import slicer
    except ImportError:
        return "slicer-core not installed"
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("slicer-core")
    except PackageNotFoundError:
        release = "version unknown"
    return f"slicer-core {release} at {Path(slicer.__file__).parent}"


def pytest_terminal_summary(terminalreporter) -> None:
    """Count the headless Slicer tests apart, with the MRML they used: a CI log must show that they ran
    against the real libraries rather than being skipped."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        counts[outcome] = sum(1 for report in terminalreporter.stats.get(outcome, [])
                              if "Testing/slicer/" in getattr(report, "nodeid", "").replace(os.sep, "/")
                              and (outcome != "passed" or report.when == "call"))
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n or outcome == "passed")
    terminalreporter.write_line(f"headless Slicer tests ({_mrml_source()}): {summary}")
