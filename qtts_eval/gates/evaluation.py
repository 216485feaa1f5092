"""Evaluating gates over results runs, for CI (the gates themselves: qtts_eval.gates.spec, docs/gates.md).

Metric and error gates compare like with like: each pipeline's records are split into groups (per fixture and
mode by default) and every group gets its own verdict, so a slowdown of one fixture cannot hide among the
others. Against a baseline, requests are paired by their key (fixture, voice, mode, repeat). A group fails
only when its relative change passes the threshold AND a paired one-sided test agrees that the current run is
worse (as in asv's ``compare``; qtts_eval.metrics.stats): the Wilcoxon signed-rank test for medians and means,
a paired bootstrap of the statistic's difference for percentiles, ``min`` and ``max`` (a test of the bulk
says nothing about a tail). With several baseline runs the threshold widens to the run-to-run spread seen
between them. Runs that are not comparable (qtts_eval.comparability: another machine, stack, model, setting,
candidate or work, or a run that mixes segments measured on different machines or commits) are refused;
quality metrics on synthetic weights are never gated.
"""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval import comparability
from qtts_eval.errors import GateError, QttsEvalError
from qtts_eval.gates.spec import Better, ErrorGate, Gate, GateSpec, GoodputGate, MetricGate, ParityGate
from qtts_eval.metrics.stats import MIN_PAIRS, paired_p_value, statistic_value
from qtts_eval.results import load_run

# A request's identity across runs of the same matrix: the key current and baseline values are paired on.
PAIR_KEY = ("fixture_id", "voice_id", "mode", "repeat")


class Outcome(str, enum.Enum):
    """How a gate (or one of its groups) ended; listed from best to worst."""

    PASS = "pass"  # within its limit, or the change is noise
    NOT_GATED = "not_gated"  # by design never gated: a quality metric on synthetic weights
    REFUSED = "refused"  # cannot be evaluated as asked: runs not comparable, no baseline, too few requests
    FAIL = "fail"  # a regression: over the limit (and, against a baseline, significant)


_SEVERITY = {outcome: rank for rank, outcome in enumerate(Outcome)}


@dataclass(frozen=True)
class GateInputs:
    """The runs a gate looks at."""

    current: pd.DataFrame  # records of the run under test (load_run)
    baselines: tuple[pd.DataFrame, ...] = ()  # records of one or more baseline runs (several: calibrate)
    parity_report: Path | None = None  # overrides every parity gate's report path


@dataclass(frozen=True)
class GroupResult:
    """One group's outcome (a pipeline and, by default, one fixture and mode), with the numbers behind it."""

    group: str  # the group's name: pipeline and grouping values, e.g. "reference fixture_id=en_short"
    outcome: Outcome  # pass, fail, refused, not gated
    message: str  # one line naming statistic, baseline, current value and change, or the reason
    baseline: float | None = None  # baseline statistic over the paired requests
    current: float | None = None  # current statistic over the paired requests (or all, for absolute)
    change: float | None = None  # relative change, (current - baseline) / |baseline|
    threshold: float | None = None  # relative threshold used (after calibration)
    p_value: float | None = None  # one-sided p of the paired test (current worse than baseline)
    n: int | None = None  # requests (absolute, error rate) or pairs (baseline) the verdict rests on


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome: the worst of its groups, with every group's result."""

    gate: str  # the gate's label
    outcome: Outcome  # the worst group outcome (fail > refused > not gated > pass)
    message: str  # a run-level summary line, or the reason when the gate could not be split into groups
    groups: tuple[GroupResult, ...] = ()  # per-group verdicts, in group order
    details: dict[str, Any] = field(default_factory=dict)  # test used, calibration, grouping

    def report(self) -> str:
        """The summary line, then one indented line per group."""
        return "\n".join(
            [self.message, *(f"  {g.outcome.value.upper():9s} {g.message}" for g in self.groups)]
        )


def load_inputs(
    current: Path, baselines: Sequence[Path] = (), parity_report: Path | None = None
) -> GateInputs:
    """Load the current run and the baseline runs (results directories)."""
    try:
        return GateInputs(
            current=load_run(current),
            baselines=tuple(load_run(path) for path in baselines),
            parity_report=parity_report,
        )
    except QttsEvalError as exc:
        raise GateError(f"cannot load a run: {exc}") from None


@functools.cache
def quality_metric_names() -> frozenset[str]:
    """The columns qtts_eval.metrics.quality writes."""
    from qtts_eval.metrics.quality import QUALITY_COLUMNS

    return frozenset(QUALITY_COLUMNS)


def is_synthetic(frame: pd.DataFrame) -> bool:
    """True when any record ran on synthetic weights or says its quality columns are no verdict."""
    synthetic = "env_synthetic" in frame and bool(frame["env_synthetic"].fillna(False).astype(bool).any())
    invalid = "quality_verdict_valid" in frame and not bool(frame["quality_verdict_valid"].fillna(True).all())
    return synthetic or invalid


def _run_ids(frame: pd.DataFrame) -> str:
    return ", ".join(str(value) for value in frame["run_id"].unique()) if "run_id" in frame else "?"


# --- evaluation --------------------------------------------------------------------------------------------


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"] if "status" in frame else frame


def _values(frame: pd.DataFrame, metric: str) -> npt.NDArray[np.float64]:
    return np.asarray(frame[metric].dropna(), dtype=np.float64)


def _group_name(pipeline: str, group_by: Sequence[str], key: Sequence[Any]) -> str:
    return " ".join(
        [str(pipeline), *(f"{column}={value}" for column, value in zip(group_by, key, strict=True))]
    )


def _groups(frame: pd.DataFrame, group_by: Sequence[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    if not group_by:
        return [((), frame)]
    return [
        (key if isinstance(key, tuple) else (key,), group)
        for key, group in frame.groupby(list(group_by), sort=True, dropna=False)
    ]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same_group(frame: pd.DataFrame, group_by: Sequence[str], key: Sequence[Any]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in zip(group_by, key, strict=True):
        mask &= (frame[column].isna() if _missing(value) else frame[column] == value).to_numpy()
    return frame[mask]


def _threshold(
    gate: MetricGate, baselines: Sequence[pd.DataFrame], noise_factor: float
) -> tuple[float, dict[str, Any]]:
    """The relative threshold; with several baseline runs, at least noise_factor x the spread between them."""
    assert gate.max_regression is not None
    samples = [_values(frame, gate.metric) for frame in baselines]
    samples = [values for values in samples if values.size]
    if len(samples) < 2:
        return gate.max_regression, {}
    stats = [float(statistic_value(values, gate.statistic)) for values in samples]
    centre = float(np.median(stats))
    spread = (max(stats) - min(stats)) / abs(centre) if centre else math.inf
    calibrated = noise_factor * spread
    return max(gate.max_regression, calibrated), {
        "baseline_run_stats": stats,
        "baseline_spread": spread,
        "calibrated_threshold": calibrated,
    }


def _absolute(gate: MetricGate, name: str, group: pd.DataFrame) -> GroupResult:
    values = _values(_ok(group), gate.metric) if gate.metric in group else np.empty(0)
    if not values.size:
        return GroupResult(name, Outcome.REFUSED, f"{name}: no values of {gate.metric!r}")
    value = float(statistic_value(values, gate.statistic))
    over = gate.at_most is not None and value > gate.at_most
    under = gate.at_least is not None and value < gate.at_least
    limit = f"at most {gate.at_most:g}" if gate.at_most is not None else f"at least {gate.at_least:g}"
    outcome = Outcome.FAIL if over or under else Outcome.PASS
    return GroupResult(
        name,
        outcome,
        f"{name}: {gate.metric} {gate.statistic} = {value:.4g} over {values.size} requests "
        f"({'violates' if outcome is Outcome.FAIL else 'within'} the limit: {limit})",
        current=value,
        n=int(values.size),
    )


def _paired(frame: pd.DataFrame, metric: str) -> pd.Series:
    """A group's ok values of ``metric`` indexed by PAIR_KEY (the median where a key repeats)."""
    ok = _ok(frame)
    ok = ok[ok[metric].notna()] if metric in ok else ok.iloc[0:0]
    if ok.empty:
        return pd.Series(dtype=np.float64)
    return ok.groupby(list(PAIR_KEY))[metric].median().astype(np.float64)


def _compared(
    gate: MetricGate, spec: GateSpec, name: str, group: pd.DataFrame, baselines: Sequence[pd.DataFrame]
) -> GroupResult:
    current = _paired(group, gate.metric)
    pooled = pd.concat(baselines, ignore_index=True)
    baseline = _paired(pooled, gate.metric)
    pairs = pd.concat([current.rename("current"), baseline.rename("baseline")], axis=1, join="inner").dropna()
    if len(pairs) < MIN_PAIRS:
        return GroupResult(
            name,
            Outcome.REFUSED,
            f"{name}: too few paired requests to test ({len(pairs)} pairs from {current.size} current and "
            f"{baseline.size} baseline ok requests; the paired tests need {MIN_PAIRS})",
            n=len(pairs),
        )
    now = pairs["current"].to_numpy()
    before = pairs["baseline"].to_numpy()
    base = float(statistic_value(before, gate.statistic))
    value = float(statistic_value(now, gate.statistic))
    if base == 0:
        return GroupResult(name, Outcome.REFUSED, f"{name}: baseline {gate.metric} {gate.statistic} is 0")
    threshold, calibration = _threshold(gate, [_ok(frame) for frame in baselines], spec.noise_factor)
    change = (value - base) / abs(base)
    worsening = change if gate.better is Better.LOWER else -change
    p_value = paired_p_value(now, before, gate.statistic, lower_is_better=gate.better is Better.LOWER)
    regressed = worsening > threshold and p_value < spec.alpha
    if regressed:
        verdict = "REGRESSION"
    elif worsening > threshold:
        verdict = f"not significant (p >= {spec.alpha:g}): treated as noise"
    else:
        verdict = "within threshold"
    origin = (
        f"calibrated from {len(calibration['baseline_run_stats'])} baseline runs "
        f"(spread {calibration['baseline_spread']:.1%} x {spec.noise_factor:g})"
        if calibration
        else "as configured"
    )
    return GroupResult(
        name,
        Outcome.FAIL if regressed else Outcome.PASS,
        f"{name}: {gate.metric} {gate.statistic} baseline {base:.4g} -> current {value:.4g} over "
        f"{len(pairs)} paired requests, change {change:+.1%} (allowed {threshold:.1%} worse, {origin}); "
        f"{gate.test.value} p={p_value:.3g}: {verdict}",
        baseline=base,
        current=value,
        change=change,
        threshold=threshold,
        p_value=p_value,
        n=len(pairs),
    )


def _error_rate(gate: ErrorGate, name: str, group: pd.DataFrame) -> GroupResult:
    failed = group[group["status"] != "ok"]
    rate = len(failed) / len(group)
    first = ""
    if len(failed):
        reason = (
            str(failed["error"].dropna().iloc[0])
            if failed["error"].notna().any()
            else failed["status"].iloc[0]
        )
        first = f"; first: {reason[:160]}"
    return GroupResult(
        name,
        Outcome.FAIL if rate > gate.max_error_rate else Outcome.PASS,
        f"{name}: {len(failed)} of {len(group)} requests not ok ({rate:.0%}, allowed "
        f"{gate.max_error_rate:.0%}){first}",
        current=rate,
        n=len(group),
    )


def _goodput(gate: GoodputGate, name: str, group: pd.DataFrame) -> GroupResult:
    verdicts = group.get("info_meets_slo")
    if verdicts is None or verdicts.isna().all():
        return GroupResult(
            name,
            Outcome.REFUSED,
            f"{name}: no SLO verdicts (info_meets_slo); gate a run of `qtts-eval load --slo`",
        )
    met = int(verdicts.eq(True).sum())  # a request without a verdict did not meet the SLO
    share = met / len(group)
    slos = group.get("info_slo", pd.Series(dtype=object)).dropna()
    slo = slos.iloc[0] if len(slos) else "(not recorded)"
    return GroupResult(
        name,
        Outcome.FAIL if share < gate.min_goodput else Outcome.PASS,
        f"{name}: {met} of {len(group)} requests met the SLO {slo} (goodput {share:.0%}, required "
        f"{gate.min_goodput:.0%})",
        current=share,
        n=len(group),
    )


def _summary(
    label: str, current: pd.DataFrame, groups: Sequence[GroupResult], details: dict[str, Any]
) -> GateResult:
    outcome = max((group.outcome for group in groups), key=_SEVERITY.__getitem__)
    counts = ", ".join(
        f"{sum(g.outcome is o for g in groups)} {o.value}"
        for o in Outcome
        if any(g.outcome is o for g in groups)
    )
    worst = [g.group for g in groups if g.outcome is outcome and outcome is not Outcome.PASS]
    named = f"; {outcome.value}: {'; '.join(worst[:4])}{' ...' if len(worst) > 4 else ''}" if worst else ""
    against = f" vs baseline {details['baseline_runs']}" if "baseline_runs" in details else ""
    plural = "s" if len(groups) != 1 else ""
    message = f"{label}: {len(groups)} group{plural} of run {_run_ids(current)}{against}: {counts}{named}"
    return GateResult(label, outcome, message, tuple(groups), details)


def _records(
    gate: MetricGate | ErrorGate | GoodputGate, spec: GateSpec, frame: pd.DataFrame
) -> pd.DataFrame | str:
    """The records a gate splits into groups, or why it cannot."""
    if gate.pipeline is not None:
        frame = frame[frame["pipeline"] == gate.pipeline]
    if frame.empty:
        which = f" of pipeline {gate.pipeline!r}" if gate.pipeline else ""
        return f"no records{which} in run {_run_ids(frame)}"
    group_by = spec.group_by if gate.group_by is None else gate.group_by
    missing = [column for column in group_by if column not in frame]
    if missing:
        return f"the records have no column(s) {missing} to group by"
    return frame


def _metric_result(gate: MetricGate, spec: GateSpec, inputs: GateInputs) -> GateResult:
    label = gate.label
    # Checked first: on synthetic weights a quality gate is never evaluated, whether or not values exist.
    if (gate.quality or gate.metric in quality_metric_names()) and is_synthetic(inputs.current):
        return GateResult(
            label,
            Outcome.NOT_GATED,
            f"{label}: {gate.metric} is a quality metric and run {_run_ids(inputs.current)} used synthetic "
            "(random) weights, whose audio is noise-like: reported, never gated",
        )
    current = _records(gate, spec, inputs.current)
    if isinstance(current, str):
        return GateResult(label, Outcome.REFUSED, f"{label}: {current}")
    if gate.max_regression is not None and not inputs.baselines:
        return GateResult(label, Outcome.REFUSED, f"{label}: no baseline run given")
    group_by = spec.group_by if gate.group_by is None else gate.group_by
    groups: list[GroupResult] = []
    for pipeline, records in current.groupby("pipeline", sort=True):
        if gate.max_regression is None:
            groups += [
                _absolute(gate, _group_name(str(pipeline), group_by, key), group)
                for key, group in _groups(records, group_by)
            ]
            continue
        baselines = [frame[frame["pipeline"] == pipeline] for frame in inputs.baselines]
        problem = next(
            (
                f"baseline run {_run_ids(frame)}: {problem}"
                for frame in baselines
                if (problem := _baseline_problem(records, frame, spec))
            ),
            None,
        )
        if problem:
            groups.append(
                GroupResult(str(pipeline), Outcome.REFUSED, f"{pipeline}: refused to compare: {problem}")
            )
            continue
        groups += [
            _compared(
                gate,
                spec,
                _group_name(str(pipeline), group_by, key),
                group,
                [_same_group(frame, group_by, key) for frame in baselines],
            )
            for key, group in _groups(records, group_by)
        ]
    runs = ", ".join(_run_ids(frame) for frame in inputs.baselines)
    details: dict[str, Any] = {
        "group_by": list(group_by),
        "test": gate.test.value if gate.max_regression is not None else None,
    }
    if gate.max_regression is not None:
        details["baseline_runs"] = runs
    return _summary(label, current, groups, details)


def _baseline_problem(current: pd.DataFrame, baseline: pd.DataFrame, spec: GateSpec) -> str | None:
    if baseline.empty:
        return "has no records of this pipeline"
    found = comparability.difference(baseline, current, comparability.Scope.RUNS, spec.may_differ)
    return None if found is None else found.message


def _share_result(gate: ErrorGate | GoodputGate, spec: GateSpec, inputs: GateInputs) -> GateResult:
    """An error-rate or goodput gate: a share of each group's requests, against its limit."""
    current = _records(gate, spec, inputs.current)
    if isinstance(current, str):
        return GateResult(gate.label, Outcome.REFUSED, f"{gate.label}: {current}")
    group_by = spec.group_by if gate.group_by is None else gate.group_by
    groups = [
        _error_rate(gate, name, group) if isinstance(gate, ErrorGate) else _goodput(gate, name, group)
        for pipeline, records in current.groupby("pipeline", sort=True)
        for key, group in _groups(records, group_by)
        for name in (_group_name(str(pipeline), group_by, key),)
    ]
    problem = comparability.segment_difference(current)
    if problem:
        groups.append(GroupResult("run", Outcome.REFUSED, problem.message))
    return _summary(gate.label, current, groups, {"group_by": list(group_by)})


def _parity_result(gate: ParityGate, inputs: GateInputs) -> GateResult:
    label = gate.label
    path = inputs.parity_report or gate.report
    if path is None:
        return GateResult(
            label, Outcome.REFUSED, f"{label}: no parity report given (qtts-eval parity writes report.json)"
        )
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))["verdict"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return GateResult(
            label, Outcome.REFUSED, f"{label}: cannot read a parity verdict from {path} ({exc})"
        )
    outcome = Outcome.PASS if verdict == gate.expect else Outcome.FAIL
    return GateResult(
        label, outcome, f"{label}: parity verdict {verdict!r} in {path}, expected {gate.expect!r}"
    )


def evaluate_gate(gate: Gate, spec: GateSpec, inputs: GateInputs) -> GateResult:
    """Evaluate one gate."""
    if isinstance(gate, ParityGate):
        return _parity_result(gate, inputs)
    if isinstance(gate, ErrorGate | GoodputGate):
        return _share_result(gate, spec, inputs)
    return _metric_result(gate, spec, inputs)


def evaluate(spec: GateSpec, inputs: GateInputs) -> list[GateResult]:
    """Evaluate every gate of a gates file, in file order."""
    return [evaluate_gate(gate, spec, inputs) for gate in spec.gates]


def results_table(results: Sequence[GateResult]) -> pd.DataFrame:
    """One row per gate and group: outcome, baseline, current, change, threshold, p-value, message."""
    rows = []
    for result in results:
        for group in result.groups or (GroupResult("", result.outcome, result.message),):
            rows.append(
                {
                    "gate": result.gate,
                    "group": group.group,
                    "outcome": group.outcome.value,
                    "baseline": group.baseline,
                    "current": group.current,
                    "change": group.change,
                    "threshold": group.threshold,
                    "p_value": group.p_value,
                    "n": group.n,
                    "message": group.message,
                }
            )
    return pd.DataFrame(rows)
