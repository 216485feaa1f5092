"""The plain `/api/v1/speak` WebSocket dialect, server side: any pipeline behind it (websockets).

`fault` plants one misbehaviour (FAULTS) so the client's error paths are tested against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

from qtts_eval.dialects.shared import BadRequest, parse_request
from qtts_eval.pipelines.base import AudioChunk, Pipeline, Request, StreamEnd
from qtts_eval.units import SAMPLE_RATE_HZ
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import Encoding, ErrorCode
from qtts_eval.wire.server import UTTERANCE_DONE, classify_error, serve_speak_path, start_utterance

HANG_S = 3600.0
# error-<code>: every speak is answered with an error of that code, before any audio.
ERROR_FAULTS = {f"error-{code.value.lower().replace('_', '-')}": code for code in ErrorCode}
FAULTS = (
    *ERROR_FAULTS,
    "cut-stream",  # the connection is dropped (no close frame) after the first audio chunk
    "not-json",  # a text frame that is not JSON replaces the first audio chunk
    "wrong-format",  # audio_start declares a sample format the dialect does not carry
    "hang",  # a speak is never answered
    "no-audio-end",  # all audio, then the connection is closed without audio_end
    "cancelled",  # every utterance ends after its first chunk with audio_end cancelled (a preempting server)
)
_CANCEL = object()  # queued by a client's cancel or stop: the utterance ends at the next event


class SpeakSession:
    """One connection: speak, cancel and stop in, audio_start, audio, audio_end and error out."""

    def __init__(self, pipeline: Pipeline, lock: threading.Lock, connection: Any, fault: str | None) -> None:
        self.pipeline = pipeline
        self.lock = lock
        self.connection = connection
        self.fault = fault
        self.utterance: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[object] = asyncio.Queue()

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def error(self, code: ErrorCode, text: str) -> None:
        await self.send({"type": "error", "code": code.value, "message": text})

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                try:
                    raw = await self.connection.recv()
                except ConnectionClosed:
                    return
                if await self.handle(raw):
                    return
        finally:
            if self.utterance is not None and not self.utterance.done():
                self.utterance.cancel()  # the client is gone: nothing can be sent
                with contextlib.suppress(BaseException):
                    await self.utterance

    async def handle(self, raw: str | bytes) -> bool:
        """Act on one client message; True when the session is over (stop)."""
        if isinstance(raw, bytes):
            await self.error(ErrorCode.INVALID_REQUEST, "binary frames are only sent by the server")
            return False
        try:
            message = protocol.loads(raw)
        except Exception as exc:
            await self.error(ErrorCode.INVALID_REQUEST, str(exc))
            return False
        kind = message["type"]
        busy = self.utterance is not None and not self.utterance.done()
        if kind == "speak":
            if busy:
                await self.error(ErrorCode.BUSY, "speak while an utterance is in progress; cancel it first")
                return False
            try:
                request = parse_request(message, "text")
                encoding = Encoding(message.get("format", Encoding.PCM16.value))
            except (BadRequest, ValueError) as exc:
                await self.error(ErrorCode.INVALID_REQUEST, f"speak: {exc}")
                return False
            if message.get("sample_rate", SAMPLE_RATE_HZ) != SAMPLE_RATE_HZ:
                await self.error(ErrorCode.INVALID_REQUEST, f"speak: audio is served at {SAMPLE_RATE_HZ} Hz")
                return False
            self.events = asyncio.Queue()
            self.utterance = asyncio.create_task(self.speak(request, encoding))
        elif kind in ("cancel", "stop"):
            if busy and self.utterance is not None:
                self.events.put_nowait(_CANCEL)  # ends with audio_end(cancelled), even before any audio
                await self.utterance
            if kind == "stop":
                await self.connection.close()
                return True
        else:
            await self.error(ErrorCode.INVALID_REQUEST, f"unknown message type {kind!r}")
        return False

    async def speak(self, request: Request, encoding: Encoding) -> None:
        fault = self.fault
        if fault in ERROR_FAULTS:
            await self.error(ERROR_FAULTS[fault], f"planted fault: {fault}")
            return
        if fault == "hang":
            await asyncio.sleep(HANG_S)
            return
        declared = "mulaw" if fault == "wrong-format" else encoding.value
        await self.send({"type": "audio_start", "format": declared, "sample_rate": SAMPLE_RATE_HZ})
        halt = start_utterance(self.pipeline, self.lock, request, self.events)
        sent = 0
        try:
            while True:
                item = await self.events.get()
                if item is _CANCEL:
                    await self.send({"type": "audio_end", "samples": sent, "cancelled": True})
                    return
                if isinstance(item, AudioChunk):
                    if fault == "not-json":
                        fault = None  # only the first chunk is replaced
                        await self.connection.send("not json")
                        continue
                    await self.connection.send(protocol.encode_audio(item.samples, encoding))
                    sent += item.samples.shape[0]
                    if fault == "cut-stream":
                        self.connection.transport.abort()
                        return
                    if fault == "cancelled":
                        await self.send({"type": "audio_end", "samples": sent, "cancelled": True})
                        return
                elif isinstance(item, StreamEnd):
                    if fault == "no-audio-end":
                        await self.connection.close()
                        return
                    await self.send({"type": "audio_end", "samples": sent, "cancelled": False})
                    return
                elif isinstance(item, BaseException):
                    await self.error(*classify_error(item))
                    return
                elif item is UTTERANCE_DONE:
                    await self.error(ErrorCode.SYNTHESIS_ERROR, "the pipeline ended without a StreamEnd")
                    return
        finally:
            halt.set()  # the pipeline stops at its next event however this ends (cancel, client gone)


async def serve_speak(
    pipeline: Pipeline,
    bind: str,
    port: int,
    on_listening: Callable[[str], None],
    fault: str | None = None,
) -> None:
    """Serve ``pipeline`` at ws://bind:port/api/v1/speak until cancelled; on_listening gets the URL (port 0
    picks a free port). One utterance runs at a time; other connections queue for the pipeline. Messages are
    bounded as the suite's own protocol bounds them (protocol.MAX_FRAME_BYTES)."""
    lock = threading.Lock()

    async def handler(connection: Any) -> None:
        await SpeakSession(pipeline, lock, connection, fault).run()

    await serve_speak_path(handler, bind, port, on_listening)
