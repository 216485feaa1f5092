"""The pipeline protocol: load once, stream audio for a request, declare optional capabilities."""

from __future__ import annotations

import dataclasses
import enum
import functools
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from qtts_eval import environment
from qtts_eval.errors import ParityError, RequestError
from qtts_eval.fixtures import Voice, read_reference_audio
from qtts_eval.pipelines import options
from qtts_eval.pipelines.options import NoOptions
from qtts_eval.units import MAX_TEXT_CHARS, SAMPLE_RATE_HZ

REMOTE_GPU_MEMORY_KEY = "remote_gpu_mem_bytes"  # StreamEnd.info: an external candidate's NVML reading
REMOTE_RSS_KEY = "remote_peak_rss_bytes"  # StreamEnd.info: a local worker's (and children's) peak RSS
WORK_KEY = "work"  # hello.implementation: a served pipeline's WorkDeclaration.to_json() (docs/protocol.md)


@functools.lru_cache(maxsize=16)
def reference_audio(path: Path) -> npt.NDArray[np.float32]:
    """A voice's reference clip, read and validated once per process (requests share the array, read-only)."""
    audio, _ = read_reference_audio(path)
    audio.setflags(write=False)
    return audio


class CloneMode(str, enum.Enum):
    """How the reference voice conditions the model."""

    ICL = "icl"  # speaker embedding + the reference's codec codes and transcript
    XVECTOR = "xvector"  # speaker embedding only (x_vector_only_mode)


class Capability(str, enum.Enum):
    """Optional abilities a pipeline declares; the suite never assumes one that is not declared."""

    STAGE_DUMPS = "stage_dumps"  # can write parity stage dumps
    FORCED_CODES = "forced_codes"  # accepts teacher-forced codes
    SEEDED_SAMPLING = "seeded_sampling"  # sampling is reproducible from Request.seed


@dataclass(frozen=True)
class Sampling:
    """Decoding settings passed to the pipeline."""

    do_sample: bool = False  # False = greedy (argmax) decoding
    temperature: float = 0.9  # softmax temperature when sampling
    top_k: int = 50  # keep the k most likely tokens when sampling
    top_p: float = 1.0  # nucleus mass when sampling
    repetition_penalty: float = 1.05  # the official generation_config default; applies to greedy too

    @property
    def name(self) -> str:
        return "sample" if self.do_sample else "greedy"


@dataclass(frozen=True)
class Request:
    """One synthesis request: text, voice and how to decode it."""

    text: str  # text to speak
    language: str  # language name as the reference API takes it ("english", "chinese", "auto", ...)
    ref_audio: np.ndarray = field(repr=False)  # float32 mono reference clip at 24 kHz
    ref_text: str  # exact transcript of ref_audio (used in ICL mode)
    mode: CloneMode  # ICL or x-vector-only
    max_frames: int  # frame budget: generation stops here if EOS never comes
    seed: int  # seed applied right before generation
    sampling: Sampling = field(default_factory=Sampling)  # decoding settings
    # The talker prompt layout asked for (the reference's non_streaming_mode: the whole text up front when
    # True); None: the pipeline's own. A pipeline that cannot lay the prompt out this way refuses the request.
    non_streaming_mode: bool | None = None

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise RequestError("text is empty or whitespace only; there is nothing to speak")
        if len(self.text) > MAX_TEXT_CHARS:
            raise RequestError(
                f"text has {len(self.text)} characters, over the {MAX_TEXT_CHARS}-character limit; split it"
            )
        if self.max_frames < 1:
            raise RequestError(f"frame budget must be at least 1 frame, got {self.max_frames}")
        audio = self.ref_audio
        if audio.ndim != 1 or audio.dtype != np.float32 or audio.size == 0:
            raise RequestError(
                f"reference audio must be non-empty 1-D float32 mono at {SAMPLE_RATE_HZ} Hz, "
                f"got shape {audio.shape} dtype {audio.dtype}"
            )
        if self.mode is CloneMode.ICL and not self.ref_text.strip():
            raise RequestError("ICL mode needs the reference transcript, and ref_text is empty")

    @classmethod
    def for_voice(
        cls,
        voice: Voice,
        text: str,
        language: str,
        mode: CloneMode,
        max_frames: int,
        seed: int,
        sampling: Sampling | None = None,
        non_streaming_mode: bool | None = None,
    ) -> Request:
        """The one way to build a request from the fixtures: the voice's reference clip and transcript."""
        return cls(
            text=text,
            language=language,
            ref_audio=reference_audio(voice.ref_wav),
            ref_text=voice.ref_text,
            mode=mode,
            max_frames=max_frames,
            seed=seed,
            sampling=sampling or Sampling(),
            non_streaming_mode=non_streaming_mode,
        )


@dataclass(frozen=True)
class AudioChunk:
    """A piece of output audio. The harness stamps its arrival itself (qtts_eval.measure)."""

    samples: np.ndarray = field(repr=False)  # float32 mono at 24 kHz
    # The pipeline's own time.monotonic_ns() when the samples were in host memory, if it knows it: kept apart
    # from the harness's stamp (pipeline_* columns) and checked against it.
    t_ns: int | None = None


@dataclass(frozen=True)
class StreamEnd:
    """Last event of a stream: what the pipeline knows about the finished request."""

    frames_generated: int  # codec frames produced
    codes: np.ndarray | None = field(default=None, repr=False)  # [frames, 16] int codes, if observable
    info: dict[str, Any] = field(default_factory=dict)  # extra per-request facts, recorded as-is


class Stage(str, enum.Enum):
    """Points inside a request that a pipeline can observe; they split first-byte latency."""

    PROMPT_READY = "prompt_ready"  # speaker embedding and reference codes computed
    PREFILL_DONE = "prefill_done"  # the talker has processed the whole prompt
    FIRST_FRAME = "first_frame"  # all 16 codes of the first frame exist
    FIRST_PACKET_CODES = "first_packet_codes"  # the first packet's frames exist; its decode starts


@dataclass(frozen=True)
class Mark:
    """A stage reached inside the pipeline, timed like AudioChunk (after device work has finished)."""

    stage: Stage
    t_ns: int | None = (
        None  # the pipeline's own time.monotonic_ns(); None: the harness's arrival stamp counts
    )


Event = AudioChunk | Mark | StreamEnd


@dataclass(frozen=True)
class PipelineConfig:
    """How to build a pipeline; each pipeline interprets the fields it supports."""

    model: str = "tiny"  # model ref: synthetic preset name, local directory, or hub id
    device: str = "cpu"  # torch device string, e.g. "cpu" or "cuda:0"
    dtype: str = "float32"  # talker dtype: float32, bfloat16 or float16
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    options: dict[str, Any] = field(default_factory=dict)  # pipeline-specific settings


class Delivery(str, enum.Enum):
    """How a pipeline hands its audio over."""

    STREAMED = "streamed"  # packets as their codes exist
    WHOLE = "whole"  # one chunk with the whole utterance, after the whole decode


class PromptReuse(str, enum.Enum):
    """Whether a voice's clone prompt (speaker embedding, reference codes) is built inside every request."""

    CACHED = "cached"  # built once per voice, reused by later requests (outside their timed region)
    BUILT = "built"  # built inside every request, and timed with it


class BudgetConvention(str, enum.Enum):
    """What a frame budget of N (max_new_tokens) yields when generation runs into it."""

    N_MINUS_1 = "n_minus_1"  # N - 1 frames: the official package (the last step's frame is never emitted)
    N = "n"  # N frames: the budget honoured literally


WORK_ENUMS: dict[str, type[enum.Enum]] = {
    "prompt": PromptReuse,
    "delivery": Delivery,
    "budget_convention": BudgetConvention,
}


@dataclass(frozen=True)
class WorkDeclaration:
    """What a pipeline does for every request, beyond the request itself (docs/metrics.md, work_* columns).

    None is "not declared". The bench records it on every record, checks what it can observe (chunks ->
    delivery, frames -> budget convention), and compare names each field two sides differ in.
    """

    prompt: PromptReuse | None = None  # clone prompt cached per voice or built inside every request
    delivery: Delivery | None = None  # streamed packets or the whole utterance at once
    packet_frames: int | None = None  # codec frames per streamed chunk
    budget_convention: BudgetConvention | None = None  # frames yielded by a budget of N
    instrumentation: str | None = None  # what it runs only to expose its codes ("none" when nothing)
    threads: int | None = None  # CPU threads its compute uses
    talker_precision: str | None = None  # talker dtype, torch's spelling (float32, bfloat16, ...)
    codec_precision: str | None = None  # speech tokenizer (decoder) dtype, torch's spelling
    error: str | None = None  # why (part of) a declaration could not be read; those fields are None

    def to_json(self) -> dict[str, Any]:
        """The declaration as JSON values (enums by value), undeclared fields left out."""
        return {
            key: value.value if isinstance(value, enum.Enum) else value
            for key, value in dataclasses.asdict(self).items()
            if value is not None and key != "error"
        }

    @classmethod
    def from_json(cls, data: object) -> WorkDeclaration:
        """A declaration another process sent (the hello's implementation.work): fields that are not what
        they should be stay undeclared, and `error` names them."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            return cls(error=f"work declaration is not an object: {data!r}")
        fields: dict[str, Any] = {}
        problems = []
        for item in dataclasses.fields(cls):
            value = data.get(item.name)
            if value is None or item.name == "error":
                continue
            if item.name in WORK_ENUMS:
                try:
                    fields[item.name] = WORK_ENUMS[item.name](value)
                except ValueError:
                    problems.append(f"{item.name}={value!r}")
            elif item.name in ("packet_frames", "threads"):
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    fields[item.name] = value
                else:
                    problems.append(f"{item.name}={value!r}")
            elif isinstance(value, str):
                fields[item.name] = value
            else:
                problems.append(f"{item.name}={value!r}")
        unknown = sorted(set(data) - {item.name for item in dataclasses.fields(cls)})
        problems += [f"unknown field {name!r}" for name in unknown]
        return cls(**fields, error=f"undeclared: {', '.join(problems)}" if problems else None)


class UnsupportedRequest(Exception):
    """Raised by a pipeline for a configuration it cannot do; recorded as 'unsupported', never a pass."""


class Pipeline(ABC):
    """A TTS implementation under test."""

    label: ClassVar[str] = "pipeline"  # names the pipeline in error messages
    # A class declares what it can do; a pipeline in front of another implementation (the wire clients) sets
    # it per instance from what that implementation declared.
    capabilities: frozenset[Capability] = frozenset()
    # False for candidates in another process: the harness's own memory says nothing about them.
    in_process: ClassVar[bool] = True
    options_schema: ClassVar[type] = NoOptions  # a frozen dataclass: the options this pipeline takes

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.options: Any = options.parse(self.label, self.options_schema, config.options)

    @abstractmethod
    def load(self) -> None:
        """Load weights; called once before any request."""

    @abstractmethod
    def stream(self, request: Request) -> Iterator[Event]:
        """Yield AudioChunks in order, then exactly one StreamEnd."""

    def work(self) -> WorkDeclaration:
        """The work this pipeline does for every request (what it declares; nothing by default)."""
        return WorkDeclaration()

    def ensure_ready(self) -> bool:
        """Called by the bench before each request, outside the timed region: bring back whatever the
        pipeline lost (a candidate process that died). True when it restarted something: the restarted
        implementation is cold again, so the bench re-arms its warm-up and marks the request."""
        return False

    def describe(self) -> dict[str, Any]:
        """Facts recorded with every request (model ref, weights hash, synthetic flag, dtype, device)."""
        return {
            "model_ref": self.config.model,
            "device": self.config.device,
            "device_name": environment.device_name(self.config.device),
            "dtype": self.config.dtype,
            "attn_implementation": self.config.attn_implementation,
        }

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release resources (processes, sockets, GPU memory)."""


class ForcedInput(str, enum.Enum):
    """An input a teacher-forced candidate takes from the reference dump instead of computing it; the value
    is the dump key it is read from (docs/parity.md)."""

    SPK_EMBEDDING = "spk.embedding"  # speaker embedding, replacing the candidate's speaker encoder
    REF_CODES = "codec_enc.codes"  # reference audio codes (ICL), replacing the candidate's codec encoder
    CODES = "codes"  # generated codes, forced frame by frame into the talker and code predictor


@dataclass(frozen=True)
class ForcedInputs:
    """What a teacher-forced run receives from the reference dump; None leaves that input free."""

    codes: npt.NDArray[np.int64] | None  # [T, 16] generated codes, forced frame by frame
    ref_codes: (
        npt.NDArray[np.int64] | None
    )  # [T_ref, 16] reference audio codes (ICL), replacing the encoder's
    spk_embedding: npt.NDArray[np.float32] | None  # [D] speaker embedding, replacing the speaker encoder's

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray], inputs: Collection[ForcedInput] = tuple(ForcedInput)
    ) -> ForcedInputs:
        """The `inputs` to force, from the tensors of a reference stage dump (reference codes only where the
        dump has them: ICL)."""
        missing = [f.value for f in inputs if f is not ForcedInput.REF_CODES and f.value not in tensors]
        if missing:
            raise ParityError(f"teacher forcing needs {missing} in the reference dump")

        def take(forced_input: ForcedInput, dtype: type[Any]) -> Any:
            value = tensors.get(forced_input.value) if forced_input in inputs else None
            return None if value is None else np.asarray(value, dtype=dtype)

        return cls(
            codes=take(ForcedInput.CODES, np.int64),
            ref_codes=take(ForcedInput.REF_CODES, np.int64),
            spk_embedding=take(ForcedInput.SPK_EMBEDDING, np.float32),
        )

    @property
    def forced(self) -> tuple[ForcedInput, ...]:
        """The inputs this forces, in schema order (what a dump header records)."""
        given = {
            ForcedInput.SPK_EMBEDDING: self.spk_embedding,
            ForcedInput.REF_CODES: self.ref_codes,
            ForcedInput.CODES: self.codes,
        }
        return tuple(f for f in ForcedInput if given[f] is not None)


@runtime_checkable
class StageDumper(Protocol):
    """What a pipeline declaring Capability.STAGE_DUMPS provides (FORCED_CODES: it honours `forced`).

    It runs `request` once and writes the stage dump (docs/parity.md) to `path`; callers read that file,
    so what is compared is what the candidate wrote, in process or over the wire.
    """

    def write_stage_dump(
        self, request: Request, path: Path, *, forced: ForcedInputs | None = None
    ) -> object: ...


Emit = Callable[[Event], None]
_DONE = object()  # queue sentinel: the producer has finished


def produce(
    work: Callable[[Emit, threading.Event], None], in_thread: bool = True, name: str = "qtts-eval-producer"
) -> Iterator[Event]:
    """Run ``work(emit, cancelled)`` and yield what it emits, in order.

    In a worker thread, events reach the caller through a queue as they are emitted (streaming); inline,
    they are yielded once ``work`` returns. An exception in ``work`` is raised in the caller. Closing the
    iterator sets ``cancelled`` and waits for the worker to notice.
    """
    events: queue.Queue[Any] = queue.Queue()
    cancelled = threading.Event()

    def run() -> None:
        try:
            work(events.put, cancelled)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            events.put(exc)
        finally:
            events.put(_DONE)

    worker = threading.Thread(target=run, name=name, daemon=True) if in_thread else None
    if worker is not None:
        worker.start()
    else:
        run()
    try:
        while (event := events.get()) is not _DONE:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        cancelled.set()  # no-op when finished; stops the producer if the caller walked away
        if worker is not None:
            worker.join()
