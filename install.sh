#!/usr/bin/env bash
# Installs LearnGN into a virtual environment (.venv, or $LEARNGN_VENV) with the PyTorch build that fits
# this machine; README's first command.  Then `.venv/bin/learngn demo` runs the built-in sample.
#
#   no NVIDIA GPU (nvidia-smi absent or listing no GPU): a CPU build of PyTorch, $LEARNGN_CPU_TORCH
#       (default torch==2.13.0, the release the test suite pins), from the package index pip is set up
#       with, or from $LEARNGN_TORCH_INDEX when set (e.g. https://download.pytorch.org/whl/cpu, where it is
#       reachable); no CUDA libraries are downloaded on a machine where pip finds that CPU build;
#   an NVIDIA GPU: PyPI's default PyTorch for Linux, the CUDA build (several GB), and the CuPy solver
#       with LEARNGN_WITH_CUPY=1.
# A PyTorch already in the environment is kept.  LEARNGN_INSTALL_DRY_RUN=1 prints the commands instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LEARNGN_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
cpu_torch="${LEARNGN_CPU_TORCH:-torch==2.13.0}"

run() {
    if [ -n "${LEARNGN_INSTALL_DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi
}

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

run "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
if [ -z "${LEARNGN_INSTALL_DRY_RUN:-}" ] && "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "install.sh: keeping the PyTorch already in $venv"
elif has_nvidia_gpu; then
    echo "install.sh: NVIDIA GPU found: installing PyTorch's CUDA build"
    run "${pip[@]}" install torch
    if [ -n "${LEARNGN_WITH_CUPY:-}" ]; then run "${pip[@]}" install "$root[gpu]"; fi
else
    echo "install.sh: no NVIDIA GPU: installing a CPU build of PyTorch ($cpu_torch)"
    if [ -n "${LEARNGN_TORCH_INDEX:-}" ]; then
        run "${pip[@]}" install "$cpu_torch" --index-url "$LEARNGN_TORCH_INDEX"
    else
        run "${pip[@]}" install "$cpu_torch"
    fi
fi
run "${pip[@]}" install "$root"

if [ -z "${LEARNGN_INSTALL_DRY_RUN:-}" ] && ! has_nvidia_gpu \
        && [ "$("$venv/bin/python" -c 'import torch; print(torch.version.cuda or "")')" != "" ]; then
    echo "install.sh: note: pip installed a CUDA build of PyTorch on a machine without an NVIDIA GPU; it runs on" \
         "the CPU but takes several GB. Where download.pytorch.org is reachable, replace it with the CPU build:" \
         "LEARNGN_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash install.sh (after rm -r $venv)" >&2
fi
echo "install.sh: done; run $venv/bin/learngn demo"
