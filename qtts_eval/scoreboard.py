"""The scoreboard: every installable candidate judged by one command, on the same weights, part by part.

Rows: every registry candidate this machine can run (Support.ADAPTER on its device) and every extra SPEC: a
registry name, `reference` (the official package served by the suite's own worker: the control row) or
`fault:NAME` (the reference with a planted fault, qtts_eval.parity.faults). Each row is scored in parts:

  install         its environment is ready (`install=True` builds a missing one); served rows need none
  conformance     the protocol rules (qtts_eval.wire.conformance) on its worker command
  parity-icl      a parity sweep (qtts_eval.parity.session.run_sweep) over the fixtures in ICL mode
  parity-xvector  the same in x-vector mode; each mode in the prompt layout the port builds for it
  bench           a same-work bench against the in-process reference (qtts_eval.bench: greedy, repetition
                  penalty 1.0, the port's prompt layout asked of both sides), its head-to-head
                  (qtts_eval.compare) and each side's own medians

Output directory::

    OUT/settings.json             what was asked (SETTINGS_FILE); `--resume OUT` scores exactly this again
    OUT/<row>/<part>.json         one part's PartResult, written atomically the moment the part ends
    OUT/<row>/<part>/             what the part wrote: conformance.txt, the sweep's reports, the bench run
    OUT/scoreboard.json, .md, .html   the table (SCOREBOARD_FILES), rewritten after every part

scoreboard.json (SCHEMA_VERSION): {schema_version, created_at, updated_at, budget_s, settings (Settings),
machine (environment.fingerprint() of the last invocation that scored a part), written_at_commit (of the
code that wrote the tables), rows: [{candidate, kind, parts: {part: PartResult}}]}. A PartResult's
`data` per part: install {environment, versions}; conformance {rules: [{rule, verdict, detail}], passed,
failed, not_applicable, report}; parity-* {sweep (parity.sweep.to_json), report}; bench {run, report, pairs,
codes_match, flags, notes, errors, errors_base, first_error, ratios: {metric: Stat}, candidate: {metric:
Stat}, reference: {metric: Stat}, memory_kinds: {candidate, reference}}, where a Stat is {value, low, high,
n} (the median and its bootstrap interval, qtts_eval.metrics.stats; low/high null below the minimum n).
Report paths are relative to OUT; "sweep" and "compare" exist as .md and .html.

Resume: a part whose file says `done` or `failed` is finished and kept; `skipped` parts (the budget ran out,
or an earlier part failed) and parts with no file (killed mid-way) run again, and so does a failed install
whose environment has become ready (pip itself runs at most once per scoreboard). The bench part resumes
its own run (qtts_eval.bench.Bench.resume); a finished one has its summary derived again from the run's
records (seconds, nothing measured), so the table shows what the current comparison code makes of them.

Budget: each row gets `budget_s` per invocation. No part starts once it is spent (the rest are `skipped` and
said so), the bench starts no request after it, and the waits on a candidate process are bounded by what is
left; a part already running on the in-process reference finishes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import enum
import html
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qtts_eval import compare, environment
from qtts_eval.bench import REFERENCE, Bench, BenchConfig
from qtts_eval.candidates import envs
from qtts_eval.candidates.registry import CANDIDATES, Candidate, Device, Support, candidate
from qtts_eval.errors import QttsEvalError, ResultsError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.metrics.stats import Percentile, format_percentile, percentile_ci
from qtts_eval.parity.faults import FAULTS
from qtts_eval.parity.session import FAULT_PREFIX, run_sweep, sweep_requests
from qtts_eval.parity.sweep import to_json as sweep_json
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Sampling
from qtts_eval.pipelines.installed import installed
from qtts_eval.results import RUN_FILE, load_run
from qtts_eval.wire.client import Timeouts

SCHEMA_VERSION = 1
SETTINGS_FILE = "settings.json"
SCOREBOARD_FILES = ("scoreboard.json", "scoreboard.md", "scoreboard.html")
CONTROL = "reference"  # the control row's SPEC: the official package behind the suite's own worker
BENCH_RUN = "run"  # the bench part's results run, under its part directory
CONFORMANCE_FILE = "conformance.txt"
COMPARE_FILES = ("compare.md", "compare.html")
# Waits on a candidate process, as conformance's own defaults, each cut to the row's remaining budget.
START_WAIT_S = Timeouts().start_s
MESSAGE_WAIT_S = Timeouts().message_s
MIB = 2**20
DEFAULT_BUDGET_S = 3600.0  # seconds per row per invocation


class Part(str, enum.Enum):
    """One scored part of a row, in the order run."""

    INSTALL = "install"
    CONFORMANCE = "conformance"
    PARITY_ICL = "parity-icl"
    PARITY_XVECTOR = "parity-xvector"
    BENCH = "bench"

    @property
    def mode(self) -> CloneMode:
        """The clone mode of a parity part."""
        return CloneMode.ICL if self is Part.PARITY_ICL else CloneMode.XVECTOR


PARITY_PARTS = (Part.PARITY_ICL, Part.PARITY_XVECTOR)


class Status(str, enum.Enum):
    """How a part ended. Only `done` and `failed` are finished (kept by a resumed scoreboard)."""

    DONE = "done"  # it ran; `data` holds its result (a FAIL verdict or failing rules are still `done`)
    FAILED = "failed"  # it could not run to the end: `reason` says why (not installed, cannot load, crashed)
    SKIPPED = "skipped"  # not run, or stopped early: `reason` says why (budget spent, an earlier part failed)


class Kind(str, enum.Enum):
    """Where a row's implementation comes from."""

    REGISTRY = "registry"  # a public port in its own environment (qtts_eval.candidates)
    SERVED = "served"  # the reference, or a planted fault, served by `qtts-eval worker` from this environment


@dataclass(frozen=True)
class Settings:
    """What a scoreboard scores; stored in settings.json so a resumed one scores exactly the same."""

    candidates: tuple[str, ...]  # row SPECs, in row order (registry rows resolved when it was created)
    model: str = (
        "0.6b-shallow"  # every row's weights: full widths, one layer per stack, so ports load it cheaply
    )
    device: str = "cpu"  # torch device of the in-process reference (and of served rows)
    fixtures: tuple[str, ...] = ("en_short", "zh_short")  # text fixtures of the parity sweeps and the bench
    voice: str = "slt"  # fixture voice every request clones
    parity_frames: int = 4  # frame budget of each parity request
    bench_frames: int = 8  # frame budget of each bench request (random weights run to it)
    conformance_frames: int = 2  # frame budget of each conformance utterance
    repeats: int = 2  # bench repeats of every cell: pairs = fixtures x 2 modes x repeats
    parts: tuple[str, ...] = tuple(part.value for part in Part)  # parts to score; the others are not run
    options: dict[str, Any] = field(default_factory=dict)  # options of registry candidates (threads=1)
    install: bool = False  # build a missing candidate environment (pip) instead of reporting it missing
    pip_args: tuple[str, ...] = ()  # extra pip arguments of such an install (--find-links=DIR)
    causes: str = ""  # TOML file of the causes written next to verdicts (load_causes); "" for none

    def __post_init__(self) -> None:
        for name, value in (
            ("parity_frames", self.parity_frames),
            ("bench_frames", self.bench_frames),
            ("conformance_frames", self.conformance_frames),
            ("repeats", self.repeats),
        ):
            if value < 1:
                raise ResultsError(f"{name} must be at least 1, got {value}")
        known = [part.value for part in Part]
        unknown = [part for part in self.parts if part not in known]
        if unknown:
            raise ResultsError(f"unknown parts {unknown}; known: {', '.join(known)}")
        if not self.candidates:
            raise ResultsError(
                "no candidates to score: none is installable here and no --candidate was given"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Settings:
        values = dict(data)
        for key in ("candidates", "fixtures", "parts", "pip_args"):
            values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class PartResult:
    """One part of one row, as written to OUT/<row>/<part>.json."""

    part: str  # Part value
    status: str  # Status value
    reason: str  # why it failed or was skipped; "" when done
    seconds: float  # wall time it took in the invocation that finished it
    finished_at: str  # UTC ISO-8601
    data: dict[str, Any] = field(default_factory=dict)  # its result (see the module docstring)

    @property
    def finished(self) -> bool:
        return self.status in (Status.DONE.value, Status.FAILED.value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a resumed scoreboard) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with staging.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)


# --- rows ---------------------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def installable_here() -> list[str]:
    """The registry candidates the suite drives (Support.ADAPTER) on a device this machine has."""
    cuda: bool | None = None
    names = []
    for spec in CANDIDATES:
        if spec.support is not Support.ADAPTER:
            continue
        if spec.device is Device.GPU:
            cuda = _cuda() if cuda is None else cuda
            if not cuda:
                continue
        names.append(spec.name)
    return names


def check_spec(spec: str) -> str:
    """`spec` when it names a row (a registry candidate, `reference` or `fault:NAME`); else an error."""
    names = [c.name for c in CANDIDATES]
    if spec == CONTROL or spec in names:
        return spec
    if spec.startswith(FAULT_PREFIX):
        if spec.removeprefix(FAULT_PREFIX) in FAULTS:
            return spec
        raise ResultsError(f"unknown fault {spec!r}; known: {', '.join(FAULT_PREFIX + f for f in FAULTS)}")
    known = [*names, CONTROL, *(FAULT_PREFIX + f for f in FAULTS)]
    close = difflib.get_close_matches(spec, known, n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ResultsError(f"unknown candidate {spec!r}.{hint} Known: {', '.join(known)}")


@dataclass(frozen=True)
class Row:
    """One scored implementation."""

    spec: str  # as named: registry name, "reference" or "fault:NAME"

    @property
    def kind(self) -> Kind:
        return Kind.SERVED if self.spec == CONTROL or self.spec.startswith(FAULT_PREFIX) else Kind.REGISTRY

    @property
    def slug(self) -> str:
        """Its directory under the output directory."""
        return self.spec.replace(":", "-").replace("/", "-")

    @property
    def candidate(self) -> Candidate:
        return candidate(self.spec)

    @property
    def bench_pipeline(self) -> str:
        """The pipeline name its records carry in the bench run: a registry candidate's own, else the worker
        that serves it."""
        return self.spec if self.kind is Kind.REGISTRY else "worker"

    def non_streaming_mode(self, mode: CloneMode) -> bool:
        """The prompt layout both sides run `mode` in: the port's own where it builds one layout, else the
        reference's default."""
        if self.kind is Kind.SERVED or self.candidate.layout_selectable:
            return False
        return mode.value in self.candidate.non_streaming_modes

    def worker_command(self, settings: Settings, options: Mapping[str, Any]) -> list[str]:
        """The command line of its stdio worker (docs/protocol.md), on the scoreboard's weights."""
        if self.kind is Kind.SERVED:
            pipeline = ["--pipeline", self.spec] if self.spec != CONTROL else ["--option", "streaming=true"]
            return [sys.executable, "-m", "qtts_eval", "worker", *pipeline, "--model", settings.model,
                    "--device", settings.device]  # fmt: skip
        from qtts_eval import pipelines
        from qtts_eval.candidates.pipeline import CandidatePipeline

        port = pipelines.create(self.spec, PipelineConfig(model=settings.model, options=dict(options)))
        if not isinstance(port, CandidatePipeline):
            raise ResultsError(f"{self.spec!r} is not an installed candidate")
        port.prepare()  # exports its weights on first use
        return port.command()


# --- parts --------------------------------------------------------------------------------------------------


class OverBudget(QttsEvalError):
    """The row's budget ran out inside a part that can stop early (the bench); it resumes later."""


@dataclass(frozen=True)
class Context:
    """What a part runs with."""

    row: Row
    settings: Settings
    directory: Path  # OUT/<row>/<part>/: everything the part writes
    deadline_ns: int  # time.monotonic_ns() at which the row's budget is spent

    @property
    def remaining_s(self) -> float:
        return max(0.0, (self.deadline_ns - time.monotonic_ns()) / 1e9)

    def wire_options(self) -> dict[str, Any]:
        """The registry candidate's options, with its process waits cut to the remaining budget."""
        waits = {
            "start_timeout_s": max(1.0, min(START_WAIT_S, self.remaining_s)),
            "timeout_s": max(1.0, min(MESSAGE_WAIT_S, self.remaining_s)),
        }
        return {**waits, **self.settings.options}


def missing(name: str) -> list[str]:
    """What stands between candidate `name` and a run, once its environment's suite link points at this
    checkout (as every run of a candidate re-points it: the cache may be shared by several checkouts)."""
    if envs.env_python(name).exists():
        envs.link_suite(name)
    return envs.missing(name)


def _install(context: Context) -> dict[str, Any]:
    row = context.row
    if row.kind is Kind.SERVED:
        return {"environment": "the suite's own (served by `qtts-eval worker`)", "versions": {}}
    problems = missing(row.spec)
    if problems and context.settings.install:
        envs.install(row.spec, extra_pip_args=context.settings.pip_args, log=lambda _line: None)
        problems = missing(row.spec)
    if problems:
        raise ResultsError("; ".join(problems))
    manifest = installed()[row.spec]
    return {"environment": str(envs.env_dir(row.spec)), "versions": manifest.versions}


def _conformance(context: Context) -> dict[str, Any]:
    from qtts_eval.wire.conformance import CheckOptions, Verdict, check_target, format_table

    settings = context.settings
    command = context.row.worker_command(settings, settings.options)
    options = CheckOptions(
        frames=settings.conformance_frames,
        voice=settings.voice,
        model=settings.model,
        timeouts=Timeouts(
            start_s=max(1.0, min(START_WAIT_S, context.remaining_s)),
            message_s=max(1.0, min(MESSAGE_WAIT_S, context.remaining_s)),
        ),
    )
    results = check_target(shlex.join(command), options)
    context.directory.mkdir(parents=True, exist_ok=True)
    report = context.directory / CONFORMANCE_FILE
    write_atomic(report, format_table(results) + "\n")
    count = {verdict: sum(r.verdict is verdict for r in results) for verdict in Verdict}
    return {
        "rules": [{"rule": r.rule, "verdict": r.verdict.value, "detail": r.detail} for r in results],
        "passed": count[Verdict.PASS],
        "failed": count[Verdict.FAIL],
        "not_applicable": count[Verdict.NOT_APPLICABLE],
        "report": f"{context.row.slug}/{Part.CONFORMANCE.value}/{CONFORMANCE_FILE}",
    }


def _parity(part: Part) -> Callable[[Context], dict[str, Any]]:
    def run(context: Context) -> dict[str, Any]:
        settings, row = context.settings, context.row
        requests = sweep_requests(settings.fixtures, [part.mode.value], [settings.voice], None, None)
        overrides = {
            "model": settings.model,
            "max_frames": settings.parity_frames,
            "non_streaming_mode": row.non_streaming_mode(part.mode),
        }
        options = context.wire_options() if row.kind is Kind.REGISTRY else {}
        sweep = run_sweep(
            row.spec,
            context.directory,
            requests,
            overrides,
            device=settings.device,
            candidate_options=options,
        )
        return {"sweep": sweep_json(sweep), "report": f"{row.slug}/{part.value}/sweep"}  # .md and .html

    return run


# Each side's own medians: metric -> (record column or derived, how it is shown).
SIDE_METRICS = ("first_byte_s", "first_playable_s", "rtf", "ms_per_frame", "floor_ratio", "peak_mem_bytes")


def _stat(p: Percentile) -> dict[str, Any]:
    finite = [None if math.isnan(v) else v for v in (p.value, p.low, p.high)]
    return {"value": finite[0], "low": finite[1], "high": finite[2], "n": p.n}


def side_stats(side: pd.DataFrame) -> dict[str, Any]:
    ok = side[side["status"] == "ok"].copy()
    frames = ok["frames_generated"].to_numpy(dtype=np.float64, na_value=np.nan)
    wall = ok["wall_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok["ms_per_frame"] = np.where(frames > 0, 1000.0 * wall / frames, np.nan)
        if "roofline_floor_frame_s" in ok:  # the bandwidth floor of a frame on the run's device (bench)
            floor = ok["roofline_floor_frame_s"].to_numpy(dtype=np.float64, na_value=np.nan)
            ok["floor_ratio"] = ok["ms_per_frame"] / (1000.0 * floor)
    stats = {}
    for metric in SIDE_METRICS:
        values = ok[metric].to_numpy(dtype=np.float64, na_value=np.nan) if metric in ok else np.array([])
        stats[metric] = _stat(percentile_ci(values.tolist(), 50.0))
    return stats


def _kinds(side: pd.DataFrame) -> list[str]:
    if "peak_mem_kind" not in side:
        return []
    return sorted({str(kind) for kind in side["peak_mem_kind"].dropna()})


def _bench(context: Context) -> dict[str, Any]:
    settings, row = context.settings, context.row
    candidate = row.bench_pipeline
    if row.kind is Kind.REGISTRY:
        options: dict[str, Any] = {
            f"{candidate}.{key}": value for key, value in context.wire_options().items()
        }
    else:
        options = {"worker.command": row.worker_command(settings, {})}
    config = BenchConfig(
        pipelines=(REFERENCE, candidate),
        model=settings.model,
        device=settings.device,
        fixtures=settings.fixtures,
        voices=(settings.voice,),
        modes=tuple(mode.value for mode in CloneMode),
        repeats=settings.repeats,
        max_frames=settings.bench_frames,
        non_streaming_modes=tuple(mode.value for mode in CloneMode if row.non_streaming_mode(mode)),
        # Greedy without the repetition penalty: ports apply it differently (docs/ports.md), so with it the
        # same request is not the same work; parity decodes the same way.
        sampling=Sampling(repetition_penalty=1.0),
        speaker_embedder=None,
        asr=None,
        options={"reference.streaming": True, **options},
    )
    run_dir = context.directory / BENCH_RUN
    if (run_dir / RUN_FILE).is_file():
        bench = Bench.resume(run_dir)
    else:
        bench = Bench.create(config, context.directory, BENCH_RUN)
    bench.run(progress=False, deadline_ns=context.deadline_ns)
    left = len(bench.todo())
    if left:
        raise OverBudget(
            f"budget spent with {left} of {len(bench.cells)} bench requests left (resume goes on)"
        )
    return bench_summary(context.directory, row)


def bench_summary(directory: Path, row: Row) -> dict[str, Any]:
    """The bench part's result from its finished run's records (and its compare report): derived again on
    every resume, so the table follows the comparison code, never a stale summary."""
    frame = load_run(directory / BENCH_RUN)
    cand, base = compare.within_run(frame, row.bench_pipeline, REFERENCE)
    table = compare.compare(cand, base)
    heading = compare.title(cand, base)
    write_atomic(directory / COMPARE_FILES[0], compare.to_markdown(table, heading))
    write_atomic(directory / COMPARE_FILES[1], compare.to_html(table, heading))
    overall = table[table["fixture_id"] == compare.ALL].iloc[0].to_dict()
    paired = compare.ok_pairs(cand, base)  # each side's medians over the ratios' pairs: the same requests
    ratios = {
        metric: _stat(
            Percentile(50.0, overall[f"{metric}_ratio"], overall[f"{metric}_low"], overall[f"{metric}_high"],
                       int(overall[f"{metric}_n"]))
        )
        for metric in compare.RATIO_METRICS
    }  # fmt: skip
    return {
        "run": f"{row.slug}/{Part.BENCH.value}/{BENCH_RUN}/",
        "report": f"{row.slug}/{Part.BENCH.value}/compare",  # .md and .html
        "pairs": int(overall["pairs"]),
        "codes_match": None if math.isnan(overall["codes_match"]) else float(overall["codes_match"]),
        "flags": [flag for flag in str(overall["flags"]).split(",") if flag],
        "notes": [note for note in str(overall["notes"]).split(",") if note],
        "errors": int(overall["errors"]),
        "errors_base": int(overall["errors_base"]),
        "first_error": next(iter(compare.error_lines(cand, base)), ""),
        "ratios": ratios,
        "candidate": side_stats(paired[0]),
        "reference": side_stats(paired[1]),
        "memory_kinds": {"candidate": _kinds(cand.frame), "reference": _kinds(base.frame)},
    }


PART_RUNNERS: dict[Part, Callable[[Context], dict[str, Any]]] = {
    Part.INSTALL: _install,
    Part.CONFORMANCE: _conformance,
    Part.PARITY_ICL: _parity(Part.PARITY_ICL),
    Part.PARITY_XVECTOR: _parity(Part.PARITY_XVECTOR),
    Part.BENCH: _bench,
}


# --- the scoreboard -----------------------------------------------------------------------------------------


def part_path(out: Path, row: Row, part: Part) -> Path:
    return out / row.slug / f"{part.value}.json"


def read_part(path: Path) -> PartResult | None:
    """A part's stored result; None when there is none (never run, or killed before it ended)."""
    if not path.is_file():
        return None
    try:
        return PartResult(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ResultsError(
            f"{path}: not a scoreboard part result ({exc}); delete it to score the part again"
        ) from None


def _write_part(path: Path, result: PartResult) -> None:
    write_atomic(path, json.dumps(dataclasses.asdict(result), indent=2, default=str) + "\n")


def _installed_since(row: Row, result: PartResult) -> bool:
    """A failed install whose environment is ready now (installed by hand since): it is scored again. A
    failed install is otherwise kept, so pip runs at most once per scoreboard."""
    failed_install = result.part == Part.INSTALL.value and result.status == Status.FAILED.value
    return failed_install and row.kind is Kind.REGISTRY and not missing(row.spec)


class Scoreboard:
    """A scoreboard directory: create one, or resume one; `run` scores what is not finished."""

    def __init__(self, out: Path, settings: Settings, created_at: str) -> None:
        self.out = out
        self.settings = settings
        self.created_at = created_at
        self.rows = [Row(spec) for spec in settings.candidates]
        self.budget_s = DEFAULT_BUDGET_S  # of the current (or last) `run`
        # The machine of the last invocation that scored a part: a resume that only renders (or derives a
        # bench summary again) on another machine must not claim the measurements as its own.
        self.measured_on: dict[str, Any] | None = None

    @classmethod
    def create(cls, out: Path, settings: Settings) -> Scoreboard:
        """A new scoreboard in `out`; refuses a directory that already holds one (measured results stay)."""
        for spec in settings.candidates:
            check_spec(spec)
        load_fixtures().voice(settings.voice)
        for text_id in settings.fixtures:
            load_fixtures().text(text_id)
        if (out / SETTINGS_FILE).exists():
            raise ResultsError(f"{out} already holds a scoreboard; continue it with --resume {out}")
        board = cls(out, settings, _now())
        write_atomic(out / SETTINGS_FILE, json.dumps(board._header(), indent=2) + "\n")
        return board

    @classmethod
    def resume(cls, out: Path) -> Scoreboard:
        path = out / SETTINGS_FILE
        if not path.is_file():
            raise ResultsError(f"{out}: no {SETTINGS_FILE}; not a scoreboard directory")
        header = json.loads(path.read_text(encoding="utf-8"))
        if header.get("schema_version", 0) > SCHEMA_VERSION:
            raise ResultsError(f"{path}: written by a newer scoreboard (schema {header['schema_version']})")
        board = cls(out, Settings.from_json(header["settings"]), header["created_at"])
        written = out / SCOREBOARD_FILES[0]
        if written.is_file():
            board.measured_on = json.loads(written.read_text(encoding="utf-8")).get("machine")
        return board

    def _header(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": self.created_at,
            "settings": self.settings.to_json(),
        }

    def results(self, row: Row) -> dict[Part, PartResult]:
        found = {}
        for part in Part:
            result = read_part(part_path(self.out, row, part))
            if result is not None:
                found[part] = result
        return found

    def run(self, budget_s: float = DEFAULT_BUDGET_S, log: Callable[[str], None] = print) -> dict[str, Any]:
        """Score every row's unfinished parts in turn, each row within `budget_s` seconds, writing each part
        as it ends; returns scoreboard.json."""
        if budget_s <= 0:
            raise ResultsError(f"the budget must be positive, got {budget_s} s")
        self.budget_s = budget_s
        wanted = [part for part in Part if part.value in self.settings.parts]
        for row in self.rows:
            deadline = time.monotonic_ns() + int(budget_s * 1e9)
            blocked = ""  # why the remaining parts of this row cannot run
            for part in wanted:
                path = part_path(self.out, row, part)
                result = read_part(path)
                if result is None or not result.finished or _installed_since(row, result):
                    result = self._score(row, part, deadline, blocked)
                    if result.finished:  # it ran here (a skip measured nothing)
                        self.measured_on = environment.fingerprint()
                    _write_part(path, result)
                    log(
                        f"{row.spec} {part.value}: {result.status}"
                        + (f" ({result.reason})" if result.reason else "")
                    )
                    self.write()
                elif part is Part.BENCH and result.status == Status.DONE.value:
                    data = bench_summary(self.out / row.slug / part.value, row)  # seconds, from records
                    _write_part(path, dataclasses.replace(result, data=data))
                if part is Part.INSTALL and result.status != Status.DONE.value:
                    blocked = f"not installed ({part.value} {result.status})"
        return self.write()

    def _score(self, row: Row, part: Part, deadline_ns: int, blocked: str) -> PartResult:
        started = time.monotonic_ns()

        def ended(status: Status, reason: str = "", data: dict[str, Any] | None = None) -> PartResult:
            seconds = round((time.monotonic_ns() - started) / 1e9, 3)
            return PartResult(part.value, status.value, reason, seconds, _now(), data or {})

        if time.monotonic_ns() >= deadline_ns:
            return ended(Status.SKIPPED, f"the row's budget of {self.budget_s:g} s was spent")
        if blocked:
            return ended(Status.SKIPPED, blocked)
        context = Context(row, self.settings, self.out / row.slug / part.value, deadline_ns)
        try:
            data = PART_RUNNERS[part](context)
        except OverBudget as exc:
            return ended(Status.SKIPPED, str(exc))
        except Exception as exc:  # a row that cannot install, load or finish gets its reason; others go on
            return ended(Status.FAILED, f"{type(exc).__name__}: {exc}")
        return ended(Status.DONE, data=data)

    def to_json(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            parts = {part.value: dataclasses.asdict(result) for part, result in self.results(row).items()}
            rows.append({"candidate": row.spec, "kind": row.kind.value, "parts": parts})
        return {
            **self._header(),
            "updated_at": _now(),
            "budget_s": self.budget_s,
            "machine": self.measured_on or environment.fingerprint(),
            "written_at_commit": environment.git_commit()[0],
            "rows": rows,
        }

    def write(self) -> dict[str, Any]:
        """scoreboard.json, .md and .html from every part stored so far."""
        data = self.to_json()
        json_path, md_path, html_path = (self.out / name for name in SCOREBOARD_FILES)
        write_atomic(json_path, json.dumps(data, indent=2, default=str) + "\n")
        causes = load_causes(self.settings.causes)
        write_atomic(md_path, to_markdown(data, causes))
        write_atomic(html_path, to_html(data, causes))
        return data


# --- causes: what in a port's code explains a verdict, written by whoever checked it ------------------------


@dataclass(frozen=True)
class Cause:
    """One explained verdict: a row's part and the stage (parity) or rule (conformance) it failed first at."""

    candidate: str  # row SPEC
    part: str  # Part value
    at: str  # first failing stage (parity) or first failing rule (conformance)
    cause: str  # what causes it, with where that was read; or "cause not found" and what was checked


def load_causes(path: str | Path | None) -> dict[tuple[str, str, str], str]:
    """Causes from a TOML file of [[cause]] tables (candidate, part, at, cause); {} without a file."""
    if not path:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 has no tomllib
        import tomli as tomllib
    try:
        entries = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("cause", [])
        causes = [Cause(**entry) for entry in entries]
    except (OSError, ValueError, TypeError) as exc:
        raise ResultsError(
            f"{path}: not a causes file of [[cause]] candidate/part/at/cause tables ({exc})"
        ) from None
    return {(c.candidate, c.part, c.at): c.cause for c in causes}


# --- the table ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and, where it has one, what it links to, relative to OUT: a file, a directory
    (ending in "/": the bench run), or a report written as both .md and .html (no suffix)."""

    text: str
    link: str = ""


def _failed(result: Mapping[str, Any]) -> str:
    return f"{result['status'].upper()}: {result['reason']}"


def _part(row: Mapping[str, Any], part: Part) -> Mapping[str, Any] | None:
    parts: Mapping[str, Any] = row["parts"]
    return parts.get(part.value)


def _install_cell(result: Mapping[str, Any] | None, spec: str) -> Cell:
    if result is None:
        return Cell("not scored")
    if result["status"] != Status.DONE.value:
        return Cell(_failed(result))
    versions: Mapping[str, str] = result["data"]["versions"]
    if not versions:
        return Cell("suite environment")
    port = candidate(spec).requirements[0].partition("==")[0].lower()
    return Cell(f"ready ({port} {versions.get(port, '?')})")


def conformance_at(data: Mapping[str, Any]) -> str:
    """The first failing rule, "" when none failed."""
    return next((rule["rule"] for rule in data["rules"] if rule["verdict"] == "FAIL"), "")


def _conformance_cell(result: Mapping[str, Any] | None) -> Cell:
    if result is None:
        return Cell("not scored")
    if result["status"] != Status.DONE.value:
        return Cell(_failed(result))
    data = result["data"]
    text = f"{data['passed']} pass, {data['failed']} FAIL, {data['not_applicable']} n/a"
    first = conformance_at(data)
    return Cell(text + (f"; first FAIL: {first}" if first else ""), data["report"])


def parity_at(sweep: Mapping[str, Any]) -> list[str]:
    """The distinct first failing stages (or errors) of a sweep's requests, most common first."""
    stages: dict[str, int] = dict(sweep["aggregate"]["first_failing_stages"])
    if any(row["verdict"] == "error" for row in sweep["rows"]):
        stages["error"] = sum(row["verdict"] == "error" for row in sweep["rows"])
    return list(stages)


def _parity_cell(result: Mapping[str, Any] | None) -> Cell:
    if result is None:
        return Cell("not scored")
    if result["status"] != Status.DONE.value:
        return Cell(_failed(result))
    sweep = result["data"]["sweep"]
    verdicts = ", ".join(
        f"{v.upper()} {n}/{len(sweep['rows'])}" for v, n in sweep["aggregate"]["verdicts"].items()
    )
    at = [where for where in parity_at(sweep) if where != "error"]  # an error row says why in its note
    return Cell(verdicts + (f" at {', '.join(at)}" if at else ""), result["data"]["report"])


def _groups(sweep: Mapping[str, Any]) -> str:
    """Every failing group of every request with its first failing stage and onset, counted."""
    counted: dict[str, int] = {}
    for row in sweep["rows"]:
        for failure in row.get("group_failures", ()):
            text = f"{failure['run']} {failure['group']} at {failure['stage']}"
            text += f" (from {failure['onset']})" if failure["onset"] else ""
            counted[text] = counted.get(text, 0) + 1
    return "; ".join(f"{text} ×{n}" if n > 1 else text for text, n in counted.items()) or "-"


def _divergences(sweep: Mapping[str, Any]) -> str:
    kinds = {kind: n for kind, n in sweep["aggregate"]["divergences"].items() if n}
    return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in kinds.items()) or "none"


def _cause(causes: Mapping[tuple[str, str, str], str], spec: str, part: Part, at: Sequence[str]) -> str:
    if not at:
        return "-"
    return " / ".join(causes.get((spec, part.value, where), f"({where}: no cause written)") for where in at)


def _stat_text(stat: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    value, low, high = (
        math.nan if stat[key] is None else float(stat[key]) for key in ("value", "low", "high")
    )
    p = Percentile(50.0, value, low, high, int(stat["n"]))
    text = format_percentile(p, scale, digits)
    return text if not p.has_interval else f"{text} n={p.n}"


def _value(stat: Mapping[str, Any], scale: float, unit: str, digits: int) -> str:
    return "-" if stat["value"] is None else f"{stat['value'] * scale:.{digits}f}{unit}"


# Bench columns: heading, ratio metric (compare) or None, side metric, scale, unit, digits of the side values.
BENCH_COLUMNS = (
    ("first byte", "first_byte_s", "first_byte_s", 1000.0, " ms", 0),
    ("first playable", "first_playable_s", "first_playable_s", 1000.0, " ms", 0),
    ("RTF", "rtf", "rtf", 1.0, "", 2),
    ("ms per frame", None, "ms_per_frame", 1.0, " ms", 0),
    ("x bandwidth floor", None, "floor_ratio", 1.0, "", 1),
    ("peak memory", "peak_mem_bytes", "peak_mem_bytes", 1.0 / MIB, " MiB", 0),
)


def _bench_cells(result: Mapping[str, Any] | None) -> list[Cell]:
    width = len(BENCH_HEADINGS) - 1  # every column but the candidate's
    if result is None:
        return [Cell("not scored")] + [Cell("")] * (width - 1)
    if result["status"] != Status.DONE.value:
        return [Cell(_failed(result))] + [Cell("")] * (width - 1)
    data = result["data"]
    codes = "-" if data["codes_match"] is None else f"{100 * data['codes_match']:.0f} %"
    cells = [Cell(f"{data['pairs']} pairs, codes equal in {codes}", data["report"])]
    for _heading, ratio, side, scale, unit, digits in BENCH_COLUMNS:
        if side not in data["candidate"]:  # a part scored before the column existed
            cells.append(Cell("-"))
            continue
        ours = _value(data["candidate"][side], scale, unit, digits)
        theirs = _value(data["reference"][side], scale, unit, digits)
        if side == "peak_mem_bytes":
            kinds = data["memory_kinds"]
            ours += f" ({', '.join(kinds['candidate']) or '?'})"
            theirs += f" ({', '.join(kinds['reference']) or '?'})"
        text = f"{ours} vs {theirs}"
        if ratio is not None:
            stat = data["ratios"][ratio]
            shown = (
                "kinds differ" if side == "peak_mem_bytes" and stat["n"] == 0 else _stat_text(stat, digits=2)
            )
            text += f"; x {shown}"
        else:  # no paired ratio (it would be RTF's): each side's median with its interval
            text = " vs ".join(
                _stat_text(data[who][side], digits=digits) for who in ("candidate", "reference")
            )
            text += unit
        cells.append(Cell(text))
    errors = f"{data['errors']} / {data['errors_base']}" + (
        f" ({data['first_error']})" if data["first_error"] else ""
    )
    cells += [Cell(", ".join(data["flags"]) or "-"), Cell(", ".join(data["notes"]) or "-"), Cell(errors)]
    return cells


VERDICT_HEADINGS = ("candidate", "install", "conformance", "parity ICL", "parity x-vector")
PARITY_HEADINGS = ("candidate", "mode", "verdict", "first failing stage per group (onset)", "divergences",
                   "codes equal", "cause")  # fmt: skip
BENCH_HEADINGS = ("candidate", "same work", *(c[0] for c in BENCH_COLUMNS), "flags", "notes",
                  "errors port / ref")  # fmt: skip


def tables(
    data: Mapping[str, Any], causes: Mapping[tuple[str, str, str], str]
) -> dict[str, list[list[Cell]]]:
    """The scoreboard's three tables (verdicts, parity detail, bench), as rows of cells."""
    verdicts, parity, bench = [], [], []
    for row in data["rows"]:
        spec = row["candidate"]
        conformance = _part(row, Part.CONFORMANCE)
        conformance_cell = _conformance_cell(conformance)
        if conformance is not None and conformance["status"] == Status.DONE.value:
            at = conformance_at(conformance["data"])
            if at:
                conformance_cell = Cell(
                    f"{conformance_cell.text}; cause: {_cause(causes, spec, Part.CONFORMANCE, [at])}",
                    conformance_cell.link,
                )
        verdicts.append(
            [
                Cell(spec),
                _install_cell(_part(row, Part.INSTALL), spec),
                conformance_cell,
                *(_parity_cell(_part(row, part)) for part in PARITY_PARTS),
            ]
        )
        for part in PARITY_PARTS:
            result = _part(row, part)
            if result is None or result["status"] != Status.DONE.value:
                continue
            sweep = result["data"]["sweep"]
            parity.append(
                [
                    Cell(spec),
                    Cell(part.mode.value),
                    _parity_cell(result),
                    Cell(_groups(sweep)),
                    Cell(_divergences(sweep)),
                    Cell(f"{sweep['aggregate']['same_codes']}/{len(sweep['rows'])}"),
                    Cell(_cause(causes, spec, part, parity_at(sweep))),
                ]
            )
        result = _part(row, Part.BENCH)
        done = result is not None and result["status"] == Status.DONE.value
        run = result["data"]["run"] if result is not None and done else ""  # the bench's results run
        bench.append([Cell(spec, run), *_bench_cells(result)])
    return {"verdicts": verdicts, "parity": parity, "bench": bench}


HEADINGS = {"verdicts": VERDICT_HEADINGS, "parity": PARITY_HEADINGS, "bench": BENCH_HEADINGS}
TITLES = {
    "verdicts": "Verdicts",
    "parity": "Parity: every failing group, divergence classes, causes",
    "bench": "Same-work bench against the reference: port vs reference medians over the requests both "
    "answered ok; x the median of paired ratios port / reference [95 % bootstrap interval] n",
}


def _settings_line(data: Mapping[str, Any]) -> str:
    s = data["settings"]
    machine, written = data["machine"], data.get("written_at_commit")
    commit = str(machine.get("git_commit") or "?")[:12] + (" (dirty)" if machine.get("git_dirty") else "")
    return (
        f"model `{s['model']}` on {s['device']}, fixtures {', '.join(s['fixtures'])}, voice {s['voice']}; "
        f"parity {s['parity_frames']} frames, bench {s['bench_frames']} frames x {s['repeats']} repeats, "
        f"conformance {s['conformance_frames']} frames; budget {data['budget_s']:g} s per candidate; "
        f"options {s['options'] or 'none'}. Machine: {machine.get('cpu') or '?'}, "
        f"{machine.get('gpu_name') or 'no GPU'}, {machine.get('platform')}; commit {commit}; "
        f"created {data['created_at']}, updated {data['updated_at']}"
        + (
            f", tables written at commit {written[:12]}."
            if written and written != machine.get("git_commit")
            else "."
        )
    )


def part_times(data: Mapping[str, Any]) -> str:
    """Seconds per row and part, as one line per row."""
    lines = []
    for row in data["rows"]:
        parts = row["parts"]
        total = sum(float(result["seconds"]) for result in parts.values())
        shown = ", ".join(f"{name} {float(result['seconds']):.0f} s" for name, result in parts.items())
        lines.append(f"{row['candidate']}: {total:.0f} s ({shown})")
    return "\n".join(lines)


def _target(link: str, suffix: str) -> str:
    """Where a cell's link points in a page of the format with `suffix`."""
    return link if link.endswith("/") or "." in Path(link).name else link + suffix


def _md_cell(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|").replace("\n", " ")
    return f"[{text}]({_target(cell.link, '.md')})" if cell.link else text


def to_markdown(data: Mapping[str, Any], causes: Mapping[tuple[str, str, str], str] | None = None) -> str:
    found = tables(data, causes or {})
    lines = ["# Scoreboard", "", _settings_line(data), ""]
    for name, rows in found.items():
        lines += [f"## {TITLES[name]}", "", "| " + " | ".join(HEADINGS[name]) + " |"]
        lines.append("|" + "---|" * len(HEADINGS[name]))
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
        lines.append("")
    lines += ["## Time per part", "", "```", part_times(data), "```", ""]
    return "\n".join(lines)


def to_text(data: Mapping[str, Any], causes: Mapping[tuple[str, str, str], str] | None = None) -> str:
    """The verdict and bench tables for a terminal (the parity detail is in the Markdown and HTML)."""
    found = tables(data, causes or {})
    blocks = []
    for name in ("verdicts", "bench"):
        rows = [list(HEADINGS[name])] + [[cell.text for cell in row] for row in found[name]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        body = [
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        blocks.append(f"{TITLES[name]}\n" + "\n".join(body))
    return "\n\n".join(blocks)


def to_html(data: Mapping[str, Any], causes: Mapping[tuple[str, str, str], str] | None = None) -> str:
    """One self-contained page; parity and conformance cells link to their reports, bench cells to compare."""
    esc = html.escape
    found = tables(data, causes or {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>qtts-eval scoreboard</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
        "</style></head><body><h1>Scoreboard</h1>",
        f"<p id='settings'>{esc(_settings_line(data))}</p>",
    ]
    for name, rows in found.items():
        parts.append(f"<h2>{esc(TITLES[name])}</h2><table id='{name}'><tr>")
        parts += [f"<th>{esc(heading)}</th>" for heading in HEADINGS[name]]
        parts.append("</tr>")
        for row in rows:
            cells = []
            for cell in row:
                text = esc(cell.text)
                if cell.link:
                    text = f"<a href='{esc(_target(cell.link, '.html'))}'>{text}</a>"
                cells.append(f"<td>{text}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append(f"<h2>Time per part</h2><pre>{esc(part_times(data))}</pre></body></html>")
    return "\n".join(parts) + "\n"
