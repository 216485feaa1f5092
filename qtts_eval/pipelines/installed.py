"""Installed candidate environments, as the registry sees them: the manifests `qtts-eval candidates install`
writes (qtts_eval/candidates/envs.py, crates.py), read without importing anything of the candidates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qtts_eval.checkpoints.cache import cache_root

MANIFEST = "candidate.json"  # written last: its presence means the environment is complete


def candidates_root() -> Path:
    return cache_root() / "candidates"


@dataclass(frozen=True)
class Installed:
    """What `candidates install` recorded about an environment."""

    name: str  # candidate name
    python: str  # the environment's interpreter ("" for a cargo-built candidate)
    pipeline: str  # "module:Class" of the suite-side pipeline that drives it
    requirements: list[str]  # what was asked for
    versions: dict[str, str]  # what pip installed: distribution -> version
    installed_at: str  # UTC, ISO 8601
    binary: str = ""  # a cargo-built candidate's worker binary (qtts_eval.candidates.crates)
    sources: str = ""  # the hash of the adapter sources that binary was built from


def installed() -> dict[str, Installed]:
    """Every complete candidate environment, by name (read from the manifests; nothing is imported)."""
    root = candidates_root()
    found: dict[str, Installed] = {}
    if not root.is_dir():
        return found
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            found[manifest.parent.name] = Installed(**json.loads(manifest.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a half-written or foreign file: `candidates doctor` reports it
    return found
