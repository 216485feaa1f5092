"""Plots and tables shared by the notebooks (notebooks/) and HTML reports; the notebooks only call these.

Plot functions draw with pyplot and return the Figure: a notebook shows it inline, a report saves it (and
closes it). A notebook reads the user's results and never writes into them unless a parameter asks
(``find_run(..., create=True)``); by default it shows demo data on the tiny checkpoint, built on first use
in a scratch directory (``scratch_root``), so every notebook runs from a fresh checkout.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval import compare
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.errors import ResultsError
from qtts_eval.history import History
from qtts_eval.results import RUN_FILE, SUMMARY_FILE
from qtts_eval.scoreboard import SETTINGS_FILE, Part, Scoreboard, Settings, load_causes, tables
from qtts_eval.units import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from qtts_eval.parity.run import ParityResult

# The notebooks' default run: tiny checkpoint, streamed, three texts of different lengths, one repeat.
NOTEBOOK_RUN = BenchConfig(
    model="tiny",
    fixtures=("en_one_word", "zh_short", "en_short"),
    modes=("icl",),
    repeats=1,
    options={"reference.streaming": True},
)
# The demo history: the calibration pipeline (injected delays, no model) over several runs with a planted
# slowdown, so step detection and gates have something to find. Delays are those of tests/test_gates.py.
DEMO_HISTORY_RUN = BenchConfig(
    pipelines=("calibration",),
    fixtures=("en_short", "zh_short"),
    repeats=2,
    options={"first_chunk_ms": 40.0, "gap_ms": 10.0, "chunks": 3},
)
DEMO_STEP_FACTOR = 1.3  # the planted slowdown: every delay 30 % longer
# The calibration pipeline records its delays as env_ facts: the demo's planted slowdown is a change of them,
# which history and gates must be told to allow (may_differ) to see it as a step of one series.
DEMO_MAY_DIFFER = frozenset({"env_first_chunk_ms", "env_gap_ms"})
# The demo comparison: the reference in-process against the same reference served over stdio by
# `qtts-eval worker` (a real wire candidate), both streamed. Two texts, two repeats, no speaker embedder.
DEMO_COMPARE_RUN = BenchConfig(
    pipelines=("reference", "worker"),
    model="tiny",
    fixtures=("en_one_word", "en_short"),
    modes=("icl",),
    repeats=2,
    speaker_embedder=None,
    options={
        "reference.streaming": True,
        "worker.command": [
            sys.executable,
            "-m",
            "qtts_eval",
            "worker",
            "--model=tiny",
            "--option=streaming=true",
        ],
    },
)
# Demo runs by run id, built in the scratch directory on first use.
DEMO_RUNS = {"notebook-tiny": NOTEBOOK_RUN, "compare-demo": DEMO_COMPARE_RUN}
# The demo parity sweep: the reference against itself (passes) and a planted fault (fails at the talker; the
# parity notebook's demo too), each a `qtts-eval parity --out` directory named by its slug.
DEMO_PARITY_CANDIDATES = ("reference", "fault:talker-weight")
DEMO_PARITY_FRAMES = 8  # the talker fault shows from the prefill on; the default 32 frames only cost time
# The demo scoreboard: one planted fault as the only row, its x-vector parity on tiny (2 frames).
DEMO_SCOREBOARD = Settings(
    candidates=("fault:talker-weight",),
    model="tiny",
    fixtures=("en_short",),
    parity_frames=2,
    parts=(Part.PARITY_XVECTOR.value,),
)
SCOREBOARD_FILE = "scoreboard.json"  # what marks a `qtts-eval scoreboard --out` directory
SCRATCH_ENV = "QTTS_EVAL_SCRATCH"  # where the notebooks' demo data goes (default: under the temp directory)
REPORT_FILE = "report.json"  # what marks a `qtts-eval parity --out` directory
MS_PER_S = 1000.0


def scratch_root() -> Path:
    """The notebooks' demo data directory: $QTTS_EVAL_SCRATCH, else ``qtts-eval-notebooks`` in the system's
    temporary directory. Never a results directory, so `qtts-eval history results` does not list demos."""
    configured = os.environ.get(SCRATCH_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "qtts-eval-notebooks"


def _not_found(root: Path, name: str, marker: str, what: str, how: str) -> ResultsError:
    """The error for a missing ``name`` under ``root``: the ones that exist, the closest, how to make one."""
    found = sorted(str(path.parent.relative_to(root)) for path in root.rglob(marker)) if root.is_dir() else []
    close = difflib.get_close_matches(name, found, n=1)
    listing = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
    return ResultsError(
        f"{root / name}: no such {what}"
        + (f"; did you mean {close[0]!r}?" if close else ".")
        + (f" {what.capitalize()}s under {root}: {listing}." if found else f" {root} holds no {what}.")
        + f" {how}"
    )


def find_run(
    results_root: str | Path, run_id: str, create: bool = False, demo: str = "notebook-tiny"
) -> Path:
    """The run ``results_root/run_id``; "" is the demo run ``demo`` (DEMO_RUNS, in the scratch directory).

    A missing run is an error listing the runs that exist, unless ``create`` asks to benchmark it
    (NOTEBOOK_RUN) into ``results_root``.
    """
    if not run_id:
        return ensure_run(scratch_root(), demo, DEMO_RUNS[demo])
    root = Path(results_root)
    if not (root / run_id / RUN_FILE).exists() and not create:
        how = f"Make one with `qtts-eval bench --run-id {run_id}`, or set CREATE = True to bench it here."
        raise _not_found(root, run_id, RUN_FILE, "run", how)
    return ensure_run(root, run_id)


def ensure_run(results_root: str | Path, run_id: str, config: BenchConfig = NOTEBOOK_RUN) -> Path:
    """The run directory ``results_root/run_id``, benchmarked with ``config`` first if it does not exist, and
    resumed if it was interrupted (a run's summary is written last)."""
    directory = Path(results_root) / run_id
    if not (directory / RUN_FILE).exists():
        Bench.create(config, Path(results_root), run_id).run(progress=False)
    elif not (directory / SUMMARY_FILE).exists():
        Bench.resume(directory).run(progress=False)
    return directory


def demo_history(runs: int = 6, step_at: int = 3) -> Path:
    """``runs`` calibration runs under the scratch directory's ``demo-history``; 30 % slower from
    ``step_at``."""
    root = scratch_root() / "demo-history"
    for index in range(runs):
        factor = DEMO_STEP_FACTOR if index >= step_at else 1.0
        delays = {
            key: value * factor for key, value in DEMO_HISTORY_RUN.options.items() if key.endswith("_ms")
        }
        config = replace(DEMO_HISTORY_RUN, options={**DEMO_HISTORY_RUN.options, **delays})
        ensure_run(root, f"run{index:02d}", config)
    return root


def gate_runs(
    history: History, current: str = "", baselines: tuple[str, ...] = ()
) -> tuple[Path, list[Path]]:
    """The run to gate and its baseline runs, by run id from ``history``: ``current`` "" is the newest run,
    ``baselines`` () the three oldest other runs of its series (same pipeline, machine and settings)."""
    runs = history.runs.drop_duplicates("run_id", keep="last")
    by_id = dict(zip(runs["run_id"], runs["path"], strict=True))
    for run_id in (current, *baselines):
        if run_id and run_id not in by_id:
            close = difflib.get_close_matches(run_id, list(by_id), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ResultsError(f"no run {run_id!r} in this history{hint} Runs: {', '.join(by_id)}")
    row = runs.iloc[-1] if not current else runs[runs["run_id"] == current].iloc[0]
    if not baselines:
        series = runs[(runs["series"] == row["series"]) & (runs["run_id"] != row["run_id"])]
        baselines = tuple(series["run_id"].head(3))
    if not baselines:
        raise ResultsError(f"run {row['run_id']!r} has no earlier run in its series to gate against")
    return Path(row["path"]), [Path(by_id[run_id]) for run_id in baselines]


def ensure_parity(
    out_dir: str | Path,
    candidate: str = "fault:talker-weight",
    model: str = "tiny",
    max_frames: int | None = None,
) -> Path:
    """A parity session of ``candidate`` written to ``out_dir`` unless its report.json exists; returns it.
    ``max_frames`` None is the session's default budget."""
    from qtts_eval.parity.session import run_session

    out = Path(out_dir)
    if not (out / "report.json").exists():
        run_session(candidate, out, {"model": model, "max_frames": max_frames})
    return out


def _slug(candidate: str) -> str:
    return candidate.replace(":", "-").replace("/", "-")


def demo_parity_sweep() -> Path:
    """The demo sweep (DEMO_PARITY_CANDIDATES on the tiny checkpoint) in the scratch directory."""
    root = scratch_root() / "parity-demo"
    for candidate in DEMO_PARITY_CANDIDATES:
        ensure_parity(root / _slug(candidate), candidate, "tiny", DEMO_PARITY_FRAMES)
    return root


def find_parity(
    results_root: str | Path,
    parity_dir: str,
    create: bool = False,
    candidate: str = "fault:talker-weight",
    model: str = "tiny",
) -> Path:
    """The `qtts-eval parity --out` directory ``results_root/parity_dir``; "" is the demo (a planted talker
    fault). A missing one is an error listing those that exist, unless ``create`` runs ``candidate`` there."""
    if not parity_dir:
        return ensure_parity(
            scratch_root() / "parity-demo" / _slug("fault:talker-weight"), max_frames=DEMO_PARITY_FRAMES
        )
    root = Path(results_root)
    if not (root / parity_dir / REPORT_FILE).exists() and not create:
        how = (
            f"Make one with `qtts-eval parity CANDIDATE --out {root / parity_dir}`, or set CREATE = True "
            "to run CANDIDATE there."
        )
        raise _not_found(root, parity_dir, REPORT_FILE, "parity report", how)
    return ensure_parity(root / parity_dir, candidate, model)


def find_parity_sweep(results_root: str | Path, sweep_dir: str) -> Path:
    """A directory of parity reports ``results_root/sweep_dir``; "" is the demo sweep."""
    if not sweep_dir:
        return demo_parity_sweep()
    directory = Path(results_root) / sweep_dir
    if not any(directory.rglob(REPORT_FILE)):
        how = (
            f"Make one with `qtts-eval parity CANDIDATE --fixture ID --fixture ID --mode icl --mode xvector "
            f"--out {directory}`."
        )
        raise _not_found(Path(results_root), sweep_dir, REPORT_FILE, "parity report", how)
    return directory


def parity_sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per report.json under ``sweep_dir`` (a `qtts-eval parity` sweep, or a folder of single runs):
    where it is, candidate, request (text, mode, voice), verdict, profile, first failing stage, and the
    free-running codes' exact match and first divergent frame."""
    root = Path(sweep_dir)
    rows = []
    for path in sorted(root.rglob(REPORT_FILE)):
        data = json.loads(path.read_text())
        first = data.get("first_failing_stage") or {}
        codes: dict[str, Any] = next(
            (
                stage["metrics"]
                for comparison in data["comparisons"]
                if comparison["mode"] == "free"
                for stage in comparison["stages"]
                if stage["key"] == "codes"
            ),
            {},
        )
        request = data["reference_meta"]
        rows.append(
            {
                "report": str(path.parent.relative_to(root)),
                "candidate": data["candidate"],
                "text": request["text"],
                "mode": request["clone_mode"],
                "voice": request["voice"],
                "verdict": data["verdict"],
                "profile": data["profile"]["name"],
                "first_failing_stage": first.get("key"),
                "first_failing_group": first.get("group"),
                "codes_exact": codes.get("exact"),
                "first_divergent_frame": codes.get("first_divergent_frame"),
            }
        )
    return pd.DataFrame(rows)


def sweep_report(sweep_dir: str | Path, table: pd.DataFrame, show: str = "") -> Path:
    """The directory of one report of ``table`` (parity_sweep_table): ``show`` as listed in its ``report``
    column, or "" for the first that fails (the first listed when all pass)."""
    listed = [str(name) for name in table["report"]]
    if show and show not in listed:
        close = difflib.get_close_matches(show, listed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ResultsError(f"no report {show!r} in {sweep_dir}{hint} Reports: {', '.join(listed)}")
    failing = [name for name, verdict in zip(listed, table["verdict"], strict=True) if verdict == "fail"]
    return Path(sweep_dir) / (show or (failing or listed)[0])


def plot_parity_sweep(table: pd.DataFrame) -> Any:
    """Codes exact match per report, coloured by verdict; a failing report is labelled with its stage."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(table) + 1.5))
    colours = ["C2" if verdict == "pass" else "C3" for verdict in table["verdict"]]
    exact = table["codes_exact"].astype(np.float64).fillna(0.0) * 100
    ax.barh(table["report"], exact, color=colours)
    for position, stage in enumerate(table["first_failing_stage"]):
        if isinstance(stage, str):
            ax.annotate(f" fails at {stage}", (0, position), va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("free-running codes equal to the reference, %")
    ax.set_title("Parity reports (green: pass, red: fail)")
    fig.tight_layout()
    return fig


def load_parity(out_dir: str | Path) -> ParityResult:
    """The ParityResult of a parity output directory, recomputed from its dumps and profile."""
    from qtts_eval.parity.session import load_session

    return load_session(Path(out_dir))


def parity_images(result: ParityResult) -> dict[str, bytes]:
    """The parity report's PNG plots (error by stage, codebook match, waveforms, spectrograms) by name."""
    from qtts_eval.parity.report import plots

    return {name: base64.b64decode(png) for name, png in plots(result).items()}


def parity_audio(result: ParityResult) -> dict[str, npt.NDArray[Any]]:
    """Reference and candidate output audio (24 kHz), as the parity report's players play them."""
    from qtts_eval.parity.report import audio_pair

    reference, candidate = audio_pair(result)
    return {"reference": reference, "candidate": candidate}


def parity_table(result: ParityResult) -> pd.DataFrame:
    """One row per compared stage: mode, stage, group, status, relative L2, note."""
    rows = []
    for comparison in (result.free, result.forced):
        if comparison is None:
            continue
        for stage in comparison.stages:
            rows.append(
                {
                    "mode": comparison.mode,
                    "stage": stage.key,
                    "group": stage.group,
                    "status": stage.status.value,
                    "rel_l2": stage.metrics.get("rel_l2"),
                    "note": stage.note,
                }
            )
    return pd.DataFrame(rows)


def find_scoreboard(results_root: str | Path, scoreboard_dir: str) -> Path:
    """The `qtts-eval scoreboard --out` directory ``results_root/scoreboard_dir``; "" is the demo
    (DEMO_SCOREBOARD, scored on first use in the scratch directory)."""
    if not scoreboard_dir:
        out = scratch_root() / "scoreboard-demo"
        if not (out / SCOREBOARD_FILE).exists():
            exists = (out / SETTINGS_FILE).exists()  # a demo cut short is finished, not started again
            board = Scoreboard.resume(out) if exists else Scoreboard.create(out, DEMO_SCOREBOARD)
            board.run(log=lambda _line: None)
        return out
    root = Path(results_root)
    if not (root / scoreboard_dir / SCOREBOARD_FILE).exists():
        how = f"Make one with `qtts-eval scoreboard --out {root / scoreboard_dir}`."
        raise _not_found(root, scoreboard_dir, SCOREBOARD_FILE, "scoreboard", how)
    return root / scoreboard_dir


def scoreboard_table(scoreboard_dir: str | Path, table: str = "verdicts") -> pd.DataFrame:
    """One of a scoreboard's tables (qtts_eval.scoreboard.tables: "verdicts", "parity" or "bench") as a
    frame, from its scoreboard.json and the causes file it names."""
    from qtts_eval.scoreboard import HEADINGS

    data = json.loads((Path(scoreboard_dir) / SCOREBOARD_FILE).read_text(encoding="utf-8"))
    rows = tables(data, load_causes(data["settings"]["causes"]))[table]
    return pd.DataFrame([[cell.text for cell in row] for row in rows], columns=list(HEADINGS[table]))


def comparison_table(frame: pd.DataFrame, candidate: str = "", reference: str = "reference") -> pd.DataFrame:
    """`qtts-eval compare`'s table for one run (qtts_eval.compare): per fixture and mode, and over all pairs,
    the median of paired ratios candidate / reference of first playable, first byte, RTF and memory with
    bootstrap intervals, the share of pairs with the same codes, errors, and the same-work flags.
    ``candidate`` "" is the run's only pipeline other than ``reference``."""
    candidate = compare.pick_candidate(set(frame["pipeline"]), candidate, reference)
    table = compare.compare(*compare.within_run(frame, candidate, reference))
    return table.assign(candidate=candidate, reference=reference)


def plot_comparison(table: pd.DataFrame) -> Any:
    """The paired ratios (candidate / reference) of each row of ``comparison_table`` with their 95 %
    intervals, drawn from 1 on a log axis (left of the line the candidate's value is lower: faster, leaner);
    a row with same-work flags is labelled with them."""
    import matplotlib.pyplot as plt

    labels = [f"{row.fixture_id} {row.mode}" for row in table.itertuples()]
    metrics = [m for m in compare.RATIO_METRICS if table[f"{m}_ratio"].notna().any()]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(table) * max(len(metrics), 1) + 1.5))
    step = 0.8 / max(len(metrics), 1)
    for index, metric in enumerate(metrics):
        positions = np.arange(len(table)) + index * step
        ratios = table[f"{metric}_ratio"].astype(np.float64)
        spread = [ratios - table[f"{metric}_low"].astype(np.float64),
                  table[f"{metric}_high"].astype(np.float64) - ratios]  # fmt: skip
        ax.errorbar(ratios, positions, xerr=spread, fmt="o", color=f"C{index}", capsize=3, label=metric)
    for position, flags in enumerate(table["flags"]):
        if flags:
            ax.annotate(f"  {flags}", (1.0, position), va="center", fontsize=8, color="C3")
    ax.set_yticks(np.arange(len(table)) + 0.4 - step / 2, labels)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(f"{table['candidate'].iloc[0]} / {table['reference'].iloc[0]}, median of paired ratios")
    ax.set_title("Candidate against reference (left of the line: candidate lower; red: flags)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def plot_chunk_timeline(frame: pd.DataFrame, max_requests: int = 8) -> Any:
    """Audio available at the harness against time, per request, beside real-time playback from first byte.

    Where a solid line falls below its dotted playback line, a player that started at first byte ran dry.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for index, row in enumerate(_ok(frame).head(max_requests).itertuples()):
        arrivals = np.asarray(row.chunk_t_s, dtype=np.float64)
        available = np.cumsum(np.asarray(row.chunk_samples, dtype=np.float64)) / SAMPLE_RATE_HZ
        colour = f"C{index % 10}"
        ax.step(
            arrivals,
            available,
            where="post",
            color=colour,
            label=f"{row.pipeline} {row.fixture_id} {row.mode} #{row.repeat}",
        )
        ax.plot(arrivals, arrivals - arrivals[0], ":", color=colour)
    ax.set_xlabel("time since hand-off, s")
    ax.set_ylabel("audio at the harness, s")
    ax.set_title("Chunk timeline (dotted: playback from first byte)")
    ax.legend(fontsize=8)
    return fig


def plot_latency_cdf(frame: pd.DataFrame, metric: str = "first_byte_s") -> Any:
    """Empirical CDF of a latency column in ms, one line per pipeline."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pipeline, group in _ok(frame).groupby("pipeline"):
        values = np.sort(group[metric].dropna().to_numpy(dtype=np.float64)) * MS_PER_S
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=str(pipeline))
    ax.set_xlabel(f"{metric}, ms")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{metric}: empirical CDF")
    ax.legend()
    return fig


def plot_rtf_vs_text(frame: pd.DataFrame) -> Any:
    """Real-time factor against input text length, one colour per pipeline; RTF 1 is real time."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pipeline, group in _ok(frame).groupby("pipeline"):
        ax.scatter(group["text_chars"], group["rtf"], label=str(pipeline))
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time")
    ax.set_xlabel("text length, characters")
    ax.set_ylabel("RTF (wall / audio seconds)")
    ax.set_title("RTF against text length")
    ax.legend()
    return fig


def plot_history(history: History, metric: str, steps: pd.DataFrame) -> Any:
    """Per-request values and run medians of ``metric`` across runs, one line per series; steps marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    runs = history.runs.reset_index(drop=True)
    for index, (_, series) in enumerate(runs.groupby("series", sort=False)):
        colour = f"C{index % 10}"
        first = series.iloc[0]
        for position, row in series.iterrows():
            values = history.records.loc[
                (history.records["run_id"] == row["run_id"])
                & (history.records["pipeline"] == row["pipeline"]),
                metric,
            ].dropna()
            ax.scatter(np.full(values.size, position), values, s=8, alpha=0.4, color=colour)
        if metric in series:
            label = f"{first['pipeline']} @ {first['machine']}"
            ax.plot(series.index, series[metric], "o-", color=colour, label=label)
    for step in steps.itertuples():
        position = runs.index[(runs["run_id"] == step.run_id) & (runs["pipeline"] == step.pipeline)][0]
        ax.axvline(position - 0.5, color="red", linestyle="--")
        ax.annotate(f"{step.change:+.0%}", (position - 0.5, ax.get_ylim()[1]), color="red", va="top")
    ax.set_xticks(runs.index, runs["run_id"], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across runs (dots: requests, line: run medians, red: detected steps)")
    ax.legend(fontsize=8)
    return fig
