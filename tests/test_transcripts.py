"""The golden session transcripts (fixtures/transcripts/) replayed against the Python server and client.

The server replays get every recorded client message, byte for byte, and must answer with the recorded bytes
(only a hello's pid and implementation may differ). The client replays drive `RemoteSession` through the
recorded session: it must send exactly the recorded client bytes and accept the recorded answers. The Rust
port kit replays the same files (ports/rust/qtts-port-kit/tests/transcripts.rs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qtts_eval.errors import FixtureError
from qtts_eval.pipelines.base import AudioChunk, CloneMode
from qtts_eval.wire import protocol
from qtts_eval.wire.client import Channel, RemoteSession, Timeouts, collect
from qtts_eval.wire.protocol import Encoding
from qtts_eval.wire.transcripts import (
    SESSIONS,
    Message,
    Sender,
    ServerProcess,
    Transcript,
    Transport,
    load_transcript,
    transcript_request,
    transcript_voice,
)

TIMEOUT_S = 60.0  # a server imports torch before its hello; the 2-core CI machine is shared


class ServerUnderTest(ServerProcess):
    """The recorded server process, plus the end-of-session check a replay needs."""

    def closed(self) -> bool:
        """True once the server has ended the session (EOF on stdout, or a closed socket)."""
        if self.connection is not None:
            from websockets.exceptions import ConnectionClosed

            try:
                self.connection.recv(timeout=TIMEOUT_S)
            except ConnectionClosed:
                return True
            return False
        assert self.process.stdout is not None
        return self.process.stdout.read(1) == b""


def replay_server(transcript: Transcript, extra: tuple[str, ...] = ()) -> str | None:
    """Replay against a fresh server; the first difference, described, or None when every byte agrees."""
    server = ServerUnderTest(transcript.transport, extra)
    try:
        for index, message in enumerate(transcript.messages):
            if message.sender is Sender.CLIENT:
                server.send(message.text)
                continue
            received = server.receive()
            if transcript.transport is Transport.STDIO:
                header = received.frame()[: protocol.HEADER.size]
                recorded = message.frame()[: protocol.HEADER.size]
                # A hello's length follows its volatile fields (pid, machine); its kind byte must still agree.
                same = header[-1:] == recorded[-1:] if message.is_hello() else header == recorded
                if not same:
                    return f"message {index}: frame header {header.hex()}, recorded {recorded.hex()}"
            got = Message(Sender.SERVER, message.kind, received.payload)
            if got.comparable() != message.comparable():
                return f"message {index}: got {got.payload[:120]!r}, recorded {message.payload[:120]!r}"
        if not server.closed():
            return "the server did not close the session after stopped"
    finally:
        server.close()
    return None


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
@pytest.mark.parametrize("session", SESSIONS)
def test_python_server_answers_as_recorded(session: str, transport: Transport) -> None:
    assert replay_server(load_transcript(session, transport)) is None


def test_server_replay_catches_a_server_that_differs() -> None:
    transcript = load_transcript("session", Transport.STDIO)
    difference = replay_server(transcript, ("--fault", "wrong-samples"))  # 1900-sample frames
    assert difference is not None and "frame header" in difference


class TranscriptChannel(Channel):
    """Plays the recorded server to a client, and checks that the client sends exactly the recorded bytes."""

    def __init__(self, transcript: Transcript) -> None:
        self.pending: Iterator[Message] = iter(transcript.messages)
        self.transport = transcript.transport

    def _next(self, sender: Sender) -> Message:
        message = next(self.pending, None)
        assert message is not None, (
            f"the client wanted a {sender.value} message after the recorded session ended"
        )
        assert message.sender is sender, (
            f"the client {'sent' if sender is Sender.CLIENT else 'waited'} out of turn"
        )
        return message

    def send_text(self, text: str) -> None:
        recorded = self._next(Sender.CLIENT)
        assert text == recorded.text
        if self.transport is Transport.STDIO:
            assert protocol.frame(protocol.KIND_JSON, text.encode()) == recorded.frame()

    def receive(self, timeout_s: float) -> str | bytes:
        message = self._next(Sender.SERVER)
        return message.text if message.kind == protocol.KIND_JSON else message.payload

    def close(self) -> None:
        assert next(self.pending, None) is None, (
            "the recorded session has messages the client never exchanged"
        )


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
def test_python_client_speaks_the_recorded_session(transport: Transport) -> None:
    channel = TranscriptChannel(load_transcript("session", transport))
    session = RemoteSession(channel, Timeouts())
    assert session.hello.capabilities == {"seeded_sampling"}
    audio, ref_text = transcript_voice()
    voice_id = session.start(audio, ref_text, Encoding.F32)
    first = collect(session.speak(transcript_request("Two frames of tone.", CloneMode.XVECTOR, 2)))
    assert first.end.frames_generated == 2 and first.end.codes is not None
    # The recorded server's codes: the faulty worker's fixed pattern of the seed (0).
    pattern = (np.arange(2)[:, None] * 7 + np.arange(16)[None, :] * 131) % 2048
    assert np.array_equal(first.end.codes, pattern)
    assert session.start(audio, ref_text, Encoding.PCM16) == voice_id  # the cached id, no upload
    second = collect(session.speak(transcript_request("One frame.", CloneMode.ICL, 1), return_codes=False))
    samples = np.concatenate([c.samples for c in second.chunks if isinstance(c, AudioChunk)])
    assert samples.shape == (1920,) and np.allclose(samples, first.chunks[0].samples, atol=1 / 32767)
    session.cancel()
    session.stop()
    channel.close()


def test_client_replay_catches_a_client_that_differs() -> None:
    session = RemoteSession(TranscriptChannel(load_transcript("session", Transport.STDIO)), Timeouts())
    audio, _ = transcript_voice()
    with pytest.raises(AssertionError):
        session.start(audio, "Another transcript.", Encoding.F32)  # uploads a voice the recording never saw


def test_missing_transcript_fails_naming_the_write_command(tmp_path: Any) -> None:
    with pytest.raises(FixtureError, match="fixtures --write-transcripts"):
        load_transcript("session", Transport.STDIO, root=tmp_path)
