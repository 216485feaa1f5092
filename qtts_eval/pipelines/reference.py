"""The reference: the official qwen-tts package, loaded through its own loader.

The package has no streaming output, so the streaming driver observes it: a forward hook on the official
talker sees each codec frame as it is generated (a decode step's output carries the previous step's full
16-code frame), and every ``packet_frames`` frames the official 12 Hz decoder module decodes the new packet
with ``left_context`` frames of history. Generation runs in a worker thread; chunks reach the caller through
a queue as they are produced. The package's own offline decode still runs at the end of
``generate_voice_clone``: the driver compares the streamed audio with it and records the deviation.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtts_eval import checkpoints
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import (
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    AudioChunk,
    Capability,
    CloneMode,
    Event,
    Mark,
    Pipeline,
    PipelineConfig,
    Request,
    Stage,
    StreamEnd,
)

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_PACKET_FRAMES = 4  # 320 ms, the paper's streaming packet
DEFAULT_LEFT_CONTEXT = 72  # frames: the decoder's attention window
EXACT = "exact"  # left_context value for full history (reproduces the offline decode)


@dataclass(frozen=True)
class StreamSettings:
    """How the reference streams; part of every record (env_*), since it changes the audio."""

    streaming: bool = False  # False: one chunk with the whole utterance, after the official decode
    packet_frames: int = DEFAULT_PACKET_FRAMES  # frames decoded per audio chunk
    left_context: int | None = DEFAULT_LEFT_CONTEXT  # frames of decoder history; None = exact (all)
    non_streaming_mode: bool = False  # the package's prompt layout flag (whole text up front when True)
    codec_dtype: str | None = None  # speech tokenizer dtype; None = the talker's (the package default)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> StreamSettings:
        known = {"streaming", "packet_frames", "left_context", "non_streaming_mode", "codec_dtype"}
        unknown = set(options) - known
        if unknown:
            raise PipelineError(
                f"reference: unknown options {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        left = options.get("left_context", DEFAULT_LEFT_CONTEXT)
        if left == EXACT or left is None:
            left_context = None
        else:
            try:
                left_context = int(left)
            except (TypeError, ValueError):
                raise PipelineError(
                    f"reference: left_context must be a frame count or 'exact', got {left!r}"
                ) from None
            if left_context < 0:
                raise PipelineError(f"reference: left_context must be >= 0, got {left_context}")
        codec_dtype = options.get("codec_dtype")
        if codec_dtype is not None and codec_dtype not in DTYPES:
            raise PipelineError(f"reference: codec_dtype {codec_dtype!r} is not one of {', '.join(DTYPES)}")
        packet = int(options.get("packet_frames", DEFAULT_PACKET_FRAMES))
        if packet < 1:
            raise PipelineError(f"reference: packet_frames must be >= 1, got {packet}")
        return cls(
            streaming=bool(options.get("streaming", False)),
            packet_frames=packet,
            left_context=left_context,
            non_streaming_mode=bool(options.get("non_streaming_mode", False)),
            codec_dtype=codec_dtype,
        )


def generation_kwargs(request: Request) -> dict[str, Any]:
    """The request's frame budget and decoding settings as ``generate_voice_clone`` keywords; the code
    predictor (sub-talker) samples with the talker's settings."""
    sampling = request.sampling
    return {
        "max_new_tokens": request.max_frames,
        "do_sample": sampling.do_sample,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "temperature": sampling.temperature,
        "repetition_penalty": sampling.repetition_penalty,
        "subtalker_dosample": sampling.do_sample,
        "subtalker_top_k": sampling.top_k,
        "subtalker_top_p": sampling.top_p,
        "subtalker_temperature": sampling.temperature,
    }


class _Cancelled(Exception):
    """Raised inside the talker hook to stop generation when the caller abandons the stream."""


_DONE = object()  # queue sentinel: the generation thread has finished


class ReferencePipeline(Pipeline):
    """``Qwen3TTSModel.generate_voice_clone`` in ICL or x-vector-only mode, whole or streamed.

    Options (PipelineConfig.options): ``streaming`` (bool), ``packet_frames`` (int, default 4),
    ``left_context`` (frames, default 72, or "exact"), ``non_streaming_mode`` (bool, default False: the
    package default prompt layout; ports may implement only one layout, so it is recorded).
    """

    capabilities = frozenset({Capability.SEEDED_SAMPLING})

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        if config.dtype not in DTYPES:
            raise PipelineError(f"reference: dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")
        self.settings = StreamSettings.from_options(config.options)
        self.resolved: checkpoints.ResolvedModel | None = None
        self.model: Any = None

    def load(self) -> None:
        import torch
        import transformers

        with contextlib.redirect_stdout(sys.stderr):  # keep its import banner out of our tables
            from qwen_tts import Qwen3TTSModel
        # Per-call generation notices ("Setting pad_token_id ...") would drown the progress output.
        transformers.logging.set_verbosity_error()

        self.resolved = checkpoints.resolve(self.config.model)
        path = self.checkpoint_dir(self.resolved.path)
        try:
            self.model = Qwen3TTSModel.from_pretrained(
                str(path),
                device_map=self.config.device,
                dtype=getattr(torch, self.config.dtype),
                attn_implementation=self.config.attn_implementation,
            )
            if self.settings.codec_dtype is not None:
                # The package loads its speech tokenizer with the talker's dtype; a bf16 talker beside an
                # fp32 codec is a common deployment, so reload it through the package's own loader.
                from qwen_tts import Qwen3TTSTokenizer

                self.model.model.load_speech_tokenizer(
                    Qwen3TTSTokenizer.from_pretrained(
                        str(path / "speech_tokenizer"),
                        device_map=self.config.device,
                        dtype=getattr(torch, self.settings.codec_dtype),
                    )
                )
        except Exception as exc:
            raise PipelineError(f"reference: the official loader rejected {path}: {exc}") from exc

    def checkpoint_dir(self, resolved: Path) -> Path:
        """The directory actually loaded; subclasses may load a modified copy (parity's planted faults)."""
        return resolved

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        settings = self.settings
        info.update(
            streaming=settings.streaming,
            packet_frames=settings.packet_frames if settings.streaming else None,
            left_context=(settings.left_context if settings.left_context is not None else EXACT)
            if settings.streaming
            else None,
            non_streaming_mode=settings.non_streaming_mode,
            codec_dtype=settings.codec_dtype or self.config.dtype,
        )
        if self.resolved is not None:
            info.update(
                model_path=str(self.resolved.path),
                weights_hash=self.resolved.weights_hash,
                synthetic=self.resolved.synthetic,
                synthetic_preset=self.resolved.preset,
                synthetic_seed=self.resolved.seed,
            )
        return info

    def stream(self, request: Request) -> Iterator[Event]:
        if self.model is None:
            raise PipelineError("reference: stream() called before load()")
        run = _Run(self, request)
        worker: threading.Thread | None = None
        if self.settings.streaming:
            worker = threading.Thread(target=run.generate, name="qtts-eval-reference", daemon=True)
            worker.start()
        else:
            # Nothing to deliver before the end, so no worker thread: on a 2-core CPU, generating in a
            # second thread ran the tiny model ~20 % slower (OpenMP thread pools competing for cores).
            run.generate()
        try:
            while True:
                event = run.events.get()
                if event is _DONE:
                    break
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            run.cancelled.set()  # no-op when finished; stops generation if the caller walked away
            if worker is not None:
                worker.join()


class _Run:
    """One request's generation thread, talker hook and incremental decoder."""

    def __init__(self, pipeline: ReferencePipeline, request: Request) -> None:
        self.pipeline = pipeline
        self.request = request
        self.settings = pipeline.settings
        self.events: queue.Queue[Any] = queue.Queue()
        self.cancelled = threading.Event()
        self.frames: list[Any] = []  # [16] code tensors, in generation order
        self.emitted = 0  # frames already sent as audio
        self.streamed: list[np.ndarray] = []
        self.prefill_seen = False
        self.decoding_packet = False  # True while the driver itself runs the decoder
        self.ref_codes: Any = None  # [T_ref, 16] reference codes (ICL), decoder left context
        model = pipeline.model.model
        self.talker = model.talker
        self.decoder = model.speech_tokenizer.model.decoder
        self.eos_id = model.config.talker_config.codec_eos_token_id
        self.cuda = pipeline.config.device.startswith("cuda")

    def _now(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.monotonic_ns()

    def _mark(self, stage: Stage) -> None:
        self.events.put(Mark(stage, self._now()))

    def generate(self) -> None:
        try:
            self._generate()
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self.events.put(exc)
        finally:
            self.events.put(_DONE)

    def _generate(self) -> None:
        import torch

        request, model = self.request, self.pipeline.model
        torch.manual_seed(request.seed)
        prompt = model.create_voice_clone_prompt(
            ref_audio=(request.ref_audio, SAMPLE_RATE_HZ),
            ref_text=request.ref_text,
            x_vector_only_mode=request.mode is CloneMode.XVECTOR,
        )
        self.ref_codes = prompt[0].ref_code
        self._mark(Stage.PROMPT_READY)
        handles = [self.talker.register_forward_hook(self._on_talker_step)]
        if self.settings.streaming:
            handles.append(self.decoder.register_forward_pre_hook(self._on_offline_decode))
        try:
            wavs, sample_rate = model.generate_voice_clone(
                text=request.text,
                language=request.language,
                voice_clone_prompt=prompt,
                non_streaming_mode=self.settings.non_streaming_mode,
                **generation_kwargs(request),
            )
        finally:
            for handle in handles:
                handle.remove()
        if sample_rate != SAMPLE_RATE_HZ:
            raise PipelineError(
                f"reference: model returned {sample_rate} Hz audio, expected {SAMPLE_RATE_HZ}"
            )
        offline = np.asarray(wavs[0], dtype=np.float32)
        codes = torch.stack(self.frames).cpu().numpy() if self.frames else np.zeros((0, 16), np.int64)
        info: dict[str, Any] = {}
        if self.settings.streaming:
            streamed = np.concatenate(self.streamed) if self.streamed else np.zeros(0, np.float32)
            info.update(_deviation(streamed, offline))
        else:
            self.events.put(AudioChunk(offline, self._now()))
        # In ICL mode the package cuts the reference's share off its decode proportionally; the frame
        # count comes from the observed codes instead.
        self.events.put(StreamEnd(frames_generated=len(self.frames), codes=codes, info=info))

    def _on_talker_step(self, _module: Any, _args: Any, output: Any) -> None:
        if self.cancelled.is_set():
            raise _Cancelled
        if not self.prefill_seen:
            self.prefill_seen = True
            self._mark(Stage.PREFILL_DONE)
            return
        frame = output.hidden_states[1]
        if frame is None or int(frame[0, 0]) == self.eos_id:
            return
        self.frames.append(frame[0].detach())
        if len(self.frames) == 1:
            self._mark(Stage.FIRST_FRAME)
        if self.settings.streaming and len(self.frames) - self.emitted >= self.settings.packet_frames:
            self._emit_packet(len(self.frames))

    def _on_offline_decode(self, _module: Any, _args: Any) -> None:
        # The package's own decode starts only once generation has ended: the last, possibly short,
        # packet goes out now, so the offline decode (kept for the deviation check) is not timed.
        if not self.decoding_packet:
            self._emit_packet(len(self.frames))

    def _emit_packet(self, end: int) -> None:
        import torch

        start = self.emitted
        if end <= start:
            return
        if start == 0:
            self._mark(Stage.FIRST_PACKET_CODES)
        generated = torch.stack(self.frames[:end])
        history = self.ref_codes.to(generated.device) if self.ref_codes is not None else generated[:0]
        codes = torch.cat([history, generated]).clamp(min=0)  # [T, 16], as the package's decode clamps
        absolute_start = history.shape[0] + start
        context = self.settings.left_context
        left = absolute_start if context is None else min(context, absolute_start)
        window = codes[absolute_start - left :].transpose(0, 1).unsqueeze(0)  # [1, 16, frames]
        self.decoding_packet = True
        try:
            with torch.inference_mode():
                wav = self.decoder(window)[0, 0, left * SAMPLES_PER_FRAME :]
        finally:
            self.decoding_packet = False
        audio = wav.float().cpu().numpy()
        self.emitted = end
        self.streamed.append(audio)
        self.events.put(AudioChunk(audio, self._now()))


MAX_ALIGN_SAMPLES = 2  # the package's proportional ICL cut can leave a sample or two at the front


def _deviation(streamed: np.ndarray, offline: np.ndarray) -> dict[str, float | None]:
    """How far the streamed audio is from the package's own offline decode (end-aligned)."""
    if abs(streamed.size - offline.size) > MAX_ALIGN_SAMPLES or offline.size == 0:
        return {"stream_rel_l2": None, "stream_snr_db": None}
    n = min(streamed.size, offline.size)
    streamed, offline = streamed[streamed.size - n :], offline[offline.size - n :]
    error = float(np.linalg.norm(streamed.astype(np.float64) - offline))
    norm = float(np.linalg.norm(offline.astype(np.float64)))
    rel = error / norm if norm > 0 else float("inf")
    # Identical audio has no finite SNR: recorded as None next to a relative error of 0.
    snr = None if error == 0 or norm == 0 else float(20 * np.log10(norm / error))
    return {"stream_rel_l2": rel, "stream_snr_db": snr}
