"""A real protocol worker that misbehaves on command, to prove the harness catches each wire fault.

    python -m qtts_eval.wire.faulty_worker --fault hang             # stdio worker
    python -m qtts_eval.wire.faulty_worker --fault close --websocket  # WebSocket server on a free port
    python -m qtts_eval.wire.faulty_worker --codec tiny --fault codes-mismatch

It runs the suite's own protocol engine (qtts_eval.wire.server) over a tone generator instead of a model, so
with ``--fault none`` it is a correct, fast candidate, and each fault differs from it in exactly one way.
Its codes are a fixed pattern of the seed; with ``--codec MODEL`` its audio is their decode by the reference
codec of that checkpoint (a candidate whose codes and audio agree), otherwise a tone.

  crash          the process exits (code 3) after the first audio frame
  hang           generation stops after the first audio frame; the process stays alive and silent
  close          the output stream is closed after the first audio frame; the process stays alive
  malformed      a text message that is not JSON replaces the first audio frame
  bad-frame      (stdio) a frame header with an unknown kind byte replaces the first audio frame
  wrong-samples  every frame carries 1900 samples instead of 1920
  nan            the second audio frame holds NaN samples
  empty          the utterance completes without a single audio frame
  nan-hello      hello.implementation carries a NaN value (a fact the candidate could not measure)
  no-synthetic   hello.implementation does not say whether the weights are synthetic
  nondeterministic  every utterance's codes and audio are shifted by its index: the same request differs
  codes-mismatch the codes returned are not the codes the audio was decoded from (use with --codec)
  no-busy        a speak during an utterance is ignored instead of refused with BUSY
  slow-cancel    a cancel is honoured only once 90 % of the utterance's frames are done (a port that checks
                 for it at the end)
  buffer-all     every frame is generated (paced as usual) before the first is sent: all audio arrives in one
                 burst at the end (a server that buffers the whole utterance)

``--after N`` serves N utterances correctly before the fault strikes; with ``--recurring`` it strikes again
after every further N correct ones (a crashed worker restarted by the harness counts from zero again).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import threading
import time
from collections.abc import Iterator

import numpy as np

from qtts_eval.pipelines.base import (
    AudioChunk,
    Capability,
    Event,
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
)
from qtts_eval.pipelines.calibration import tone
from qtts_eval.pipelines.codec import ReferenceCodec
from qtts_eval.units import CODEBOOKS, SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import ErrorCode
from qtts_eval.wire.server import (
    Host,
    StdioTransport,
    Transport,
    WebSocketTransport,
    run_stdio_worker,
    serve_websocket,
)

CRASH_EXIT_CODE = 3
SHORT_FRAME_SAMPLES = 1900  # the wrong-samples fault's frame length (20 short of SAMPLES_PER_FRAME)
CODEBOOK_SIZE = 2048  # codes per codebook of the 12 Hz codec (every preset): the worker's codes stay in range
SLOW_CANCEL_SHARE = 0.9  # the slow-cancel fault lets this share of the utterance's frames pass first
TONE_SHIFT_SAMPLES = 100  # the nondeterministic fault starts each utterance's tone this much later


class Fault(str, enum.Enum):
    NONE = "none"
    CRASH = "crash"
    HANG = "hang"
    CLOSE = "close"
    MALFORMED = "malformed"
    BAD_FRAME = "bad-frame"
    WRONG_SAMPLES = "wrong-samples"
    NAN = "nan"
    EMPTY = "empty"
    NAN_HELLO = "nan-hello"
    NO_SYNTHETIC = "no-synthetic"
    NONDETERMINISTIC = "nondeterministic"
    CODES_MISMATCH = "codes-mismatch"
    NO_BUSY = "no-busy"
    SLOW_CANCEL = "slow-cancel"
    BUFFER_ALL = "buffer-all"


class TonePipeline(Pipeline):
    """One audio frame per codec frame, paced like a model; codes are a fixed pattern of the request seed."""

    capabilities = frozenset({Capability.SEEDED_SAMPLING})

    def __init__(
        self,
        fault: Fault,
        frame_delay_s: float,
        healthy_utterances: int,
        codec_model: str | None = None,
        recurring: bool = False,
    ) -> None:
        super().__init__(PipelineConfig(model=codec_model or "tone"))
        self.fault = fault
        self.frame_delay_s = frame_delay_s
        self.after = healthy_utterances  # utterances served correctly before each strike
        self.healthy_utterances = healthy_utterances  # correct utterances left before the next strike
        self.recurring = recurring  # strike again after `after` more correct utterances
        self.strike_pending = False  # a faulty utterance whose first audio frame the transport may spoil
        self.codec_model = codec_model  # checkpoint whose reference codec turns the codes into audio
        self.codec: ReferenceCodec | None = None
        self.utterances = 0  # served so far (the nondeterministic fault shifts each by its index)
        self.last_frames = 0  # frame budget of the latest utterance (the slow-cancel fault waits it out)

    def load(self) -> None:
        if self.codec_model is not None:
            self.codec = ReferenceCodec(self.codec_model)

    def describe(self) -> dict[str, object]:
        facts = {
            **super().describe(),
            "synthetic": True,
            "weights_hash": self.codec.weights_hash if self.codec else "none (tone generator)",
            "fault": self.fault.value,
        }
        if self.fault is Fault.NO_SYNTHETIC:
            del facts["synthetic"]
        if self.fault is Fault.NAN_HELLO:
            facts["load_s"] = float("nan")
        return facts

    def stream(self, request: Request) -> Iterator[Event]:
        fault = self.fault
        if self.healthy_utterances > 0:
            self.healthy_utterances -= 1
            fault = Fault.NONE
        else:
            if self.recurring:
                self.healthy_utterances = self.after
            self.strike_pending = True
        self.utterances += 1
        shift = self.utterances if fault is Fault.NONDETERMINISTIC else 0
        frames = request.max_frames
        pattern = np.arange(frames)[:, None] * 7 + np.arange(CODEBOOKS)[None, :] * 131 + request.seed + shift
        codes = pattern % CODEBOOK_SIZE
        decoded = self.codec.decode(codes) if self.codec else None
        length = SHORT_FRAME_SAMPLES if fault is Fault.WRONG_SAMPLES else SAMPLES_PER_FRAME
        self.last_frames = frames
        held: list[AudioChunk] = []
        for index in range(0 if fault is Fault.EMPTY else frames):
            time.sleep(self.frame_delay_s)
            if decoded is not None:
                samples = decoded[index * SAMPLES_PER_FRAME : (index + 1) * SAMPLES_PER_FRAME].copy()
            else:
                samples = tone(length, index * length + shift * TONE_SHIFT_SAMPLES)
            if fault is Fault.NAN and index == 1:
                samples[::7] = np.nan
            if fault is Fault.BUFFER_ALL:
                held.append(AudioChunk(samples, time.monotonic_ns()))
                continue
            yield AudioChunk(samples, time.monotonic_ns())
            if fault is Fault.CRASH:
                os._exit(CRASH_EXIT_CODE)
            if fault is Fault.HANG:
                threading.Event().wait()
        yield from held
        if fault is Fault.CODES_MISMATCH:
            codes = (codes + 1) % CODEBOOK_SIZE
        yield StreamEnd(frames_generated=frames, codes=codes)


class FaultyTransport(Transport):
    """Passes everything through except the first audio frame of a faulty utterance, where transport-level
    faults strike."""

    def __init__(self, inner: Transport, pipeline: TonePipeline) -> None:
        self.inner = inner
        self.pipeline = pipeline
        self.fault = pipeline.fault

    async def receive(self) -> str | bytes | None:
        message = await self.inner.receive()
        if self.fault is Fault.SLOW_CANCEL and isinstance(message, str) and '"cancel"' in message:
            # Honoured only once most of the work is done, as a port that checks for a cancel at the end.
            await asyncio.sleep(SLOW_CANCEL_SHARE * self.pipeline.frame_delay_s * self.pipeline.last_frames)
        return message

    async def send_text(self, text: str) -> None:
        if self.fault is Fault.NO_BUSY and protocol.loads(text).get("code") == ErrorCode.BUSY.value:
            return  # the speak that arrived mid-utterance is silently dropped
        await self.inner.send_text(text)

    async def send_binary(self, data: bytes) -> None:
        if not self.pipeline.strike_pending or self.fault not in (
            Fault.CLOSE,
            Fault.MALFORMED,
            Fault.BAD_FRAME,
        ):
            await self.inner.send_binary(data)
            return
        self.pipeline.strike_pending = False
        if self.fault is Fault.MALFORMED:
            await self.inner.send_text("{this is not json")
        elif self.fault is Fault.BAD_FRAME and isinstance(self.inner, StdioTransport):
            await self.inner.write(protocol.HEADER.pack(len(data), 0x7F) + data)
        elif isinstance(self.inner, StdioTransport):
            self.inner.writer.close()
            await asyncio.Event().wait()  # alive but silent: only the closed stream tells
        elif isinstance(self.inner, WebSocketTransport):
            await self.inner.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--fault", type=Fault, default=Fault.NONE, choices=list(Fault))
    parser.add_argument("--frame-delay-ms", type=float, default=20.0, help="pause before each frame")
    parser.add_argument("--after", type=int, default=0, help="utterances served correctly before the fault")
    parser.add_argument(
        "--recurring", action="store_true", help="strike again after every --after correct utterances"
    )
    parser.add_argument("--websocket", action="store_true", help="serve WebSocket on a free loopback port")
    parser.add_argument("--codec", metavar="MODEL", help="send the reference codec's decode of the codes")
    args = parser.parse_args()
    pipeline = TonePipeline(args.fault, args.frame_delay_ms / 1000, args.after, args.codec, args.recurring)
    pipeline.load()
    host = Host(pipeline, "faulty")

    def wrap(transport: Transport) -> Transport:
        return FaultyTransport(transport, pipeline)

    if not args.websocket:
        run_stdio_worker(lambda: host, wrap)
        return

    def announce(url: str) -> None:
        print(f"listening on {url}", flush=True)

    asyncio.run(serve_websocket(host, "127.0.0.1", 0, announce, wrap))


if __name__ == "__main__":
    main()
