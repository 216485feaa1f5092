"""Any registered pipeline behind the wire protocol: a WebSocket server and a stdio worker.

The reference measured through ``qtts-eval serve`` crosses exactly the wire a port's server does, so the
transport's cost is measured, not guessed. Pipelines' ``stream()`` is a blocking generator: each utterance
runs it in a thread and forwards events to the event loop as they come. One utterance runs at a time per
loaded pipeline (the reference has no batching); other sessions queue for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from qtts_eval import environment
from qtts_eval.errors import ProtocolError, RequestError
from qtts_eval.pipelines.base import (
    WORK_KEY,
    AudioChunk,
    Capability,
    Mark,
    Pipeline,
    Request,
    StageDumper,
    StreamEnd,
    UnsupportedRequest,
)
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import ErrorCode, InvalidMessage

VOICE_CACHE_SIZE = 64  # voices kept per server; the least recently used is dropped first
MAX_DUMPS = 1000  # stage dumps one server writes at most: a parity sweep is tens, a runaway client is not
MAX_DUMP_BYTES = 4 * 2**30  # one dump at most: full-size prefill taps of a long prompt are ~100s of MB
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_CANCEL = object()  # queued by a client's cancel: the utterance stops at the next event it would send
UTTERANCE_DONE = object()  # queued by start_utterance when the pipeline's stream has ended


class Host:
    """A loaded pipeline shared by every session, with the voice cache and the one-at-a-time lock.

    Stage dumps are written only under `dump_dir`, chosen by whoever started the server; without one the
    server does not declare stage_dumps (nor forced_codes, which only parity requests use).
    """

    def __init__(self, pipeline: Pipeline, name: str, dump_dir: Path | None = None) -> None:
        self.pipeline = pipeline
        self.name = name
        self.dump_dir = None if dump_dir is None else dump_dir.resolve()
        self.lock = threading.Lock()  # held by the thread that runs an utterance
        self.dumps_written = 0  # bounded by MAX_DUMPS
        self._voices: collections.OrderedDict[str, tuple[np.ndarray, str]] = collections.OrderedDict()
        declared = set(pipeline.capabilities)
        if self.dump_dir is None or not isinstance(pipeline, StageDumper):
            declared -= {Capability.STAGE_DUMPS, Capability.FORCED_CODES}
        self.capabilities = frozenset(declared)

    def hello(self) -> dict[str, Any]:
        message = {
            "type": "hello",
            "protocol": protocol.PROTOCOL_VERSION,
            "capabilities": sorted(c.value for c in self.capabilities),
            "implementation": {
                "pipeline": self.name,
                **_identity(self.name),
                **self.pipeline.describe(),
                WORK_KEY: self.pipeline.work().to_json(),
            },
            "pid": os.getpid(),
        }
        if Capability.STAGE_DUMPS in self.capabilities:
            message["dump_dir"] = str(self.dump_dir)  # where a client on this machine finds the dumps
        return message

    def dump_target(self, name: PurePosixPath) -> Path:
        """Where a dump named `name` goes: inside dump_dir, whatever symlinks lie on the way."""
        assert self.dump_dir is not None  # parse_speak refuses dump_path without the capability
        if self.dumps_written >= MAX_DUMPS:
            raise InvalidMessage(
                ErrorCode.INVALID_REQUEST, f"this server has written its limit of {MAX_DUMPS} stage dumps"
            )
        target = self.dump_dir.joinpath(*name.parts)
        # Checked before anything is created: resolve() follows the symlinks that already exist on the way.
        if not target.parent.resolve().is_relative_to(self.dump_dir):
            raise InvalidMessage(
                ErrorCode.INVALID_REQUEST, f"dump_path {str(name)!r} leaves the dump directory"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        self.dumps_written += 1
        return target

    def remember(self, voice: tuple[np.ndarray, str]) -> str:
        key = protocol.voice_id(*voice)
        self._voices[key] = voice
        self._voices.move_to_end(key)
        while len(self._voices) > VOICE_CACHE_SIZE:
            self._voices.popitem(last=False)
        return key

    def voice(self, key: str) -> tuple[np.ndarray, str]:
        if key not in self._voices:
            raise InvalidMessage(
                ErrorCode.VOICE_NOT_FOUND, f"start: voice_id {key!r} is not cached; upload it"
            )
        self._voices.move_to_end(key)
        return self._voices[key]


class Transport(ABC):
    """One client connection: receives messages, sends JSON text or audio bytes."""

    @abstractmethod
    async def receive(self) -> str | bytes | None:
        """The next message: str for JSON, bytes for binary, None once the client has gone."""

    @abstractmethod
    async def send_text(self, text: str) -> None: ...

    @abstractmethod
    async def send_binary(self, data: bytes) -> None: ...


class Session:
    """Serves one connection: the protocol's state machine over a Transport."""

    def __init__(self, host: Host, transport: Transport) -> None:
        self.host = host
        self.transport = transport
        self.encoding: protocol.Encoding | None = None  # set by start
        self.voice: tuple[np.ndarray, str] | None = None  # set by start
        self._utterance: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[object] = asyncio.Queue()  # the running utterance's events, and _CANCEL

    async def send(self, message: dict[str, Any]) -> None:
        await self.transport.send_text(protocol.dumps(message))

    @property
    def busy(self) -> bool:
        return self._utterance is not None and not self._utterance.done()

    async def run(self) -> None:
        await self.send(self.host.hello())
        try:
            while True:
                try:
                    raw = await self.transport.receive()
                except ProtocolError as exc:  # framing is lost: nothing after this can be trusted
                    await self.send(protocol.error_message(ErrorCode.INVALID_REQUEST, str(exc), fatal=True))
                    return
                if raw is None:
                    return
                try:
                    if await self._handle(raw):
                        return
                except InvalidMessage as exc:
                    await self.send(protocol.error_message(exc.code, str(exc)))
        finally:
            await self._cancel_utterance(quietly=True)

    async def _handle(self, raw: str | bytes) -> bool:
        """Act on one client message; True when the session is over."""
        if isinstance(raw, bytes):
            raise InvalidMessage(ErrorCode.INVALID_REQUEST, "binary frames are only sent by the server")
        try:
            message = protocol.loads(raw)
        except ProtocolError as exc:
            raise InvalidMessage(ErrorCode.INVALID_REQUEST, str(exc)) from None
        kind = message["type"]
        if kind == "start":
            self._refuse_if_busy(kind)
            encoding, voice, wanted = protocol.parse_start(message)
            self.voice = voice if voice is not None else self.host.voice(str(wanted))
            self.encoding = encoding
            key = self.host.remember(self.voice)
            await self.send(
                {
                    "type": "ready",
                    "protocol": protocol.PROTOCOL_VERSION,
                    "voice_id": key,
                    "encoding": encoding.value,
                    "sample_rate": SAMPLE_RATE_HZ,
                }
            )
        elif kind == "speak":
            if self.voice is None or self.encoding is None:
                raise InvalidMessage(ErrorCode.INVALID_REQUEST, "speak before start: open a session first")
            self._refuse_if_busy(kind)
            speak = protocol.parse_speak(message, self.voice, self.host.capabilities)
            self._events = asyncio.Queue()
            if speak.dump_path is not None:
                target = self.host.dump_target(speak.dump_path)
                self._utterance = asyncio.create_task(self._dump(speak, target))
            else:
                self._utterance = asyncio.create_task(
                    self._speak(speak.request, self.encoding, speak.return_codes)
                )
        elif kind == "cancel":
            await self._cancel_utterance(quietly=False)  # nothing in progress: nothing to do
        elif kind == "stop":
            await self._cancel_utterance(quietly=False)
            await self.send({"type": "stopped"})
            return True
        else:
            raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"unknown message type {kind!r}")
        return False

    def _refuse_if_busy(self, kind: str) -> None:
        if self.busy:
            raise InvalidMessage(ErrorCode.BUSY, f"{kind} while an utterance is in progress; cancel it first")

    async def _cancel_utterance(self, quietly: bool) -> None:
        task = self._utterance
        if task is None or task.done():
            return
        if quietly:  # the client is gone: nothing can be sent
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return
        # A token rather than task.cancel(): a task cancelled before its first step never runs, and the
        # utterance must still answer with complete(cancelled).
        self._events.put_nowait(_CANCEL)
        await task

    async def _dump(self, speak: protocol.Speak, target: Path) -> None:
        """A parity request: the pipeline writes its stage dump; no audio is streamed. It runs to the end
        (a cancel waits for it), since a half-written dump is worth nothing."""
        pipeline = self.host.pipeline
        assert isinstance(pipeline, StageDumper)  # Host declares stage_dumps only then

        def write() -> int:
            with self.host.lock:
                pipeline.write_stage_dump(speak.request, target, forced=speak.forced)
            size = target.stat().st_size
            if size > MAX_DUMP_BYTES:
                target.unlink()
                raise UnsupportedRequest(
                    f"stage dump of {size} bytes exceeds the {MAX_DUMP_BYTES}-byte limit"
                )
            return size

        try:
            size = await asyncio.to_thread(write)
        except Exception as exc:
            await self.send(protocol.error_message(*classify_error(exc)))
            return
        await self.send({"type": "dumped", "path": str(speak.dump_path), "bytes": size})

    async def _speak(self, request: Request, encoding: protocol.Encoding, return_codes: bool) -> None:
        queue = self._events
        halt = start_utterance(self.host.pipeline, self.host.lock, request, queue)
        sent = 0
        try:
            while True:
                item = await queue.get()
                if item is _CANCEL:
                    halt.set()
                    await self.send(
                        {
                            "type": "complete",
                            "frames_generated": sent // SAMPLES_PER_FRAME,
                            "samples": sent,
                            "cancelled": True,
                        }
                    )
                    return
                if isinstance(item, AudioChunk):
                    await self.transport.send_binary(protocol.encode_audio(item.samples, encoding))
                    sent += item.samples.shape[0]
                elif isinstance(item, Mark):
                    await self.send({"type": "mark", "stage": item.stage.value})
                elif isinstance(item, StreamEnd):
                    complete: dict[str, Any] = {
                        "type": "complete",
                        "frames_generated": item.frames_generated,
                        "samples": sent,
                        "cancelled": False,
                    }
                    if return_codes and item.codes is not None:
                        complete["codes"] = np.asarray(item.codes).astype(int).tolist()
                    await self.send(complete)
                    return
                elif isinstance(item, BaseException):
                    await self.send(protocol.error_message(*classify_error(item)))
                    return
                else:
                    await self.send(
                        protocol.error_message(
                            ErrorCode.SYNTHESIS_ERROR,
                            f"pipeline {self.host.name!r} ended without a StreamEnd",
                        )
                    )
                    return
        finally:
            halt.set()  # the generator stops at its next event however this ends (cancel, client gone)


def start_utterance(
    pipeline: Pipeline, lock: threading.Lock, request: Request, queue: asyncio.Queue[object]
) -> threading.Event:
    """Run ``pipeline.stream(request)`` in a thread holding ``lock`` (a pipeline is not re-entrant), putting
    each event on ``queue`` as it comes, then the exception it raised or UTTERANCE_DONE; the event returned
    stops it at its next event. Every served dialect runs its utterances through here."""
    loop = asyncio.get_running_loop()
    halt = threading.Event()

    def post(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            with lock:
                events = pipeline.stream(request)
                try:
                    for event in events:
                        post(event)
                        if halt.is_set():
                            break
                finally:
                    close = getattr(events, "close", None)
                    if close is not None:
                        close()
        except BaseException as exc:  # handed to the event loop, which reports it to the client
            post(exc)
        else:
            post(UTTERANCE_DONE)

    threading.Thread(target=produce, name="utterance", daemon=True).start()
    return halt


def _identity(name: str) -> dict[str, Any]:
    """The served implementation's name, version and commit: the suite's own, around the named pipeline."""
    commit, dirty = environment.git_commit()
    return {
        "name": f"qtts-eval/{name}",
        "version": environment.package_version("qtts-eval") or "unreleased",
        "commit": None if commit is None else commit + ("-dirty" if dirty else ""),
    }


def classify_error(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and message a server answers a pipeline's exception with (every dialect alike)."""
    if isinstance(exc, UnsupportedRequest):
        return ErrorCode.UNSUPPORTED, str(exc)
    if isinstance(exc, RequestError):
        return ErrorCode.INVALID_REQUEST, str(exc)
    return ErrorCode.SYNTHESIS_ERROR, f"{type(exc).__name__}: {exc}"


# --- WebSocket ---------------------------------------------------------------------------------------------


class WebSocketTransport(Transport):
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def receive(self) -> str | bytes | None:
        from websockets.exceptions import ConnectionClosed

        try:
            message: str | bytes = await self.connection.recv()
        except ConnectionClosed:
            return None
        return message

    async def send_text(self, text: str) -> None:
        await self.connection.send(text)

    async def send_binary(self, data: bytes) -> None:
        await self.connection.send(data)


Wrap = Callable[[Transport], Transport]  # a hook around each connection's transport (fault injection)


def _unwrapped(transport: Transport) -> Transport:
    return transport


async def serve_websocket(
    host: Host, bind: str, port: int, on_listening: Callable[[str], None], wrap: Wrap = _unwrapped
) -> None:
    """Serve ``host`` at ws://bind:port/api/v1/speak until cancelled; on_listening gets the URL.

    Port 0 picks a free port; the URL passed to on_listening names it.
    """

    async def handler(connection: Any) -> None:
        await Session(host, wrap(WebSocketTransport(connection))).run()

    await serve_speak_path(handler, bind, port, on_listening)


async def serve_speak_path(
    handler: Callable[[Any], Any], bind: str, port: int, on_listening: Callable[[str], None]
) -> None:
    """Serve WebSocket connections at /api/v1/speak (any other path is a 404) with ``handler`` until
    cancelled: the suite's protocol and the plain speak dialect share the endpoint and its bounds."""
    from websockets.asyncio.server import serve

    def only_speak_path(connection: Any, request: Any) -> Any:
        if request.path != protocol.SPEAK_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"the endpoint is {protocol.SPEAK_PATH}\n")
        return None

    async with serve(
        handler, bind, port, process_request=only_speak_path, max_size=protocol.MAX_FRAME_BYTES
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        shown = f"[{bind}]" if ":" in bind else bind
        on_listening(f"ws://{shown}:{bound}{protocol.SPEAK_PATH}")
        await server.serve_forever()


# --- stdio -------------------------------------------------------------------------------------------------


class StdioTransport(Transport):
    """Length-prefixed frames over a pipe pair (docs/protocol.md, "stdio framing")."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, read_fd: int, write_fd: int) -> StdioTransport:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=protocol.MAX_FRAME_BYTES)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        transport, stream_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
        )
        return cls(reader, asyncio.StreamWriter(transport, stream_protocol, reader, loop))

    async def receive(self) -> str | bytes | None:
        try:
            header = await self.reader.readexactly(protocol.HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise ProtocolError(f"stdin closed mid-header after {len(exc.partial)} bytes") from exc
        length, kind = protocol.parse_header(header)
        try:
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError(f"stdin closed mid-frame after {len(exc.partial)} of {length} bytes") from exc
        if kind == protocol.KIND_AUDIO:
            return payload
        return payload.decode(errors="replace")

    async def send_text(self, text: str) -> None:
        await self.write(protocol.frame(protocol.KIND_JSON, text.encode()))

    async def send_binary(self, data: bytes) -> None:
        await self.write(protocol.frame(protocol.KIND_AUDIO, data))

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def run_stdio_worker(load: Callable[[], Host], wrap: Wrap = _unwrapped) -> None:
    """Serve one client over this process's stdin/stdout until it stops or goes away.

    The protocol owns stdout: fd 1 is pointed at stderr before anything loads, so a library's stray print
    cannot corrupt the frame stream.
    """
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    host = load()

    async def main() -> None:
        stdio = await StdioTransport.open(0, protocol_out)
        await Session(host, wrap(stdio)).run()
        stdio.writer.close()

    asyncio.run(main())
