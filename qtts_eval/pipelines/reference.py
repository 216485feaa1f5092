"""The reference: the official qwen-tts package, loaded through its own loader, whole-utterance output."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
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
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
)

DTYPES = ("float32", "bfloat16", "float16")


class ReferencePipeline(Pipeline):
    """``Qwen3TTSModel.generate_voice_clone`` in ICL or x-vector-only mode.

    Options (PipelineConfig.options):
      non_streaming_mode: bool, default False (the package default). It selects the talker prompt layout;
        ports may implement only one, so it is recorded with every request.
    """

    capabilities = frozenset({Capability.SEEDED_SAMPLING})

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        if config.dtype not in DTYPES:
            raise PipelineError(f"reference: dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")
        unknown = set(config.options) - {"non_streaming_mode"}
        if unknown:
            raise PipelineError(f"reference: unknown options {sorted(unknown)}; known: non_streaming_mode")
        self.non_streaming_mode = bool(config.options.get("non_streaming_mode", False))
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
        try:
            self.model = Qwen3TTSModel.from_pretrained(
                str(self.resolved.path),
                device_map=self.config.device,
                dtype=getattr(torch, self.config.dtype),
                attn_implementation=self.config.attn_implementation,
            )
        except Exception as exc:
            raise PipelineError(
                f"reference: the official loader rejected {self.resolved.path}: {exc}"
            ) from exc

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["non_streaming_mode"] = self.non_streaming_mode
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
        import torch

        if self.model is None:
            raise PipelineError("reference: stream() called before load()")
        torch.manual_seed(request.seed)
        sampling = request.sampling
        wavs, sample_rate = self.model.generate_voice_clone(
            text=request.text,
            language=request.language,
            ref_audio=(request.ref_audio, SAMPLE_RATE_HZ),
            ref_text=request.ref_text,
            x_vector_only_mode=request.mode is CloneMode.XVECTOR,
            non_streaming_mode=self.non_streaming_mode,
            max_new_tokens=request.max_frames,
            do_sample=sampling.do_sample,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
            repetition_penalty=sampling.repetition_penalty,
            subtalker_dosample=sampling.do_sample,
            subtalker_top_k=sampling.top_k,
            subtalker_top_p=sampling.top_p,
            subtalker_temperature=sampling.temperature,
        )
        if self.config.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_ns = time.monotonic_ns()
        if sample_rate != SAMPLE_RATE_HZ:
            raise PipelineError(
                f"reference: model returned {sample_rate} Hz audio, expected {SAMPLE_RATE_HZ}"
            )
        audio = np.asarray(wavs[0], dtype=np.float32)
        yield AudioChunk(audio, t_ns)
        # In ICL mode the package cuts the reference's share off the decode proportionally, so the
        # length can be off by a sample; rounding recovers the frame count.
        yield StreamEnd(frames_generated=round(audio.shape[0] / SAMPLES_PER_FRAME))
