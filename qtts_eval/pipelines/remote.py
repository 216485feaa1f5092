"""Shared body of the pipelines that drive a candidate over the wire protocol (worker, websocket)."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from qtts_eval.client import Channel, RemoteSession, Timeouts
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
from qtts_eval.protocol import Encoding


class RemotePipeline(Pipeline):
    """A candidate behind a Channel. Options (PipelineConfig.options), besides the transport's own:

      encoding: "f32" (default; exact, needed for bit parity) or "pcm16".
      timeout_s: seconds to wait for any message once running (default 120).
      start_timeout_s: seconds to wait for the candidate's hello, model loading included (default 600).
      return_codes: ask for codes in the complete message (default true).

    AudioChunk.t_ns is taken when a binary frame has been received and decoded at the harness.
    """

    in_process = False
    transport: ClassVar[str]
    transport_options: ClassVar[frozenset[str]]
    common_options: ClassVar[frozenset[str]] = frozenset(
        {"encoding", "timeout_s", "start_timeout_s", "return_codes"}
    )

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        known = self.common_options | self.transport_options
        unknown = set(config.options) - known
        if unknown:
            raise PipelineError(
                f"{self.transport}: unknown options {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        options = config.options
        try:
            self.encoding = Encoding(options.get("encoding", Encoding.F32.value))
        except ValueError:
            raise PipelineError(
                f"{self.transport}: encoding {options['encoding']!r} is not pcm16 or f32"
            ) from None
        self.timeouts = Timeouts(
            start_s=float(options.get("start_timeout_s", Timeouts.start_s)),
            message_s=float(options.get("timeout_s", Timeouts.message_s)),
        )
        self.return_codes = bool(options.get("return_codes", True))
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
