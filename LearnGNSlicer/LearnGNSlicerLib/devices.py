"""Is there a usable GPU, and is it big enough?  Decided before the registration starts.

The question is asked in a short child process (:data:`PROBE_CODE`, run by the same Python as the
worker), so Slicer's own process never imports torch or creates a CUDA context that would hold GPU
memory for the rest of the session.  The answer is cached per Python executable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Optional

from .i18n import tr as _
from .settings import Device

#: Rough GPU memory the engine needs: a fixed overhead (CUDA context, kernels) plus this many bytes
#: per voxel of the fixed image (images, features, warps and their gradients in float32).
GPU_BASE_BYTES = 768 * 2**20
GPU_BYTES_PER_VOXEL = 160

#: Printed by the probe process as one JSON line.
PROBE_CODE = """
import json
info = {"torch": False, "cuda": False}
try:
    import torch
    info["torch"] = True
    info["torch_version"] = torch.__version__
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        info.update(cuda=True, name=torch.cuda.get_device_name(0), free_bytes=int(free), total_bytes=int(total))
    elif getattr(torch.version, "cuda", None) is None:
        info["reason"] = "the installed PyTorch is a CPU-only build"
    else:
        info["reason"] = "PyTorch finds no CUDA GPU (no NVIDIA GPU, or its driver is missing or too old)"
except Exception as error:
    info["reason"] = "%s: %s" % (type(error).__name__, error)
print(json.dumps(info))
"""


@dataclass(frozen=True)
class GpuInfo:
    """What the probe found."""

    torch: bool = False
    cuda: bool = False
    name: str = ""
    free_bytes: int = 0
    total_bytes: int = 0
    reason: str = ""

    @classmethod
    def from_probe_output(cls, text: str) -> "GpuInfo":
        """Parse the probe's last JSON line; anything unreadable means "no usable GPU"."""
        for line in reversed(text.strip().splitlines()):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                fields = {k: data[k] for k in ("torch", "cuda", "name", "free_bytes", "total_bytes", "reason") if k in data}
                return cls(**fields)
        return cls(reason="the GPU check printed no result" + (f": {text.strip()[-300:]}" if text.strip() else ""))


@dataclass(frozen=True)
class DeviceDecision:
    device: str
    message: str = ""


def required_gpu_bytes(fixed_voxels: int) -> int:
    return GPU_BASE_BYTES + GPU_BYTES_PER_VOXEL * int(fixed_voxels)


def choose_device(requested: str, gpu: Optional[GpuInfo], fixed_voxels: int) -> DeviceDecision:
    """The device to pass to the worker, and a message when the GPU request cannot be honoured."""
    if requested == Device.CPU.value:
        return DeviceDecision(Device.CPU.value)
    if gpu is None:  # not probed: let the engine decide
        return DeviceDecision(requested)
    if not gpu.cuda:
        reason = gpu.reason or _("unknown reason")
        return DeviceDecision(
            Device.CPU.value,
            _("No usable GPU ({reason}); registering on the CPU, which takes longer.").format(reason=reason),
        )
    needed = required_gpu_bytes(fixed_voxels)
    if gpu.free_bytes and gpu.free_bytes < needed:
        return DeviceDecision(
            Device.CPU.value,
            _("The GPU {name} has {free:.1f} GiB free but this registration needs about {needed:.1f} GiB; "
              "registering on the CPU, which takes longer. Close other GPU programs or choose smaller volumes to use the GPU.").format(
                name=gpu.name, free=gpu.free_bytes / 2**30, needed=needed / 2**30),
        )
    return DeviceDecision(requested)


_PROBE_CACHE: Dict[str, GpuInfo] = {}


def cached_gpu_info(python: str) -> Optional[GpuInfo]:
    return _PROBE_CACHE.get(python)


def remember_gpu_info(python: str, info: GpuInfo) -> None:
    _PROBE_CACHE[python] = info


def forget_gpu_info() -> None:
    """Probe again next time (e.g. after installing a CUDA build of PyTorch)."""
    _PROBE_CACHE.clear()
