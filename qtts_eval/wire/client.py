"""The harness side of the wire protocol: channels to a candidate, and a session that checks what it sends.

Every fault a candidate can commit on the wire (malformed frames, wrong sample counts, NaN audio, a crash,
a hang, an early close) surfaces here as a ProtocolError or CandidateTimeout whose message names the fault.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import shlex
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from qtts_eval import checkpoints
from qtts_eval.errors import (
    CandidateTimeout,
    MalformedMessage,
    PipelineError,
    ProtocolError,
    RemoteError,
)
from qtts_eval.pipelines.base import (
    AudioChunk,
    Event,
    ForcedInputs,
    Mark,
    Request,
    Stage,
    StreamEnd,
    UnsupportedRequest,
)
from qtts_eval.units import CODEBOOKS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import Encoding, ErrorCode

STDERR_TAIL_LINES = 20  # worker stderr lines quoted when it dies
STDERR_LOG_MAX_BYTES = (
    16 << 20
)  # a worker's stderr file stops growing here (a chatty port cannot fill the disk)
EXIT_GRACE_S = 2.0  # a worker asked to stop gets this long before it is terminated
MODEL_DIR = "{model_dir}"  # in a worker command: replaced by the checkpoint directory the suite hands over


@dataclass(frozen=True)
class Timeouts:
    """How long the harness waits for a candidate."""

    start_s: float = 600.0  # process start or connection open, up to its hello (model loading included)
    message_s: float = 120.0  # any later message, including the first audio of an utterance


class Channel(ABC):
    """A connection to a candidate that carries protocol messages."""

    pid: int | None = None  # the candidate's process id, if known (NVML memory lookup)

    @abstractmethod
    def send_text(self, text: str) -> None: ...

    @abstractmethod
    def receive(self, timeout_s: float) -> str | bytes:
        """The next message; raises CandidateTimeout, or ProtocolError if the candidate went away."""

    @abstractmethod
    def close(self) -> None: ...

    def send(self, message: dict[str, Any]) -> None:
        self.send_text(protocol.dumps(message))


class WebSocketChannel(Channel):
    def __init__(self, url: str, open_timeout_s: float) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        self.url = url
        # Entered as a context manager: the form every websockets version >= 13 supports without warnings.
        # No permessage-deflate (websockets offers it by default): it puts zlib time on the clock for every
        # audio message (noise-like audio does not compress) and clip upload (~25 ms a request, measured).
        self._stack = contextlib.ExitStack()
        try:
            self.connection = self._stack.enter_context(
                connect(url, open_timeout=open_timeout_s, max_size=protocol.MAX_FRAME_BYTES, compression=None)
            )
        except TimeoutError as exc:
            raise CandidateTimeout(f"{url}: no WebSocket handshake within {open_timeout_s:g} s") from exc
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise PipelineError(f"cannot connect to {url}: {exc}") from exc

    def send_text(self, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.connection.send(text)
        except ConnectionClosed as exc:
            raise ProtocolError(f"{self.url}: the server closed the connection ({exc})") from exc

    def receive(self, timeout_s: float) -> str | bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            message: str | bytes = self.connection.recv(timeout=timeout_s)
        except TimeoutError as exc:
            raise CandidateTimeout(f"{self.url}: nothing received within {timeout_s:g} s") from exc
        except ConnectionClosed as exc:
            raise ProtocolError(f"{self.url}: the server closed the connection mid-stream ({exc})") from exc
        return message

    def close(self) -> None:
        self._stack.close()


class WorkerChannel(Channel):
    """A subprocess speaking length-prefixed frames on stdin/stdout; the last lines of its stderr are kept
    for errors, and all of it (up to STDERR_LOG_MAX_BYTES) is appended to `stderr_log` when given."""

    def __init__(self, command: str | Sequence[str], stderr_log: Path | None = None) -> None:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise PipelineError("worker: the command line is empty")
        self.argv = argv
        self.stderr_log = stderr_log
        log = self._open_log(stderr_log) if stderr_log is not None else None
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            if log is not None:
                log.close()
            raise PipelineError(f"worker: cannot start {shlex.join(argv)}: {exc}") from exc
        self.pid = self.process.pid
        if log is not None:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.write(f"--- {shlex.join(argv)} (pid {self.pid}) started at {started}\n".encode())
        self._inbox: queue.Queue[str | bytes | ProtocolError] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        threading.Thread(target=self._read_frames, name="worker-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(log,), name="worker-stderr", daemon=True).start()

    @staticmethod
    def _open_log(path: Path) -> BinaryIO:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("ab")
        except OSError as exc:
            raise PipelineError(f"worker: cannot write its stderr to {path}: {exc}") from exc

    def _read_frames(self) -> None:
        assert self.process.stdout is not None
        while True:
            try:
                item = protocol.read_frame(self.process.stdout)
            except ProtocolError as exc:
                self._inbox.put(exc)
                return
            if item is None:
                self._inbox.put(ProtocolError("closed"))  # replaced by a diagnosis in receive()
                return
            self._inbox.put(item)

    def _read_stderr(self, log: BinaryIO | None) -> None:
        assert self.process.stderr is not None
        try:
            for line in self.process.stderr:
                self._stderr.append(line.decode(errors="replace").rstrip())
                if log is not None and log.tell() + len(line) > STDERR_LOG_MAX_BYTES:
                    log.write(f"--- stderr cut at {STDERR_LOG_MAX_BYTES} bytes\n".encode())
                    log.close()
                    log = None
                if log is not None:
                    log.write(line)
                    log.flush()  # readable while the worker runs, and complete if the suite dies
        finally:
            if log is not None:
                log.close()

    def stderr_tail(self) -> str:
        tail = " | ".join(self._stderr) or "(no stderr)"
        return tail if self.stderr_log is None else f"{self.stderr_log} (last lines: {tail})"

    def send_text(self, text: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(protocol.frame(protocol.KIND_JSON, text.encode()))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ProtocolError(f"worker stdin is closed: {self._exit_story()}") from exc

    def receive(self, timeout_s: float) -> str | bytes:
        try:
            item = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise CandidateTimeout(f"worker sent nothing within {timeout_s:g} s (hung?)") from None
        if isinstance(item, ProtocolError):
            self._inbox.put(item)  # every later receive fails the same way
            if str(item) == "closed":
                raise ProtocolError(self._exit_story())
            raise MalformedMessage(f"worker sent a malformed frame: {item}")
        return item

    def _exit_story(self) -> str:
        try:
            code = self.process.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            return (
                f"worker closed its stdout mid-stream but is still running; its stderr: {self.stderr_tail()}"
            )
        return f"worker died with exit code {code}; its stderr: {self.stderr_tail()}"

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProtocolError):
                self.send({"type": "stop"})
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def hand_over(
    command: str | Sequence[str], model: str | None
) -> tuple[list[str], checkpoints.ResolvedModel | None]:
    """A worker command's argv with every MODEL_DIR replaced by the directory of `model` (a preset, path or
    hub id) and that checkpoint; (argv, None) when the command names no MODEL_DIR. Every command that starts
    a worker goes through here, so `{model_dir}` always means the model the user asked for."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not any(MODEL_DIR in arg for arg in argv):
        return argv, None
    if not model:
        raise PipelineError(f"the worker command has {MODEL_DIR}: pass --model to say which checkpoint")
    resolved = checkpoints.resolve(model)
    return [arg.replace(MODEL_DIR, str(resolved.path)) for arg in argv], resolved


def open_channel(
    target: str, timeouts: Timeouts, model: str | None = None, stderr_log: Path | None = None
) -> Channel:
    """A ws:// URL opens a WebSocket; anything else is a worker command line (MODEL_DIR: `model`'s), whose
    stderr is appended to `stderr_log` when given."""
    if target.startswith(("ws://", "wss://")):
        return WebSocketChannel(target, timeouts.start_s)
    return WorkerChannel(hand_over(target, model)[0], stderr_log)


@dataclass(frozen=True)
class Hello:
    """What a candidate declared when it came up."""

    capabilities: frozenset[str]  # Capability values
    implementation: dict[str, Any] = field(default_factory=dict)  # its own description (model, dtype, ...)
    pid: int | None = None  # its process id, for NVML memory lookups
    dump_dir: str | None = None  # with stage_dumps: the directory its dumps are written under


@dataclass(frozen=True)
class Utterance:
    """Everything one speak produced, with harness-side arrival times."""

    chunks: list[AudioChunk]  # audio as it arrived
    arrived_ns: list[int]  # time.monotonic_ns() when each chunk reached collect()
    end: StreamEnd  # frames and codes from the complete message
    cancelled: bool  # the complete message said the utterance was cancelled


class RemoteSession:
    """One protocol session over a Channel: hello, start, speak, cancel, stop — each reply validated."""

    def __init__(self, channel: Channel, timeouts: Timeouts) -> None:
        self.channel = channel
        self.timeouts = timeouts
        self.encoding: Encoding | None = None
        self.voice_ids: dict[str, str] = {}  # our voice key -> the id the server cached it under
        self.hello = self._read_hello()

    def _next(self, timeout_s: float | None = None) -> dict[str, Any] | bytes:
        raw = self.channel.receive(self.timeouts.message_s if timeout_s is None else timeout_s)
        if isinstance(raw, bytes):
            return raw
        return protocol.loads(raw)

    def next_message(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next control message; audio here is out of order."""
        message = self._next(timeout_s)
        if isinstance(message, bytes):
            raise ProtocolError(f"audio frame of {len(message)} bytes arrived outside an utterance")
        return message

    def _read_hello(self) -> Hello:
        message = self.next_message(self.timeouts.start_s)
        if message["type"] != "hello":
            raise ProtocolError(f"the first message must be hello, got {message['type']!r}")
        if message.get("protocol") != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"hello declares protocol {message.get('protocol')!r}; this harness speaks "
                f"{protocol.PROTOCOL_VERSION}"
            )
        capabilities = message.get("capabilities", [])
        implementation = message.get("implementation", {})
        if not isinstance(capabilities, list) or not isinstance(implementation, dict):
            raise ProtocolError("hello: capabilities must be a list and implementation an object")
        pid = message.get("pid")
        dump_dir = message.get("dump_dir")
        return Hello(
            frozenset(map(str, capabilities)),
            implementation,
            pid if isinstance(pid, int) else None,
            dump_dir if isinstance(dump_dir, str) else None,
        )

    def start(self, audio: np.ndarray, ref_text: str, encoding: Encoding) -> str:
        """Open (or re-open) the session with this voice; uploads it only if the server lacks it."""
        key = protocol.voice_id(audio, ref_text)
        cached = self.voice_ids.get(key)
        if cached is not None:
            self.channel.send(protocol.start_message(encoding, cached_voice_id=cached))
            try:
                return self._ready(encoding, key)
            except RemoteError as exc:
                if exc.code != ErrorCode.VOICE_NOT_FOUND.value:
                    raise
                del self.voice_ids[key]  # evicted on the server: upload it again
        self.channel.send(protocol.start_message(encoding, voice=(audio, ref_text)))
        return self._ready(encoding, key)

    def _ready(self, encoding: Encoding, key: str) -> str:
        message = self.next_message()
        if message["type"] == "error":
            raise _remote_error(message)
        if message["type"] != "ready":
            raise ProtocolError(f"start must be answered by ready, got {message['type']!r}")
        if message.get("encoding") != encoding.value or message.get("sample_rate") != SAMPLE_RATE_HZ:
            raise ProtocolError(
                f"ready declares encoding {message.get('encoding')!r} at {message.get('sample_rate')!r} Hz; "
                f"asked for {encoding.value} at {SAMPLE_RATE_HZ} Hz"
            )
        server_id = message.get("voice_id")
        if not isinstance(server_id, str) or not server_id:
            raise ProtocolError("ready must carry the voice_id the voice is cached under")
        self.voice_ids[key] = server_id
        self.encoding = encoding
        return server_id

    def speak(self, request: Request, return_codes: bool = True) -> Iterator[Event]:
        """Send a speak; yield AudioChunks (timed on arrival), Marks, then one StreamEnd."""
        if self.encoding is None:
            raise PipelineError("speak() before start()")
        self.channel.send(protocol.speak_message(request, return_codes))
        yield from self.receive_utterance()

    def dump(self, request: Request, dump_path: str, forced: ForcedInputs | None) -> int:
        """A parity request: the candidate writes a stage dump at `dump_path` (relative to its dump
        directory) and answers `dumped`; returns the size it reports, in bytes."""
        if self.encoding is None:
            raise PipelineError("dump() before start()")
        self.channel.send(protocol.speak_message(request, False, forced=forced, dump_path=dump_path))
        while True:
            message = self.next_message()
            kind = message["type"]
            if kind == "error":
                raise _remote_error(message)
            if kind == "dumped":
                size = message.get("bytes")
                if message.get("path") != dump_path or not isinstance(size, int) or size <= 0:
                    raise ProtocolError(
                        f"dumped must name the requested path {dump_path!r} and its size in bytes, got "
                        f"{message.get('path')!r}, {size!r}"
                    )
                return size
            if kind != "mark":
                raise ProtocolError(f"unexpected {kind!r} message during a parity request")

    def receive_utterance(self) -> Iterator[Event]:
        """The events of the utterance in progress, validated; the last is a StreamEnd."""
        assert self.encoding is not None
        received = 0
        while True:
            message = self._next()
            if isinstance(message, bytes):
                samples = protocol.decode_audio(message, self.encoding)
                received += samples.shape[0]
                yield AudioChunk(samples, time.monotonic_ns())
                continue
            kind = message["type"]
            if kind == "mark":
                try:
                    stage = Stage(message.get("stage"))
                except ValueError:
                    raise ProtocolError(f"mark names an unknown stage {message.get('stage')!r}") from None
                yield Mark(stage, time.monotonic_ns())
            elif kind == "complete":
                yield _stream_end(message, received)
                return
            elif kind == "error":
                raise _remote_error(message)
            else:
                raise ProtocolError(f"unexpected {kind!r} message during an utterance")

    def cancel(self) -> None:
        self.channel.send({"type": "cancel"})

    def stop(self) -> None:
        """Ask the candidate to end the session and wait for its stopped."""
        self.channel.send({"type": "stop"})
        while True:
            message = self._next()
            if isinstance(message, dict) and message["type"] == "stopped":
                return


def _stream_end(message: dict[str, Any], received: int) -> StreamEnd:
    frames = message.get("frames_generated")
    samples = message.get("samples")
    cancelled = message.get("cancelled", False)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
        raise ProtocolError(f"complete: frames_generated must be a non-negative integer, got {frames!r}")
    if samples != received:
        raise ProtocolError(f"complete says {samples!r} samples were sent, but {received} arrived")
    if not cancelled and received != frames * SAMPLES_PER_FRAME:
        raise ProtocolError(
            f"wrong sample count: {received} samples for {frames} frames; "
            f"expected {frames} x {SAMPLES_PER_FRAME} = {frames * SAMPLES_PER_FRAME}"
        )
    codes = None
    if "codes" in message:
        try:
            codes = np.asarray(message["codes"], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"complete: codes are not an integer array: {exc}") from None
        if codes.shape != (frames, CODEBOOKS) and not (frames == 0 and codes.size == 0):
            raise ProtocolError(f"complete: codes have shape {codes.shape}, expected ({frames}, {CODEBOOKS})")
    info = {"cancelled": True} if cancelled else {}
    return StreamEnd(frames_generated=frames, codes=codes, info=info)


def _remote_error(message: dict[str, Any]) -> Exception:
    code = str(message.get("code", "?"))
    text = str(message.get("message", ""))
    if code == ErrorCode.UNSUPPORTED.value:
        return UnsupportedRequest(f"candidate: {text}")
    return RemoteError(code, text)


def collect(events: Iterator[Event]) -> Utterance:
    """Drain an utterance's events, stamping each chunk's arrival."""
    chunks: list[AudioChunk] = []
    arrived: list[int] = []
    for event in events:
        if isinstance(event, AudioChunk):
            arrived.append(time.monotonic_ns())
            chunks.append(event)
        elif isinstance(event, StreamEnd):
            return Utterance(chunks, arrived, event, bool(event.info.get("cancelled", False)))
    raise ProtocolError("the utterance ended without a complete message")
