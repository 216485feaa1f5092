"""Pipelines that drive a candidate over the wire protocol: a stdio worker process or a WebSocket server."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from qtts_eval.errors import PipelineError
from qtts_eval.metrics.nvml import process_gpu_memory_bytes
from qtts_eval.pipelines.base import (
    REMOTE_GPU_MEMORY_KEY,
    Event,
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
)
from qtts_eval.wire.client import Channel, RemoteSession, Timeouts, WebSocketChannel, WorkerChannel
from qtts_eval.wire.protocol import Encoding


@dataclass(frozen=True)
class RemoteOptions:
    """Options of every wire pipeline; the transports add their address."""

    encoding: str = Encoding.F32.value  # "f32" (exact, needed for bit parity) or "pcm16"
    timeout_s: float = Timeouts.message_s  # seconds to wait for any message once running
    start_timeout_s: float = Timeouts.start_s  # seconds to wait for the hello, model loading included
    return_codes: bool = True  # ask for codes in the complete message

    def __post_init__(self) -> None:
        if self.encoding not in {e.value for e in Encoding}:
            raise ValueError(f"encoding {self.encoding!r} is not pcm16 or f32")
        if self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("timeout_s and start_timeout_s must be positive")


@dataclass(frozen=True)
class WorkerOptions(RemoteOptions):
    command: str | list[str] = ""  # the candidate's command line: a shell-style string or an argv list

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.command:
            raise ValueError("option 'command' (the candidate's command line) is required")


@dataclass(frozen=True)
class WebSocketOptions(RemoteOptions):
    url: str = ""  # ws://host:port/api/v1/speak

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"option 'url' must be a ws:// or wss:// URL, got {self.url!r}")


class RemotePipeline(Pipeline):
    """A candidate behind a Channel (options: RemoteOptions and the transport's own).

    Its AudioChunk.t_ns is when a binary frame had been received and decoded by the client; the harness
    stamps the chunk again when it reaches it (qtts_eval.measure).
    """

    in_process = False
    transport: ClassVar[str]
    options: RemoteOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.encoding = Encoding(self.options.encoding)
        self.timeouts = Timeouts(start_s=self.options.start_timeout_s, message_s=self.options.timeout_s)
        self.return_codes = self.options.return_codes
        self.session: RemoteSession | None = None
        self.declared: frozenset[str] = frozenset()  # capabilities the candidate declared in its hello

    @abstractmethod
    def open_channel(self) -> Channel:
        """Connect to the candidate (start its process, open its socket)."""

    def load(self) -> None:
        channel = self.open_channel()
        try:
            self.session = RemoteSession(channel, self.timeouts)
        except Exception:
            channel.close()
            raise
        self.declared = self.session.hello.capabilities

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(transport=self.transport, wire_encoding=self.encoding.value)
        if self.session is not None:
            # The candidate's own facts (model, weights hash, synthetic flag) win over our config's guesses.
            info.update(self.session.hello.implementation)
            info["declared_capabilities"] = ",".join(sorted(self.declared))
        return info

    def stream(self, request: Request) -> Iterator[Event]:
        if self.session is None:
            raise PipelineError(f"{self.transport}: stream() called before load()")
        self.session.start(request.ref_audio, request.ref_text, self.encoding)
        pid = self.session.hello.pid
        for event in self.session.speak(request, self.return_codes):
            memory = process_gpu_memory_bytes(pid) if isinstance(event, StreamEnd) and pid else None
            if isinstance(event, StreamEnd) and memory is not None:
                # NVML per-process usage at completion: the external counterpart of the torch peak.
                event = dataclasses.replace(event, info={**event.info, REMOTE_GPU_MEMORY_KEY: memory})
            yield event

    def close(self) -> None:
        if self.session is not None:
            self.session.channel.close()
            self.session = None


class WorkerPipeline(RemotePipeline):
    """A candidate as a subprocess speaking the protocol over stdin/stdout (a Rust binary, a C++ program)."""

    label = transport = "worker"
    options_schema = WorkerOptions
    options: WorkerOptions

    def open_channel(self) -> Channel:
        return WorkerChannel(self.options.command)


class WebSocketPipeline(RemotePipeline):
    """A candidate server reached over WebSocket at its /api/v1/speak endpoint."""

    label = transport = "websocket"
    options_schema = WebSocketOptions
    options: WebSocketOptions

    def open_channel(self) -> Channel:
        return WebSocketChannel(self.options.url, self.timeouts.start_s)
