"""Golden session transcripts: whole protocol sessions, message by message and byte for byte.

They are recorded from the suite's own server (`qtts_eval.wire.server` running the tone pipeline of
`qtts_eval.wire.faulty_worker`, which is deterministic) over both transports, and replayed by both sides:
tests/test_transcripts.py feeds the client messages to the Python server and drives the Python client
against the server messages; the Rust port kit's tests (ports/rust/qtts-port-kit/tests) feed them to its
framing and session loop. A misreading of docs/protocol.md that the Python server and client share then still
fails, against bytes a person has reviewed once.

Only `qtts-eval fixtures --write-transcripts` writes them; a missing transcript fails the tests that need it.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import FixtureError, ProtocolError
from qtts_eval.fixtures import fixtures_dir
from qtts_eval.pipelines.base import CloneMode, Request
from qtts_eval.pipelines.calibration import tone
from qtts_eval.units import CODEBOOKS
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import Encoding

SCHEMA_VERSION = 1  # layout of a transcript file; bump when a field changes meaning
TRANSCRIPTS_DIR = "transcripts"  # under the fixtures directory
WRITE_COMMAND = "qtts-eval fixtures --write-transcripts"
# The recorded server: the suite's protocol engine over a tone generator, frames sent without pacing.
SERVER_ARGV = (sys.executable, "-m", "qtts_eval.wire.faulty_worker", "--frame-delay-ms", "0")
# hello fields that differ per process and machine (pid, the CPU name in implementation): never compared.
VOLATILE_HELLO_FIELDS = ("pid", "implementation")
VOICE_SAMPLES = 2400  # 0.1 s of the test tone as the uploaded voice: small enough to review
VOICE_TEXT = "A short reference."  # its transcript (ICL needs one)
START_TIMEOUT_S = 60.0  # the recorded server imports torch before its hello


class Sender(str, enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Transport(str, enum.Enum):
    STDIO = "stdio"  # length-prefixed frames over a subprocess's stdin/stdout
    WEBSOCKET = "websocket"  # text and binary WebSocket messages


@dataclass(frozen=True)
class Message:
    """One message of a session, as it crossed the wire."""

    sender: Sender  # who sent it
    kind: int  # protocol.KIND_JSON or protocol.KIND_AUDIO (the stdio kind byte; text or binary on WebSocket)
    payload: bytes  # UTF-8 JSON text or little-endian samples

    @property
    def text(self) -> str:
        return self.payload.decode()

    def frame(self) -> bytes:
        """The message's stdio frame: header, then payload."""
        return protocol.frame(self.kind, self.payload)

    def is_hello(self) -> bool:
        return self.kind == protocol.KIND_JSON and protocol.loads(self.payload)["type"] == "hello"

    def comparable(self) -> bytes:
        """The bytes a replay must reproduce: everything, except the volatile fields of a hello."""
        if not self.is_hello():
            return self.payload
        message = protocol.loads(self.payload)
        kept = {k: v for k, v in message.items() if k not in VOLATILE_HELLO_FIELDS}
        return protocol.dumps(kept).encode()


@dataclass(frozen=True)
class Transcript:
    """A whole session over one transport."""

    session: str  # name in SESSIONS
    transport: Transport
    messages: tuple[Message, ...]  # in the order they crossed the wire

    def to_json(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for message in self.messages:
            row: dict[str, Any] = {"from": message.sender.value}
            if message.kind == protocol.KIND_JSON:
                row["text"] = message.text
            else:
                row["audio"] = base64.b64encode(message.payload).decode("ascii")
            if self.transport is Transport.STDIO:
                row["frame_header"] = message.frame()[: protocol.HEADER.size].hex()
            rows.append(row)
        return {
            "schema_version": SCHEMA_VERSION,
            "session": self.session,
            "transport": self.transport.value,
            "server": "python -m qtts_eval.wire.faulty_worker --frame-delay-ms 0 (tone pipeline)",
            "volatile_hello_fields": list(VOLATILE_HELLO_FIELDS),
            "write_command": WRITE_COMMAND,
            "messages": rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path) -> Transcript:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise FixtureError(
                f"{source}: transcript schema {data.get('schema_version')!r} is not {SCHEMA_VERSION}"
            )
        transport = Transport(data["transport"])
        messages = []
        for row in data["messages"]:
            if "text" in row:
                message = Message(Sender(row["from"]), protocol.KIND_JSON, row["text"].encode())
            else:
                message = Message(Sender(row["from"]), protocol.KIND_AUDIO, base64.b64decode(row["audio"]))
            if (
                transport is Transport.STDIO
                and message.frame()[: protocol.HEADER.size].hex() != row["frame_header"]
            ):
                raise FixtureError(
                    f"{source}: a frame header does not match its payload; rewrite with {WRITE_COMMAND}"
                )
            messages.append(message)
        return cls(str(data["session"]), transport, tuple(messages))


def transcript_voice() -> tuple[npt.NDArray[np.float32], str]:
    """The voice every recorded session uploads."""
    return tone(VOICE_SAMPLES), VOICE_TEXT


def transcript_request(text: str, mode: CloneMode, max_frames: int) -> Request:
    audio, ref_text = transcript_voice()
    return Request(
        text=text,
        language="english",
        ref_audio=audio,
        ref_text=ref_text,
        mode=mode,
        max_frames=max_frames,
        seed=0,
    )


@dataclass(frozen=True)
class Step:
    """One client message and the server message types that end its reply (none: no reply is expected)."""

    message: str  # JSON text sent by the client
    until: tuple[str, ...]  # reply ends at the first server message of one of these types


def _json(message: dict[str, Any]) -> str:
    return protocol.dumps(message)


def _sessions() -> dict[str, tuple[Step, ...]]:
    audio, ref_text = transcript_voice()
    voice_id = protocol.voice_id(audio, ref_text)
    upload = _json(protocol.start_message(Encoding.F32, voice=(audio, ref_text)))
    speak_xvector = protocol.speak_message(
        transcript_request("Two frames of tone.", CloneMode.XVECTOR, 2), True
    )
    speak_icl = protocol.speak_message(transcript_request("One frame.", CloneMode.ICL, 1), False)
    bad_start = protocol.start_message(Encoding.F32, cached_voice_id="v-unused")
    forced = {**speak_xvector, "forced_codes": [[0] * CODEBOOKS, [1] * CODEBOOKS]}
    return {
        # Everything a working session does: upload, speak f32 with codes, reuse the voice id, speak pcm16.
        "session": (
            Step(upload, ("ready",)),
            Step(_json(speak_xvector), ("complete", "error")),
            Step(_json(protocol.start_message(Encoding.PCM16, cached_voice_id=voice_id)), ("ready",)),
            Step(_json(speak_icl), ("complete", "error")),
            Step(_json({"type": "cancel"}), ()),  # nothing runs: ignored
            Step(_json({"type": "stop"}), ("stopped",)),
        ),
        # Every refusal a session survives, each answered by a non-fatal error.
        "refusals": (
            Step(_json(speak_xvector), ("error",)),  # speak before start
            Step("{not json", ("error",)),
            Step(_json({"type": "dance"}), ("error",)),
            Step(_json({**bad_start, "protocol": 99}), ("error",)),
            Step(_json({**bad_start, "encoding": "mp3"}), ("error",)),
            Step(_json({**bad_start, "sample_rate": 16000}), ("error",)),
            Step(_json(protocol.start_message(Encoding.F32, cached_voice_id="v-no-such-voice")), ("error",)),
            Step(upload, ("ready",)),
            Step(_json({**speak_xvector, "text": "   "}), ("error",)),
            Step(_json({**speak_xvector, "mode": "opera"}), ("error",)),
            Step(_json(forced), ("error",)),  # the tone pipeline does not declare forced_codes
            Step(_json({"type": "stop"}), ("stopped",)),
        ),
    }


SESSIONS = tuple(_sessions())  # names of the recorded sessions


def transcript_path(session: str, transport: Transport, root: Path | None = None) -> Path:
    return (root or fixtures_dir()) / TRANSCRIPTS_DIR / f"{session}.{transport.value}.json"


def load_transcript(session: str, transport: Transport, root: Path | None = None) -> Transcript:
    """A committed transcript; a missing one is an error naming the command that writes it."""
    path = transcript_path(session, transport, root)
    if not path.is_file():
        raise FixtureError(
            f"{path}: golden transcript missing; write it with `{WRITE_COMMAND}` and review it"
        )
    return Transcript.from_json(json.loads(path.read_text()), path)


# --- recording ---------------------------------------------------------------------------------------------


class ServerProcess:
    """The recorded server (plus `extra` arguments, e.g. a planted fault) over one transport, driven as a
    client: send a client message, receive the server's next one. The recorder and the replay tests use it."""

    def __init__(self, transport: Transport, extra: tuple[str, ...] = ()) -> None:
        self.transport = transport
        self.process = subprocess.Popen(
            [*SERVER_ARGV, *extra, *(["--websocket"] if transport is Transport.WEBSOCKET else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.connection: Any = None
        self._stack = contextlib.ExitStack()  # websockets' sync client is used as a context manager
        if transport is Transport.WEBSOCKET:
            from websockets.sync.client import connect

            assert self.process.stdout is not None
            url = self.process.stdout.readline().decode().split()[-1]  # "listening on ws://..."
            self.connection = self._stack.enter_context(
                connect(
                    url, open_timeout=START_TIMEOUT_S, max_size=protocol.MAX_FRAME_BYTES, compression=None
                )
            )

    def send(self, text: str) -> None:
        if self.connection is not None:
            self.connection.send(text)
            return
        assert self.process.stdin is not None
        self.process.stdin.write(protocol.frame(protocol.KIND_JSON, text.encode()))
        self.process.stdin.flush()

    def receive(self) -> Message:
        if self.connection is not None:
            data = self.connection.recv(timeout=START_TIMEOUT_S)
            if isinstance(data, str):
                return Message(Sender.SERVER, protocol.KIND_JSON, data.encode())
            return Message(Sender.SERVER, protocol.KIND_AUDIO, bytes(data))
        assert self.process.stdout is not None
        length, kind = protocol.parse_header(_read(self.process.stdout, protocol.HEADER.size))
        return Message(Sender.SERVER, kind, _read(self.process.stdout, length))

    def close(self) -> None:
        if self.connection is not None:
            self._stack.close()
            self.process.terminate()  # a WebSocket server outlives its sessions
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ProtocolError(f"the recorded server closed its output after {len(data)} of {size} bytes")
    return data


def record(session: str, transport: Transport) -> Transcript:
    """Run one session against a fresh server and keep every message."""
    steps = _sessions()[session]
    wire = ServerProcess(transport)
    try:
        messages = [wire.receive()]  # hello
        for step in steps:
            wire.send(step.message)
            messages.append(Message(Sender.CLIENT, protocol.KIND_JSON, step.message.encode()))
            while step.until:
                reply = wire.receive()
                messages.append(reply)
                if reply.kind == protocol.KIND_JSON and protocol.loads(reply.payload)["type"] in step.until:
                    break
    finally:
        wire.close()
    return Transcript(session, transport, tuple(messages))


def write_transcripts(root: Path | None = None) -> list[Path]:
    """Record every session over both transports and write them under the fixtures' transcripts/."""
    paths = []
    for session in SESSIONS:
        for transport in Transport:
            path = transcript_path(session, transport, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(record(session, transport).to_json(), indent=1, ensure_ascii=False) + "\n"
            )
            paths.append(path)
    return paths
