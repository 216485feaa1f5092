"""The plain `/api/v1/speak` WebSocket dialect, client side: a speak endpoint as a candidate pipeline.

JSON `speak`, `cancel` and `stop` go out in text frames; audio comes back in binary frames (PCM16 or F32, as
the option asks or a server's `audio_start` declares), and `audio_end` or an `error` with a code ends each
utterance (docs/dialects.md). Unlike the suite's own protocol there is no hello, no session start and no
codes. Every fault a server can commit surfaces as an error naming it: RemoteError with the server's code,
MalformedMessage, ProtocolError, or CandidateTimeout for a hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from qtts_eval.dialects.shared import (
    CODES_KEY,
    NOT_AVAILABLE,
    CloneOptions,
    check_rate,
    clone_fields,
    within_budget,
)
from qtts_eval.errors import CandidateTimeout, MalformedMessage, ProtocolError, RemoteError
from qtts_eval.pipelines.base import (
    AudioChunk,
    Event,
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
    UnsupportedRequest,
)
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.client import WebSocketChannel
from qtts_eval.wire.protocol import Encoding, ErrorCode


@dataclass(frozen=True)
class SpeakOptions(CloneOptions):
    """The speak dialect's options (and the voice-cloning fields of CloneOptions)."""

    url: str = ""  # the endpoint, e.g. ws://127.0.0.1:8000/api/v1/speak
    audio_format: str = Encoding.PCM16.value  # asked for in `format` (pcm16 or f32); audio_start may override
    timeout_s: float = 120.0  # seconds to wait for the connection and for each message of an utterance

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"option 'url' must be a ws:// or wss:// URL, got {self.url!r}")
        if self.audio_format not in {e.value for e in Encoding}:
            raise ValueError(f"audio_format {self.audio_format!r} is not pcm16 or f32")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")


class SpeakPipeline(Pipeline):
    """A server speaking the `/api/v1/speak` dialect (a Rust application server, `serve --dialect speak`).

    One connection serves every request; after a fault that leaves its state unknown it is closed and the
    next request connects again. The dialect carries no codes: records say codes not_available, and the
    audio distance to the reference is the same-work evidence."""

    label = "speak"
    in_process = False
    options_schema = SpeakOptions
    options: SpeakOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.connection: WebSocketChannel | None = None
        self.where = f"speak {self.options.url}"

    def load(self) -> None:
        self._connected()

    def _connected(self) -> WebSocketChannel:
        if self.connection is None:
            self.connection = WebSocketChannel(self.options.url, self.options.timeout_s)
        return self.connection

    def message(self, request: Request) -> dict[str, Any]:
        o = self.options
        message: dict[str, Any] = {
            "type": "speak",
            "text": request.text,
            "language": request.language,
            "max_frames": request.max_frames,
            "seed": request.seed,
            "format": o.audio_format,
            "sample_rate": SAMPLE_RATE_HZ,
        }
        if o.voice:
            message["voice"] = o.voice
        return {**message, **clone_fields(o, request)}

    def stream(self, request: Request) -> Iterator[Event]:
        connection = self._connected()
        keep = False  # the connection is left open only when the utterance ended as the dialect says
        try:
            self._send(connection, self.message(request))
            try:
                samples, cancelled = yield from self._utterance(connection, request.max_frames)
            except GeneratorExit:  # the consumer walked away: cancel, so the connection serves the next
                keep = self._cancel(connection)
                raise
            except (RemoteError, UnsupportedRequest):
                keep = True  # the server refused this request in words; its connection is fine
                raise
            keep = True
        finally:
            if not keep:
                self._drop()
        info: dict[str, Any] = {CODES_KEY: NOT_AVAILABLE}
        if cancelled:
            info["cancelled"] = True
        # No codes come over this dialect: the frame count is what the audio length implies.
        yield StreamEnd(frames_generated=samples // SAMPLES_PER_FRAME, info=info)

    def _utterance(
        self, connection: WebSocketChannel, budget: int
    ) -> Generator[Event, None, tuple[int, bool]]:
        """Audio until audio_end: (samples received, whether the server says it was cancelled)."""
        encoding = Encoding(self.options.audio_format)
        received = 0
        declared = False  # an audio_start came: at most one, before the audio
        while True:
            raw = self._receive(connection, received)
            if isinstance(raw, bytes):
                try:
                    samples = protocol.decode_audio(raw, encoding)
                except ProtocolError as exc:
                    raise ProtocolError(f"{self.where}: {exc}") from exc
                received = within_budget(received + samples.shape[0], budget, self.where)
                yield AudioChunk(samples)
                continue
            message = self._parse(raw)
            kind = message["type"]
            if kind == "audio_start":
                if received or declared:
                    raise MalformedMessage(f"{self.where}: a second audio_start, or one after audio")
                encoding, declared = self._declared(message), True
            elif kind == "audio_end":
                return received, self._ended(message, received)
            elif kind == "error":
                raise _error(message, self.where)
            else:
                raise MalformedMessage(f"{self.where}: unexpected {kind!r} message during an utterance")

    def _declared(self, message: dict[str, Any]) -> Encoding:
        """The encoding an audio_start declares (its sample rate must be the suite's)."""
        check_rate(message.get("sample_rate", SAMPLE_RATE_HZ), f"{self.where}: audio_start")
        declared = message.get("format", self.options.audio_format)
        try:
            return Encoding(declared)
        except ValueError:
            raise MalformedMessage(
                f"{self.where}: audio_start declares format {str(declared)[:40]!r}; the dialect carries "
                "pcm16 or f32"
            ) from None

    def _ended(self, message: dict[str, Any], received: int) -> bool:
        sent = message.get("samples", received)
        if sent != received:
            raise ProtocolError(f"{self.where}: audio_end says {sent!r} samples were sent, got {received}")
        if received == 0:
            raise ProtocolError(f"{self.where}: the utterance ended without audio")
        return message.get("cancelled") is True

    def _cancel(self, connection: WebSocketChannel) -> bool:
        """Cancel the running utterance and read up to its audio_end; True when the connection is usable."""
        try:
            self._send(connection, {"type": "cancel"})
            while True:
                raw = self._receive(connection, 0)
                if isinstance(raw, str) and self._parse(raw)["type"] in ("audio_end", "error"):
                    return True
        except ProtocolError:
            return False

    def _parse(self, raw: str) -> dict[str, Any]:
        try:
            return protocol.loads(raw)
        except ProtocolError as exc:
            raise MalformedMessage(f"{self.where}: {exc}") from exc

    def _send(self, connection: WebSocketChannel, message: dict[str, Any]) -> None:
        try:
            connection.send(message)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.where}: {exc}") from exc

    def _receive(self, connection: WebSocketChannel, received: int) -> str | bytes:
        try:
            return connection.receive(self.options.timeout_s)
        except CandidateTimeout:
            raise
        except ProtocolError as exc:
            raise ProtocolError(
                f"{self.where}: the connection closed before audio_end, after {received} samples ({exc})"
            ) from exc

    def _drop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(transport=f"speak-{self.options.audio_format}", candidate=self.options.url)
        return info

    def close(self) -> None:
        """Say `stop`, then close: a server ends the session."""
        if self.connection is not None:
            with contextlib.suppress(ProtocolError):
                self.connection.send({"type": "stop"})
        self._drop()


def _error(message: dict[str, Any], where: str) -> Exception:
    """An `error` message as the exception its code maps to: UNSUPPORTED is a request the bench records as
    unsupported; every other code (TTS_UNAVAILABLE, SYNTHESIS_ERROR, ...) an error naming the code."""
    code = str(message.get("code", "?"))[:40]
    text = str(message.get("message", ""))[:300]
    if code == ErrorCode.UNSUPPORTED.value:
        return UnsupportedRequest(f"{where}: {code}: {text}")
    return RemoteError(code, f"{where}: {text}")
