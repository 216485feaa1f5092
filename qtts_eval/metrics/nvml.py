"""GPU memory of another process through NVML: how an external candidate's VRAM is measured.

nvidia-ml-py is optional (the `gpu` extra); without it, or without a GPU, every lookup answers None.
"""

from __future__ import annotations

import contextlib
from typing import Any

_nvml: Any = None  # the initialised pynvml module, once a lookup has succeeded in importing it


def _init() -> Any:
    global _nvml
    if _nvml is None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # not installed, no driver, no GPU: memory is simply not observable
            return None
        _nvml = pynvml
    return _nvml


def process_gpu_memory_bytes(pid: int) -> int | None:
    """GPU memory used by ``pid`` summed over all devices, or None where NVML cannot say."""
    nvml = _init()
    if nvml is None:
        return None
    total = 0
    found = False
    with contextlib.suppress(Exception):
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    total += int(process.usedGpuMemory)
                    found = True
    return total if found else None
