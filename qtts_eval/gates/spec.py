"""Gates files: the four kinds of gate and their settings, read from TOML (format: docs/gates.md).

- an absolute limit on a statistic of a record column (``first_byte_s`` p95 at most 0.25 s);
- a relative limit against a baseline run (``rtf`` median at most 10 % worse);
- an error-rate limit (share of requests whose status is not ``ok``);
- a parity verdict (the ``report.json`` of ``qtts-eval parity`` says ``pass``).

Every problem in a file is refused naming the gate it is in. Evaluating them: qtts_eval.gates.evaluation.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtts_eval.errors import GateError, StatsError
from qtts_eval.metrics.stats import PairedTest, check_statistic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    import tomli as tomllib

DEFAULT_ALPHA = 0.05  # significance of the one-sided paired test a regression needs
# A calibrated threshold is this many times the spread between identical baseline runs: a working value
# that keeps run-to-run noise (spread x 1) well inside the threshold.
DEFAULT_NOISE_FACTOR = 2.0
DEFAULT_GROUP_BY = ("fixture_id", "mode")  # record columns a gate splits each pipeline's records by


class Better(str, enum.Enum):
    """Which direction of a metric is an improvement."""

    LOWER = "lower"  # latency, RTF, memory
    HIGHER = "higher"  # similarity, match rates


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
    def test(self) -> PairedTest:
        return PairedTest.for_statistic(self.statistic)


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
class GoodputGate:
    """A floor on a load run's goodput per group: the share of its requests that met the SLO the run was made
    against (`qtts-eval load --slo`: the records' info_meets_slo; a failed request never meets it)."""

    min_goodput: float = 1.0  # required share of requests within the SLO, in (0, 1]
    pipeline: str | None = None  # only this pipeline's records; None: every pipeline, each on its own
    group_by: tuple[str, ...] | None = None  # record columns to group by; None: the file's setting
    name: str = ""  # display name and pytest id; derived when empty

    @property
    def label(self) -> str:
        return self.name or f"goodput >= {self.min_goodput:g}"


@dataclass(frozen=True)
class ParityGate:
    """The verdict of a parity report (``qtts-eval parity`` writes report.json)."""

    expect: str = "pass"  # required verdict
    report: Path | None = None  # report.json; relative to the gates file. A --parity option overrides it
    name: str = ""  # display name and pytest id; derived when empty

    @property
    def label(self) -> str:
        return self.name or f"parity == {self.expect}"


Gate = MetricGate | ErrorGate | GoodputGate | ParityGate


@dataclass(frozen=True)
class GateSpec:
    """A parsed gates file."""

    gates: tuple[Gate, ...]  # in file order
    alpha: float = DEFAULT_ALPHA  # significance of the paired test for baseline comparisons
    noise_factor: float = DEFAULT_NOISE_FACTOR  # calibrated threshold = factor x baseline run spread
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY  # record columns every gate groups by unless it says
    may_differ: frozenset[str] = frozenset()  # extra env_ columns allowed to differ between runs
    path: Path | None = None  # where it was read from


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
_GOODPUT_KEYS = {"min_goodput", "pipeline", "group_by"}
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
    except StatsError as exc:
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


def _goodput_gate(where: str, raw: Mapping[str, Any]) -> GoodputGate:
    _unknown(where, raw, _GOODPUT_KEYS, "a goodput gate")
    share = _number(where, "min_goodput", raw["min_goodput"])
    if not 0 < share <= 1:
        raise GateError(f"{where}: min_goodput is a share in (0, 1], got {share}")
    return GoodputGate(
        min_goodput=share,
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
        elif "min_goodput" in raw:
            gates.append(_goodput_gate(where, raw))
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
