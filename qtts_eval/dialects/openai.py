"""The OpenAI-style speech dialect, client side: `POST /v1/audio/speech` as a candidate pipeline.

Three streaming shapes (docs/dialects.md): raw PCM16 over chunked HTTP (no header; its rate is the `pcm_rate`
option), a streamed WAV (rate and length from its header) and server-sent events carrying base64 audio deltas.
Every fault a server can commit surfaces as a ProtocolError (CandidateTimeout for a hang) naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from qtts_eval.dialects.shared import (
    CODES_KEY,
    NOT_AVAILABLE,
    CloneOptions,
    Pcm16Decoder,
    check_rate,
    clone_fields,
    within_budget,
)
from qtts_eval.errors import CandidateTimeout, PipelineError, ProtocolError
from qtts_eval.pipelines.base import AudioChunk, Event, Pipeline, PipelineConfig, Request, StreamEnd
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

SPEECH_PATH = "/v1/audio/speech"
MAX_ERROR_BODY_CHARS = 300  # an error body quoted in the recorded error
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one SSE event's base64 audio
WAV_HEADER_MAX_BYTES = 4096  # a WAV header (RIFF, fmt and any chunks before data) larger than this is refused
UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # the data sizes a streamed WAV writes when it does not know its length
CONTENT_TYPES = {
    "pcm": ("audio/pcm", "audio/l16", "application/octet-stream"),
    "wav": ("audio/wav", "audio/x-wav", "audio/wave"),
    "sse": ("text/event-stream",),
}


@dataclass(frozen=True)
class OpenAIOptions(CloneOptions):
    url: str = ""  # the server's base URL, e.g. http://127.0.0.1:8000 (the speech path is appended)
    model: str = "qwen3-tts"  # the request's `model` field
    response_format: str = "pcm"  # "pcm" (raw s16le, no header) or "wav"
    stream_format: str = "audio"  # "audio" (bytes of response_format) or "sse" (base64 deltas in JSON events)
    pcm_rate: int = (
        SAMPLE_RATE_HZ  # the sample rate of headerless PCM: servers document it, nothing on the wire says it
    )
    timeout_s: float = 120.0  # seconds to wait for the response and for each later piece of it

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"option 'url' must be an http:// or https:// URL, got {self.url!r}")
        if self.response_format not in ("pcm", "wav"):
            raise ValueError(f"response_format {self.response_format!r} is not pcm or wav")
        if self.stream_format not in ("audio", "sse"):
            raise ValueError(f"stream_format {self.stream_format!r} is not audio or sse")
        if self.timeout_s <= 0 or self.pcm_rate <= 0:
            raise ValueError("timeout_s and pcm_rate must be positive")


def parse_wav_header(data: bytes, where: str) -> tuple[int, int | None] | None:
    """(header length, declared data bytes or None if unknown) once `data` holds the whole header, else None.

    Only mono PCM16 is accepted: it is what a streaming server writes, and anything else is named."""
    if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
        raise ProtocolError(f"{where}: the response is not a RIFF/WAVE file (starts {data[:12]!r})")
    offset = 12
    while len(data) >= offset + 8:
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            return offset + 8, None if size in UNKNOWN_SIZES else size
        if offset + 8 + size > WAV_HEADER_MAX_BYTES:
            raise ProtocolError(
                f"{where}: WAV chunk {chunk_id!r} before the data is {size} bytes, over the limit"
            )
        if len(data) < offset + 8 + size:
            return None
        if chunk_id == b"fmt ":
            audio_format, channels, rate = struct.unpack("<HHI", data[offset + 8 : offset + 16])
            bits = struct.unpack("<H", data[offset + 22 : offset + 24])[0]
            if (audio_format, channels, bits) != (1, 1, 16):
                raise ProtocolError(
                    f"{where}: WAV format {audio_format}, {channels} channels, {bits} bits; "
                    "mono PCM16 expected"
                )
            check_rate(rate, where)
        offset += 8 + size + size % 2
    if len(data) > WAV_HEADER_MAX_BYTES:
        raise ProtocolError(f"{where}: no WAV data chunk within the first {WAV_HEADER_MAX_BYTES} bytes")
    return None


class OpenAIPipeline(Pipeline):
    """A server speaking `POST /v1/audio/speech` (vLLM-Omni, SGLang, FastAPI wrappers, `serve --dialect
    openai`).

    The dialect carries no codes: records say codes not_available, and the audio distance to the reference
    is the same-work evidence."""

    label = "openai"
    in_process = False
    options_schema = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.client: httpx.Client | None = None
        self.endpoint = self.options.url.rstrip("/") + SPEECH_PATH

    def load(self) -> None:
        timeout = httpx.Timeout(self.options.timeout_s)
        self.client = httpx.Client(timeout=timeout)

    def body(self, request: Request) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {
            "model": o.model,
            "input": request.text,
            "voice": o.voice or "clone",
            "response_format": o.response_format,
            "stream": True,
            "language": request.language,
            "max_frames": request.max_frames,
            "seed": request.seed,
        }
        if o.stream_format == "sse":
            body["stream_format"] = "sse"
        return {**body, **clone_fields(o, request)}

    def stream(self, request: Request) -> Iterator[Event]:
        if self.client is None:
            raise PipelineError("openai: stream() called before load()")
        where = f"openai {self.endpoint}"
        try:
            with self.client.stream("POST", self.endpoint, json=self.body(request)) as response:
                if response.status_code >= 400:
                    text = response.read().decode("utf-8", "replace")[:MAX_ERROR_BODY_CHARS]
                    raise ProtocolError(f"{where}: HTTP {response.status_code}: {text}")
                kind = "sse" if self.options.stream_format == "sse" else self.options.response_format
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type not in CONTENT_TYPES[kind]:
                    raise ProtocolError(
                        f"{where}: content type {content_type or '(none)'!r}, "
                        f"expected one of {CONTENT_TYPES[kind]}"
                    )
                budget = request.max_frames
                if kind == "sse":
                    samples = yield from self._sse(response, where, budget)
                elif kind == "wav":
                    samples = yield from self._wav(response, where, budget)
                else:
                    check_rate(self.options.pcm_rate, where)
                    samples = yield from self._pcm(response.iter_bytes(), where, budget)
        except httpx.TimeoutException as exc:
            raise CandidateTimeout(
                f"{where}: nothing received within {self.options.timeout_s:g} s ({exc!r})"
            ) from exc
        except httpx.HTTPError as exc:  # a connection dropped or a chunked body cut short
            raise ProtocolError(f"{where}: the response broke off: {exc}") from exc
        if samples == 0:
            raise ProtocolError(f"{where}: the response carried no audio")
        # No codes come over this dialect: the frame count is what the audio length implies.
        yield StreamEnd(frames_generated=samples // SAMPLES_PER_FRAME, info={CODES_KEY: NOT_AVAILABLE})

    def _pcm(self, pieces: Iterator[bytes], where: str, budget: int) -> Generator[Event, None, int]:
        decoder = Pcm16Decoder()
        count = 0
        for piece in pieces:
            samples = decoder.decode(piece)
            if samples.size:
                count = within_budget(count + samples.size, budget, where)
                yield AudioChunk(samples)
        decoder.finish(where)
        return count

    def _wav(self, response: httpx.Response, where: str, budget: int) -> Generator[Event, None, int]:
        pieces = response.iter_bytes()
        head = b""
        header = None
        for piece in pieces:
            head += piece
            header = parse_wav_header(head, where)
            if header is not None:
                break
        if header is None:
            raise ProtocolError(f"{where}: the stream ended inside the WAV header")
        start, declared = header

        def body() -> Iterator[bytes]:
            yield head[start:]
            yield from pieces

        received = 0

        def counted() -> Iterator[bytes]:
            nonlocal received
            for piece in body():
                received += len(piece)
                yield piece

        count = yield from self._pcm(counted(), where, budget)
        if declared is not None and received != declared:
            raise ProtocolError(
                f"{where}: the WAV header declares {declared} data bytes, the stream carried {received}"
            )
        return count

    def _sse(self, response: httpx.Response, where: str, budget: int) -> Generator[Event, None, int]:
        from httpx_sse import EventSource

        decoder = Pcm16Decoder()
        count = 0
        for event in EventSource(response).iter_sse():
            try:
                message = json.loads(event.data)
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"{where}: an SSE event is not JSON: {event.data[:80]!r}") from exc
            if not isinstance(message, dict):
                raise ProtocolError(f"{where}: an SSE event is not a JSON object: {event.data[:80]!r}")
            kind = message.get("type")
            if kind == "speech.audio.done":
                break
            if kind != "speech.audio.delta":
                raise ProtocolError(f"{where}: unknown SSE event type {kind!r}")
            delta = message.get("audio")
            if not isinstance(delta, str) or len(delta) > MAX_EVENT_BYTES:
                raise ProtocolError(f"{where}: an audio delta is not a base64 string within the size limit")
            try:
                samples = decoder.decode(base64.b64decode(delta, validate=True))
            except binascii.Error as exc:
                raise ProtocolError(f"{where}: an audio delta is not valid base64 ({exc})") from exc
            if samples.size:
                count = within_budget(count + samples.size, budget, where)
                yield AudioChunk(samples)
        else:
            raise ProtocolError(f"{where}: the SSE stream ended without speech.audio.done")
        decoder.finish(where)
        return count

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            transport=f"openai-{self.options.stream_format}-{self.options.response_format}",
            candidate=self.endpoint,
        )
        return info

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
