"""`qtts-eval cache`: every entry listed with its size and state; prune removes a planted stale export and a
dead process's staging directory and keeps what the current code uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtts_eval import caches, checkpoints
from qtts_eval.caches import State
from qtts_eval.candidates import export
from qtts_eval.candidates.export import GgufType
from qtts_eval.candidates.pipeline import exported_weights
from qtts_eval.cli import main
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.faults import FAULTS
from qtts_eval.pipelines.base import PipelineConfig


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own holding the tiny checkpoint (copied from the session's: same content, same key)."""
    tiny = checkpoints.resolve("tiny").path
    root = tmp_path / "cache"
    shutil.copytree(tiny, root / "checkpoints" / tiny.name)
    monkeypatch.setenv("QTTS_EVAL_CACHE", str(root))
    return root


def test_prune_removes_stale_and_orphaned_entries_and_keeps_current_ones(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = checkpoints.resolve("tiny")
    assert model.path.parent == cache / "checkpoints"  # the copy is what the current code resolves
    talker, _ = exported_weights(model, GgufType.F32)
    faulted = HookedReference(PipelineConfig(model="tiny"), FAULTS["rope-theta"]())
    fault_copy = faulted.checkpoint_dir(model.path)
    # An exporter fix: the code version changes, so the export above is now stale and a new one is written.
    monkeypatch.setattr(export, "EXPORTER_VERSION", "changed-exporter")
    stale_export = talker.parent
    current_export = exported_weights(model, GgufType.F32)[0].parent
    assert current_export != stale_export
    orphan = cache / "checkpoints" / f"{model.path.name}.tmp{_dead_pid()}-x1"  # a `kill -9` mid-build
    (orphan / "speech_tokenizer").mkdir(parents=True)
    (orphan / "speech_tokenizer" / "model.safetensors").write_bytes(b"\0" * 4096)
    building = cache / "exports" / f"{current_export.name}.tmp{os.getpid()}-x2"  # this live process's
    building.mkdir()
    old_build = cache / "checkpoints" / "tiny-seed0-0123456789abcdef"  # another builder version's key
    old_build.mkdir()

    found = {entry.path: entry for entry in caches.entries()}
    states = {path: entry.state for path, entry in found.items()}
    assert states == {
        model.path: State.CURRENT,
        current_export: State.CURRENT,
        fault_copy: State.CURRENT,
        stale_export: State.STALE,
        old_build: State.STALE,
        orphan: State.ORPHANED,
        building: State.BUILDING,
    }
    assert f"current key {current_export.name[:16]}" in found[stale_export].reason
    assert found[orphan].size_bytes == 4096 and found[model.path].size_bytes > 1_000_000

    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"exports/{stale_export.name}" in listing and "3 prunable" in listing

    assert main(["cache", "prune", "--dry-run"]) == 0
    assert "3 entries" in capsys.readouterr().out and stale_export.is_dir() and orphan.is_dir()
    assert main(["cache", "prune", "--older-than", "1d"]) == 0  # everything here is minutes old
    assert "0 entries" in capsys.readouterr().out and stale_export.is_dir()

    assert main(["cache", "prune"]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert not stale_export.exists() and not orphan.exists() and not old_build.exists()
    assert {e.path for e in caches.entries()} == {model.path, current_export, fault_copy, building}
    assert exported_weights(model, GgufType.F32)[0].parent == current_export  # still served, not redone
    main(["doctor"])
    assert f"cache {cache}: " in capsys.readouterr().out.splitlines()[-1]


def test_export_marker_names_files_inside_its_own_directory(cache: Path) -> None:
    # Exports are staged and renamed into place, so the marker must not record the staging path.
    talker, codec = exported_weights(checkpoints.resolve("tiny"), GgufType.F32)
    marker = json.loads((talker.parent / "export.json").read_text())
    assert talker.is_file() and codec.is_file() and marker["talker"] == talker.name
    assert [p.name for p in (cache / "exports").iterdir()] == [talker.parent.name]  # no staging left behind


def test_duration_parsing() -> None:
    assert caches.parse_duration("7d") == 7 * 86400 and caches.parse_duration("90s") == 90
    with pytest.raises(ValueError, match="number followed by s, m, h or d"):
        caches.parse_duration("7 days")
