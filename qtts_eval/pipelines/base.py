"""The pipeline protocol: load once, stream audio for a request, declare optional capabilities."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qtts_eval.errors import RequestError

SAMPLE_RATE_HZ = 24_000  # the model's only output rate
FRAME_RATE_HZ = 12.5  # codec frames per second of audio
SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz
REMOTE_GPU_MEMORY_KEY = "remote_gpu_mem_bytes"  # StreamEnd.info: an external candidate's NVML reading
MAX_TEXT_CHARS = 5000  # longer inputs are refused: ~6 minutes of speech, beyond any fixture or budget


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


@dataclass(frozen=True)
class AudioChunk:
    """A piece of output audio as it arrived at the harness."""

    samples: np.ndarray = field(repr=False)  # float32 mono at 24 kHz
    t_ns: int  # time.monotonic_ns() when the chunk was available in host memory


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
    t_ns: int  # time.monotonic_ns()


Event = AudioChunk | Mark | StreamEnd


@dataclass(frozen=True)
class PipelineConfig:
    """How to build a pipeline; each pipeline interprets the fields it supports."""

    model: str = "tiny"  # model ref: synthetic preset name, local directory, or hub id
    device: str = "cpu"  # torch device string, e.g. "cpu" or "cuda:0"
    dtype: str = "float32"  # talker dtype: float32, bfloat16 or float16
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    options: dict[str, Any] = field(default_factory=dict)  # pipeline-specific settings


class UnsupportedRequest(Exception):
    """Raised by a pipeline for a configuration it cannot do; recorded as 'unsupported', never a pass."""


class Pipeline(ABC):
    """A TTS implementation under test."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # False for candidates in another process: the harness's own memory says nothing about them.
    in_process: ClassVar[bool] = True

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config

    @abstractmethod
    def load(self) -> None:
        """Load weights; called once before any request."""

    @abstractmethod
    def stream(self, request: Request) -> Iterator[Event]:
        """Yield AudioChunks in order, then exactly one StreamEnd."""

    def describe(self) -> dict[str, Any]:
        """Facts recorded with every request (model ref, weights hash, synthetic flag, dtype, device)."""
        return {
            "model_ref": self.config.model,
            "device": self.config.device,
            "dtype": self.config.dtype,
            "attn_implementation": self.config.attn_implementation,
        }

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release resources (processes, sockets, GPU memory)."""
