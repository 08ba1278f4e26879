"""Helpers of the command-line tests: run ``python -m learngn`` as a user would, compare images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "LearnGNSlicer"
SHIFT_MM = (8.0, -6.0, 5.0)
#: Quick settings for tests that check plumbing rather than accuracy.
QUICK = ["--iterations", "2", "--no-report", "--progress", "none"]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def events(self) -> List[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def learngn_env() -> Dict[str, str]:
    existing = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), *([existing] if existing else [])]))
    env.pop("LEARNGN_DEBUG", None)
    return env


def learngn(*args: str, cwd: Optional[Path] = None, timeout: float = 600) -> Completed:
    """Run ``python -m learngn ARGS`` like a user would, in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "learngn", *map(str, args)], cwd=cwd, env=learngn_env(),
                          capture_output=True, text=True, timeout=timeout)
    return Completed(done.returncode, done.stdout, done.stderr)


def ncc(a: sitk.Image, b: sitk.Image) -> float:
    x = sitk.GetArrayFromImage(a).astype(np.float64).ravel()
    y = sitk.GetArrayFromImage(b).astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))
