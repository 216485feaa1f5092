"""GPU memory of processes and board power through NVML: VRAM like for like, and energy.

nvidia-ml-py is optional (the `gpu` extra); without it, or without a GPU, every lookup answers None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
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


def process_gpu_memory_bytes(pids: Iterable[int]) -> int | None:
    """GPU memory used by the processes ``pids``, summed over them and all devices, or None where NVML
    cannot say (no NVML, no GPU, none of them holds GPU memory)."""
    nvml = _init()
    if nvml is None:
        return None
    wanted = set(pids)
    total = 0
    found = False
    with contextlib.suppress(Exception):
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid in wanted and process.usedGpuMemory is not None:
                    total += int(process.usedGpuMemory)
                    found = True
    return total if found else None


def board_power_reader(device_index: int) -> Callable[[], float] | None:
    """A function reading the board power of GPU ``device_index`` in watts (NVML index: the torch index
    where CUDA_VISIBLE_DEVICES does not reorder cards), or None where NVML cannot read it."""
    nvml = _init()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
        nvml.nvmlDeviceGetPowerUsage(handle)
    except Exception:  # a card or driver without power readings
        return None
    return lambda: float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0  # reported in milliwatts
