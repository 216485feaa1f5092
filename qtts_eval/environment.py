"""Environment fingerprint stored with every record: what ran, on what, from which commit."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit() -> tuple[str | None, bool | None]:
    """(commit id, dirty flag) of the qtts-eval checkout, or (None, None) outside a git work tree."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


def _gpu() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_count": 0, "cuda": None, "cuda_driver": None}
    driver = None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        driver = done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "gpu_name": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cuda_driver": driver,
    }


@functools.cache
def device_name(device: str) -> str:
    """The card behind a torch device string ("cuda:1" names the second card, not the current one)."""
    if not device.startswith("cuda"):
        return _cpu_model() or "cpu"
    import torch

    return str(torch.cuda.get_device_name(torch.device(device)))


def fingerprint() -> dict[str, Any]:
    """Machine and software facts; the pipeline adds its own (model, weights, dtype, device)."""
    commit, dirty = git_commit()
    return {
        # Other work on the machine when the run started: on a 2-core CPU a second torch process made tiny
        # requests up to 10x slower (docs/benchmarks.md), so a busy machine must show in the records.
        "loadavg_1m": os.getloadavg()[0],
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        # qtts_eval/__init__.py sets MKL_CBWR=AUTO unless the user chose a value: the mode numbers ran in.
        # Its speed cost was not measurable (docs/benchmarks.md).
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        **_gpu(),
        "torch": package_version("torch"),
        "torchaudio": package_version("torchaudio"),
        "transformers": package_version("transformers"),
        "qwen_tts": package_version("qwen-tts"),
        "qtts_eval": package_version("qtts-eval"),
        "git_commit": commit,
        "git_dirty": dirty,
    }
