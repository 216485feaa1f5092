"""Results history: every run under a results directory, in time order, with step detection.

A *series* is the runs of one pipeline that are comparable as gates compare runs (qtts_eval.comparability:
same machine, software stack, model and weights, settings, candidate identity, work and cells; only the code
under test changes): its key is ``comparability.series_key``. Step detection runs within a series, never
across one, so a new machine, setting or candidate is not mistaken for a code change. ``may_differ`` names
env_ columns that may change within a series on purpose, as a gates file's setting does.

**Step detection.** For a metric, every boundary between consecutive runs of a series is a candidate:
the per-request values of up to ``window`` runs before it are pooled, as are those of up to ``window`` runs
from it on. A boundary is a step when the medians of the two windows differ by at least ``min_change``
(relative) AND a two-sided Mann-Whitney U test on the pooled values gives p < ``alpha``. One real step also
lights up its neighbouring boundaries (their windows straddle it, partly), so of each run of adjacent
candidate boundaries with the same sign only the one with the smallest p-value (then the largest change) is
kept: the run where the metric changed. Two real steps in adjacent runs in the same direction merge into one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval import comparability
from qtts_eval.errors import ResultsError
from qtts_eval.metrics.stats import MIN_PER_SIDE, two_sample_p_value
from qtts_eval.results import RUN_FILE, RunStore, records_frame

# Columns whose medians the history lists (those present in the records).
KEY_METRICS = ("first_byte_s", "rtf", "wall_s", "peak_mem_bytes", "speaker_sim")


@dataclass(frozen=True)
class StepOptions:
    """How steps are detected (see the module docstring)."""

    window: int = 3  # runs pooled on each side of a candidate boundary
    min_change: float = 0.10  # relative change of the window medians a step must reach (0.10 = 10 %)
    alpha: float = 0.01  # two-sided Mann-Whitney significance a step must reach


@dataclass(frozen=True)
class Step:
    """A change of a metric between two consecutive runs of a series."""

    index: int  # position in the series of the first run after the step
    before: float  # median of the pooled window before the boundary
    after: float  # median of the pooled window from the boundary on
    change: float  # (after - before) / |before|
    p_value: float  # two-sided Mann-Whitney p of the two windows


@dataclass(frozen=True)
class History:
    """Runs and their records, oldest first."""

    runs: pd.DataFrame  # one row per run and pipeline: identity, environment, medians of KEY_METRICS
    records: pd.DataFrame  # every ok record of those runs, with a "series" column


def detect_steps(series: Sequence[npt.ArrayLike], options: StepOptions = StepOptions()) -> list[Step]:
    """Steps in a sequence of runs, each given as its per-request values, oldest first."""
    if options.window < 1:
        raise ResultsError(f"step window must be at least 1 run, got {options.window}")
    runs = [np.asarray(values, dtype=np.float64) for values in series]
    runs = [values[np.isfinite(values)] for values in runs]
    candidates: list[Step] = []
    for k in range(1, len(runs)):
        before = np.concatenate(runs[max(0, k - options.window) : k])
        after = np.concatenate(runs[k : k + options.window])
        if min(before.size, after.size) < MIN_PER_SIDE:
            continue
        centre_before, centre_after = float(np.median(before)), float(np.median(after))
        if centre_before == 0:
            continue  # a relative change from 0 is undefined
        change = (centre_after - centre_before) / abs(centre_before)
        p_value = two_sample_p_value(after, before)
        if p_value is not None and abs(change) >= options.min_change and p_value < options.alpha:
            candidates.append(Step(k, centre_before, centre_after, change, p_value))
    clusters: list[list[Step]] = []
    for step in candidates:
        previous = clusters[-1][-1] if clusters else None
        if previous and step.index == previous.index + 1 and (step.change > 0) == (previous.change > 0):
            clusters[-1].append(step)  # the same step seen through a window that straddles it
        else:
            clusters.append([step])
    return [min(cluster, key=lambda step: (step.p_value, -abs(step.change))) for cluster in clusters]


def _run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ResultsError(f"{root}: no such results directory")
    return sorted(path.parent for path in root.rglob(RUN_FILE))


def _first(frame: pd.DataFrame, column: str) -> object:
    return frame[column].dropna().iloc[0] if column in frame and frame[column].notna().any() else None


def load_history(root: Path, may_differ: Iterable[str] = ()) -> History:
    """Every run directory under ``root`` (recursively), one row per run and pipeline, oldest first; runs
    whose ``may_differ`` env_ columns differ stay in one series."""
    allowed = frozenset(may_differ)
    rows: list[dict[str, object]] = []
    frames: list[pd.DataFrame] = []
    for directory in _run_dirs(root):
        store = RunStore(directory)
        header = store.header()
        records = records_frame(store.iter_records())
        if records.empty:
            continue
        for pipeline, group in records.groupby("pipeline"):
            ok = group[group["status"] == "ok"]
            series = comparability.series_key(group, allowed)
            commit = _first(group, "env_git_commit")
            row: dict[str, object] = {
                "run_id": header.get("run_id", directory.name),
                "created_at": header.get("created_at", ""),
                "commit": str(commit)[:10] if commit else None,
                "dirty": _first(group, "env_git_dirty"),
                "machine": comparability.machine(group),
                "model": _first(group, "env_model_ref"),
                "synthetic": bool(_first(group, "env_synthetic")),
                "dtype": _first(group, "env_dtype"),
                "pipeline": pipeline,
                "n": len(ok),
                "errors": len(group) - len(ok),
                # Resumed on another machine or commit: its records are not one segment (gates refuse it).
                "mixed": comparability.segment_difference(group) is not None,
                "series": series,
                "path": str(directory),
            }
            for metric in KEY_METRICS:
                if metric in ok and ok[metric].notna().any():
                    row[metric] = float(ok[metric].astype(np.float64).median())
            rows.append(row)
            frames.append(ok.assign(series=series))
    if not rows:
        raise ResultsError(f"{root}: no runs with records (a run directory holds {RUN_FILE})")
    runs = pd.DataFrame(rows).sort_values(["created_at", "run_id"], kind="stable").reset_index(drop=True)
    return History(runs=runs, records=pd.concat(frames, ignore_index=True))


def history_steps(history: History, metric: str, options: StepOptions = StepOptions()) -> pd.DataFrame:
    """Steps of ``metric`` in every series: run_id where it changed, before/after medians, change, p-value."""
    rows = []
    if metric not in history.records:
        return pd.DataFrame(
            columns=["run_id", "pipeline", "machine", "metric", "before", "after", "change", "p_value"]
        )
    for _, runs in history.runs.groupby("series", sort=False):
        values = [
            history.records.loc[
                (history.records["run_id"] == row.run_id) & (history.records["pipeline"] == row.pipeline),
                metric,
            ].dropna()
            for row in runs.itertuples()
        ]
        for step in detect_steps(values, options):
            run = runs.iloc[step.index]
            rows.append(
                {
                    "run_id": run["run_id"],
                    "pipeline": run["pipeline"],
                    "machine": run["machine"],
                    "metric": metric,
                    "before": step.before,
                    "after": step.after,
                    "change": step.change,
                    "p_value": step.p_value,
                }
            )
    return pd.DataFrame(
        rows, columns=["run_id", "pipeline", "machine", "metric", "before", "after", "change", "p_value"]
    )
