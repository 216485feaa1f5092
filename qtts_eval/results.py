"""Results store: one versioned record per request, append-only, loadable as pandas.

Layout of one run directory::

    results/<run_id>/
      run.json         run header: schema version, run id, matrix, environment fingerprint
      records.jsonl    one JSON record per measured request, appended and fsynced one at a time
      records.parquet  columnar copy of records.jsonl, written when the run finishes
      summary.json     per-pipeline/fixture aggregates for humans and gates

records.jsonl is the source of truth. A run killed with SIGKILL loses at most the request in flight:
every earlier line is already on disk, a torn last line is cut off when the run is resumed, and a
resumed run skips every request key already recorded.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from qtts_eval.errors import CandidateTimeout, MalformedMessage, ResultsError

SCHEMA_VERSION = 4
RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
PARQUET_FILE = "records.parquet"
SUMMARY_FILE = "summary.json"
WARMUP_FILE = "warmup.jsonl"  # unrecorded warm-up requests: load and first-call times, kept apart


class RequestOutcome(str, enum.Enum):
    """How a request ended (the `outcome` column, docs/metrics.md), never collapsed into ok/error."""

    EOS = "eos"  # the model ended the utterance itself (end of speech)
    LENGTH_LIMITED = "length_limited"  # the frame budget was hit without EOS (budget_hit)
    CANCELLED = "cancelled"  # the candidate says the utterance was cancelled before its end
    FAILED = "failed"  # no usable result: the pipeline raised, refused (unsupported) or sent no audio
    TIMED_OUT = "timed_out"  # the candidate went silent past its timeout
    MALFORMED = "malformed"  # the candidate sent what its protocol cannot carry


def budget_hit(frames: int, budget: int) -> bool:
    """Whether generation stopped at the frame budget rather than at EOS: a capped run yields budget - 1
    frames (the official package never emits the last step's frame), a port honouring it literally budget."""
    return frames >= budget - 1


def delivered_outcome(cancelled: bool, frames: int, budget: int) -> RequestOutcome:
    """The outcome of a request that delivered its audio."""
    if cancelled:
        return RequestOutcome.CANCELLED
    return RequestOutcome.LENGTH_LIMITED if budget_hit(frames, budget) else RequestOutcome.EOS


def error_outcome(exc: BaseException) -> RequestOutcome:
    """The outcome of a request that raised ``exc``."""
    if isinstance(exc, CandidateTimeout):
        return RequestOutcome.TIMED_OUT
    if isinstance(exc, MalformedMessage):
        return RequestOutcome.MALFORMED
    return RequestOutcome.FAILED


def _v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    # Version 2: the harness stamps every event (one clock). Version-1 times of in-process pipelines were the
    # pipeline's own stamps; they stay where they were, and the new columns are unknown for them.
    if "request_key" in obj:
        obj = {"warm": None, "pipeline_first_byte_s": None, "handoff_s": None, **obj}
    return obj


def _v2_to_v3(obj: dict[str, Any]) -> dict[str, Any]:
    # Version 3: the work each side declared (work_*), restarts (after_restart) and per-column metric errors.
    # Version-2 records declared nothing.
    if "request_key" in obj:
        work = [item.name for item in fields(Record) if item.name.startswith("work_")]
        obj = {"after_restart": None, **dict.fromkeys(work), "metric_error": {}, **obj}
    return obj


V4_COLUMNS = (  # the columns version 4 added that older records leave empty (outcome is derived)
    "codes_digest_trimmed",
    "roofline_weight_bytes_per_frame",
    "roofline_bandwidth_bytes_per_s",
    "roofline_floor_frame_s",
    "nvml_mem_bytes",
    "energy_j_per_audio_s",
    "power_mean_w",
    "power_idle_w",
    "power_samples",
)


def _v3_to_v4(obj: dict[str, Any]) -> dict[str, Any]:
    # Version 4: how each request ended (outcome), derived from what version 3 kept: a load record's
    # info.outcome (moved to the column), else the status, the error's type and budget_hit. Version 3 had no
    # MalformedMessage: a malformed candidate's old records say failed. Also new, unknown for version 3: the
    # digest of whole-budget codes cut to budget - 1 frames, the roofline columns, NVML memory and energy.
    if "request_key" not in obj or "outcome" in obj:
        return obj
    info = dict(obj.get("info") or {})
    outcome = info.pop("outcome", None)
    frames = obj.get("frames_generated")
    if outcome is None and obj.get("status") == "ok" and frames is not None:
        outcome = delivered_outcome(info.get("cancelled") is True, frames, obj["frame_budget"]).value
    elif outcome is None:
        timed_out = str(obj.get("error") or "").startswith(f"{CandidateTimeout.__name__}:")
        outcome = (RequestOutcome.TIMED_OUT if timed_out else RequestOutcome.FAILED).value
    return {**dict.fromkeys(V4_COLUMNS), **obj, "info": info, "outcome": outcome}


# Older schema versions are upgraded one step at a time: _MIGRATIONS[n] turns a version-n record (or run
# header) into version n+1.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


@dataclass(frozen=True)
class Record:
    """One measured (or failed) request. Every column is defined in docs/metrics.md."""

    run_id: str  # the run this record belongs to
    request_key: str  # unique within a run; a resumed run skips keys already present
    pipeline: str  # registry name of the pipeline
    fixture_id: str  # text fixture id
    language: str  # fixture language as given to the pipeline
    category: str  # fixture category (short, long_form, ...)
    voice_id: str  # reference voice id
    mode: str  # "icl" (reference codes + transcript) or "xvector" (speaker embedding only)
    repeat: int  # 0-based repeat index within the matrix
    seed: int  # torch seed set immediately before the request
    sampling: str  # "greedy" or "sample"
    text_chars: int  # characters in the input text
    frame_budget: int  # max codec frames allowed (max_new_tokens); derived from the text
    status: str  # "ok", "error" or "unsupported"
    outcome: str | None = None  # how the request ended: a RequestOutcome value (eos, length_limited, ...)
    warm: bool | None = None  # its warm-up class (pipeline, mode, voice, length class) was warmed before it
    # The pipeline restarted its implementation (a candidate process that died) right before this request,
    # outside the timed region; its warm-up class was warmed again after the restart.
    after_restart: bool | None = None
    # The work the pipeline did besides the request itself (pipelines.base.WorkDeclaration; docs/metrics.md):
    # declared by the pipeline, checked by the harness where observable; None where not declared.
    work_prompt: str | None = None  # "cached" (clone prompt reused per voice) or "built" (inside the request)
    work_delivery: str | None = None  # "streamed" (packets) or "whole" (one chunk after the whole decode)
    work_packet_frames: int | None = None  # codec frames per streamed chunk
    work_layout: str | None = None  # talker prompt layout: "text_up_front" or "text_streamed"
    work_budget_convention: str | None = None  # frames a budget of N yields when hit: "n_minus_1" or "n"
    work_instrumentation: str | None = None  # what runs only to expose the codes ("none" when nothing)
    work_threads: int | None = None  # CPU threads its compute used
    work_talker_precision: str | None = None  # talker dtype (float32, bfloat16, q8_0, ...)
    work_codec_precision: str | None = None  # speech tokenizer (decoder) dtype
    error: str | None = None  # the error message when status is not "ok"
    frames_generated: int | None = None  # codec frames in the output (12.5 frames per audio second)
    budget_hit: bool | None = None  # generation stopped at the frame budget rather than at EOS
    audio_seconds: float | None = None  # output samples / 24000
    wall_s: float | None = None  # request handed to the pipeline -> last audio sample at the harness
    rtf: float | None = None  # wall_s / audio_seconds (lower is faster; < 1 is faster than realtime)
    peak_mem_bytes: int | None = None  # torch peak allocated (CUDA) or peak process RSS (CPU)
    peak_mem_kind: str | None = None  # "cuda_allocated" or "process_rss"
    peak_reserved_bytes: int | None = None  # torch peak reserved (CUDA only)
    mem_after_bytes: int | None = None  # memory still held after the request (drift across requests)
    # Latency is stamped by the harness when each event reaches it (qtts_eval.measure), for every pipeline.
    first_byte_s: float | None = None  # t0 -> first audio sample at the harness
    first_playable_s: float | None = None  # t0 -> one full packet (320 ms) of audio at the harness
    audible_onset_s: float | None = None  # t0 -> arrival of the first 10 ms window above -45 dBFS
    # The pipeline's own times (stage marks and its stamp of the first chunk), checked against the harness's.
    prompt_s: float | None = None  # t0 -> speaker embedding and reference codes ready (~0 when cached)
    prefill_s: float | None = None  # prompt ready -> talker prefill done
    first_frame_s: float | None = None  # prefill done -> first 16-code frame complete
    first_packet_decode_s: float | None = None  # first packet's codes complete -> its audio ready (pipeline)
    pipeline_first_byte_s: float | None = None  # t0 -> first chunk ready, by the pipeline's own stamp
    handoff_s: float | None = None  # pipeline's first-chunk stamp -> the harness's (queue or wire hop)
    chunks: int | None = None  # audio chunks received
    gap_p50_s: float | None = None  # median gap between consecutive chunk arrivals
    gap_p95_s: float | None = None  # 95th percentile of those gaps
    gap_max_s: float | None = None  # longest gap
    underruns: int | None = None  # stalls of a player that starts at first byte
    underrun_s: float | None = None  # total stalled time of that player
    chunk_t_s: list[float] | None = None  # arrival time of every chunk, seconds after t0
    chunk_samples: list[int] | None = None  # samples in every chunk
    # Quality and failure detectors (qtts_eval.metrics.quality; docs/metrics.md). On synthetic weights they
    # are stored but quality_verdict_valid is False: never a verdict on speech quality.
    audible_fraction: float | None = None  # share of 10 ms windows above -45 dBFS
    silent: bool | None = None  # too little audible audio
    nonfinite_fraction: float | None = None  # share of NaN/Inf samples
    nonfinite: bool | None = None  # any NaN/Inf sample
    clipping_fraction: float | None = None  # share of samples at full scale
    clipped: bool | None = None  # clipping above its threshold
    duration_ratio: float | None = None  # audio seconds / the nominal-rate estimate for the text
    duration_anomaly: bool | None = None  # duration_ratio outside its band (too short or runaway)
    quality_verdict_valid: bool | None = None  # False on synthetic weights
    speaker_embedder: str | None = None  # embedder that produced the speaker columns
    speaker_sim: float | None = None  # cosine similarity of output and reference embeddings
    speaker_drift_min: float | None = None  # lowest windowed similarity to the reference
    speaker_drift_drop: float | None = None  # first window's similarity minus the lowest
    speaker_drift: bool | None = None  # the drop passes the drift threshold (voice changed mid-utterance)
    # Intelligibility (qtts_eval.metrics.asr; docs/metrics.md): the output transcribed and scored.
    asr_recognizer: str | None = None  # recogniser behind the asr columns; rates compare only within one
    asr_status: str | None = None  # "scored", or "not_applicable" when the recogniser lacks the language
    asr_transcript: str | None = None  # what the recogniser heard, as it wrote it
    wer: float | None = None  # word error rate against the text (space-delimited languages)
    cer: float | None = None  # character error rate against the text (Chinese, Japanese)
    asr_errors: int | None = None  # substitutions + deletions + insertions behind wer or cer
    asr_reference_length: int | None = None  # words (wer) or characters (cer) of the normalised text
    # Same work or flagged (qtts_eval.metrics.same_work): the candidate's codes against the reference's on
    # the same cell of the same run; None where the reference did not run that cell or codes were not given.
    codes_digest: str | None = None  # sha256 of the [frames, 16] codes (int64 LE) and frame count, 16 hex
    # The same digest of the codes cut to budget - 1 frames, when the whole budget came back (a port that
    # honours a budget literally): what pairs it with a reference side of another run or pipeline.
    codes_digest_trimmed: str | None = None
    codes_match_reference: float | None = None  # share of frames with all 16 codes equal (1.0 = same work)
    first_divergent_frame: int | None = None  # first frame that differs from the reference (None: none)
    stop_vs_reference: str | None = None  # "same", "earlier" or "later": frame count vs the reference's
    audio_mel_l1_reference: float | None = None  # log-mel L1 to the reference's audio, common length
    # Roofline (qtts_eval.metrics.roofline; docs/benchmarks.md): the weights one frame reads over the device's
    # measured bandwidth; None where the precision has no known element size (metric_error says why).
    roofline_weight_bytes_per_frame: float | None = None  # talker step + code-predictor passes, bytes
    roofline_bandwidth_bytes_per_s: float | None = None  # device copy bandwidth, bytes read + written per s
    roofline_floor_frame_s: float | None = None  # bytes per frame / bandwidth: no frame can take less
    # NVML (qtts_eval.metrics.nvml, .power; docs/metrics.md), CUDA only; metric_error says why where empty.
    nvml_mem_bytes: int | None = None  # GPU memory of every process of the pipeline at completion (NVML)
    energy_j_per_audio_s: float | None = None  # board energy above idle during the request / audio seconds
    power_mean_w: float | None = None  # mean board power over the request's samples
    power_idle_w: float | None = None  # the run's idle board power, subtracted
    power_samples: int | None = None  # power readings behind the energy (one per 50 ms, and one at each end)
    info: dict[str, Any] = field(default_factory=dict)  # pipeline-reported facts (StreamEnd.info)
    # Column (env.<key>, info.<key> inside those) -> why its value is null: a metric that could not be
    # computed, a non-finite value (JSON has none), a declaration the harness's observation contradicts.
    metric_error: dict[str, str] = field(default_factory=dict)
    started_at: str = ""  # UTC ISO-8601 time the request started
    env: dict[str, Any] = field(default_factory=dict)  # environment fingerprint (qtts_eval.environment)
    schema_version: int = SCHEMA_VERSION  # version of this record layout


def _migrate(obj: dict[str, Any], where: str) -> dict[str, Any]:
    version = obj.get("schema_version")
    if not isinstance(version, int):
        raise ResultsError(f"{where}: no integer schema_version; not a qtts-eval results file")
    if version > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: written by schema version {version}, newer than this qtts-eval "
            f"(reads up to {SCHEMA_VERSION}); upgrade qtts-eval to read it"
        )
    while version < SCHEMA_VERSION:
        obj = _MIGRATIONS[version](obj)
        version += 1
        obj["schema_version"] = version
    return obj


class RunStore:
    """Append-only writer/reader for one run directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS_FILE

    def header(self) -> dict[str, Any]:
        path = self.directory / RUN_FILE
        if not path.is_file():
            raise ResultsError(f"{self.directory}: no {RUN_FILE}; not a qtts-eval run directory")
        try:
            header = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}: not valid JSON ({exc})") from exc
        return _migrate(header, str(path))

    def create(self, header: dict[str, Any]) -> None:
        """Start a new run; refuses to overwrite an existing one."""
        if (self.directory / RUN_FILE).exists():
            raise ResultsError(f"{self.directory} already holds a run; resume it or pick another run id")
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(self.directory / RUN_FILE, {"schema_version": SCHEMA_VERSION, **header})
        self.records_path.touch()

    def open_for_resume(self) -> set[str]:
        """Validate the header, drop a torn last line, and return the request keys already done."""
        self.header()
        path = self.records_path
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # The process died mid-write: the partial line was never a complete record.
                with path.open("r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
        return {record["request_key"] for record in self.iter_records()}

    def append(self, record: Record) -> None:
        """Write one record; non-finite values are stored as null, their column named in metric_error."""
        line = json.dumps(_finite(asdict(record)), ensure_ascii=False, allow_nan=False)
        with self.records_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append_warmup(self, entry: dict[str, Any]) -> None:
        with (self.directory / WARMUP_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"schema_version": SCHEMA_VERSION, **entry}) + "\n")

    def warmups(self) -> list[dict[str, Any]]:
        path = self.directory / WARMUP_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def iter_records(self) -> Iterator[dict[str, Any]]:
        if not self.records_path.exists():
            return
        with self.records_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    return  # torn tail of a killed run; everything before it is complete
                where = f"{self.records_path}:{number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ResultsError(f"{where}: corrupt record ({exc})") from exc
                yield _migrate(raw, where)

    def write_parquet(self) -> Path:
        frame = _one_type_per_column(records_frame(self.iter_records()))
        path = self.directory / PARQUET_FILE
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.directory / SUMMARY_FILE
        _atomic_write_json(path, {"schema_version": SCHEMA_VERSION, **summary})
        return path


def _jsonable(obj: Any) -> Any:
    """NaN and infinities (pandas' "missing") become null: JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    return obj


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every NaN or infinity, however deep, replaced by null and named in metric_error."""
    errors: dict[str, str] = dict(record.get("metric_error") or {})

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            errors.setdefault(where, f"non-finite value ({value}) stored as null")
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return value

    cleaned = {key: clean(value, key) for key, value in record.items() if key != "metric_error"}
    return {**cleaned, "metric_error": errors}


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Flatten records into one row each; env, info and metric_error keys become env_<name>, info_<name> and
    metric_error_<column> columns."""
    nested = ("env", "info", "metric_error")
    rows = []
    for record in records:
        row = {key: value for key, value in record.items() if key not in nested}
        for group in nested:
            row.update({f"{group}_{key}": value for key, value in (record.get(group) or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _one_type_per_column(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet columns hold one type; records need not (a port's hello may say `left_context: 72` where the
    reference records "exact"). Such a column is written as JSON text, so the columnar copy of measured
    records is always written; records.jsonl keeps every value as sent."""
    for column in frame.columns:
        values = frame[column].dropna()
        kinds = {type(value) for value in values}
        if frame[column].dtype == object and (len(kinds) > 1 or kinds & {dict, list}):
            frame[column] = [
                json.dumps(_jsonable(value), ensure_ascii=False)
                if isinstance(value, (dict, list)) or not pd.isna(value)
                else None
                for value in frame[column]
            ]
    return frame


def load_run(directory: str | Path) -> pd.DataFrame:
    """Load one run as a DataFrame, one row per request (reads records.jsonl, the source of truth)."""
    store = RunStore(Path(directory))
    store.header()
    return records_frame(store.iter_records())
