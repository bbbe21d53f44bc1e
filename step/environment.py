"""What a result file records about where it was measured: versions and device names."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from ._version import __version__


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (e.g. ``"triton"``), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` where there is one, else ``platform``'s guess."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [ln.partition(":")[2].strip() for ln in lines if ln.startswith("model name")]
    return (names or [platform.processor() or platform.machine()])[0]


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, the CPU model otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def versions() -> dict[str, str | None]:
    """step-sparsity, Python, torch (and its CUDA build) and triton versions."""
    return {
        "step-sparsity": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": dist_version("triton"),
    }
