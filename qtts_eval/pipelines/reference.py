"""The reference: the official qwen-tts package, loaded through its own loader.

The package has no streaming output, so the streaming driver observes it: forward hooks on the official
talker and code predictor see each codec frame as soon as its 16 codes exist (see _Run), and every
``packet_frames`` frames the official 12 Hz decoder module decodes the new packet with ``left_context``
frames of history. Generation runs in a worker thread; chunks reach the caller through a queue as they are
produced. The package's own offline decode still runs at the end of ``generate_voice_clone``: the driver
compares the streamed audio with it and records the deviation.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtts_eval import checkpoints, official
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import (
    AudioChunk,
    BudgetConvention,
    Capability,
    CloneMode,
    Delivery,
    Emit,
    Event,
    Mark,
    Pipeline,
    PipelineConfig,
    PromptReuse,
    Request,
    Stage,
    StreamEnd,
    WorkDeclaration,
    produce,
)
from qtts_eval.units import CODEBOOKS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_PACKET_FRAMES = 4  # 320 ms, the paper's streaming packet
DEFAULT_LEFT_CONTEXT = 72  # frames: the decoder's attention window
EXACT = "exact"  # left_context value for full history (reproduces the offline decode)


@dataclass(frozen=True)
class ReferenceOptions:
    """How the reference runs; part of every record (env_*), since it changes the audio or the timed work."""

    streaming: bool = False  # False: one chunk with the whole utterance, after the official decode
    packet_frames: int = DEFAULT_PACKET_FRAMES  # frames decoded per audio chunk
    left_context: int | str = DEFAULT_LEFT_CONTEXT  # frames of decoder history, or "exact" (all of it)
    non_streaming_mode: bool = False  # the package's prompt layout flag (whole text up front when True)
    codec_dtype: str | None = None  # speech tokenizer dtype; None = the talker's (the package default)
    # Build each voice's clone prompt (speaker embedding, reference codes) once and reuse it, as a port that
    # caches voices does (the protocol's voice_id) and as the package's own create_voice_clone_prompt API
    # invites. False rebuilds it inside every request. prompt_s is recorded either way.
    cache_prompt: bool = True

    def __post_init__(self) -> None:
        if self.packet_frames < 1:
            raise ValueError(f"packet_frames must be >= 1, got {self.packet_frames}")
        if isinstance(self.left_context, str) and self.left_context != EXACT:
            raise ValueError(f"left_context must be a frame count or {EXACT!r}, got {self.left_context!r}")
        if isinstance(self.left_context, int) and self.left_context < 0:
            raise ValueError(f"left_context must be >= 0, got {self.left_context}")
        if self.codec_dtype is not None and self.codec_dtype not in DTYPES:
            raise ValueError(f"codec_dtype {self.codec_dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def context_frames(self) -> int | None:
        """Decoder history in frames; None = all of it."""
        return None if self.left_context == EXACT else int(self.left_context)


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
    """Raised inside a hook to stop generation when the caller abandons the stream."""


def _audio_key(request: Request) -> tuple[str, str, str]:
    """What a clone prompt depends on: the reference clip's content, its transcript and the mode."""
    digest = hashlib.sha256(np.ascontiguousarray(request.ref_audio).tobytes()).hexdigest()
    return digest, request.ref_text, request.mode.value


class ReferencePipeline(Pipeline):
    """``Qwen3TTSModel.generate_voice_clone`` in ICL or x-vector-only mode, whole or streamed (options:
    ReferenceOptions)."""

    label = "reference"
    capabilities = frozenset({Capability.SEEDED_SAMPLING})
    options_schema = ReferenceOptions
    options: ReferenceOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        if config.dtype not in DTYPES:
            raise PipelineError(f"reference: dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")
        self.resolved: checkpoints.ResolvedModel | None = None
        self.model: Any = None
        self.prompts: dict[tuple[str, str, str], Any] = {}  # cache_prompt: clone prompts by _audio_key

    def load(self) -> None:
        import torch
        import transformers

        Qwen3TTSModel = official.qwen_tts().Qwen3TTSModel
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
            if self.options.codec_dtype is not None:
                # The package loads its speech tokenizer with the talker's dtype; a bf16 talker beside an
                # fp32 codec is a common deployment, so reload it through the package's own loader.
                from qwen_tts import Qwen3TTSTokenizer

                self.model.model.load_speech_tokenizer(
                    Qwen3TTSTokenizer.from_pretrained(
                        str(path / "speech_tokenizer"),
                        device_map=self.config.device,
                        dtype=getattr(torch, self.options.codec_dtype),
                    )
                )
        except Exception as exc:
            raise PipelineError(f"reference: the official loader rejected {path}: {exc}") from exc

    def work(self) -> WorkDeclaration:
        import torch

        options = self.options
        return WorkDeclaration(
            prompt=PromptReuse.CACHED if options.cache_prompt else PromptReuse.BUILT,
            delivery=Delivery.STREAMED if options.streaming else Delivery.WHOLE,
            packet_frames=options.packet_frames if options.streaming else None,
            budget_convention=BudgetConvention.N_MINUS_1,
            # The forward hooks that observe each frame's codes run in both deliveries (see _Run).
            instrumentation="forward_hooks",
            threads=torch.get_num_threads(),
            talker_precision=self.config.dtype,
            codec_precision=options.codec_dtype or self.config.dtype,
        )

    def checkpoint_dir(self, resolved: Path) -> Path:
        """The directory actually loaded; subclasses may load a modified copy (parity's planted faults)."""
        return resolved

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        options = self.options
        info.update(
            streaming=options.streaming,
            packet_frames=options.packet_frames if options.streaming else None,
            left_context=str(options.left_context) if options.streaming else None,
            non_streaming_mode=options.non_streaming_mode,
            codec_dtype=options.codec_dtype or self.config.dtype,
            cache_prompt=options.cache_prompt,
        )
        if self.resolved is not None:
            info.update(
                model_path=str(self.resolved.path),
                weights_hash=self.resolved.weights_hash,
                synthetic=self.resolved.synthetic,
                synthetic_preset=self.resolved.preset,
                synthetic_seed=self.resolved.seed,
            )
            # Where a synthetic checkpoint's text ids come from (None: the checkpoint's own tokenizer files).
            source = self.resolved.text_tokenizer
            info.update(
                text_tokenizer_package=source.package if source else None,
                text_tokenizer_version=source.version if source else None,
                text_tokenizer_sha256=source.sha256 if source else None,
            )
        return info

    def clone_prompt(self, request: Request) -> Any:
        """The package's voice clone prompt for the request, from the cache when ``cache_prompt`` is on."""
        key = _audio_key(request)
        if key in self.prompts:
            return self.prompts[key]
        prompt = self.model.create_voice_clone_prompt(
            ref_audio=(request.ref_audio, SAMPLE_RATE_HZ),
            ref_text=request.ref_text,
            x_vector_only_mode=request.mode is CloneMode.XVECTOR,
        )
        if self.options.cache_prompt:
            self.prompts[key] = prompt
        return prompt

    def prompt_layout(self, request: Request) -> bool:
        """The non_streaming_mode a request runs with: the one it asks for, else this pipeline's option."""
        if request.non_streaming_mode is None:
            return self.options.non_streaming_mode
        return request.non_streaming_mode

    def stream(self, request: Request) -> Iterator[Event]:
        if self.model is None:
            raise PipelineError("reference: stream() called before load()")
        # Whole-utterance requests deliver nothing before the end, so they generate in the caller's thread: on
        # a 2-core CPU a second thread ran the tiny model ~20 % slower (OpenMP thread pools competing).
        return produce(
            lambda emit, cancelled: _Run(self, request, emit, cancelled).generate(),
            in_thread=self.options.streaming,
            name="qtts-eval-reference",
        )


class _Run:
    """One request: the hooks that observe frames as their codes come to exist, and the packet decoder.

    In a decode step the talker first runs the code predictor for the previous step's codebook-0 token,
    which completes that frame, and only then runs its own transformer for the next token. The frame is
    observed at that point, before the next talker pass: the code predictor's last input embedding
    (codebook 15) is called exactly once per frame, after all 15 predicted codes exist, and the other
    embeddings' latest inputs are then that frame's codes. The talker's own output (which carries the same
    frame one pass later) confirms every observed frame.
    """

    def __init__(self, pipeline: ReferencePipeline, request: Request, emit: Emit, cancelled: Any) -> None:
        self.pipeline = pipeline
        self.request = request
        self.options = pipeline.options
        self.emit = emit
        self.cancelled = cancelled
        self.frames: list[Any] = []  # [16] code tensors, in generation order
        self.talker_frames: list[
            Any
        ] = []  # the same frames as the talker's output carries them, a pass later
        self.emitted = 0  # frames already sent as audio
        self.streamed: list[np.ndarray] = []
        self.prefill_seen = False
        self.codebook0: Any = None  # this step's codebook-0 input (the previous step's talker token)
        self.latest: list[Any] = []  # latest input of each code-predictor embedding (codebooks 1..15)
        self.decoding_packet = False  # True while the driver itself runs the decoder
        self.ref_codes: Any = None  # [T_ref, 16] reference codes (ICL), decoder left context
        model = pipeline.model.model
        self.talker = model.talker
        self.embeddings = list(self.talker.code_predictor.get_input_embeddings())
        self.latest = [None] * len(self.embeddings)
        self.decoder = model.speech_tokenizer.model.decoder
        self.eos_id = model.config.talker_config.codec_eos_token_id
        self.device = pipeline.config.device
        self.cuda = self.device.startswith("cuda")

    def _now(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
        return time.monotonic_ns()

    def _mark(self, stage: Stage) -> None:
        self.emit(Mark(stage, self._now()))

    def generate(self) -> None:
        with contextlib.suppress(_Cancelled):
            self._generate()

    def _hooks(self) -> list[Any]:
        handles = [
            self.talker.register_forward_pre_hook(self._on_talker_input, with_kwargs=True),
            self.talker.register_forward_hook(self._on_talker_step),
        ]
        for index, embedding in enumerate(self.embeddings):
            handles.append(embedding.register_forward_hook(self._on_code_embedding(index)))
        if self.options.streaming:
            handles.append(self.decoder.register_forward_pre_hook(self._on_offline_decode))
        return handles

    def _generate(self) -> None:
        import torch

        request, model = self.request, self.pipeline.model
        torch.manual_seed(request.seed)
        prompt = self.pipeline.clone_prompt(request)
        self.ref_codes = prompt[0].ref_code
        self._mark(Stage.PROMPT_READY)
        handles = self._hooks()
        try:
            wavs, sample_rate = model.generate_voice_clone(
                text=request.text,
                language=request.language,
                voice_clone_prompt=prompt,
                non_streaming_mode=self.pipeline.prompt_layout(self.request),
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
        # Frames are kept as device tensors during generation (no per-step device sync); EOS is never
        # observed here (generation stops before the code predictor runs for it), checked once at the end.
        codes = torch.stack(self.frames).cpu().numpy() if self.frames else np.zeros((0, CODEBOOKS), np.int64)
        confirmed = (
            torch.stack(self.talker_frames).cpu().numpy() if self.talker_frames else np.zeros_like(codes)
        )
        # The talker's output carries each frame one pass after its codes exist: the same codes, or the
        # early observation is broken.
        if not np.array_equal(codes, confirmed):
            raise PipelineError(
                "reference: the frames seen as they were completed differ from the talker's output"
            )
        if codes.size and (codes[:, 0] == self.eos_id).any():
            raise PipelineError("reference: an EOS token was observed as a codec frame")
        info: dict[str, Any] = {}
        if self.options.streaming:
            streamed = np.concatenate(self.streamed) if self.streamed else np.zeros(0, np.float32)
            info.update(_deviation(streamed, offline))
        else:
            self.emit(AudioChunk(offline, self._now()))
        # In ICL mode the package cuts the reference's share off its decode proportionally; the frame
        # count comes from the observed codes instead.
        self.emit(StreamEnd(frames_generated=len(self.frames), codes=codes, info=info))

    def _on_talker_input(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if self.cancelled.is_set():
            raise _Cancelled
        inputs = kwargs.get("inputs_embeds")
        if inputs is None or inputs.shape[1] == 1:  # a decode step: its input_ids is codebook 0 of a frame
            self.codebook0 = kwargs.get("input_ids")

    def _on_code_embedding(self, index: int) -> Any:
        last = index == len(self.embeddings) - 1

        def hook(_module: Any, args: Any, _output: Any) -> None:
            self.latest[index] = args[0]
            # All 15 predicted codes of this step's frame exist now. (The prompt assembly also embeds the
            # reference codes, outside any decode step: codebook0 is None then.)
            if last and self.codebook0 is not None:
                self._on_frame()

        return hook

    def _on_frame(self) -> None:
        import torch

        frame = torch.cat([self.codebook0.reshape(-1)[:1]] + [ids.reshape(-1)[:1] for ids in self.latest])
        self.codebook0 = None
        self.frames.append(frame.detach())
        if len(self.frames) == 1:
            self._mark(Stage.FIRST_FRAME)
        if self.options.streaming and len(self.frames) - self.emitted >= self.options.packet_frames:
            self._emit_packet(len(self.frames))

    def _on_talker_step(self, _module: Any, _args: Any, output: Any) -> None:
        if not self.prefill_seen:
            self.prefill_seen = True
            self._mark(Stage.PREFILL_DONE)
            return
        frame = output.hidden_states[1]
        if frame is not None:
            self.talker_frames.append(frame[0].detach())

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
        context = self.options.context_frames
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
        self.emit(AudioChunk(audio, self._now()))


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
