"""A parity sweep's report: one row per request (fixture × mode × voice), each with its verdict and first
failing stage, and the aggregate over them: how many requests gave the reference's codes, where the
failures and code divergences cluster, and how many divergences fall in each class (compare.FlipKind).

The per-request reports are ordinary parity reports in subdirectories named by `SweepRow.request`; this module
only summarises them (sweep.json, sweep.md, sweep.html beside them)."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qtts_eval.parity.compare import FlipKind
from qtts_eval.parity.run import ParityResult, Verdict

ERROR = "error"  # verdict of a request that raised before it could be compared (named in `note`)
SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.html")
TALKER_CODEBOOK = 0  # codebook 0 is chosen by the talker, 1-15 by the code predictor


@dataclass(frozen=True)
class GroupFailure:
    """The first failing stage of one failing stage group in one run of a request."""

    run: str  # "free" or "forced" (the comparison's mode)
    group: str  # pipeline stage group, e.g. "talker"
    stage: str  # dump key of its first failing stage
    onset: str  # where a time series first leaves the tolerance, in words ("" when not a time series)

    def describe(self) -> str:
        return f"{self.run} {self.group} at {self.stage}" + (f" (from {self.onset})" if self.onset else "")


@dataclass(frozen=True)
class SweepRow:
    """One request of a sweep."""

    request: str  # subdirectory holding its parity report, e.g. "en_short-icl-slt"
    text_id: str  # text fixture id ("" for a --text given on the command line)
    mode: str  # voice-clone mode
    voice: str  # fixture voice
    verdict: str  # Verdict value, or ERROR
    first_failing_stage: str | None  # dump key of the first failing stage (free run first, then forced)
    first_failing_group: str | None  # its pipeline stage group
    codes_exact: float | None  # free run: fraction of codes equal to the reference over the common frames
    frames: int | None  # free run: frames the candidate produced
    reference_frames: int | None  # frames the reference produced
    first_divergence: str | None  # free run: "frame F codebook C" of the first differing generated code
    divergence_kinds: tuple[str, ...]  # FlipKind of each free-run code divergence (clip, generated)
    note: str  # the report's verdict line, or the error
    group_failures: tuple[GroupFailure, ...] = ()  # every failing group of each run, free run first

    @property
    def same_codes(self) -> bool:
        """Every generated code equal on the frames both produced (a frame-count difference is shown apart:
        the report says whether it is a convention, such as a port returning the whole budget)."""
        return self.codes_exact == 1.0

    @property
    def frames_differ(self) -> bool:
        return self.frames is not None and self.frames != self.reference_frames

    @classmethod
    def of(cls, request: str, text_id: str, result: ParityResult) -> SweepRow:
        meta = result.reference.meta
        codes = result.free.stage("codes")
        metrics = codes.metrics if codes is not None else {}
        first = result.first_failure
        generated = next((d for d in result.free.divergences if d.key == "codes"), None)
        return cls(
            request=request,
            text_id=text_id,
            mode=meta.clone_mode,
            voice=meta.voice,
            verdict=result.verdict.value,
            first_failing_stage=None if first is None else first.key,
            first_failing_group=None if first is None else first.group,
            codes_exact=metrics.get("exact"),
            frames=_int(metrics.get("frames")),
            reference_frames=_int(metrics.get("reference_frames")),
            first_divergence=None
            if generated is None
            else f"frame {generated.frame} codebook {generated.codebook}",
            divergence_kinds=tuple(d.kind.value for d in result.free.divergences),
            note=result.verdict_line(),
            group_failures=tuple(
                GroupFailure(c.mode, stage.group, stage.key, stage.onset)
                for c in result.comparisons
                for stage in c.group_failures
            ),
        )

    @classmethod
    def failed(cls, request: str, text_id: str, mode: str, voice: str, error: str) -> SweepRow:
        return cls(request, text_id, mode, voice, ERROR, None, None, None, None, None, None, (), error)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: who was compared, under which profile, and every request's row."""

    candidate: str  # as named on the command line
    profile: str  # tolerance profile name
    model: str  # the reference's model ref
    rows: tuple[SweepRow, ...]  # in the order run

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.verdict == Verdict.PASS.value for row in self.rows)

    def aggregate(self) -> dict[str, Any]:
        """Counts over the rows: verdicts, same codes, differing frame counts, failing stages, divergence
        kinds and places, and passes per mode, voice and text."""
        kinds = Counter(kind for row in self.rows for kind in row.divergence_kinds)
        places = Counter(
            "talker (codebook 0)" if row.first_divergence.endswith(f"codebook {TALKER_CODEBOOK}")
            else "code predictor (codebooks 1-15)"
            for row in self.rows if row.first_divergence is not None
        )  # fmt: skip
        return {
            "requests": len(self.rows),
            "verdicts": dict(Counter(row.verdict for row in self.rows)),
            "same_codes": sum(row.same_codes for row in self.rows),
            "frames_differ": sum(row.frames_differ for row in self.rows),
            "first_failing_stages": dict(
                Counter(row.first_failing_stage for row in self.rows if row.first_failing_stage).most_common()
            ),
            "first_failing_groups": dict(
                Counter(row.first_failing_group for row in self.rows if row.first_failing_group).most_common()
            ),
            "divergences": {kind.value: kinds.get(kind.value, 0) for kind in FlipKind},
            "first_divergence_in": dict(places.most_common()),
            "passed_by_mode": _passed_by(self.rows, "mode"),
            "passed_by_voice": _passed_by(self.rows, "voice"),
            "passed_by_text": _passed_by(self.rows, "text_id"),
        }

    def headline(self) -> str:
        """One line: how many passed, how many gave the reference's codes exactly, how divergences split."""
        data = self.aggregate()
        verdicts = ", ".join(f"{count} {verdict}" for verdict, count in data["verdicts"].items())
        kinds = data["divergences"]
        return (
            f"{data['requests']} requests: {verdicts}; codes equal on the common frames in "
            f"{data['same_codes']}, frame counts differ in {data['frames_differ']}; "
            "divergences: " + ", ".join(f"{kinds[k.value]} {k.value.replace('_', ' ')}" for k in FlipKind)
        )


def _passed_by(rows: Sequence[SweepRow], field: str) -> dict[str, str]:
    totals: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    for row in rows:
        value = getattr(row, field) or "(text)"
        totals[value] += 1
        passed[value] += row.verdict == Verdict.PASS.value
    return {value: f"{passed[value]}/{total}" for value, total in totals.items()}


def to_json(sweep: Sweep) -> dict[str, Any]:
    return {
        "candidate": sweep.candidate,
        "profile": sweep.profile,
        "model": sweep.model,
        "passed": sweep.passed,
        "headline": sweep.headline(),
        "aggregate": sweep.aggregate(),
        "rows": [asdict(row) for row in sweep.rows],
    }


_COLUMNS = ("request", "verdict", "first failing stage", "codes exact", "frames", "first divergence", "note")


def _cells(row: SweepRow) -> tuple[str, ...]:
    exact = "" if row.codes_exact is None else f"{row.codes_exact:.1%}"
    frames = "" if row.frames is None else f"{row.frames} (ref {row.reference_frames})"
    stage = row.first_failing_stage or ""
    return (row.request, row.verdict, stage, exact, frames, row.first_divergence or "", row.note)


def _aggregate_lines(sweep: Sweep) -> list[str]:
    data = sweep.aggregate()
    lines = [sweep.headline()]
    if data["first_failing_stages"]:
        stages = ", ".join(f"{key} ({count})" for key, count in data["first_failing_stages"].items())
        lines.append(f"First failing stage: {stages}")
    if data["first_divergence_in"]:
        places = ", ".join(f"{place} ({count})" for place, count in data["first_divergence_in"].items())
        lines.append(f"First generated-code divergence in: {places}")
    for label, key in (("mode", "passed_by_mode"), ("voice", "passed_by_voice"), ("text", "passed_by_text")):
        lines.append(f"Passed by {label}: " + ", ".join(f"{k} {v}" for k, v in data[key].items()))
    return lines


def to_markdown(sweep: Sweep) -> str:
    lines = [
        f"# Parity sweep: {sweep.candidate}",
        "",
        f"**{'PASS' if sweep.passed else 'FAIL'}** (profile `{sweep.profile}`, reference `{sweep.model}`)",
        "",
        *(f"- {line}" for line in _aggregate_lines(sweep)),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in sweep.rows:
        cells = list(_cells(row))
        cells[0] = f"[{row.request}]({row.request}/report.md)"
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


_VERDICT_COLOURS = {"pass": "#d4f4d4", "fail": "#f8d0d0", "unclassified": "#f8ecc8", ERROR: "#f0b0b0"}


def to_html(sweep: Sweep) -> str:
    """A single HTML file; each request links to its own report.html."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Parity sweep: {esc(sweep.candidate)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
        f"<h1>Parity sweep: {esc(sweep.candidate)}</h1>",
        f"<p id='verdict'><b>{'PASS' if sweep.passed else 'FAIL'}</b> — profile <code>{esc(sweep.profile)}"
        f"</code>, reference model <code>{esc(sweep.model)}</code></p>",
        "<ul id='aggregate'>",
        *(f"<li>{esc(line)}</li>" for line in _aggregate_lines(sweep)),
        "</ul><table><tr>",
        *(f"<th>{esc(column)}</th>" for column in _COLUMNS),
        "</tr>",
    ]
    for row in sweep.rows:
        cells = [esc(cell) for cell in _cells(row)]
        if row.verdict != ERROR:
            cells[0] = f"<a href='{esc(row.request)}/report.html'>{cells[0]}</a>"
        colour = _VERDICT_COLOURS.get(row.verdict, "#eeeeee")
        parts.append(f"<tr style='background:{colour}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_sweep_reports(sweep: Sweep, out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.md and sweep.html under `out_dir`; returns their paths by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: out_dir / name for name in SWEEP_FILES}
    paths["json"].write_text(json.dumps(to_json(sweep), indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(to_markdown(sweep), encoding="utf-8")
    paths["html"].write_text(to_html(sweep), encoding="utf-8")
    return paths
