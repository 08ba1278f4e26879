"""Choosing the compute device, and recognising GPU out-of-memory errors to fall back to the CPU."""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch

from .errors import InputError

LOGGER = logging.getLogger(__name__)


def unusable_gpu(requested: str) -> Optional[str]:
    """Why a CUDA request (``cuda``, ``cuda:N``) cannot run on a GPU here, or None when it can (or asks none)."""
    if not (requested or "").lower().startswith("cuda") or torch.cuda.is_available():
        return None
    if getattr(torch.version, "cuda", None) is None:
        why = f"this PyTorch, {torch.__version__}, is a CPU-only build"
    else:
        why = "no GPU or no driver found"
    return f"a GPU was requested but PyTorch sees no usable CUDA device ({why}); running on the CPU"


def resolve_device(requested: str) -> torch.device:
    """``auto`` takes CUDA when usable; a CUDA request without a usable GPU warns and uses the CPU.

    The fallback is also logged at once (Python's last-resort handler prints it on stderr when logging is not
    configured), because ``register`` collects warnings and repeats them only when the work is done."""
    requested = (requested or "auto").lower()
    if requested in ("auto", "gpu"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        problem = unusable_gpu(requested)
        if problem:
            LOGGER.warning(problem)
            warnings.warn(problem, RuntimeWarning, stacklevel=3)
            return torch.device("cpu")
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {requested} does not exist; this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    raise InputError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


#: Voxel budget of the working grid when the settings give none: the same on every device, so that a
#: result does not depend on where it ran.  6 M voxels is a 2 mm thorax CT or a 1 mm brain at full
#: resolution (about 1.1 mm).  On the accuracy benchmark's tuning cases, the working grid mattered more
#: than any other setting: thorax CT error 1.48 mm at 1.5 M, 0.98 at 4 M, 0.80 at 6 M; brain Dice 56.6,
#: 58.4, 58.9 % (docs/EVALUATION.md).  On the 2-core CPU the deformable stage then takes about 2.5 s per
#: finest-level iteration (docs/BENCHMARKS.md).
DEFAULT_WORKING_VOXELS = {"cpu": 6_000_000, "cuda": 6_000_000}


def default_working_voxels(device: torch.device) -> int:
    return DEFAULT_WORKING_VOXELS["cuda" if device.type == "cuda" else "cpu"]


def is_out_of_memory(error: BaseException) -> bool:
    """True for PyTorch's and CuPy's GPU out-of-memory errors."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
