"""Regression gates: thresholds and baseline comparisons over results runs, for CI.

A gates file (TOML, see docs/gates.md) lists gates of three kinds:

- an absolute limit on a statistic of a record column (``first_byte_s`` p95 at most 0.25 s);
- a relative limit against a baseline run (``rtf`` median at most 10 % worse);
- a parity verdict (the ``report.json`` of ``qtts-eval parity`` says ``pass``).

A baseline comparison fails only when the relative change passes its threshold AND a one-sided Mann-Whitney U
test on the per-request values agrees that the current run is worse (as in asv's ``compare``): a large change
on a handful of noisy requests, or a significant but tiny shift, is not a regression. With several baseline
runs the threshold widens to the run-to-run spread seen between them (calibration). Runs on other fixtures,
machines, dtypes or weights, or whose WER (speaker similarity) another recogniser (embedder) scored, are
refused, and quality metrics on synthetic weights are never gated.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval.errors import GateError, QttsEvalError
from qtts_eval.results import load_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    import tomli as tomllib

DEFAULT_ALPHA = 0.05  # significance of the one-sided Mann-Whitney test a regression needs
# A calibrated threshold is this many times the spread between identical baseline runs: a working value
# that keeps run-to-run noise (spread x 1) well inside the threshold.
DEFAULT_NOISE_FACTOR = 2.0
# Mann-Whitney needs 4 values a side to reach p < 0.05 at all (4 vs 4: p = 1/70; 3 vs 3: p = 1/20).
MIN_SAMPLES = 4

# Environment columns two runs must share to be compared: label shown in a refusal -> record column.
COMPARABLE_ENV: Mapping[str, str] = {
    "fixture set": "env_fixtures_hash",
    "GPU": "env_gpu_name",
    "CPU": "env_cpu",
    "device": "env_device",
    "dtype": "env_dtype",
    "weights": "env_weights_hash",
}
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


class Better(str, enum.Enum):
    """Which direction of a metric is an improvement."""

    LOWER = "lower"  # latency, RTF, memory
    HIGHER = "higher"  # similarity, match rates


class Outcome(str, enum.Enum):
    """How a gate ended."""

    PASS = "pass"  # within its limit, or the change is noise
    FAIL = "fail"  # a regression: over the limit (and, against a baseline, significant)
    REFUSED = "refused"  # cannot be evaluated as asked: runs not comparable, no baseline, too few requests
    NOT_GATED = "not_gated"  # by design never gated: a quality metric on synthetic weights


@dataclass(frozen=True)
class MetricGate:
    """A limit on one statistic of one record column, absolute or relative to a baseline."""

    metric: str  # record column (docs/metrics.md), e.g. "rtf"; any numeric column works
    statistic: str = "median"  # over the ok requests: median, mean, min, max or pNN (e.g. p95)
    better: Better = Better.LOWER  # the direction that is an improvement
    at_most: float | None = None  # absolute ceiling on the statistic, in the column's unit
    at_least: float | None = None  # absolute floor on the statistic, in the column's unit
    max_regression: float | None = None  # allowed relative worsening against the baseline (0.10 = 10 %)
    quality: bool = False  # a speech-quality metric: never gated on synthetic weights (also inferred)
    pipeline: str | None = None  # only this pipeline's records; required when a run holds several
    name: str = ""  # display name and pytest id; derived from the fields when empty

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        stat = f"{self.metric}.{self.statistic}"
        if self.max_regression is not None:
            if self.better is Better.LOWER:
                return f"{stat} <= +{self.max_regression:.0%} vs baseline"
            return f"{stat} >= -{self.max_regression:.0%} vs baseline"
        if self.at_most is not None:
            return f"{stat} <= {self.at_most:g}"
        return f"{stat} >= {self.at_least:g}"


@dataclass(frozen=True)
class ParityGate:
    """The verdict of a parity report (``qtts-eval parity`` writes report.json)."""

    expect: str = "pass"  # required verdict
    report: Path | None = None  # report.json; relative to the gates file. A --parity option overrides it
    name: str = ""  # display name and pytest id; derived when empty

    @property
    def label(self) -> str:
        return self.name or f"parity == {self.expect}"


Gate = MetricGate | ParityGate


@dataclass(frozen=True)
class GateSpec:
    """A parsed gates file."""

    gates: tuple[Gate, ...]  # in file order
    alpha: float = DEFAULT_ALPHA  # Mann-Whitney significance for baseline comparisons
    noise_factor: float = DEFAULT_NOISE_FACTOR  # calibrated threshold = factor x baseline run spread
    path: Path | None = None  # where it was read from


@dataclass(frozen=True)
class GateInputs:
    """The runs a gate looks at."""

    current: pd.DataFrame  # records of the run under test (load_run)
    baselines: tuple[pd.DataFrame, ...] = ()  # records of one or more baseline runs (several: calibrate)
    parity_report: Path | None = None  # overrides every parity gate's report path


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome, with the numbers behind it."""

    gate: str  # the gate's label
    outcome: Outcome  # pass, fail, refused, not gated
    message: str  # one line naming metric, baseline, current value and change, or the reason
    baseline: float | None = None  # baseline statistic (pooled over baseline runs)
    current: float | None = None  # current statistic
    change: float | None = None  # relative change, (current - baseline) / |baseline|
    threshold: float | None = None  # relative threshold used (after calibration)
    p_value: float | None = None  # one-sided Mann-Whitney p (current worse than baseline)
    details: dict[str, Any] = field(default_factory=dict)  # calibration and sample sizes


# --- reading gates files ---------------------------------------------------------------------------------

_METRIC_KEYS = {
    "metric",
    "statistic",
    "better",
    "at_most",
    "at_least",
    "max_regression",
    "quality",
    "pipeline",
}
_PARITY_KEYS = {"parity", "report"}
_SETTINGS_KEYS = {"alpha", "noise_factor"}


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GateError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def check_statistic(statistic: str) -> None:
    """Refuse a statistic name this module cannot compute."""
    match = _PERCENTILE.fullmatch(statistic)
    if statistic in ("median", "mean", "min", "max") or (match and 0 < float(match.group(1)) < 100):
        return
    raise GateError(f"unknown statistic {statistic!r}; use median, mean, min, max or pNN (e.g. p95)")


def _metric_gate(where: str, raw: Mapping[str, Any]) -> MetricGate:
    unknown = set(raw) - _METRIC_KEYS - {"name"}
    if unknown:
        raise GateError(
            f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_METRIC_KEYS | {'name'})}"
        )
    if not isinstance(raw.get("metric"), str) or not raw["metric"]:
        raise GateError(f"{where}: 'metric' must name a record column (docs/metrics.md)")
    statistic = str(raw.get("statistic", "median"))
    try:
        check_statistic(statistic)
    except GateError as exc:
        raise GateError(f"{where}: {exc}") from None
    try:
        better = Better(raw.get("better", Better.LOWER.value))
    except ValueError:
        raise GateError(f"{where}: better must be 'lower' or 'higher', got {raw['better']!r}") from None
    limits = {
        key: _number(where, key, raw[key]) for key in ("at_most", "at_least", "max_regression") if key in raw
    }
    if len(limits) != 1:
        raise GateError(
            f"{where}: give exactly one of at_most, at_least, max_regression (got {sorted(limits)})"
        )
    if limits.get("max_regression", 0.0) < 0:
        raise GateError(f"{where}: max_regression is a fraction >= 0 (0.10 = 10 % worse)")
    return MetricGate(
        metric=raw["metric"],
        statistic=statistic,
        better=better,
        quality=bool(raw.get("quality", False)),
        pipeline=raw.get("pipeline"),
        name=str(raw.get("name", "")),
        **limits,
    )


def _parity_gate(where: str, raw: Mapping[str, Any], base: Path) -> ParityGate:
    unknown = set(raw) - _PARITY_KEYS - {"name"}
    if unknown:
        raise GateError(
            f"{where}: unknown key(s) {sorted(unknown)} for a parity gate; known: parity, report, name"
        )
    if raw["parity"] not in ("pass", "fail"):
        raise GateError(f"{where}: parity must be 'pass' or 'fail', got {raw['parity']!r}")
    report = Path(raw["report"]) if "report" in raw else None
    if report is not None and not report.is_absolute():
        report = base / report
    return ParityGate(expect=raw["parity"], report=report, name=str(raw.get("name", "")))


def parse_gates(data: Mapping[str, Any], path: Path | None = None) -> GateSpec:
    """Validate a gates document (the TOML file as a dict); every problem names the gate it is in."""
    where_file = str(path) if path else "gates"
    unknown = set(data) - {"gate", "settings"}
    if unknown:
        raise GateError(f"{where_file}: unknown table(s) {sorted(unknown)}; expected [settings] and [[gate]]")
    settings = data.get("settings", {})
    bad = set(settings) - _SETTINGS_KEYS
    if bad:
        raise GateError(f"{where_file}: unknown setting(s) {sorted(bad)}; known: {sorted(_SETTINGS_KEYS)}")
    alpha = _number(where_file, "alpha", settings.get("alpha", DEFAULT_ALPHA))
    if not 0 < alpha < 1:
        raise GateError(f"{where_file}: alpha must be between 0 and 1, got {alpha}")
    noise_factor = _number(where_file, "noise_factor", settings.get("noise_factor", DEFAULT_NOISE_FACTOR))
    raw_gates = data.get("gate", [])
    if not isinstance(raw_gates, list) or not raw_gates:
        raise GateError(f"{where_file}: no gates; add [[gate]] tables")
    base = path.parent if path else Path.cwd()
    gates: list[Gate] = []
    for index, raw in enumerate(raw_gates, start=1):
        where = f"{where_file}: gate {index}"
        gates.append(_parity_gate(where, raw, base) if "parity" in raw else _metric_gate(where, raw))
    labels = [gate.label for gate in gates]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise GateError(f"{where_file}: duplicate gate name(s) {duplicates}; give each a distinct 'name'")
    return GateSpec(tuple(gates), alpha=alpha, noise_factor=noise_factor, path=path)


def load_gates(path: Path) -> GateSpec:
    """Read and validate a gates TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GateError(f"{path}: cannot read gates file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"{path}: not valid TOML ({exc})") from None
    return parse_gates(data, path)


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


# --- statistics --------------------------------------------------------------------------------------------


def statistic_value(values: npt.NDArray[np.float64], statistic: str) -> float:
    """The named statistic of a non-empty sample."""
    check_statistic(statistic)
    if statistic == "median":
        return float(np.median(values))
    if statistic == "mean":
        return float(np.mean(values))
    if statistic == "min":
        return float(np.min(values))
    if statistic == "max":
        return float(np.max(values))
    return float(np.percentile(values, float(statistic[1:])))


def worse_p_value(
    current: npt.NDArray[np.float64], baseline: npt.NDArray[np.float64], better: Better
) -> float:
    """One-sided Mann-Whitney U p-value for 'current is worse than baseline'."""
    from scipy.stats import mannwhitneyu

    alternative = "greater" if better is Better.LOWER else "less"
    return float(mannwhitneyu(current, baseline, alternative=alternative).pvalue)


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


def _env_value(frame: pd.DataFrame, column: str) -> tuple[bool, Any]:
    """(True, value) when every record agrees; (False, values) when a run mixes several."""
    if column not in frame:
        return True, None
    values = frame[column].dropna().unique().tolist()
    if len(values) > 1:
        return False, values
    return True, values[0] if values else None


def comparability_problem(current: pd.DataFrame, baseline: pd.DataFrame) -> str | None:
    """Why two runs cannot be compared (other fixtures, machine, dtype, weights), or None when they can."""
    for label, column in COMPARABLE_ENV.items():
        ok_current, value_current = _env_value(current, column)
        ok_baseline, value_baseline = _env_value(baseline, column)
        if not (ok_current and ok_baseline):
            mixed = value_current if not ok_current else value_baseline
            return f"a run mixes several values of {label} ({column}: {mixed})"
        if value_current != value_baseline:
            return f"different {label}: baseline {value_baseline!r}, current {value_current!r} ({column})"
    return None


def scorer_problem(current: pd.DataFrame, baseline: pd.DataFrame, metric: str) -> str | None:
    """Why `metric` of two runs cannot be compared because different models scored it (another speech
    recogniser or speaker embedder), or None when it can."""
    from qtts_eval.metrics.quality import SCORED_BY

    column = SCORED_BY.get(metric)
    if column is None:
        return None
    ok_current, value_current = _env_value(current, column)
    ok_baseline, value_baseline = _env_value(baseline, column)
    if not (ok_current and ok_baseline):
        mixed = value_current if not ok_current else value_baseline
        return f"a run mixes several {column} values ({mixed}); {metric} compares only within one"
    if value_current != value_baseline:
        return (
            f"{metric} was scored by {value_baseline!r} in the baseline and {value_current!r} now "
            f"({column}); each model has its own scale"
        )
    return None


def _run_ids(frame: pd.DataFrame) -> str:
    return ", ".join(str(value) for value in frame["run_id"].unique()) if "run_id" in frame else "?"


# --- evaluation --------------------------------------------------------------------------------------------


def _select(frame: pd.DataFrame, gate: MetricGate) -> pd.DataFrame | str:
    """The ok records the gate reads, or why there are none to read."""
    if "status" in frame:
        frame = frame[frame["status"] == "ok"]
    if gate.pipeline is not None:
        frame = frame[frame["pipeline"] == gate.pipeline]
    elif "pipeline" in frame and frame["pipeline"].nunique() > 1:
        names = ", ".join(sorted(frame["pipeline"].unique()))
        return f"the run holds pipelines {names}; name one with pipeline = ..."
    if gate.metric not in frame or frame[gate.metric].isna().all():
        return f"no values of {gate.metric!r} in run {_run_ids(frame)}"
    return frame


def _values(frame: pd.DataFrame, metric: str) -> npt.NDArray[np.float64]:
    return np.asarray(frame[metric].dropna(), dtype=np.float64)


def _threshold(
    gate: MetricGate, baselines: Sequence[pd.DataFrame], noise_factor: float
) -> tuple[float, dict[str, Any]]:
    """The relative threshold; with several baseline runs, at least noise_factor x the spread between them."""
    assert gate.max_regression is not None
    if len(baselines) < 2:
        return gate.max_regression, {}
    stats = [statistic_value(_values(frame, gate.metric), gate.statistic) for frame in baselines]
    centre = float(np.median(stats))
    spread = (max(stats) - min(stats)) / abs(centre) if centre else math.inf
    calibrated = noise_factor * spread
    return max(gate.max_regression, calibrated), {
        "baseline_run_stats": stats,
        "baseline_spread": spread,
        "calibrated_threshold": calibrated,
    }


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
    current = _select(inputs.current, gate)
    if isinstance(current, str):
        return GateResult(label, Outcome.REFUSED, f"{label}: {current}")
    values = _values(current, gate.metric)
    value = statistic_value(values, gate.statistic)
    stat = f"{gate.metric} {gate.statistic}"
    if gate.max_regression is None:
        over = gate.at_most is not None and value > gate.at_most
        under = gate.at_least is not None and value < gate.at_least
        limit = f"at most {gate.at_most:g}" if gate.at_most is not None else f"at least {gate.at_least:g}"
        outcome = Outcome.FAIL if over or under else Outcome.PASS
        return GateResult(
            label,
            outcome,
            f"{label}: {stat} = {value:.4g} over {values.size} requests of run {_run_ids(current)} "
            f"({'violates' if outcome is Outcome.FAIL else 'within'} the limit: {limit})",
            current=value,
        )
    return _baseline_result(gate, spec, inputs, current, values, value)


def _baseline_result(
    gate: MetricGate,
    spec: GateSpec,
    inputs: GateInputs,
    current: pd.DataFrame,
    values: npt.NDArray[np.float64],
    value: float,
) -> GateResult:
    label = gate.label
    if not inputs.baselines:
        return GateResult(label, Outcome.REFUSED, f"{label}: no baseline run given")
    selected: list[pd.DataFrame] = []
    for baseline in inputs.baselines:
        problem = comparability_problem(current, baseline) or scorer_problem(current, baseline, gate.metric)
        if problem:
            return GateResult(
                label,
                Outcome.REFUSED,
                f"{label}: refused to compare run {_run_ids(current)} with baseline "
                f"{_run_ids(baseline)}: {problem}",
            )
        chosen = _select(baseline, gate)
        if isinstance(chosen, str):
            return GateResult(label, Outcome.REFUSED, f"{label}: baseline: {chosen}")
        selected.append(chosen)
    pooled = pd.concat(selected, ignore_index=True)
    base_values = _values(pooled, gate.metric)
    if min(values.size, base_values.size) < MIN_SAMPLES:
        return GateResult(
            label,
            Outcome.REFUSED,
            f"{label}: too few requests to test ({base_values.size} baseline, {values.size} current; "
            f"the Mann-Whitney test needs {MIN_SAMPLES} a side)",
        )
    base = statistic_value(base_values, gate.statistic)
    if base == 0:
        return GateResult(label, Outcome.REFUSED, f"{label}: baseline {gate.metric} {gate.statistic} is 0")
    threshold, calibration = _threshold(gate, selected, spec.noise_factor)
    change = (value - base) / abs(base)
    worsening = change if gate.better is Better.LOWER else -change
    p_value = worse_p_value(values, base_values, gate.better)
    significant = p_value < spec.alpha
    regressed = worsening > threshold and significant
    if regressed:
        verdict = "REGRESSION"
    elif worsening > threshold:
        verdict = f"not significant (p >= {spec.alpha:g}): treated as noise"
    else:
        verdict = "within threshold"
    origin = (
        f"calibrated from {len(selected)} baseline runs (spread {calibration['baseline_spread']:.1%} "
        f"x {spec.noise_factor:g})"
        if calibration
        else "as configured"
    )
    message = (
        f"{label}: {gate.metric} {gate.statistic} baseline {base:.4g} (run {_run_ids(pooled)}, "
        f"n={base_values.size}) -> current {value:.4g} (run {_run_ids(current)}, n={values.size}), "
        f"change {change:+.1%} (allowed {threshold:.1%} worse, {origin}); "
        f"Mann-Whitney p={p_value:.3g}: {verdict}"
    )
    return GateResult(
        label,
        Outcome.FAIL if regressed else Outcome.PASS,
        message,
        baseline=base,
        current=value,
        change=change,
        threshold=threshold,
        p_value=p_value,
        details={"n_baseline": base_values.size, "n_current": values.size, **calibration},
    )


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
    return _metric_result(gate, spec, inputs)


def evaluate(spec: GateSpec, inputs: GateInputs) -> list[GateResult]:
    """Evaluate every gate of a gates file, in file order."""
    return [evaluate_gate(gate, spec, inputs) for gate in spec.gates]


def results_table(results: Sequence[GateResult]) -> pd.DataFrame:
    """One row per gate: outcome, baseline, current, change, threshold, p-value, message."""
    return pd.DataFrame(
        [
            {
                "gate": r.gate,
                "outcome": r.outcome.value,
                "baseline": r.baseline,
                "current": r.current,
                "change": r.change,
                "threshold": r.threshold,
                "p_value": r.p_value,
                "message": r.message,
            }
            for r in results
        ]
    )
