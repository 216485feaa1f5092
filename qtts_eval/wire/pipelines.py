"""Pipelines that drive a candidate over the wire protocol: a stdio worker process or a WebSocket server."""

from __future__ import annotations

import dataclasses
import secrets
import shlex
import shutil
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qtts_eval import checkpoints
from qtts_eval.errors import PipelineError, ProtocolError
from qtts_eval.metrics.memory import process_tree, reset_tree_peak_rss, tree_peak_rss_bytes
from qtts_eval.metrics.nvml import process_gpu_memory_bytes
from qtts_eval.pipelines.base import (
    REMOTE_GPU_MEMORY_KEY,
    REMOTE_RSS_KEY,
    WORK_KEY,
    Capability,
    Event,
    ForcedInputs,
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
    UnsupportedRequest,
    WorkDeclaration,
)
from qtts_eval.wire.client import (
    Channel,
    RemoteSession,
    Timeouts,
    WebSocketChannel,
    WorkerChannel,
    hand_over,
)
from qtts_eval.wire.protocol import DUMP_SUFFIX, Encoding

RESTARTS_KEY = "candidate_restarts"  # StreamEnd.info: times the candidate was restarted so far in this run
IDENTITY_KEYS = ("name", "version", "commit")  # hello.implementation keys recorded as implementation_<key>


@dataclass(frozen=True)
class RemoteOptions:
    """Options of every wire pipeline; the transports add their address."""

    encoding: str = Encoding.F32.value  # "f32" (exact, needed for bit parity) or "pcm16"
    timeout_s: float = Timeouts.message_s  # seconds to wait for any message once running
    start_timeout_s: float = Timeouts.start_s  # seconds to wait for the hello, model loading included
    return_codes: bool = True  # ask for codes in the complete message
    # A worker that died (or a WebSocket that dropped) is started (reconnected) again before the next
    # request, at most this many times per run; its failed request stays an error either way.
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.encoding not in {e.value for e in Encoding}:
            raise ValueError(f"encoding {self.encoding!r} is not pcm16 or f32")
        if self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("timeout_s and start_timeout_s must be positive")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must not be negative, got {self.max_restarts}")


@dataclass(frozen=True)
class ProcessOptions(RemoteOptions):
    """Options of a candidate run as the suite's subprocess (a worker command, an installed candidate)."""

    # File its stderr is copied to (bounded; appended across restarts) and that errors name; bench and parity
    # set it in their output directory. Empty: only the last lines are kept, for errors.
    stderr_log: str = ""


def stderr_log_option(schema: type, path: Path) -> dict[str, str]:
    """The option that sends a subprocess candidate's stderr to `path`; {} for other pipelines."""
    return {"stderr_log": str(path)} if issubclass(schema, ProcessOptions) else {}


@dataclass(frozen=True)
class WorkerOptions(ProcessOptions):
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
        self.restarts = 0  # times the candidate was started again after it died (bounded by max_restarts)
        self._lost: str | None = None  # why the last session ended under us; None while it lives

    @abstractmethod
    def open_channel(self) -> Channel:
        """Connect to the candidate (start its process, open its socket)."""

    @property
    @abstractmethod
    def target(self) -> str:
        """The candidate as the user named it: its command line or URL."""

    def load(self) -> None:
        channel = self.open_channel()
        try:
            self.session = RemoteSession(channel, self.timeouts)
        except Exception:
            channel.close()
            raise
        hello = self.session.hello
        self.declared = hello.capabilities
        known = {c.value for c in Capability}
        capabilities = {Capability(c) for c in hello.capabilities if c in known}
        if hello.dump_dir is None:  # dumps a harness cannot find are no capability
            capabilities -= {Capability.STAGE_DUMPS, Capability.FORCED_CODES}
        self.capabilities = frozenset(capabilities)

    def ensure_ready(self) -> bool:
        """Restart a candidate that died since the last request (bounded by max_restarts); True if it did."""
        if self.session is not None or self._lost is None:
            return False
        if self.restarts >= self.options.max_restarts:
            raise PipelineError(
                f"{self.transport}: the candidate was lost ({self._lost}) and has already been restarted "
                f"{self.restarts} times (max_restarts)"
            )
        self.restarts += 1
        self._lost = None
        self.load()
        return True

    def _live(self) -> RemoteSession:
        """The session; a caller that did not call ensure_ready() first pays the restart here."""
        self.ensure_ready()
        if self.session is None:
            raise PipelineError(f"{self.transport}: stream() called before load()")
        return self.session

    def _drop(self, exc: ProtocolError) -> None:
        """After a wire fault the session's state is unknown: close it, restart before the next request."""
        if self.session is not None:
            self.session.channel.close()
            self.session = None
        self._lost = str(exc)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(transport=self.transport, wire_encoding=self.encoding.value, candidate=self.target)
        if self.session is not None:
            implementation = self.session.hello.implementation
            # The candidate's own facts (model, weights hash, synthetic flag) win over our config's guesses;
            # its work declaration goes to the work_* columns instead (work()).
            info.update({key: value for key, value in implementation.items() if key != WORK_KEY})
            # Who was measured: the series key of a port's own history (docs/metrics.md).
            info.update({f"implementation_{key}": implementation.get(key) for key in IDENTITY_KEYS})
            info["declared_capabilities"] = ",".join(sorted(self.declared))
        return info

    def work(self) -> WorkDeclaration:
        """What the candidate declared in its hello (implementation.work, docs/protocol.md); an older
        candidate that declares nothing leaves every field undeclared."""
        if self.session is None:
            return WorkDeclaration()
        return WorkDeclaration.from_json(self.session.hello.implementation.get(WORK_KEY))

    def stream(self, request: Request) -> Iterator[Event]:
        session = self._live()
        local = session.channel.pid  # a worker we started: its process tree is ours to measure
        if local is not None:
            reset_tree_peak_rss(local)
        try:
            session.start(request.ref_audio, request.ref_text, self.encoding)
            pid = session.hello.pid
            for event in session.speak(request, self.return_codes):
                if isinstance(event, StreamEnd):
                    info = {**event.info, RESTARTS_KEY: self.restarts}
                    # NVML usage at completion of every process involved: the one that answered and,
                    # for a worker we started, its whole tree.
                    involved = ({pid} if pid else set()) | set(process_tree(local) if local else ())
                    memory = process_gpu_memory_bytes(involved)
                    if memory is not None:
                        info[REMOTE_GPU_MEMORY_KEY] = memory
                    rss = tree_peak_rss_bytes(local) if local is not None else None
                    if rss is not None:
                        info[REMOTE_RSS_KEY] = rss  # the counterpart of the in-process peak RSS
                    event = dataclasses.replace(event, info=info)
                yield event
        except ProtocolError as exc:
            self._drop(exc)
            raise

    def write_stage_dump(self, request: Request, path: Path, *, forced: ForcedInputs | None = None) -> Path:
        """Ask the candidate for a stage dump (teacher-forced with `forced`) and move it to `path`.

        The candidate writes under the dump directory its hello named, which must be on this machine
        (loopback): the harness reads the file the candidate wrote, not a copy sent over the wire.
        """
        needed = Capability.FORCED_CODES if forced is not None else Capability.STAGE_DUMPS
        if needed not in self.capabilities:
            raise UnsupportedRequest(f"{self.transport}: the candidate does not declare {needed.value}")
        session = self._live()
        assert session.hello.dump_dir is not None  # load() declares stage_dumps only with one
        folder = secrets.token_hex(8)  # one name per request: concurrent harnesses never collide
        name = f"{folder}/{path.stem}{DUMP_SUFFIX}"
        try:
            session.start(request.ref_audio, request.ref_text, self.encoding)
            size = session.dump(request, name, forced)
        except ProtocolError as exc:
            self._drop(exc)
            raise
        source = Path(session.hello.dump_dir) / name
        if not source.is_file() or source.stat().st_size != size:
            raise ProtocolError(
                f"{self.transport}: the candidate reported a {size}-byte dump at {source}, but "
                + ("it is not on this machine" if not source.is_file() else f"it has {source.stat().st_size}")
                + "; stage dumps over the wire need the candidate on this machine"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, path)
        source.parent.rmdir()
        return path

    def close(self) -> None:
        if self.session is not None:
            self.session.channel.close()
            self.session = None


class WorkerPipeline(RemotePipeline):
    """A candidate as a subprocess speaking the protocol over stdin/stdout (a Rust binary, a C++ program)."""

    label = transport = "worker"
    options_schema = WorkerOptions
    options: WorkerOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.handed_over: checkpoints.ResolvedModel | None = None  # the checkpoint put in place of MODEL_DIR

    @property
    def target(self) -> str:
        command = self.options.command
        return command if isinstance(command, str) else shlex.join(command)

    def open_channel(self) -> Channel:
        # The suite hands the candidate its own source checkpoint (config.model) and records its hash,
        # so reference and candidate provably start from the same weights.
        argv, self.handed_over = hand_over(self.options.command, self.config.model)
        return WorkerChannel(argv, Path(self.options.stderr_log) if self.options.stderr_log else None)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.handed_over is not None:
            info.update(
                source_model_ref=self.handed_over.ref,
                source_weights_hash=self.handed_over.weights_hash,
                source_synthetic=self.handed_over.synthetic,
            )
        return info


class WebSocketPipeline(RemotePipeline):
    """A candidate server reached over WebSocket at its /api/v1/speak endpoint."""

    label = transport = "websocket"
    options_schema = WebSocketOptions
    options: WebSocketOptions

    @property
    def target(self) -> str:
        return self.options.url

    def open_channel(self) -> Channel:
        return WebSocketChannel(self.options.url, self.timeouts.start_s)
