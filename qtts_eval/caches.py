"""What the suite's cache holds, whether the current code would still use each entry, and pruning.

The cache (checkpoints.cache_root(), default ~/.cache/qtts-eval) has four areas, each keyed by content:
synthetic checkpoints (checkpoints/), GGUF exports (exports/), fault-edited checkpoint copies for parity
(parity-faults/) and candidate environments (candidates/). An entry is *current* when the running code would
use it as it is, *stale* when it never will again (built by another builder, exporter or tokenizer, or for a
source that is gone), *unchecked* when telling would cost more than listing should (an export of real
weights: rehashing gigabytes). A staging directory (a build in progress, see checkpoints.staging_dir) is
*orphaned* when the process its name records is gone. `prune` removes stale and orphaned entries only.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qtts_eval import checkpoints
from qtts_eval.candidates.export import GgufType, export_key
from qtts_eval.candidates.pipeline import EXPORT_MARKER
from qtts_eval.candidates.registry import Support, candidate
from qtts_eval.checkpoints.cache import cache_key
from qtts_eval.errors import PipelineError
from qtts_eval.parity.capture import fault_copy_dir
from qtts_eval.parity.faults import FAULTS
from qtts_eval.pipelines.installed import MANIFEST

AREAS = ("checkpoints", "exports", "parity-faults", "candidates")
# An environment without its manifest is an install in progress for this long, then an abandoned one.
INSTALL_GRACE_S = 3600.0
_CHECKPOINT_NAME = re.compile(r"(?P<preset>.+)-seed(?P<seed>\d+)-[0-9a-f]{16}")


class State(str, enum.Enum):
    CURRENT = "current"  # the current code uses it as it is
    STALE = "stale"  # the current code never will
    UNCHECKED = "unchecked"  # not decided cheaply; kept
    BUILDING = "building"  # staging directory of a live process
    ORPHANED = "orphaned"  # staging directory whose process is gone

    @property
    def prunable(self) -> bool:
        return self in (State.STALE, State.ORPHANED)


@dataclass(frozen=True)
class Entry:
    """One directory of the cache."""

    area: str  # one of AREAS, or "other" for something this code does not write
    path: Path
    size_bytes: int  # on disk, links not followed
    modified: float  # POSIX time the directory was last written
    state: State
    reason: str  # why, in words; for a stale entry, the key the current code would use when there is one


def tree_size(path: Path) -> int:
    """Bytes under `path`, counting links themselves, never what they point at (a venv links the suite)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue  # removed while walking
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _staging_state(path: Path) -> tuple[State, str] | None:
    pid = checkpoints.staging_owner(path)
    if pid is None:
        return None
    if _alive(pid):
        return State.BUILDING, f"being written by process {pid}"
    return State.ORPHANED, f"left by process {pid}, which is gone (killed mid-build)"


def _checkpoint_state(path: Path) -> tuple[State, str]:
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    if match is None:
        return State.STALE, "not named by a checkpoint key (an interrupted build of an older version?)"
    preset, seed = match["preset"], int(match["seed"])
    if preset not in checkpoints.PRESETS:
        return State.STALE, f"preset {preset!r} no longer exists"
    key = cache_key(preset, seed)
    if key != path.name:
        return State.STALE, f"built by another builder or tokenizer; current key {key}"
    if not (path / checkpoints.MARKER_FILE).is_file():
        return State.STALE, f"no {checkpoints.MARKER_FILE}: the build did not finish"
    return State.CURRENT, f"key of {preset}@seed={seed}"


def _export_state(path: Path) -> tuple[State, str]:
    marker = path / EXPORT_MARKER
    if not marker.is_file():
        return State.STALE, f"no {EXPORT_MARKER}: the export did not finish"
    key, _, storage = path.name.rpartition("-")
    source = Path(json.loads(marker.read_text())["source"])
    if not source.is_dir():
        return State.STALE, f"its source checkpoint {source} is gone"
    built = source / checkpoints.MARKER_FILE
    if not built.is_file():
        return State.UNCHECKED, f"export of real weights at {source} (the key needs their hash: not computed)"
    current = export_key(source, json.loads(built.read_text())["weights_hash"])
    if storage not in {t.value for t in GgufType}:
        return State.STALE, f"storage {storage!r} is no longer written"
    if key != current:
        return State.STALE, f"written by another exporter or from other inputs; current key {current}"
    return State.CURRENT, f"{storage} export of {source.name}"


def _fault_copy_state(path: Path, sources: list[Path]) -> tuple[State, str]:
    fault = path.name.rpartition("-")[0]
    if fault not in FAULTS or not FAULTS[fault].edits_checkpoint:
        return State.STALE, f"fault {fault!r} edits no checkpoint in this code"
    for source in sources:
        if fault_copy_dir(source, fault).name == path.name:
            state = _checkpoint_state(source)[0]
            suffix = " (a stale checkpoint)" if state.prunable else ""
            return state, f"{fault} copy of {source.name}{suffix}"
    return State.UNCHECKED, f"{fault} copy of a checkpoint outside the cache (real weights?)"


def _environment_state(path: Path) -> tuple[State, str]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        if time.time() - path.stat().st_mtime < INSTALL_GRACE_S:
            return State.BUILDING, f"no {MANIFEST} yet: an install may be running"
        return State.STALE, f"no {MANIFEST}: the install did not finish"
    try:
        spec = candidate(path.name)
    except PipelineError:
        return State.STALE, f"{path.name!r} is no candidate of this code"
    if spec.support is not Support.ADAPTER:
        return State.STALE, f"{path.name} is {spec.support.value}, not installable"
    wanted = spec.environment_requirements
    if json.loads(manifest.read_text()).get("requirements") != wanted:
        return State.STALE, f"installed for other requirements; current: {' '.join(wanted)}"
    return State.CURRENT, f"environment of {path.name}"


def _children(directory: Path) -> Iterator[Path]:
    yield from sorted(directory.iterdir()) if directory.is_dir() else ()


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry of the cache at `root` (default: the configured cache), area by area."""
    root = checkpoints.cache_root() if root is None else root
    sources = [path for path in _children(root / "checkpoints") if checkpoints.staging_owner(path) is None]
    found: list[Entry] = []
    for path in _children(root):
        if path.name not in AREAS:
            found.append(_entry("other", path, (State.UNCHECKED, "not written by this code; kept")))
            continue
        for child in _children(path):
            state = _staging_state(child)
            if state is None:
                if path.name == "checkpoints":
                    state = _checkpoint_state(child)
                elif path.name == "exports":
                    state = _export_state(child)
                elif path.name == "parity-faults":
                    state = _fault_copy_state(child, sources)
                else:
                    state = _environment_state(child)
            found.append(_entry(path.name, child, state))
    return found


def _entry(area: str, path: Path, state: tuple[State, str]) -> Entry:
    return Entry(area, path, tree_size(path), path.lstat().st_mtime, *state)


def prune(found: list[Entry], *, older_than_s: float | None = None, dry_run: bool = False) -> list[Entry]:
    """Remove the stale and orphaned entries (only those last written more than `older_than_s` ago, when
    given); returns what was removed, or would be with `dry_run`."""
    now = time.time()
    chosen = [
        entry
        for entry in found
        if entry.state.prunable and (older_than_s is None or now - entry.modified > older_than_s)
    ]
    if not dry_run:
        for entry in chosen:
            if entry.path.is_dir() and not entry.path.is_symlink():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                entry.path.unlink(missing_ok=True)
    return chosen


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "12h" or "7d"."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"duration {text!r} is not a number followed by s, m, h or d (e.g. 7d)")
    return float(match["n"]) * _UNIT_S[match["unit"]]


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
