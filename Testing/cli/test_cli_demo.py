"""``learngn demo``: the built-in sample runs in seconds and recovers the known deformation."""
from __future__ import annotations

import json
import time

import pytest

from cli_helpers import learngn


def test_demo_writes_register_outputs_and_recovers_the_true_field(tmp_path):
    started = time.monotonic()
    run = learngn("demo", "--device", "cpu", cwd=tmp_path)  # default folder: ./learngn-demo
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    outdir = tmp_path / "learngn-demo"
    for name in ("warped.nii.gz", "transform.h5", "summary.json", "report.png",
                 "true_displacement.nii.gz", "fixed.nii.gz", "moving.nii.gz"):
        assert (outdir / name).is_file(), name
    assert not (outdir / "displacement.nii.gz").exists()  # one transform file unless a field is asked for
    summary = json.loads((outdir / "summary.json").read_text())
    demo, metrics = summary["demo"], summary["metrics"]
    # The pair differs visibly before registration (measured: NCC 0.82 -> 0.98, mean Dice 0.48 -> 0.95).
    assert metrics["ncc_before"] < 0.9 and metrics["ncc_after"] > metrics["ncc_before"] + 0.1, metrics
    # Measured: 3.2 mm mean error for 23.7 mm mean true displacement (41 mm max) on the 4.5 mm grid.
    assert demo["mean_error_mm"] < 0.6 * demo["mean_true_displacement_mm"]
    assert "mean error" in run.stdout and f"{demo['mean_error_mm']:.2f} mm" in run.stdout
    assert elapsed < 300, elapsed


def test_git_ignores_what_the_demo_writes(tmp_path):
    import shutil
    import subprocess

    from cli_helpers import ROOT
    from learngn.cli.demo import DEFAULT_OUTDIR

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in (f"{DEFAULT_OUTDIR}/summary.json", f".{DEFAULT_OUTDIR}.partial-1a2b3c4d/warped.nii.gz"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"
