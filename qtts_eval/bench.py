"""Matrix runner: pipelines x fixtures x voices x modes x repeats, one record per request.

Pipelines are interleaved inside each matrix cell (A, B, A, B, ...) rather than run one after another,
so slow drift of the machine (thermal, other load) lands on every pipeline alike. Before a cell is measured,
its warm-up class (mode, voice, text-length class) has been warmed with unrecorded requests of the same
shape, so no shape, mode or voice is measured cold. Every request is timed by the one clock
(qtts_eval.measure). Records are appended as they are measured (qtts_eval.results).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from qtts_eval import checkpoints, environment, pipelines
from qtts_eval.budget import frame_budget, length_class
from qtts_eval.errors import BenchError, MetricError
from qtts_eval.fixtures import FixtureSet, TextFixture, Voice, load_fixtures
from qtts_eval.measure import Measurement, measure
from qtts_eval.metrics.asr import Recognizer, load_recognizer
from qtts_eval.metrics.latency import in_one_burst, latency_columns
from qtts_eval.metrics.nvml import board_power_reader, process_gpu_memory_bytes
from qtts_eval.metrics.power import energy_columns, idle_power_w
from qtts_eval.metrics.power import sampling as power_sampling
from qtts_eval.metrics.quality import METRIC_ERROR, quality_columns
from qtts_eval.metrics.roofline import Roofline, measure_bandwidth, roofline
from qtts_eval.metrics.same_work import codes_digest, same_work_columns
from qtts_eval.metrics.speaker import Embedder, load_embedder
from qtts_eval.pipelines import options as pipeline_options
from qtts_eval.pipelines.base import (
    REMOTE_GPU_MEMORY_KEY,
    REMOTE_RSS_KEY,
    BudgetConvention,
    CloneMode,
    Delivery,
    Pipeline,
    PipelineConfig,
    Request,
    Sampling,
    UnsupportedRequest,
    WorkDeclaration,
)
from qtts_eval.results import (
    Record,
    RequestOutcome,
    RunStore,
    budget_hit,
    delivered_outcome,
    error_outcome,
)
from qtts_eval.summary import (
    intelligibility_table,
    latency_table,
    memory_drift,
    roofline_table,
    steady_state,
    summarise,
)
from qtts_eval.units import SAMPLE_RATE_HZ
from qtts_eval.wire.pipelines import stderr_log_option

QUICK = "quick"  # one text per category, modes taken in turn: every category and every mode, in minutes
# Random weights never stop before their budget, so a synthetic quick run caps it: 5 s of audio after each
# text's whole prompt shows first byte, RTF and streaming; the run's 1,614 frames become 720 (en_long_form
# alone was 766), and the main command fits its 2 minutes on 2 cores.
QUICK_SYNTHETIC_MAX_FRAMES = 64
FULL = "full"  # every selected text in every mode
MATRICES = (QUICK, FULL)
WARMUP_FRAMES = 8  # frame budget of a warm-up request: the cell's prompt shape, without its full length
REFERENCE = "reference"  # the pipeline every other one is checked against for same work


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Stored in run.json, so a resumed run rebuilds exactly the same matrix."""

    pipelines: tuple[str, ...] = ("reference",)  # registry names, interleaved per cell
    model: str = "tiny"  # model ref for every pipeline (preset, directory or hub id)
    device: str = "cpu"  # torch device
    dtype: str = "float32"  # talker dtype
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    matrix: str = QUICK  # QUICK or FULL (see MATRICES); explicit fixtures are run in every mode either way
    fixtures: tuple[str, ...] = ()  # text fixture ids; empty = all (FULL) or one per category (QUICK)
    voices: tuple[str, ...] = ("slt",)  # reference voice ids
    modes: tuple[str, ...] = (CloneMode.ICL.value, CloneMode.XVECTOR.value)  # clone modes
    repeats: int = 1  # measured repeats of every cell
    warmup: int = 1  # unrecorded requests per pipeline and warm-up class (mode, voice, length class)
    seed: int = 0  # request seed = seed + repeat
    sampling: Sampling = field(default_factory=Sampling)  # decoding settings for every request
    max_frames: int | None = (
        None  # frame budget of every request instead of the text-derived one (quick runs)
    )
    # The talker prompt layout every request asks for, by clone mode: modes listed here ask for the
    # non_streaming_mode=True layout, the others for the default one; None asks for none (each pipeline its
    # own, and different layouts show as different codes).
    non_streaming_modes: tuple[str, ...] | None = None
    speaker_embedder: str | None = (
        "resemblyzer"  # speaker-similarity embedder spec; None = no speaker columns
    )
    speaker_embedder_path: str | None = None  # local weights for the embedder, if it takes any
    asr: str | None = (
        "pocketsphinx"  # intelligibility recogniser spec (docs/metrics.md); None: no asr columns
    )
    asr_path: str | None = None  # local weights for the recogniser, if it takes any
    # PipelineConfig.options: "key" goes to every pipeline that takes it, "name.key" only to pipeline "name".
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        """The quick matrix applies: asked for, and no texts named (named texts run in every mode, whole)."""
        return self.matrix == QUICK and not self.fixtures

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        data.setdefault("matrix", FULL)  # runs written before the quick matrix existed ran the full one
        data.setdefault("asr", None)  # runs written before intelligibility existed have no asr columns
        data["sampling"] = Sampling(**data["sampling"])
        for key in ("pipelines", "fixtures", "voices", "modes"):
            data[key] = tuple(data[key])
        if data.get("non_streaming_modes") is not None:
            data["non_streaming_modes"] = tuple(data["non_streaming_modes"])
        return cls(**data)


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

    @property
    def work(self) -> tuple[str, str, str, int]:
        """The request this cell makes, whichever pipeline makes it."""
        return self.text.id, self.voice.id, self.mode.value, self.repeat


def _texts(config: BenchConfig, fixtures: FixtureSet) -> list[TextFixture]:
    if config.fixtures:
        return [fixtures.text(text_id) for text_id in config.fixtures]
    texts = list(fixtures.texts.values())
    if config.matrix == FULL:
        return texts
    firsts: dict[str, TextFixture] = {}
    for text in texts:
        firsts.setdefault(text.category, text)
    return list(firsts.values())


def _asked_layout(request: Request) -> dict[str, bool]:
    """The record's non_streaming_mode when the request asked for one (else the pipeline's own, its facts)."""
    return {} if request.non_streaming_mode is None else {"non_streaming_mode": request.non_streaming_mode}


def build_matrix(config: BenchConfig, fixtures: FixtureSet) -> list[Cell]:
    """Every cell, validated up front so a typo fails before any model loads."""
    if config.repeats < 1:
        raise BenchError(f"repeats must be at least 1, got {config.repeats}")
    if config.warmup < 0:
        raise BenchError(f"warmup must not be negative, got {config.warmup}")
    if config.max_frames is not None and config.max_frames < 1:
        raise BenchError(f"max_frames must be at least 1, got {config.max_frames}")
    if config.matrix not in MATRICES:
        raise BenchError(f"matrix {config.matrix!r} is not one of {', '.join(MATRICES)}")
    known_modes = {mode.value for mode in CloneMode}
    for mode in config.non_streaming_modes or ():
        if mode not in known_modes:
            raise BenchError(f"non_streaming_modes: {mode!r} is not one of {', '.join(sorted(known_modes))}")
    if not config.pipelines:
        raise BenchError("no pipelines given")
    texts = _texts(config, fixtures)
    voices = [fixtures.voice(voice_id) for voice_id in config.voices]
    if not voices:
        raise BenchError("no voices given")
    try:
        modes = [CloneMode(mode) for mode in config.modes]
    except ValueError as exc:
        raise BenchError(f"{exc}; modes are {', '.join(m.value for m in CloneMode)}") from exc
    if not modes:
        raise BenchError("no modes given")
    classes = {name: pipelines.pipeline_class(name) for name in config.pipelines}  # unknown names fail here
    scoped = pipeline_options.scope(
        config.options, {name: cls.options_schema for name, cls in classes.items()}
    )
    for name, cls in classes.items():
        pipeline_options.parse(cls.label, cls.options_schema, scoped[name])  # typos fail before loading
    # The reference runs first in every cell, so each candidate's record can say whether it did the same work.
    ordered = sorted(config.pipelines, key=lambda name: name != REFERENCE)
    return [
        Cell(pipeline, text, voice, mode, repeat)
        for repeat in range(config.repeats)
        for index, text in enumerate(texts)
        for voice in voices
        for mode in ([modes[index % len(modes)]] if config.quick else modes)
        for pipeline in ordered
    ]


def warmup_class(cell: Cell) -> tuple[str, str, str, str]:
    """Requests of one class share their first-call costs: same pipeline, mode, voice and prompt size."""
    return cell.pipeline, cell.mode.value, cell.voice.id, length_class(cell.text.text, cell.text.language)


class Bench:
    """Runs a BenchConfig into a results directory; ``resume`` continues a killed run."""

    def __init__(self, config: BenchConfig, store: RunStore, fixtures: FixtureSet) -> None:
        self.config = config
        self.store = store
        self.fixtures = fixtures
        self.cells = build_matrix(config, fixtures)
        self._embedder: Embedder | None = None
        self._recognizer: Recognizer | None = None
        self._warmed: set[tuple[str, str, str, str]] = set()
        # The run's checkpoint shapes and device bandwidth, or why they are missing; taken after the first
        # request that declares a precision (a run of calibration pipelines never resolves its model).
        self._roofline: Roofline | str | None = None
        # Board power: its reader and the run's idle watts (taken once the pipelines load), or why none.
        self._power: tuple[Callable[[], float], float] | str = "not measured: no pipeline loaded"
        self._reference_synthetic = False  # the run's reference's weights are random (set when it loads)
        # The reference's last request (Cell.work, codes, audio): the cell's other pipelines run right after
        # it (build_matrix), so one is all the same-work columns need.
        self._reference_work: tuple[tuple[str, str, str, int], np.ndarray | None, np.ndarray] | None = None

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

    def todo(self) -> list[Cell]:
        """The cells not yet recorded (all of them in a new run); cuts a torn last record first."""
        done = self.store.open_for_resume()
        return [cell for cell in self.cells if cell.key not in done]

    def run(self, progress: bool = True, deadline_ns: int | None = None) -> pd.DataFrame:
        """Measure every cell not yet recorded; with `deadline_ns` (time.monotonic_ns), none is started after
        it: the rest stay in `todo()` for a resumed run."""
        todo = self.todo()
        # Fingerprinted now, not taken from the run header: a resumed run may continue on another machine
        # or commit, and each record must say where it was measured (gates refuse mixed segments).
        machine = environment.fingerprint()
        with self.measuring({cell.pipeline for cell in todo}) as measure_cell:
            for cell in tqdm(todo, desc=f"bench {self.run_id}", disable=not progress, file=sys.stderr):
                if deadline_ns is not None and time.monotonic_ns() >= deadline_ns:
                    break
                self.store.append(measure_cell(cell, machine))
        return self.finish()

    @contextlib.contextmanager
    def measuring(self, names: Iterable[str]) -> Iterator[Callable[[Cell, dict[str, Any]], Record]]:
        """Load each named pipeline once (and the speaker embedder and recogniser), then measure cells one at
        a time, each after its warm-up class; closes the pipelines at the end. Used here and by every cluster
        worker."""
        loaded: dict[str, Pipeline] = {}
        names = sorted(names)
        if self.config.speaker_embedder and names:
            self._embedder = load_embedder(self.config.speaker_embedder, self.config.speaker_embedder_path)
        if self.config.asr and names:
            self._recognizer = load_recognizer(self.config.asr, self.config.asr_path)

        def measure_cell(cell: Cell, machine: dict[str, Any]) -> Record:
            return self._run_cell(loaded[cell.pipeline], cell, machine)

        try:
            for name in names:
                loaded[name] = self._load(name)
            if REFERENCE in loaded:
                self._reference_synthetic = bool(loaded[REFERENCE].describe().get("synthetic", False))
            if loaded:
                self._power = self._idle_power()
            yield measure_cell
        finally:
            for pipeline in loaded.values():
                pipeline.close()

    def finish(self) -> pd.DataFrame:
        """Write the columnar copy and the summary of everything recorded; the run's records as a frame."""
        self.store.write_parquet()
        frame = self.frame()
        self.store.write_summary(
            {
                "run_id": self.run_id,
                "rows": summarise(frame).to_dict(orient="records"),
                "latency": latency_table(frame).to_dict(orient="records"),
                "memory_drift": memory_drift(frame).to_dict(orient="records"),
                "steady_state": steady_state(frame).to_dict(orient="records"),
                "intelligibility": intelligibility_table(frame).to_dict(orient="records"),
                "roofline": roofline_table(frame).to_dict(orient="records"),
                "warmup": self.store.warmups(),
            }
        )
        return frame

    def frame(self) -> pd.DataFrame:
        from qtts_eval.results import load_run

        return load_run(self.store.directory)

    def _load(self, name: str) -> Pipeline:
        # Scoped against every pipeline of the run: a key scoped to another one is theirs, not an error.
        schemas = {other: pipelines.pipeline_class(other).options_schema for other in self.config.pipelines}
        scoped = pipeline_options.scope(self.config.options, schemas)
        # A subprocess candidate's stderr goes beside the records (an explicit option wins).
        stderr_log = stderr_log_option(schemas[name], self.store.directory / f"{name}.stderr.log")
        config = PipelineConfig(
            model=self.config.model,
            device=self.config.device,
            dtype=self.config.dtype,
            attn_implementation=self.config.attn_implementation,
            options={**stderr_log, **scoped[name]},
        )
        pipeline = pipelines.create(name, config)
        started = time.monotonic_ns()
        pipeline.load()
        self.store.append_warmup({"pipeline": name, "load_s": (time.monotonic_ns() - started) / 1e9})
        return pipeline

    def _measure_roofline(self) -> Roofline | str:
        """The floor's inputs: the shapes in the header of the checkpoint the run's model ref names (the one
        the pipelines loaded) and the bandwidth of the run's device; or why they are missing. A preset no
        pipeline built here (a remote candidate's run) gets its builder's shapes rather than a build."""
        try:
            preset = checkpoints.unbuilt_preset(self.config.model)
            if preset is not None:
                config = checkpoints.model_config(checkpoints.PRESETS[preset])
                return Roofline(
                    checkpoints.preset_weight_shapes(preset),
                    int(config["talker_config"]["num_code_groups"]),
                    measure_bandwidth(self.config.device),
                )
            return roofline(checkpoints.resolve(self.config.model).path, self.config.device)
        except Exception as exc:  # a missing floor must not end the run; every record says why it is empty
            return f"{type(exc).__name__}: {exc}"

    def _idle_power(self) -> tuple[Callable[[], float], float] | str:
        """The board power reader of the run's GPU and its idle watts, read now (models loaded, nothing
        running), or why energy cannot be measured."""
        device = self.config.device
        if not device.startswith("cuda"):
            return f"no board power on {device}: energy is measured through NVML on CUDA devices"
        read = board_power_reader(int(device.partition(":")[2] or 0))
        if read is None:
            return "NVML cannot read this GPU's board power (nvidia-ml-py missing, or the card reports none)"
        return read, idle_power_w(read)

    def _sampling(self) -> contextlib.AbstractContextManager[list[tuple[float, float]]]:
        """Board power samples of the request run inside it (none without a reader)."""
        if isinstance(self._power, str):
            return nullcontext([])
        return power_sampling(self._power[0])

    def _energy_columns(
        self, samples: list[tuple[float, float]], audio_seconds: float
    ) -> tuple[dict[str, Any], dict[str, str]]:
        if isinstance(self._power, str):
            return {}, {"energy_j_per_audio_s": self._power}
        try:
            return energy_columns(samples, self._power[1], audio_seconds), {}
        except MetricError as exc:
            return {}, {"energy_j_per_audio_s": str(exc)}

    def _roofline_columns(self, precision: str | None) -> tuple[dict[str, Any], dict[str, str]]:
        if precision is None:
            return {}, {"roofline_weight_bytes_per_frame": "the pipeline declared no talker precision"}
        if self._roofline is None:
            self._roofline = self._measure_roofline()
        if isinstance(self._roofline, str):
            return {}, {"roofline_weight_bytes_per_frame": self._roofline}
        return self._roofline.columns(precision)

    def _warm(self, pipeline: Pipeline, cell: Cell) -> None:
        """Before a cell's first measurement: unrecorded requests of its warm-up class, on the cell's own text
        and voice with a short budget, so first-call costs (lazy init, per-shape kernels, prompt building)
        are paid outside the records."""
        group = warmup_class(cell)
        if group in self._warmed or self.config.warmup == 0:
            return
        self._warmed.add(group)
        request = self._request(cell, self._synthetic(pipeline.describe()))
        for index in range(self.config.warmup):
            warm = dataclasses.replace(
                request, max_frames=min(WARMUP_FRAMES, request.max_frames), seed=request.seed + 10_000 + index
            )
            entry: dict[str, Any] = {"pipeline": cell.pipeline, "class": "/".join(group[1:]), "index": index}
            try:
                result = measure(pipeline, warm, cell.pipeline)
            except Exception as exc:  # the measured request will record the failure; warm-up only notes it
                entry["error"] = f"{type(exc).__name__}: {exc}"
            else:
                entry.update(
                    wall_s=result.wall_s, first_byte_s=result.chunks[0].t_s if result.chunks else None
                )
            self.store.append_warmup(entry)

    def _ready(self, pipeline: Pipeline, cell: Cell) -> bool:
        """Before the clock starts: bring back a lost candidate (Pipeline.ensure_ready) and, if it was
        restarted, warm every class of that pipeline again (the new process is cold); then warm the cell's
        class. True when a restart happened, before or during the warm-up."""
        restarted = False
        while pipeline.ensure_ready():  # a warm-up request may itself lose the candidate again
            restarted = True
            self._warmed = {group for group in self._warmed if group[0] != cell.pipeline}
            self._warm(pipeline, cell)
        self._warm(pipeline, cell)
        return restarted

    def _quality(self, request: Request, audio: np.ndarray, synthetic: bool) -> dict[str, Any]:
        return quality_columns(
            audio,
            request.ref_audio,
            request.text,
            request.language,
            synthetic,
            self._embedder,
            self._recognizer,
        )

    def _synthetic(self, facts: dict[str, Any]) -> bool:
        """Whether a pipeline's weights are random: its own fact, else (a server that cannot say, as an
        OpenAI-style one) the run's reference's, so both sides of a cell get the same frame budget."""
        if "synthetic" in facts:
            return bool(facts["synthetic"])
        return self._reference_synthetic

    def _budget(self, cell: Cell, synthetic: bool) -> int:
        budget = frame_budget(cell.text.text, cell.text.language, synthetic)
        if synthetic and self.config.quick:
            return min(budget, QUICK_SYNTHETIC_MAX_FRAMES)
        return budget

    def _request(self, cell: Cell, synthetic: bool) -> Request:
        return Request.for_voice(
            cell.voice,
            cell.text.text,
            cell.text.language,
            cell.mode,
            max_frames=self.config.max_frames or self._budget(cell, synthetic),
            seed=self.config.seed + cell.repeat,
            sampling=self.config.sampling,
            non_streaming_mode=None
            if self.config.non_streaming_modes is None
            else cell.mode.value in self.config.non_streaming_modes,
        )

    def _run_cell(self, pipeline: Pipeline, cell: Cell, machine: dict[str, Any]) -> Record:
        restarted, lost = False, None
        try:
            restarted = self._ready(pipeline, cell)
        except Exception as exc:  # a candidate that cannot be brought back fails this request, not the run
            lost = exc
        facts = pipeline.describe()
        synthetic = self._synthetic(facts)
        request = self._request(cell, synthetic)
        declared = pipeline.work()
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
            warm=warmup_class(cell) in self._warmed,
            after_restart=restarted,
            **work_columns(declared, _layout(request, facts)),
            metric_error={"work": declared.error} if declared.error else {},
            started_at=_now(),
            env={
                **machine,
                **facts,
                **_asked_layout(request),
                **{f"sampling_{key}": value for key, value in dataclasses.asdict(request.sampling).items()},
                "fixtures_version": self.fixtures.version,
                "fixtures_hash": self.fixtures.content_hash,
            },
        )
        if lost is not None:
            return self._failed(base, lost)
        try:
            with self._sampling() as power:
                result = measure(pipeline, request, cell.pipeline)
        except UnsupportedRequest as exc:
            return dataclasses.replace(
                base, status="unsupported", outcome=RequestOutcome.FAILED.value, error=str(exc)
            )
        except Exception as exc:  # a failing candidate must not end the run; the error is recorded
            return self._failed(base, exc)
        audio_seconds = result.audio.shape[0] / SAMPLE_RATE_HZ
        frames = result.end.frames_generated
        memory = _memory_columns(pipeline, result)
        same_work: dict[str, Any] = {}
        if cell.pipeline == REFERENCE:
            self._reference_work = (cell.work, result.end.codes, result.audio)
        elif self._reference_work is not None and self._reference_work[0] == cell.work:
            _, reference_codes, reference_audio = self._reference_work
            same_work = same_work_columns(reference_codes, result.end.codes, reference_audio, result.audio)
        observed, contradicted = observed_work(base, result, frames)
        quality = self._quality(request, result.audio, synthetic)
        floor, no_floor = self._roofline_columns(base.work_talker_precision)
        energy, no_energy = self._energy_columns(power, audio_seconds)
        return dataclasses.replace(
            base,
            **observed,
            metric_error={
                **base.metric_error,
                **contradicted,
                **no_floor,
                **no_energy,
                **quality.pop(METRIC_ERROR, {}),
            },
            **floor,
            **energy,
            frames_generated=frames,
            codes_digest=codes_digest(result.end.codes),
            codes_digest_trimmed=(
                codes_digest(np.asarray(result.end.codes)[: request.max_frames - 1])
                if result.end.codes is not None and frames == request.max_frames
                else None
            ),
            **same_work,
            budget_hit=budget_hit(frames, request.max_frames),
            outcome=delivered_outcome(
                result.end.info.get("cancelled") is True, frames, request.max_frames
            ).value,
            audio_seconds=audio_seconds,
            wall_s=result.wall_s,
            rtf=result.wall_s / audio_seconds if audio_seconds > 0 else None,
            **memory,
            info=dict(result.end.info),
            **quality,
            **latency_columns(result.chunks, result.marks, result.audio, result.pipeline_chunk_t_s),  # type: ignore[arg-type]
        )

    @staticmethod
    def _failed(base: Record, exc: BaseException) -> Record:
        return dataclasses.replace(
            base, status="error", outcome=error_outcome(exc).value, error=f"{type(exc).__name__}: {exc}"
        )


def _layout(request: Request, facts: dict[str, Any]) -> bool | None:
    """The non_streaming_mode a request ran with: the one it asked for, else the pipeline's stated one."""
    if request.non_streaming_mode is not None:
        return request.non_streaming_mode
    stated = facts.get("non_streaming_mode")
    return stated if isinstance(stated, bool) else None


def work_columns(declared: WorkDeclaration, non_streaming_mode: bool | None) -> dict[str, Any]:
    """The work_* columns (docs/metrics.md) of a pipeline's declaration and the request's layout."""
    columns = {f"work_{key}": value for key, value in declared.to_json().items()}
    if non_streaming_mode is not None:
        columns["work_layout"] = "text_up_front" if non_streaming_mode else "text_streamed"
    return columns


def observed_work(record: Record, result: Measurement, frames: int) -> tuple[dict[str, Any], dict[str, str]]:
    """What the harness saw of the declared work: the work_* columns it corrects (or fills in where nothing
    was declared) and, for a correction, why (metric_error). Observable: more than one chunk is streamed
    delivery, unless they all arrived in one burst at the end (metrics.latency.in_one_burst: a server that
    buffers the utterance and slices it); one chunk covering more than a packet is whole; a capped run of N
    frames follows the "n" convention."""
    columns: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def saw(column: str, value: object, why: str) -> None:
        declared = getattr(record, column)
        if declared is not None and declared != value:
            errors[column] = f"declared {declared!r}, observed {value!r}: {why}"
        columns[column] = value

    chunks = len(result.chunks)
    packet = record.work_packet_frames
    if chunks > 1 and in_one_burst(result.chunks[0].t_s, result.chunks[-1].t_s):
        saw("work_delivery", Delivery.WHOLE.value, f"{chunks} chunks arrived in one burst at the end")
    elif chunks > 1:
        saw("work_delivery", Delivery.STREAMED.value, f"{chunks} chunks arrived")
    elif chunks == 1 and frames > (packet or 1):
        saw("work_delivery", Delivery.WHOLE.value, f"one chunk carried all {frames} frames")
    if frames == record.frame_budget:
        saw("work_budget_convention", BudgetConvention.N.value, f"a budget of {frames} gave {frames} frames")
    return columns, errors


def _memory_columns(pipeline: Pipeline, result: Measurement) -> dict[str, Any]:
    if pipeline.in_process:
        return {
            "peak_mem_bytes": result.memory.peak_bytes,
            "peak_mem_kind": result.memory.kind,
            "peak_reserved_bytes": result.memory.reserved_bytes,
            "mem_after_bytes": result.memory.after_bytes,
            # The harness's own process is the pipeline's: NVML reads it as it reads a candidate's.
            "nvml_mem_bytes": process_gpu_memory_bytes([os.getpid()])
            if result.memory.kind == "cuda_allocated"
            else None,
        }
    # Out of process, only what the candidate's own process uses counts: NVML per-process GPU memory when a
    # GPU exists, else the peak RSS of a local worker and its children; otherwise nothing measured.
    remote = result.end.info.get(REMOTE_GPU_MEMORY_KEY)
    if remote is not None:
        return {"peak_mem_bytes": remote, "peak_mem_kind": "nvml_process", "nvml_mem_bytes": remote}
    rss = result.end.info.get(REMOTE_RSS_KEY)
    return {"peak_mem_bytes": rss, "peak_mem_kind": "worker_tree_rss" if rss is not None else None}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
