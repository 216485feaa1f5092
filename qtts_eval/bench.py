"""Matrix runner: pipelines x fixtures x voices x modes x repeats, one record per request.

Pipelines are interleaved inside each matrix cell (A, B, A, B, ...) rather than run one after another,
so slow drift of the machine (thermal, other load) lands on every pipeline alike. Warm-up requests run
first and are never recorded. Records are appended as they are measured (qtts_eval.results).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from qtts_eval import environment, pipelines
from qtts_eval.budget import frame_budget
from qtts_eval.errors import BenchError
from qtts_eval.fixtures import FixtureSet, TextFixture, Voice, load_fixtures, read_reference_audio
from qtts_eval.metrics.latency import ChunkTiming, latency_columns
from qtts_eval.metrics.memory import MemoryProbe, PeakMemory
from qtts_eval.metrics.quality import quality_columns
from qtts_eval.metrics.speaker import Embedder, load_embedder
from qtts_eval.metrics.stats import percentile_ci
from qtts_eval.pipelines.base import (
    REMOTE_GPU_MEMORY_KEY,
    SAMPLE_RATE_HZ,
    AudioChunk,
    CloneMode,
    Mark,
    Pipeline,
    PipelineConfig,
    Request,
    Sampling,
    Stage,
    StreamEnd,
    UnsupportedRequest,
)
from qtts_eval.results import Record, RunStore


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Stored in run.json, so a resumed run rebuilds exactly the same matrix."""

    pipelines: tuple[str, ...] = ("reference",)  # registry names, interleaved per cell
    model: str = "tiny"  # model ref for every pipeline (preset, directory or hub id)
    device: str = "cpu"  # torch device
    dtype: str = "float32"  # talker dtype
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    fixtures: tuple[str, ...] = ()  # text fixture ids; empty = all
    voices: tuple[str, ...] = ("slt",)  # reference voice ids
    modes: tuple[str, ...] = (CloneMode.ICL.value, CloneMode.XVECTOR.value)  # clone modes
    repeats: int = 2  # measured repeats of every cell
    warmup: int = 1  # unrecorded requests per pipeline before the matrix (first-call costs)
    seed: int = 0  # request seed = seed + repeat
    sampling: Sampling = field(default_factory=Sampling)  # decoding settings for every request
    speaker_embedder: str | None = (
        "resemblyzer"  # speaker-similarity embedder spec; None = no speaker columns
    )
    speaker_embedder_path: str | None = None  # local weights for the embedder, if it takes any
    # PipelineConfig.options: "key" goes to every pipeline, "name.key" only to pipeline "name".
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        data["sampling"] = Sampling(**data["sampling"])
        for key in ("pipelines", "fixtures", "voices", "modes"):
            data[key] = tuple(data[key])
        return cls(**data)


def options_for(pipeline: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options one pipeline gets: unscoped keys, then its own "pipeline.key" entries."""
    mine = {key: value for key, value in options.items() if "." not in key}
    prefix = f"{pipeline}."
    mine.update({key[len(prefix) :]: value for key, value in options.items() if key.startswith(prefix)})
    return mine


@dataclass(frozen=True)
class Cell:
    """One request of the matrix."""

    pipeline: str
    text: TextFixture
    voice: Voice
    mode: CloneMode
    repeat: int

    @property
    def key(self) -> str:
        return f"{self.pipeline}|{self.text.id}|{self.voice.id}|{self.mode.value}|{self.repeat}"


def build_matrix(config: BenchConfig, fixtures: FixtureSet) -> list[Cell]:
    """Every cell, validated up front so a typo fails before any model loads."""
    if config.repeats < 1:
        raise BenchError(f"repeats must be at least 1, got {config.repeats}")
    if not config.pipelines:
        raise BenchError("no pipelines given")
    texts = [fixtures.text(text_id) for text_id in config.fixtures] or list(fixtures.texts.values())
    voices = [fixtures.voice(voice_id) for voice_id in config.voices]
    if not voices:
        raise BenchError("no voices given")
    try:
        modes = [CloneMode(mode) for mode in config.modes]
    except ValueError as exc:
        raise BenchError(f"{exc}; modes are {', '.join(m.value for m in CloneMode)}") from exc
    for name in config.pipelines:
        pipelines.pipeline_class(name)  # unknown names fail here, with suggestions
    return [
        Cell(pipeline, text, voice, mode, repeat)
        for repeat in range(config.repeats)
        for text in texts
        for voice in voices
        for mode in modes
        for pipeline in config.pipelines
    ]


@dataclass(frozen=True)
class Measurement:
    """What the harness observed for one request."""

    audio: np.ndarray  # all chunks, concatenated
    end: StreamEnd  # the pipeline's closing event
    chunks: list[ChunkTiming]  # arrival time and length of every chunk
    marks: dict[Stage, float]  # stage times, seconds after t0
    wall_s: float  # t0 -> last chunk
    memory: PeakMemory


def measure(pipeline: Pipeline, request: Request, device: str) -> Measurement:
    """Run one request; t0 is the hand-off, every time is taken when the event reaches the harness."""
    probe = MemoryProbe(device)
    probe.start()
    audio: list[np.ndarray] = []
    chunks: list[ChunkTiming] = []
    marks: dict[Stage, float] = {}
    end: StreamEnd | None = None
    t0 = time.monotonic_ns()
    for event in pipeline.stream(request):
        if isinstance(event, AudioChunk):
            audio.append(event.samples)
            chunks.append(ChunkTiming((event.t_ns - t0) / 1e9, int(event.samples.shape[0])))
        elif isinstance(event, Mark):
            marks[event.stage] = (event.t_ns - t0) / 1e9
        else:
            end = event
    memory = probe.stop()
    if end is None:
        raise BenchError("the pipeline's stream ended without a StreamEnd event")
    return Measurement(
        audio=np.concatenate(audio) if audio else np.zeros(0, np.float32),
        end=end,
        chunks=chunks,
        marks=marks,
        wall_s=chunks[-1].t_s if chunks else 0.0,
        memory=memory,
    )


class Bench:
    """Runs a BenchConfig into a results directory; ``resume`` continues a killed run."""

    def __init__(self, config: BenchConfig, store: RunStore, fixtures: FixtureSet) -> None:
        self.config = config
        self.store = store
        self.fixtures = fixtures
        self.cells = build_matrix(config, fixtures)
        self._ref_audio: dict[str, np.ndarray] = {}
        self._embedder: Embedder | None = None

    @classmethod
    def create(cls, config: BenchConfig, results_root: Path, run_id: str | None = None) -> Bench:
        fixtures = load_fixtures()
        run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        bench = cls(config, RunStore(results_root / run_id), fixtures)
        bench.store.create(
            {
                "run_id": run_id,
                "created_at": _now(),
                "config": config.to_json(),
                "fixtures_version": fixtures.version,
                "fixtures_hash": fixtures.content_hash,
                "machine": environment.fingerprint(),
            }
        )
        return bench

    @classmethod
    def resume(cls, directory: Path) -> Bench:
        store = RunStore(directory)
        header = store.header()
        fixtures = load_fixtures()
        if fixtures.content_hash != header["fixtures_hash"]:
            raise BenchError(
                f"{directory} was run on fixtures {header['fixtures_version']} "
                f"({header['fixtures_hash'][:12]}), but the fixtures now are {fixtures.version} "
                f"({fixtures.content_hash[:12]}); "
                "start a new run instead of mixing them"
            )
        return cls(BenchConfig.from_json(header["config"]), store, fixtures)

    @property
    def run_id(self) -> str:
        return self.store.directory.name

    def run(self, progress: bool = True) -> pd.DataFrame:
        done = self.store.open_for_resume()
        todo = [cell for cell in self.cells if cell.key not in done]
        machine = self.store.header()["machine"]
        loaded: dict[str, Pipeline] = {}
        if self.config.speaker_embedder and todo:
            self._embedder = load_embedder(self.config.speaker_embedder, self.config.speaker_embedder_path)
        try:
            for name in dict.fromkeys(cell.pipeline for cell in todo):
                loaded[name] = self._load(name)
            for cell in tqdm(todo, desc=f"bench {self.run_id}", disable=not progress, file=sys.stderr):
                self.store.append(self._run_cell(loaded[cell.pipeline], cell, machine))
        finally:
            for pipeline in loaded.values():
                pipeline.close()
        self.store.write_parquet()
        frame = self.frame()
        self.store.write_summary(
            {
                "run_id": self.run_id,
                "rows": summarise(frame).to_dict(orient="records"),
                "latency": latency_table(frame).to_dict(orient="records"),
                "memory_drift": memory_drift(frame).to_dict(orient="records"),
                "warmup": self.store.warmups(),
            }
        )
        return frame

    def frame(self) -> pd.DataFrame:
        from qtts_eval.results import load_run

        return load_run(self.store.directory)

    def _load(self, name: str) -> Pipeline:
        config = PipelineConfig(
            model=self.config.model,
            device=self.config.device,
            dtype=self.config.dtype,
            attn_implementation=self.config.attn_implementation,
            options=options_for(name, self.config.options),
        )
        pipeline = pipelines.create(name, config)
        started = time.monotonic_ns()
        pipeline.load()
        load_s = (time.monotonic_ns() - started) / 1e9
        first = self.cells[0]
        for index in range(self.config.warmup):
            synthetic = bool(pipeline.describe().get("synthetic", False))
            request = self._request(Cell(name, first.text, first.voice, first.mode, 0), synthetic)
            # First calls pay one-off costs (lazy init, compilation, graph capture): kept apart from records.
            result = measure(
                pipeline, dataclasses.replace(request, seed=request.seed + 10_000 + index), self.config.device
            )
            self.store.append_warmup(
                {
                    "pipeline": name,
                    "index": index,
                    "load_s": load_s if index == 0 else None,
                    "wall_s": result.wall_s,
                    "first_byte_s": result.chunks[0].t_s if result.chunks else None,
                    "audio_seconds": result.audio.shape[0] / SAMPLE_RATE_HZ,
                }
            )
        return pipeline

    def _quality(self, request: Request, audio: np.ndarray, synthetic: bool) -> dict[str, Any]:
        return quality_columns(
            audio, request.ref_audio, request.text, request.language, synthetic, self._embedder
        )

    def _reference(self, voice: Voice) -> np.ndarray:
        if voice.id not in self._ref_audio:
            audio, _ = read_reference_audio(voice.ref_wav)
            self._ref_audio[voice.id] = audio
        return self._ref_audio[voice.id]

    def _request(self, cell: Cell, synthetic: bool) -> Request:
        return Request(
            text=cell.text.text,
            language=cell.text.language,
            ref_audio=self._reference(cell.voice),
            ref_text=cell.voice.ref_text,
            mode=cell.mode,
            max_frames=frame_budget(cell.text.text, cell.text.language, synthetic),
            seed=self.config.seed + cell.repeat,
            sampling=self.config.sampling,
        )

    def _run_cell(self, pipeline: Pipeline, cell: Cell, machine: dict[str, Any]) -> Record:
        facts = pipeline.describe()
        synthetic = bool(facts.get("synthetic", False))
        request = self._request(cell, synthetic)
        base = Record(
            run_id=self.run_id,
            request_key=cell.key,
            pipeline=cell.pipeline,
            fixture_id=cell.text.id,
            language=cell.text.language,
            category=cell.text.category,
            voice_id=cell.voice.id,
            mode=cell.mode.value,
            repeat=cell.repeat,
            seed=request.seed,
            sampling=request.sampling.name,
            text_chars=len(cell.text.text),
            frame_budget=request.max_frames,
            status="ok",
            started_at=_now(),
            env={
                **machine,
                **facts,
                "fixtures_version": self.fixtures.version,
                "fixtures_hash": self.fixtures.content_hash,
            },
        )
        try:
            result = measure(pipeline, request, self.config.device)
        except UnsupportedRequest as exc:
            return dataclasses.replace(base, status="unsupported", error=str(exc))
        except Exception as exc:  # a failing candidate must not end the run; the error is recorded
            return dataclasses.replace(base, status="error", error=f"{type(exc).__name__}: {exc}")
        audio_seconds = result.audio.shape[0] / SAMPLE_RATE_HZ
        frames = result.end.frames_generated
        memory = _memory_columns(pipeline, result)
        return dataclasses.replace(
            base,
            frames_generated=frames,
            # A budget-capped generation yields budget - 1 frames (the last step's frame is never emitted).
            budget_hit=frames >= request.max_frames - 1,
            audio_seconds=audio_seconds,
            wall_s=result.wall_s,
            rtf=result.wall_s / audio_seconds if audio_seconds > 0 else None,
            **memory,
            info=dict(result.end.info),
            **self._quality(request, result.audio, synthetic),
            **latency_columns(result.chunks, result.marks, result.audio),  # type: ignore[arg-type]
        )


def _memory_columns(pipeline: Pipeline, result: Measurement) -> dict[str, Any]:
    if pipeline.in_process:
        return {
            "peak_mem_bytes": result.memory.peak_bytes,
            "peak_mem_kind": result.memory.kind,
            "peak_reserved_bytes": result.memory.reserved_bytes,
            "mem_after_bytes": result.memory.after_bytes,
        }
    # Out of process, only what the candidate's own process uses counts: NVML per-process GPU memory
    # when a GPU exists, otherwise nothing measured.
    remote = result.end.info.get(REMOTE_GPU_MEMORY_KEY)
    return {"peak_mem_bytes": remote, "peak_mem_kind": "nvml_process" if remote is not None else None}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


LATENCY_METRICS = ("first_byte_s", "first_playable_s", "audible_onset_s", "rtf", "gap_p95_s")
PERCENTILES = (50.0, 95.0, 99.0)


def latency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline and metric: p50/p95/p99 over ok requests, each with a bootstrap 95 % interval."""
    ok = frame[frame["status"] == "ok"]
    rows = []
    for pipeline, group in ok.groupby("pipeline"):
        for metric in LATENCY_METRICS:
            if metric not in group or group[metric].isna().all():
                continue
            row: dict[str, Any] = {"pipeline": pipeline, "metric": metric}
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
    """Per-group medians of the core metrics, plus request and error counts."""
    keys = list(by)
    ok = frame[frame["status"] == "ok"]
    counts = frame.groupby(keys).agg(requests=("status", "size"))
    counts["errors"] = frame[frame["status"] != "ok"].groupby(keys).size()
    medians = ok.groupby(keys).agg(
        wall_s=("wall_s", "median"),
        audio_s=("audio_seconds", "median"),
        rtf=("rtf", "median"),
        frames=("frames_generated", "median"),
        budget_hits=("budget_hit", "sum"),
        peak_mem_mb=("peak_mem_bytes", _median_mib),
    )
    table = counts.join(medians).reset_index()
    table["errors"] = table["errors"].fillna(0).astype(int)
    return table
