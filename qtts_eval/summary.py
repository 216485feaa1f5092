"""Tables from a run's records: per-group medians, latency percentiles with intervals, memory drift,
steady state. Pure functions of a pandas frame (qtts_eval.results.load_run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from qtts_eval.metrics.asr import RUNAWAY_RATE
from qtts_eval.metrics.stats import percentile_ci
from qtts_eval.results import RequestOutcome

LATENCY_METRICS = ("first_byte_s", "first_playable_s", "audible_onset_s", "rtf", "gap_p95_s")
PERCENTILES = (50.0, 95.0, 99.0)


def latency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline and metric: p50/p95/p99 over ok requests, each with a bootstrap 95 % interval, and the
    pipeline's failed requests beside them (latency over the survivors alone would flatter a failing one)."""
    ok = frame[frame["status"] == "ok"]
    errors = frame[frame["status"] != "ok"].groupby("pipeline").size()
    rows = []
    for pipeline, group in ok.groupby("pipeline"):
        for metric in LATENCY_METRICS:
            if metric not in group or group[metric].isna().all():
                continue
            row: dict[str, Any] = {
                "pipeline": pipeline,
                "metric": metric,
                "errors": int(errors.get(pipeline, 0)),
            }
            for q in PERCENTILES:
                p = percentile_ci(group[metric].dropna().tolist(), q)
                row[f"p{q:g}"], row[f"p{q:g}_low"], row[f"p{q:g}_high"], row["n"] = (
                    p.value,
                    p.low,
                    p.high,
                    p.n,
                )
            rows.append(row)
    return pd.DataFrame(rows)


def memory_drift(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline: memory held after each request, first vs last and the fitted slope per request."""
    rows = []
    for pipeline, group in frame[frame["mem_after_bytes"].notna()].groupby("pipeline"):
        after = group["mem_after_bytes"].to_numpy(dtype=np.float64)
        slope = float(np.polyfit(np.arange(after.size), after, 1)[0]) if after.size > 1 else 0.0
        rows.append(
            {
                "pipeline": pipeline,
                "requests": int(after.size),
                "first_mb": after[0] / 2**20,
                "last_mb": after[-1] / 2**20,
                "slope_mb_per_request": slope / 2**20,
            }
        )
    return pd.DataFrame(rows)


def _median_mib(values: pd.Series) -> float:
    # External candidates without a GPU have no memory reading: missing values are skipped.
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    measured = numbers[~np.isnan(numbers)]
    return float(np.median(measured)) / 2**20 if measured.size else float("nan")


def summarise(frame: pd.DataFrame, by: Sequence[str] = ("pipeline", "fixture_id")) -> pd.DataFrame:
    """Per-group request and error counts, how many requests ended each way (one column per outcome), and
    the medians of the core metrics (first_playable_s beside first_byte_s first)."""
    keys = list(by)
    ok = frame[frame["status"] == "ok"]
    counts = frame.groupby(keys).agg(requests=("status", "size"))
    counts["errors"] = frame[frame["status"] != "ok"].groupby(keys).size()
    for outcome in RequestOutcome:
        counts[outcome.value] = frame[frame["outcome"] == outcome.value].groupby(keys).size()
    # first_playable leads: ports ramp their first chunks differently (1 frame vs a 4-frame packet), so first
    # byte alone favours the one that sends less first.
    medians = ok.groupby(keys).agg(
        first_playable_s=("first_playable_s", "median"),
        first_byte_s=("first_byte_s", "median"),
        wall_s=("wall_s", "median"),
        audio_s=("audio_seconds", "median"),
        rtf=("rtf", "median"),
        frames=("frames_generated", "median"),
        peak_mem_mb=("peak_mem_bytes", _median_mib),
    )
    # CUDA only (NVML): absent from older runs' frames, empty on CPU.
    extra = {
        name: (column, _median_mib if column.endswith("_bytes") else "median")
        for name, column in (
            ("nvml_mem_mb", "nvml_mem_bytes"),
            ("energy_j_per_audio_s", "energy_j_per_audio_s"),
        )
        if column in ok and ok[column].notna().any()
    }
    if extra:
        medians = medians.join(ok.groupby(keys).agg(**extra))
    table = counts.join(medians).reset_index()
    for column in ("errors", *(outcome.value for outcome in RequestOutcome)):
        table[column] = table[column].fillna(0).astype(int)
    return table


def steady_state(frame: pd.DataFrame, metric: str = "wall_s") -> pd.DataFrame:
    """Per pipeline: the first measured request of every cell against the cell's later repeats.

    ``first_over_rest`` is the median over cells of (repeat 0) / median(repeats 1..), for ``metric``: near 1
    when warm-up reached steady state; well above 1 means the first requests still paid one-off costs.
    """
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    rows = []
    for pipeline, group in ok.groupby("pipeline"):
        ratios = []
        for _, cell in group.groupby(["fixture_id", "voice_id", "mode"]):
            first = cell[cell["repeat"] == 0][metric]
            rest = cell[cell["repeat"] > 0][metric]
            if len(first) and len(rest) and float(rest.median()) > 0:
                ratios.append(float(first.iloc[0]) / float(rest.median()))
        if ratios:
            rows.append(
                {
                    "pipeline": pipeline,
                    "metric": metric,
                    "cells": len(ratios),
                    "first_over_rest": float(np.median(ratios)),
                    "worst": float(np.max(ratios)),
                    "cold_requests": int(group["warm"].eq(False).sum()) if "warm" in group else 0,
                }
            )
    return pd.DataFrame(rows)


def ms_per_frame(frame: pd.DataFrame) -> pd.Series:
    """Per request: wall time over the frames produced, in ms (prompt, prefill and codec decode included)."""
    frames = frame["frames_generated"].astype("float64").where(frame["frames_generated"] > 0)
    return 1000.0 * frame["wall_s"].astype("float64") / frames


def roofline_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline and precision: the weights one frame reads, the device's measured bandwidth, the floor
    they give (qtts_eval.metrics.roofline), and the ok requests' median ms per frame and its ratio to the
    floor. Empty where no record has the roofline columns (runs before schema 4, unknown precisions)."""
    if "roofline_floor_frame_s" not in frame:
        return pd.DataFrame()
    ok = frame[(frame["status"] == "ok") & frame["roofline_floor_frame_s"].notna()]
    ok = ok.assign(ms_per_frame=ms_per_frame(ok), floor_ms=1000.0 * ok["roofline_floor_frame_s"])
    rows = []
    for (pipeline, precision), group in ok.groupby(["pipeline", "work_talker_precision"]):
        rows.append(
            {
                "pipeline": pipeline,
                "precision": precision,
                "weights_gb_per_frame": float(group["roofline_weight_bytes_per_frame"].median()) / 1e9,
                "bandwidth_gb_s": float(group["roofline_bandwidth_bytes_per_s"].median()) / 1e9,
                "floor_ms": float(group["floor_ms"].median()),
                "ms_per_frame": float(group["ms_per_frame"].median()),
                "x_floor": float((group["ms_per_frame"] / group["floor_ms"]).median()),
                "n": len(group),
            }
        )
    return pd.DataFrame(rows)


def intelligibility_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline, recogniser and metric (wer, cer): error rates over the ok requests it scored.

    ``mean`` and ``median`` are over per-request rates; ``pooled`` is all errors over all words (characters)
    of the texts, which weighs long texts by their length. ``runaways`` counts the scored requests above
    RUNAWAY_RATE, and ``mean_no_runaways`` / ``pooled_no_runaways`` are the same rates without them: a few
    runaway generations (babble to the frame budget) otherwise hide how the rest read. ``not_applicable``
    counts requests in languages the recogniser lacks. ``verdict_valid`` is False when any of them ran on
    synthetic weights (docs/metrics.md).
    """
    if "asr_status" not in frame:
        return pd.DataFrame()
    ok = frame[(frame["status"] == "ok") & frame["asr_status"].notna()]
    rows = []
    for (pipeline, recognizer), group in ok.groupby(["pipeline", "asr_recognizer"]):
        for metric in ("wer", "cer"):
            scored = group[group[metric].notna()]
            if not len(scored):
                continue
            rates = scored[metric].to_numpy(dtype=np.float64)
            kept = scored[rates <= RUNAWAY_RATE]
            rows.append(
                {
                    "pipeline": pipeline,
                    "recognizer": recognizer,
                    "metric": metric,
                    "scored": len(scored),
                    "not_applicable": int((group["asr_status"] == "not_applicable").sum()),
                    "mean": float(rates.mean()),
                    "median": float(np.median(rates)),
                    "pooled": _pooled(scored),
                    "runaways": len(scored) - len(kept),
                    "mean_no_runaways": float(kept[metric].mean()) if len(kept) else float("nan"),
                    "pooled_no_runaways": _pooled(kept) if len(kept) else float("nan"),
                    "verdict_valid": bool(scored["quality_verdict_valid"].fillna(False).all()),
                }
            )
    return pd.DataFrame(rows)


def _pooled(scored: pd.DataFrame) -> float:
    """All errors over all words (characters) of the texts."""
    return float(scored["asr_errors"].sum() / scored["asr_reference_length"].sum())
