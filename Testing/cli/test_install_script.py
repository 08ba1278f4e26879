"""README's first command installs what fits the machine (issue 14, item 4): a CPU build of PyTorch without an
NVIDIA GPU, PyPI's CUDA build with one; then the demo runs.  Checked with the script's dry run."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import List

from cli_helpers import ROOT

SCRIPT = ROOT / "install.sh"


def _fake_nvidia_smi(folder: Path, gpu: bool) -> None:
    folder.mkdir()
    tool = folder / "nvidia-smi"
    body = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"' if gpu else 'echo "NVIDIA-SMI has failed"; exit 9'
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def _dry_run(tmp_path: Path, gpu: bool, **extra: str) -> List[str]:
    bin_dir = tmp_path / "bin"
    _fake_nvidia_smi(bin_dir, gpu)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", LEARNGN_INSTALL_DRY_RUN="1",
               LEARNGN_VENV=str(tmp_path / "venv"), **extra)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]


def _pip_installs(commands: List[str]) -> List[str]:
    return [c.split(" -m pip install ", 1)[1] for c in commands if " -m pip install " in c]


def test_without_a_gpu_a_cpu_build_of_torch_is_installed_first(tmp_path):
    installs = _pip_installs(_dry_run(tmp_path, gpu=False))
    assert installs == ["torch==2.13.0", str(ROOT)]


def test_a_cpu_index_can_be_named(tmp_path):
    installs = _pip_installs(_dry_run(tmp_path, gpu=False, LEARNGN_TORCH_INDEX="https://example.org/whl/cpu"))
    assert installs[0] == "torch==2.13.0 --index-url https://example.org/whl/cpu"


def test_with_a_gpu_the_cuda_build_is_installed(tmp_path):
    installs = _pip_installs(_dry_run(tmp_path, gpu=True, LEARNGN_WITH_CUPY="1"))
    assert installs == ["torch", f"{ROOT}[gpu]", str(ROOT)]


def test_readme_first_command_installs_with_the_script_and_runs_the_demo():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert "bash install.sh" in commands[0] and "learngn demo" in commands[0]
    assert commands[1] == "bash Testing/run_tests.sh"
    assert "index-url https://download.pytorch.org/whl/cu" in text, "GPU users are told the CUDA command"

