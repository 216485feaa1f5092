"""Peak memory of one request: torch CUDA peak allocated/reserved on GPU, process peak RSS on CPU."""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class PeakMemory:
    peak_bytes: int  # the peak for the request, of the kind below
    kind: str  # "cuda_allocated" or "process_rss"
    reserved_bytes: int | None  # CUDA only: torch peak reserved by the caching allocator
    after_bytes: int  # still held when the request ended: torch allocated (CUDA) or current RSS (CPU)


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


class MemoryProbe:
    """Brackets one request. On CPU it resets the kernel's RSS high-water mark (Linux clear_refs "5")
    so the peak belongs to this request; where that is not possible it falls back to the process-lifetime
    peak (ru_maxrss), which can only overstate."""

    def __init__(self, device: str) -> None:
        self.device = device  # every CUDA call names it: the current device may be another card
        self.cuda = device.startswith("cuda")

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")

    def stop(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return PeakMemory(
                torch.cuda.max_memory_allocated(self.device),
                "cuda_allocated",
                torch.cuda.max_memory_reserved(self.device),
                torch.cuda.memory_allocated(self.device),
            )
        peak = _status_bytes("VmHWM")
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return PeakMemory(peak, "process_rss", None, _status_bytes("VmRSS") or peak)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc's children lists; empty once the process is gone."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        tasks = Path(f"/proc/{current}/task")
        if not tasks.is_dir():
            continue
        found.append(current)
        for task in tasks.iterdir():
            with contextlib.suppress(OSError, ValueError):
                pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def reset_tree_peak_rss(pid: int) -> None:
    """Reset the RSS high-water mark of a local process and its children (ours to reset: we started it)."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


def tree_peak_rss_bytes(pid: int) -> int | None:
    """Peak RSS since the last reset of a local process plus its children: the sum of each one's peak, so
    exact for one process and an upper bound for several (their peaks need not coincide)."""
    total = 0
    members = process_tree(pid)
    for member in members:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024  # reported in kB
        except OSError:
            continue
    return total if members else None
