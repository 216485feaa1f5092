"""Head-to-head: a candidate against the reference in the same run, or a run against a baseline run.

Requests are paired on what they asked for (fixture, voice, mode, repeat), so every ratio compares like with
like. Per fixture and mode, and over all pairs, it reports the median of the paired ratios candidate /
baseline of first_playable (the headline: ports ramp their first chunks differently, so first byte alone
misleads), first byte, RTF and peak memory, each with a bootstrap interval (qtts_eval.metrics.stats); the
share of pairs that produced the same codes; errors on both sides; flags for any sign that the two did
different work or failed (the command exits 1 on one); and notes for documented conventions that are not
faults (a port returning the whole frame budget, docs/parity.md). The two sides must be comparable
(qtts_eval.comparability): the same machine and commit for two pipelines of one run, the same machine, stack,
model, settings and cells for a baseline run; otherwise the comparison is refused, naming the difference.
"""

from __future__ import annotations

import difflib
import enum
import html
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval import comparability
from qtts_eval.bench import REFERENCE
from qtts_eval.errors import ResultsError
from qtts_eval.metrics.same_work import WorkDifference, work_differences
from qtts_eval.metrics.stats import Percentile, format_percentile, percentile_ci
from qtts_eval.summary import ms_per_frame

PAIR_KEYS = ("fixture_id", "voice_id", "mode", "repeat")  # what a request asked for, whoever answered it
# Headline first. peak_mem_bytes divides only pairs of one kind; nvml_mem_bytes is one kind on both sides
# (NVML, every process of each pipeline): VRAM like for like on CUDA.
RATIO_METRICS = ("first_playable_s", "first_byte_s", "rtf", "peak_mem_bytes", "nvml_mem_bytes")
ALL = "(all)"  # the row over every pair


class Flag(str, enum.Enum):
    """Why a row's speed cannot be read as "the same work, faster or slower"."""

    CODES_DIFFER = "codes_differ"  # some pair produced different codes on frames both sides produced
    STOPS_EARLIER = "stops_earlier"  # the candidate generated fewer frames than the baseline
    # More frames than the baseline, beyond the budget convention (Note.WHOLE_BUDGET): a runaway, or a stop
    # the baseline did not make.
    STOPS_LATER = "stops_later"
    ERRORS = "errors"  # some candidate request failed
    BASELINE_ERRORS = "baseline_errors"  # some baseline request failed: its pairs compare nothing
    NO_CODES = "no_codes"  # no codes to compare: same work is unknown, not assumed
    # The two sides declared (or were seen doing) different work: metrics.same_work.WorkDifference.
    PROMPT_CACHE_DIFFERS = WorkDifference.PROMPT_CACHE_DIFFERS.value
    DELIVERY_DIFFERS = WorkDifference.DELIVERY_DIFFERS.value
    LAYOUT_DIFFERS = WorkDifference.LAYOUT_DIFFERS.value
    INSTRUMENTATION_DIFFERS = WorkDifference.INSTRUMENTATION_DIFFERS.value
    THREADS_DIFFER = WorkDifference.THREADS_DIFFER.value
    PRECISION_DIFFERS = WorkDifference.PRECISION_DIFFERS.value
    MEMORY_KIND_DIFFERS = WorkDifference.MEMORY_KIND_DIFFERS.value


class Note(str, enum.Enum):
    """A documented convention a row shows that is not a fault: it never makes the comparison fail."""

    # The frame-budget convention (docs/parity.md): capped at budget N, the reference returns N - 1 frames and
    # a port that honours the budget literally returns N, one more, with the same codes on the common frames.
    WHOLE_BUDGET = "whole_budget"
    # The same convention as the two sides declared it (work_budget_convention): named, never failing.
    BUDGET_CONVENTION_DIFFERS = WorkDifference.BUDGET_CONVENTION_DIFFERS.value


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the records of one pipeline."""

    label: str  # how tables name it ("websocket", "reference", "baseline run 2026...")
    frame: pd.DataFrame  # its records (qtts_eval.results.load_run), one pipeline only


def pick_candidate(names: Collection[str], wanted: str | None, baseline: str | None) -> str:
    """The pipeline to compare: `wanted` when given (a misspelling gets a suggestion), else the run's only
    pipeline other than `baseline` (None: the run's only pipeline)."""
    present = sorted(str(name) for name in names)
    if wanted:
        if wanted not in present:
            close = difflib.get_close_matches(wanted, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ResultsError(f"no {wanted!r} records in this run{hint} Its pipelines: {', '.join(present)}")
        return wanted
    others = [name for name in present if name != baseline]
    if len(others) != 1:
        raise ResultsError(f"name the pipeline to compare (the candidate); this run has {', '.join(others)}")
    return others[0]


def within_run(
    frame: pd.DataFrame, candidate: str, baseline: str = "reference", may_differ: Iterable[str] = ()
) -> tuple[Side, Side]:
    """Two pipelines of one run; the candidate's records carry same-work columns against the reference.
    Refused when the two were not measured on one machine and commit (comparability.Scope.PIPELINES)."""
    names = set(frame["pipeline"])
    for name in (candidate, baseline):
        if name not in names:
            raise ResultsError(f"pipeline {name!r} is not in this run; it has {', '.join(sorted(names))}")
    if candidate == baseline:
        raise ResultsError(
            "candidate and baseline are the same pipeline; name another, or give --baseline-run"
        )
    sides = (
        Side(candidate, frame[frame["pipeline"] == candidate]),
        Side(baseline, frame[frame["pipeline"] == baseline]),
    )
    _check(sides, comparability.Scope.PIPELINES, may_differ)
    return sides


def between_runs(
    current: pd.DataFrame,
    before: pd.DataFrame,
    pipeline: str,
    labels: tuple[str, str] = ("current", "baseline run"),
    may_differ: Iterable[str] = (),
) -> tuple[Side, Side]:
    """One pipeline's records in a run and in a baseline run. Refused when the runs are not comparable
    (comparability.Scope.RUNS: another machine, GPU, stack, model, setting, candidate or cells) unless
    ``may_differ`` names the env_ columns that differ on purpose."""
    if pipeline not in set(before["pipeline"]):
        present = ", ".join(sorted(map(str, set(before["pipeline"]))))
        raise ResultsError(f"the baseline run has no {pipeline!r} records; it has {present}")
    sides = (
        Side(f"{pipeline} ({labels[0]})", current[current["pipeline"] == pipeline]),
        Side(f"{pipeline} ({labels[1]})", before[before["pipeline"] == pipeline]),
    )
    _check(sides, comparability.Scope.RUNS, may_differ)
    return sides


def _check(sides: tuple[Side, Side], scope: comparability.Scope, may_differ: Iterable[str]) -> None:
    candidate, baseline = sides
    found = comparability.difference(
        baseline.frame, candidate.frame, scope, may_differ, names=(baseline.label, candidate.label)
    )
    if found is not None:
        allow = (
            f"; to compare anyway, allow it: --may-differ {found.column}"
            if found.column.startswith("env_")
            else ""
        )
        raise ResultsError(
            f"{candidate.label} and {baseline.label} are not comparable: {found.message}{allow}"
        )


def compare(candidate: Side, baseline: Side) -> pd.DataFrame:
    """One row per (fixture_id, mode) and one over all pairs; see the module docstring."""
    pairs = candidate.frame.merge(baseline.frame, on=list(PAIR_KEYS), suffixes=("", "_base"))
    if pairs.empty:
        raise ResultsError(
            f"{candidate.label} and {baseline.label} share no request (fixture, voice, mode, repeat) to pair"
        )
    rows = [_row(ALL, ALL, pairs)]
    for (fixture, mode), group in pairs.groupby(["fixture_id", "mode"], sort=True):
        rows.append(_row(str(fixture), str(mode), group))
    return pd.DataFrame(rows)


def ok_pairs(candidate: Side, baseline: Side) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each side's records of the requests both sides answered ok: the same work on both sides, so one
    side's median beside the other's compares like with like (a mode one side refused drops out of both)."""
    keys = list(PAIR_KEYS)
    ok = [side.frame[side.frame["status"] == "ok"] for side in (candidate, baseline)]
    both = ok[0][keys].merge(ok[1][keys], on=keys)
    return ok[0].merge(both, on=keys), ok[1].merge(both, on=keys)


def _ratio(pairs: pd.DataFrame, metric: str) -> Percentile:
    both = pairs[(pairs["status"] == "ok") & (pairs["status_base"] == "ok")]
    if metric not in both or f"{metric}_base" not in both:
        return percentile_ci([], 50.0)
    # Bytes of different kinds do not divide (memory_kind_differs): only pairs of the same kind count.
    if metric == "peak_mem_bytes" and "peak_mem_kind" in both:
        both = both[both["peak_mem_kind"] == both["peak_mem_kind_base"]]
    candidate = both[metric].to_numpy(dtype=np.float64, na_value=np.nan)
    baseline = both[f"{metric}_base"].to_numpy(dtype=np.float64, na_value=np.nan)
    usable = np.isfinite(candidate) & np.isfinite(baseline) & (baseline > 0)
    return percentile_ci((candidate[usable] / baseline[usable]).tolist(), 50.0)


def _same_codes(pairs: pd.DataFrame) -> pd.Series:
    """Per pair: True when the codes are equal on every frame both sides produced, False when not, NA when
    unknown. Against the same run's reference the candidate's own record says where its codes first left the
    reference's (first_divergent_frame), so a frame that only one side produced (the frame-budget convention:
    the stops_earlier / stops_later flags) is not counted as different codes; otherwise by digest, all
    frames, or budget - 1 of a candidate that returned the whole budget beside a budget - 1 baseline."""
    same = pd.Series(pd.NA, index=pairs.index, dtype="boolean")
    if "codes_digest" in pairs and "codes_digest_base" in pairs:
        known = pairs["codes_digest"].notna() & pairs["codes_digest_base"].notna()
        same = (pairs["codes_digest"] == pairs["codes_digest_base"]).astype("boolean").where(known, pd.NA)
        if "codes_digest_trimmed" in pairs:
            # The candidate's whole budget against the baseline's budget - 1: the common frames decide.
            whole = pd.Series(_whole_budget(pairs), index=pairs.index)
            trimmed = whole & pairs["codes_digest_trimmed"].notna()
            same = same.mask(trimmed, pairs["codes_digest_trimmed"] == pairs["codes_digest_base"])
    if {"codes_match_reference", "first_divergent_frame", "run_id"} <= set(pairs.columns):
        against_reference = (
            (pairs["run_id"] == pairs["run_id_base"])
            & (pairs["pipeline_base"] == REFERENCE)
            & pairs["codes_match_reference"].notna()
        )
        common = np.minimum(pairs["frames_generated"], pairs["frames_generated_base"])
        diverged = pairs["first_divergent_frame"]
        same_common = (diverged.isna() | (diverged >= common)).astype("boolean")
        same = same_common.where(against_reference, same)
    return same


def _whole_budget(pairs: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Per pair: the candidate returned the whole frame budget where the baseline returned budget - 1."""
    if "frame_budget" not in pairs:
        return np.zeros(len(pairs), dtype=bool)
    frames = pairs["frames_generated"].to_numpy(dtype=np.float64, na_value=np.nan)
    base = pairs["frames_generated_base"].to_numpy(dtype=np.float64, na_value=np.nan)
    budget = pairs["frame_budget"].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray((frames == budget) & (base == budget - 1), dtype=bool)


def _work_differences(pairs: pd.DataFrame) -> list[WorkDifference]:
    """Every way some pair's two sides did different work, in WorkDifference order."""
    found: set[WorkDifference] = set()
    for pair in pairs.to_dict(orient="records"):
        candidate = {str(key): value for key, value in pair.items()}
        baseline = {
            str(key).removesuffix("_base"): value for key, value in pair.items() if str(key).endswith("_base")
        }
        found.update(work_differences(candidate, baseline))
    return [difference for difference in WorkDifference if difference in found]


def _frame_time(ok: pd.DataFrame, suffix: str) -> tuple[float, float]:
    """One side's median ms per frame over the ok pairs, and the median of its ratio to that side's roofline
    floor (NaN where the records have no wall time or no floor)."""
    if f"wall_s{suffix}" not in ok:
        return float("nan"), float("nan")
    ms = ms_per_frame(
        pd.DataFrame({"wall_s": ok[f"wall_s{suffix}"], "frames_generated": ok[f"frames_generated{suffix}"]})
    )
    floor_column = f"roofline_floor_frame_s{suffix}"
    floor = 1000.0 * ok[floor_column].astype("float64") if floor_column in ok else pd.Series(np.nan, ok.index)
    return float(ms.median()), float((ms / floor).median())


def _row(fixture: str, mode: str, pairs: pd.DataFrame) -> dict[str, object]:
    ok = pairs[(pairs["status"] == "ok") & (pairs["status_base"] == "ok")]
    same = _same_codes(ok).dropna()
    frames = ok["frames_generated"].to_numpy(dtype=np.float64) - ok["frames_generated_base"].to_numpy(
        dtype=np.float64
    )
    convention = _whole_budget(ok)
    errors = int((pairs["status"] != "ok").sum())
    errors_base = int((pairs["status_base"] != "ok").sum())
    flags, notes = [], []
    if len(same) and not bool(same.all()):
        flags.append(Flag.CODES_DIFFER)
    if (frames < 0).any():
        flags.append(Flag.STOPS_EARLIER)
    if ((frames > 0) & ~convention).any():
        flags.append(Flag.STOPS_LATER)
    if (frames > 0).any() and convention.any():
        notes.append(Note.WHOLE_BUDGET)
    if errors:
        flags.append(Flag.ERRORS)
    if errors_base:
        flags.append(Flag.BASELINE_ERRORS)
    if len(ok) and not len(same):
        flags.append(Flag.NO_CODES)
    for difference in _work_differences(pairs):
        if difference is WorkDifference.BUDGET_CONVENTION_DIFFERS:
            notes.append(Note.BUDGET_CONVENTION_DIFFERS)
        else:
            flags.append(Flag(difference.value))
    row: dict[str, object] = {
        "fixture_id": fixture,
        "mode": mode,
        "pairs": len(pairs),
        "errors": errors,
        "errors_base": errors_base,
        "codes_match": float(same.mean()) if len(same) else float("nan"),
        "frames_diff_max": float(np.max(np.abs(frames))) if frames.size else float("nan"),
        "flags": ",".join(flag.value for flag in flags),
        "notes": ",".join(note.value for note in notes),
    }
    for side, suffix in (("", ""), ("_base", "_base")):
        row[f"ms_per_frame{side}"], row[f"x_floor{side}"] = _frame_time(ok, suffix)
    for metric in RATIO_METRICS:
        p = _ratio(pairs, metric)
        row[f"{metric}_ratio"], row[f"{metric}_low"], row[f"{metric}_high"], row[f"{metric}_n"] = (
            p.value,
            p.low,
            p.high,
            p.n,
        )
    return row


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells: ratios as 'median [low, high]', codes match in percent."""
    shown = table[["fixture_id", "mode", "pairs", "errors"]].copy()
    shown["baseline errors"] = table["errors_base"]
    for metric in RATIO_METRICS:
        shown[metric.removesuffix("_s").removesuffix("_bytes") + " x"] = [
            format_percentile(
                Percentile(
                    50.0, r[f"{metric}_ratio"], r[f"{metric}_low"], r[f"{metric}_high"], r[f"{metric}_n"]
                ),
                digits=3,
            )
            for r in table.to_dict(orient="records")
        ]
    for label, side in (("ms/frame", ""), ("baseline ms/frame", "_base")):
        shown[label] = [
            _frame_cell(r[f"ms_per_frame{side}"], r[f"x_floor{side}"]) for r in table.to_dict("records")
        ]
    shown["codes match"] = ["-" if np.isnan(v) else f"{100 * v:.0f} %" for v in table["codes_match"]]
    shown["flags"] = [flags or "-" for flags in table["flags"]]
    shown["notes"] = [notes or "-" for notes in table["notes"]]
    return shown


def _frame_cell(ms: float, x_floor: float) -> str:
    """'12.3 (4.1x floor)': ms per frame and its ratio to the roofline floor, where there is one."""
    if np.isnan(ms):
        return "-"
    return f"{ms:.1f}" if np.isnan(x_floor) else f"{ms:.1f} ({x_floor:.1f}x floor)"


def title(candidate: Side, baseline: Side) -> str:
    return f"{candidate.label} vs {baseline.label}: median of paired ratios [95 % bootstrap interval]"


def to_text(table: pd.DataFrame) -> str:
    return _display(table).to_string(index=False)


def to_markdown(table: pd.DataFrame, heading: str) -> str:
    shown = _display(table)
    lines = [f"## {heading}", "", "| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, heading: str) -> str:
    body = _display(table).to_html(index=False, escape=True, border=0)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>qtts-eval compare</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style></head>"
        f"<body><h2>{html.escape(heading)}</h2>{body}</body></html>\n"
    )


def work_differs(table: pd.DataFrame) -> list[str]:
    """The rows whose two sides did different work, as "fixture/mode: flag, flag" (compare --same-work)."""
    names = {difference.value for difference in WorkDifference}
    found = []
    for row in table.to_dict(orient="records"):
        differing = [flag for flag in str(row["flags"]).split(",") if flag in names]
        if differing:
            found.append(f"{row['fixture_id']}/{row['mode']}: {', '.join(differing)}")
    return found


def flagged(table: pd.DataFrame) -> bool:
    """Any row says the two sides did different work, or either side failed (notes never count)."""
    return bool((table["flags"] != "").any())


def error_lines(candidate: Side, baseline: Side) -> list[str]:
    """One line per side with failed requests: how many of its requests, and the first error."""
    lines = []
    for side in (candidate, baseline):
        failed = side.frame[side.frame["status"] != "ok"]
        if len(failed):
            reasons = failed["error"].dropna() if "error" in failed else pd.Series(dtype=object)
            first = str(reasons.iloc[0]) if len(reasons) else str(failed["status"].iloc[0])
            lines.append(
                f"{side.label}: {len(failed)} of {len(side.frame)} requests failed; first: {first[:200]}"
            )
    return lines
