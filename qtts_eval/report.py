"""Plots and tables shared by the notebooks (notebooks/) and HTML reports; the notebooks only call these.

Plot functions draw with pyplot and return the Figure: a notebook shows it inline, a report saves it (and
closes it). The ``ensure_*`` helpers create the small demo data a notebook defaults to when it is missing,
so every notebook runs from a fresh checkout on the tiny checkpoint.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.history import History
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
MS_PER_S = 1000.0


def ensure_run(results_root: str | Path, run_id: str, config: BenchConfig = NOTEBOOK_RUN) -> Path:
    """The run directory ``results_root/run_id``, benchmarked with ``config`` first if it does not exist."""
    directory = Path(results_root) / run_id
    if not (directory / "run.json").exists():
        Bench.create(config, Path(results_root), run_id).run(progress=False)
    return directory


def ensure_demo_history(results_root: str | Path, runs: int = 6, step_at: int = 3) -> Path:
    """``runs`` calibration runs under ``results_root/demo-history``; 30 % slower from ``step_at``."""
    root = Path(results_root) / "demo-history"
    for index in range(runs):
        factor = DEMO_STEP_FACTOR if index >= step_at else 1.0
        delays = {
            key: value * factor for key, value in DEMO_HISTORY_RUN.options.items() if key.endswith("_ms")
        }
        config = replace(DEMO_HISTORY_RUN, options={**DEMO_HISTORY_RUN.options, **delays})
        ensure_run(root, f"run{index:02d}", config)
    return root


def ensure_parity(out_dir: str | Path, candidate: str = "fault:talker-weight", model: str = "tiny") -> Path:
    """A parity session of ``candidate`` written to ``out_dir`` unless its report.json exists; returns it."""
    from qtts_eval.parity.session import run_session

    out = Path(out_dir)
    if not (out / "report.json").exists():
        run_session(candidate, out, {"model": model})
    return out


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
