"""Are two sets of records comparable? The one answer gates, history, compare and the notebooks use.

Every ``env_`` column of a record (docs/metrics.md) is one kind of fact:

- **run**: the machine and software stack the harness ran on (CPU, GPU, driver, CUDA, torch, qwen-tts, the
  fixtures): one value per segment of a run, equal for every pipeline of it;
- **code**: the code under test (the suite's commit, any ``*version``, ``*commit`` or ``*dirty`` column, a
  candidate's own version from its hello): one value per segment; it may change between runs, that is what
  a history or a baseline gate measures;
- **pipeline**: everything else, what one pipeline declared (model, weights, device, dtype and its own
  name for it, settings, the candidate's identity): one value per pipeline, different between pipelines by
  design;
- **request**: facts that vary per request by design and are never compared as such: the load average, the
  host and Ray node a request ran on (a multi-node run), where the checkpoint sits on disk (its weights hash
  is compared);
- **cell**: the prompt layout (``env_non_streaming_mode``), which the bench asks per clone mode
  (``--non-streaming-mode xvector``): part of the cell a request ran, compared with the cells.

A **segment** is the records of one pipeline measured without a change of machine or code: a run resumed on
another machine or commit is two, and is not comparable as one run. Segments are checked per pipeline, so two
pipelines' own facts (``float32`` and ``F32``) never read as a second segment.

Two scopes: the same pipeline in two runs (``Scope.RUNS``: gates against a baseline, history series, compare
--baseline-run) must agree on run, pipeline and work facts and ran the same cells, the code may differ; two
pipelines of one run (``Scope.PIPELINES``: compare against the run's reference) must agree on run facts and
the harness's code (RUN_FACTS, CODE_FACTS), and on the source weights where the candidate declares them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


class Fact(str, enum.Enum):
    """What kind of fact an env_ column records (module docstring)."""

    RUN = "run"
    CODE = "code"
    PIPELINE = "pipeline"
    REQUEST = "request"
    CELL = "cell"


class Scope(str, enum.Enum):
    """What two sets of records are, and so which facts must agree."""

    RUNS = "runs"  # one pipeline in two runs: the code under test may differ
    PIPELINES = "pipelines"  # two pipelines of one run: each its own settings, one machine and commit


RUN_FACTS = frozenset(
    {
        "env_platform",
        "env_python",
        "env_cpu",
        "env_gpu_name",
        "env_gpu_count",
        "env_cuda",
        "env_cuda_driver",
        "env_torch",
        "env_torchaudio",
        "env_transformers",
        "env_qwen_tts",
        "env_fixtures_hash",
    }
)
CODE_FACTS = frozenset({"env_git_commit", "env_git_dirty", "env_qtts_eval"})
CODE_FACT_PATTERN = re.compile(r"env_(\w+_)?(version|commit|dirty)")
# CI runners of one machine type have many host names, a Ray run many nodes; each node its load.
REQUEST_FACTS = frozenset({"env_loadavg_1m", "env_hostname", "env_ray_node_id", "env_model_path"})
CELL_FACTS = frozenset({"env_non_streaming_mode"})
# Record columns that define the work a request did, or the model that scored it (speaker similarity and WER
# have each model's own scale): compared as sets between runs.
WORK_COLUMNS = ("sampling", "speaker_embedder", "asr_recognizer")
CELL_COLUMNS = ("fixture_id", "voice_id", "mode", "frame_budget")  # the matrix cells run, with their budget
SOURCE_WEIGHTS = (
    "env_source_weights_hash"  # a candidate handed the suite's checkpoint: that checkpoint's hash
)
WEIGHTS = "env_weights_hash"


def fact(column: str) -> Fact:
    """The kind of fact an env_ column records."""
    if column in REQUEST_FACTS:
        return Fact.REQUEST
    if column in CELL_FACTS:
        return Fact.CELL
    if column in CODE_FACTS or CODE_FACT_PATTERN.fullmatch(column):
        return Fact.CODE
    if column in RUN_FACTS:
        return Fact.RUN
    return Fact.PIPELINE


@dataclass(frozen=True)
class Difference:
    """The first reason two sets of records are not comparable."""

    column: str  # the column that differs (or "requests" for the cells run)
    message: str  # one line naming the column and both values

    def __str__(self) -> str:
        return self.message


def _plain(value: Any) -> Any:
    """A value as comparable plain data: numpy scalars unwrapped, NaN as None, lists and dicts as JSON, whole
    floats as ints (a column with a missing value turns its ints into floats)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | dict | tuple | np.ndarray):
        return json.dumps(
            value.tolist() if isinstance(value, np.ndarray) else value, sort_keys=True, default=str
        )
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _distinct(frame: pd.DataFrame, column: str) -> list[Any]:
    if column not in frame:
        return []
    return list(dict.fromkeys(v for v in map(_plain, frame[column]) if v is not None))


def _run_ids(frame: pd.DataFrame) -> str:
    return ", ".join(str(value) for value in frame["run_id"].unique()) if "run_id" in frame else "?"


def _env_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith("env_")]


def _pipelines(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "pipeline" not in frame:
        return [("?", frame)]
    return [(str(name), group) for name, group in frame.groupby("pipeline", sort=True)]


def segment_difference(frame: pd.DataFrame) -> Difference | None:
    """Why some pipeline's records in ``frame`` are not one segment (resumed on another machine or commit),
    or None. Checked per pipeline; request and cell facts vary by design."""
    for pipeline, records in _pipelines(frame):
        for column in _env_columns(records):
            if fact(column) in (Fact.REQUEST, Fact.CELL):
                continue
            values = _distinct(records, column)
            if len(values) > 1:
                shown = ", ".join(map(repr, values))
                return Difference(
                    column,
                    f"run {_run_ids(records)} ({pipeline}) mixes segments with different {column} ({shown}): "
                    "a run resumed on another machine or commit cannot be compared as one run",
                )
    return None


def _first(frame: pd.DataFrame, column: str) -> Any:
    values = _distinct(frame, column)
    return values[0] if values else None


def _cells(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    columns = [column for column in (*CELL_COLUMNS, *sorted(CELL_FACTS)) if column in frame]
    rows = {
        tuple(_plain(value) for value in row) for row in frame[columns].itertuples(index=False, name=None)
    }
    return sorted(rows, key=str)


def identity(frame: pd.DataFrame, may_differ: Iterable[str] = ()) -> dict[str, Any]:
    """What must agree between two runs of one pipeline (Scope.RUNS), by column: run and pipeline facts (the
    first value), the work columns (their sets) and the cells run (under "requests"). The code under test,
    request facts and ``may_differ`` are left out. History's series key is a digest of it."""
    allowed = frozenset(may_differ)
    facts: dict[str, Any] = {
        column: _first(frame, column)
        for column in sorted(_env_columns(frame))
        if column not in allowed and fact(column) in (Fact.RUN, Fact.PIPELINE)
    }
    work = {column: sorted(map(str, _distinct(frame, column))) for column in WORK_COLUMNS}
    return {**facts, **work, "requests": _cells(frame)}


def _shown(value: Any) -> str:
    return (
        repr(value) if not isinstance(value, list) else repr(value[:3]) + (" ..." if len(value) > 3 else "")
    )


def difference(
    first: pd.DataFrame,
    second: pd.DataFrame,
    scope: Scope = Scope.RUNS,
    may_differ: Iterable[str] = (),
    names: tuple[str, str] = ("baseline", "current"),
) -> Difference | None:
    """The first reason ``first`` and ``second`` are not comparable in ``scope``, or None when they are.

    Both sides must be one segment per pipeline. Scope.RUNS (one pipeline's records of two runs): equal
    ``identity`` (run and pipeline facts, work columns, the cells run). Scope.PIPELINES (two pipelines of one
    run): equal run and code facts, and a candidate's source weights equal to the other side's weights.
    ``may_differ`` names env_ columns allowed to differ on purpose (a gates file's setting, ``--may-differ``).
    """
    for frame in (first, second):
        problem = segment_difference(frame)
        if problem:
            return problem
    if first.empty or second.empty:
        empty = names[0] if first.empty else names[1]
        return Difference("records", f"the {empty} side has no records")
    allowed = frozenset(may_differ)
    if scope is Scope.RUNS:
        before, after = identity(first, allowed), identity(second, allowed)
        for column in [*before, *(key for key in after if key not in before)]:
            if column == "requests" and before[column] != after[column]:
                only_first = sorted(set(before[column]) - set(after[column]), key=str)
                only_second = sorted(set(after[column]) - set(before[column]), key=str)
                cells = ", ".join(
                    column for column in (*CELL_COLUMNS, *sorted(CELL_FACTS)) if column in first
                )
                return Difference(
                    column,
                    f"different requests ({cells}): only in {names[0]} {_shown(only_first)}, only in "
                    f"{names[1]} {_shown(only_second)}",
                )
            if before.get(column) != after.get(column):
                what = column[4:] if column.startswith("env_") else column
                return Difference(
                    column,
                    f"different {what}: {names[0]} {_shown(before.get(column))}, {names[1]} "
                    f"{_shown(after.get(column))} ({column})",
                )
        return None
    # The harness's own facts only: a candidate's own code columns (its hello's version) are its own.
    for column in sorted(RUN_FACTS | CODE_FACTS):
        if column in allowed:
            continue
        before, after = _first(first, column), _first(second, column)
        if before != after:
            return Difference(
                column,
                f"measured apart: different {column[4:]}: {names[0]} {before!r}, {names[1]} {after!r} "
                f"({column})",
            )
    return _weights_difference(first, second, names)


def _weights_difference(
    first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str]
) -> Difference | None:
    """Two pipelines started from different weights, where one declares the checkpoint it was handed."""

    def source(frame: pd.DataFrame) -> Any:
        return _first(frame, SOURCE_WEIGHTS) or _first(frame, WEIGHTS)

    if _first(first, SOURCE_WEIGHTS) is None and _first(second, SOURCE_WEIGHTS) is None:
        return None  # a candidate's own weights_hash hashes what it converted: not comparable with a source
    before, after = source(first), source(second)
    if before is not None and after is not None and before != after:
        return Difference(
            SOURCE_WEIGHTS,
            f"different source weights: {names[0]} {before!r}, {names[1]} {after!r} (env_source_weights_hash "
            "against env_weights_hash)",
        )
    return None


def series_key(frame: pd.DataFrame, may_differ: Iterable[str] = ()) -> str:
    """History's series: one pipeline's runs whose ``identity`` agrees (steps are code changes, never a new
    machine, model, setting or candidate). The pipeline's name, then a digest of its identity."""
    pipeline = _first(frame, "pipeline")
    digest = hashlib.sha256(json.dumps(identity(frame, may_differ), sort_keys=True, default=str).encode())
    return f"{pipeline}|{digest.hexdigest()[:12]}"


def machine(frame: pd.DataFrame) -> str:
    """The machine a set of records ran on, for tables: the GPU's name, else the CPU's, else "?"."""
    return str(_first(frame, "env_gpu_name") or _first(frame, "env_cpu") or "?")
