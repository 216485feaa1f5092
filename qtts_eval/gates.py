"""Regression gates: thresholds, baseline comparisons and error rates over results runs, for CI.

A gates file (TOML, see docs/gates.md) lists gates of four kinds:

- an absolute limit on a statistic of a record column (``first_byte_s`` p95 at most 0.25 s);
- a relative limit against a baseline run (``rtf`` median at most 10 % worse);
- an error-rate limit (share of requests whose status is not ``ok``);
- a parity verdict (the ``report.json`` of ``qtts-eval parity`` says ``pass``).

Metric and error gates compare like with like: each pipeline's records are split into groups (per fixture and
mode by default) and every group gets its own verdict, so a slowdown of one fixture cannot hide among the
others. Against a baseline, requests are paired by their key (fixture, voice, mode, repeat). A group fails
only when its relative change passes the threshold AND a paired one-sided test agrees that the current run is
worse (as in asv's ``compare``): the Wilcoxon signed-rank test for medians and means, a paired bootstrap of
the statistic's difference for percentiles, ``min`` and ``max`` (a test of the bulk says nothing about a
tail). With several baseline runs the threshold widens to the run-to-run spread seen between them. Runs whose
environment, work or candidate differ, or that mix segments measured on different machines or commits, are
refused; quality metrics on synthetic weights are never gated.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
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

DEFAULT_ALPHA = 0.05  # significance of the one-sided paired test a regression needs
# A calibrated threshold is this many times the spread between identical baseline runs: a working value
# that keeps run-to-run noise (spread x 1) well inside the threshold.
DEFAULT_NOISE_FACTOR = 2.0
DEFAULT_GROUP_BY = ("fixture_id", "mode")  # record columns a gate splits each pipeline's records by
# A request's identity across runs of the same matrix: the key current and baseline values are paired on.
PAIR_KEY = ("fixture_id", "voice_id", "mode", "repeat")
# The one-sided Wilcoxon signed-rank test needs 5 pairs to reach p < 0.05 at all (all 5 one way: p = 1/32;
# 4 pairs: 1/16). The same floor applies to the bootstrap, whose resamples of fewer pairs repeat too often.
MIN_PAIRS = 5
BOOTSTRAP_RESAMPLES = 2000  # paired resamples for percentile gates; p is resolved to 1/2000
BOOTSTRAP_SEED = 0  # the bootstrap is seeded: the same runs always give the same verdict

# Environment columns that may differ between a baseline and the run under test: the code under test (the
# suite's commit and version; a candidate's own version or commit, matched by ENV_CODE_COLUMN), where a
# checkpoint sits on disk (its weights hash is compared), the host's name (CI runners of one machine type
# have many) and the load average. Every other env_ column (machine, software stack, dtype, attention,
# streaming settings, model and weights, the candidate's name) must be equal; a gates file can allow more
# with may_differ.
MAY_CHANGE_BETWEEN_RUNS = frozenset(
    {"env_qtts_eval", "env_model_path", "env_hostname", "env_loadavg_1m", "env_fixtures_version"}
)
ENV_CODE_COLUMN = re.compile(r"env_(\w+_)?(version|commit|dirty)")
# Environment columns that may vary inside one run (per request, or per resumed segment). Any other column
# with two values in one pipeline's records means segments from different machines or commits were mixed.
VARIES_WITHIN_RUN = frozenset({"env_loadavg_1m"})
# Record columns that define the work a request did, or the model that scored it (speaker similarity and WER
# have each model's own scale): two runs that differ in them are not compared.
WORK_COLUMNS = ("sampling", "speaker_embedder", "asr_recognizer")
CELL_COLUMNS = ("fixture_id", "voice_id", "mode", "frame_budget")  # the matrix cells run, with their budget
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


class Better(str, enum.Enum):
    """Which direction of a metric is an improvement."""

    LOWER = "lower"  # latency, RTF, memory
    HIGHER = "higher"  # similarity, match rates


class Outcome(str, enum.Enum):
    """How a gate (or one of its groups) ended; listed from best to worst."""

    PASS = "pass"  # within its limit, or the change is noise
    NOT_GATED = "not_gated"  # by design never gated: a quality metric on synthetic weights
    REFUSED = "refused"  # cannot be evaluated as asked: runs not comparable, no baseline, too few requests
    FAIL = "fail"  # a regression: over the limit (and, against a baseline, significant)


_SEVERITY = {outcome: rank for rank, outcome in enumerate(Outcome)}


class Test(str, enum.Enum):
    """The paired test that must agree before a baseline comparison fails."""

    WILCOXON = "wilcoxon"  # signed-rank test of the paired differences: for median and mean
    BOOTSTRAP = "bootstrap"  # paired bootstrap of the statistic's difference: for percentiles, min, max


@dataclass(frozen=True)
class MetricGate:
    """A limit on one statistic of one record column, absolute or relative to a baseline, per group."""

    metric: str  # record column (docs/metrics.md), e.g. "rtf"; any numeric column works
    statistic: str = "median"  # over each group's ok requests: median, mean, min, max or pNN (e.g. p95)
    better: Better = Better.LOWER  # the direction that is an improvement
    at_most: float | None = None  # absolute ceiling on the statistic, in the column's unit
    at_least: float | None = None  # absolute floor on the statistic, in the column's unit
    max_regression: float | None = None  # allowed relative worsening against the baseline (0.10 = 10 %)
    quality: bool = False  # a speech-quality metric: never gated on synthetic weights (also inferred)
    pipeline: str | None = None  # only this pipeline's records; None: every pipeline, each on its own
    group_by: tuple[str, ...] | None = None  # record columns to group by; None: the file's setting
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

    @property
    def test(self) -> Test:
        return Test.WILCOXON if self.statistic in ("median", "mean") else Test.BOOTSTRAP


@dataclass(frozen=True)
class ErrorGate:
    """A ceiling on the share of requests that did not end ``ok`` (error or unsupported), per group."""

    max_error_rate: float = 0.0  # allowed share of failed requests in a group (0.0: none may fail)
    pipeline: str | None = None  # only this pipeline's records; None: every pipeline, each on its own
    group_by: tuple[str, ...] | None = None  # record columns to group by; None: the file's setting
    name: str = ""  # display name and pytest id; derived when empty

    @property
    def label(self) -> str:
        return self.name or f"error_rate <= {self.max_error_rate:g}"


@dataclass(frozen=True)
class ParityGate:
    """The verdict of a parity report (``qtts-eval parity`` writes report.json)."""

    expect: str = "pass"  # required verdict
    report: Path | None = None  # report.json; relative to the gates file. A --parity option overrides it
    name: str = ""  # display name and pytest id; derived when empty

    @property
    def label(self) -> str:
        return self.name or f"parity == {self.expect}"


Gate = MetricGate | ErrorGate | ParityGate


@dataclass(frozen=True)
class GateSpec:
    """A parsed gates file."""

    gates: tuple[Gate, ...]  # in file order
    alpha: float = DEFAULT_ALPHA  # significance of the paired test for baseline comparisons
    noise_factor: float = DEFAULT_NOISE_FACTOR  # calibrated threshold = factor x baseline run spread
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY  # record columns every gate groups by unless it says
    may_differ: frozenset[str] = frozenset()  # extra env_ columns allowed to differ between runs
    path: Path | None = None  # where it was read from


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
    "group_by",
}
_ERROR_KEYS = {"max_error_rate", "pipeline", "group_by"}
_PARITY_KEYS = {"parity", "report"}
_SETTINGS_KEYS = {"alpha", "noise_factor", "group_by", "may_differ"}


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GateError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise GateError(f"{where}: {key} must be a list of column names, got {value!r}")
    return tuple(value)


def check_statistic(statistic: str) -> None:
    """Refuse a statistic name this module cannot compute."""
    match = _PERCENTILE.fullmatch(statistic)
    if statistic in ("median", "mean", "min", "max") or (match and 0 < float(match.group(1)) < 100):
        return
    raise GateError(f"unknown statistic {statistic!r}; use median, mean, min, max or pNN (e.g. p95)")


def _unknown(where: str, raw: Mapping[str, Any], known: set[str], kind: str) -> None:
    unknown = set(raw) - known - {"name"}
    if unknown:
        raise GateError(
            f"{where}: unknown key(s) {sorted(unknown)} for {kind}; known: {sorted(known | {'name'})}"
        )


def _group_by(where: str, raw: Mapping[str, Any]) -> tuple[str, ...] | None:
    return _names(where, "group_by", raw["group_by"]) if "group_by" in raw else None


def _metric_gate(where: str, raw: Mapping[str, Any]) -> MetricGate:
    _unknown(where, raw, _METRIC_KEYS, "a metric gate")
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
        group_by=_group_by(where, raw),
        name=str(raw.get("name", "")),
        **limits,
    )


def _error_gate(where: str, raw: Mapping[str, Any]) -> ErrorGate:
    _unknown(where, raw, _ERROR_KEYS, "an error-rate gate")
    rate = _number(where, "max_error_rate", raw["max_error_rate"])
    if not 0 <= rate < 1:
        raise GateError(f"{where}: max_error_rate is a share in [0, 1), got {rate}")
    return ErrorGate(
        max_error_rate=rate,
        pipeline=raw.get("pipeline"),
        group_by=_group_by(where, raw),
        name=str(raw.get("name", "")),
    )


def _parity_gate(where: str, raw: Mapping[str, Any], base: Path) -> ParityGate:
    _unknown(where, raw, _PARITY_KEYS, "a parity gate")
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
    group_by = _names(where_file, "group_by", settings.get("group_by", list(DEFAULT_GROUP_BY)))
    may_differ = _names(where_file, "may_differ", settings.get("may_differ", []))
    not_env = [column for column in may_differ if not column.startswith("env_")]
    if not_env:
        raise GateError(f"{where_file}: may_differ names environment columns (env_...), got {not_env}")
    raw_gates = data.get("gate", [])
    if not isinstance(raw_gates, list) or not raw_gates:
        raise GateError(f"{where_file}: no gates; add [[gate]] tables")
    base = path.parent if path else Path.cwd()
    gates: list[Gate] = []
    for index, raw in enumerate(raw_gates, start=1):
        where = f"{where_file}: gate {index}"
        if "parity" in raw:
            gates.append(_parity_gate(where, raw, base))
        elif "max_error_rate" in raw:
            gates.append(_error_gate(where, raw))
        else:
            gates.append(_metric_gate(where, raw))
    labels = [gate.label for gate in gates]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise GateError(f"{where_file}: duplicate gate name(s) {duplicates}; give each a distinct 'name'")
    return GateSpec(
        tuple(gates),
        alpha=alpha,
        noise_factor=noise_factor,
        group_by=group_by,
        may_differ=frozenset(may_differ),
        path=path,
    )


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


def statistic_value(values: npt.NDArray[np.float64], statistic: str, axis: int | None = None) -> Any:
    """The named statistic of a non-empty sample (or of each row, with axis=1)."""
    check_statistic(statistic)
    if statistic == "median":
        return np.median(values, axis=axis)
    if statistic == "mean":
        return np.mean(values, axis=axis)
    if statistic == "min":
        return np.min(values, axis=axis)
    if statistic == "max":
        return np.max(values, axis=axis)
    return np.percentile(values, float(statistic[1:]), axis=axis)


def paired_p_value(
    current: npt.NDArray[np.float64], baseline: npt.NDArray[np.float64], gate: MetricGate
) -> float:
    """One-sided p of 'current is worse than baseline' on paired values, by the gate's test."""
    worse = current - baseline if gate.better is Better.LOWER else baseline - current
    if gate.test is Test.WILCOXON:
        from scipy.stats import wilcoxon

        if not np.any(worse):
            return 1.0  # identical pairs: no evidence of any change
        return float(wilcoxon(worse, alternative="greater").pvalue)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = rng.integers(0, current.size, size=(BOOTSTRAP_RESAMPLES, current.size))
    difference = statistic_value(current[rows], gate.statistic, axis=1) - statistic_value(
        baseline[rows], gate.statistic, axis=1
    )
    if gate.better is Better.HIGHER:
        difference = -difference
    # The share of resamples in which the current run is not worse, counting the observed sample itself.
    return float((np.count_nonzero(difference <= 0) + 1) / (BOOTSTRAP_RESAMPLES + 1))


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


# --- comparability -----------------------------------------------------------------------------------------


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value


def _distinct(frame: pd.DataFrame, column: str) -> list[Any]:
    if column not in frame:
        return []
    return list(dict.fromkeys(_hashable(value) for value in frame[column] if not _missing(value)))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def env_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith("env_")]


def may_change(column: str, may_differ: Iterable[str] = ()) -> bool:
    """Whether an env_ column may differ between a baseline and the run under test."""
    return (
        column in MAY_CHANGE_BETWEEN_RUNS or column in may_differ or bool(ENV_CODE_COLUMN.fullmatch(column))
    )


def segment_problem(frame: pd.DataFrame) -> str | None:
    """Why one pipeline's records of a run are not one segment (e.g. resumed on another machine), or None."""
    for column in env_columns(frame):
        values = _distinct(frame, column)
        if column not in VARIES_WITHIN_RUN and len(values) > 1:
            shown = ", ".join(map(repr, values))
            return (
                f"run {_run_ids(frame)} mixes segments with different {column} ({shown}): "
                "a resumed run measured on another machine or commit cannot be compared as one run"
            )
    return None


def comparability_problem(
    current: pd.DataFrame, baseline: pd.DataFrame, may_differ: Iterable[str] = ()
) -> str | None:
    """Why two runs (one pipeline's records of each) cannot be compared, or None when they can.

    Refused: either run mixes segments; any environment column outside the may-change list differs
    (machine, software stack, dtype, attention, streaming settings, weights, the candidate's identity, ...);
    the work differs (sampling, speaker embedder, or the fixtures, voices, modes and frame budgets run).
    """
    for frame in (baseline, current):
        problem = segment_problem(frame)
        if problem:
            return problem
    extra = frozenset(may_differ)
    for column in sorted(set(env_columns(current)) | set(env_columns(baseline))):
        if may_change(column, extra):
            continue
        before, after = _distinct(baseline, column)[:1] or [None], _distinct(current, column)[:1] or [None]
        if before != after:
            return f"different {column[4:]}: baseline {before[0]!r}, current {after[0]!r} ({column})"
    for column in WORK_COLUMNS:
        before_set, after_set = set(_distinct(baseline, column)), set(_distinct(current, column))
        if before_set != after_set:
            before, after = sorted(map(str, before_set)), sorted(map(str, after_set))
            return f"different {column}: baseline {before}, current {after}"
    cells = [column for column in CELL_COLUMNS if column in current and column in baseline]
    before_cells = set(baseline[cells].itertuples(index=False, name=None))
    after_cells = set(current[cells].itertuples(index=False, name=None))
    if before_cells != after_cells:
        only_before = sorted(map(str, before_cells - after_cells))[:3]
        only_after = sorted(map(str, after_cells - before_cells))[:3]
        return (
            f"different requests ({', '.join(cells)}): only in baseline {only_before}, only in current "
            f"{only_after}"
        )
    return None


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
    p_value = paired_p_value(now, before, gate)
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


def _records(gate: MetricGate | ErrorGate, spec: GateSpec, frame: pd.DataFrame) -> pd.DataFrame | str:
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
    return comparability_problem(current, baseline, spec.may_differ)


def _error_result(gate: ErrorGate, spec: GateSpec, inputs: GateInputs) -> GateResult:
    current = _records(gate, spec, inputs.current)
    if isinstance(current, str):
        return GateResult(gate.label, Outcome.REFUSED, f"{gate.label}: {current}")
    group_by = spec.group_by if gate.group_by is None else gate.group_by
    groups = [
        _error_rate(gate, _group_name(str(pipeline), group_by, key), group)
        for pipeline, records in current.groupby("pipeline", sort=True)
        for key, group in _groups(records, group_by)
    ]
    problem = segment_problem(current)
    if problem:
        groups.append(GroupResult("run", Outcome.REFUSED, problem))
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
    if isinstance(gate, ErrorGate):
        return _error_result(gate, spec, inputs)
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
