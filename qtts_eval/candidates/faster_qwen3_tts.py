"""Adapter for faster-qwen3-tts (CUDA graphs around the official modules), run by the worker shim on a GPU.

Prepared for the GPU script (.ci/gpu/ports.sh); it has not run yet (docs/benchmarks.md). The port needs
transformers 5 and `qwen-tts-hf`, a transformers-5 build of qwen_tts under the same import name, so it
cannot share the reference's environment. Its streaming generator takes the reference clip as a file path,
so the request's clip is written to a scratch WAV once per request; `append_silence` is off because the
official package appends none, and the talker prompt layout is the one the run compares against.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtts_eval.candidates.adapter import PortAdapter, SourceCheckpoint
from qtts_eval.pipelines.base import (
    AudioChunk,
    Capability,
    CloneMode,
    Delivery,
    Event,
    PromptReuse,
    Request,
    StreamEnd,
    WorkDeclaration,
)
from qtts_eval.units import FRAME_RATE_HZ, SAMPLE_RATE_HZ


@dataclass(frozen=True)
class FasterQwen3TtsOptions(SourceCheckpoint):
    """What the suite-side candidate pipeline hands the adapter."""

    checkpoint: str = ""  # checkpoint directory in the released layout
    chunk_frames: int = 4  # codec frames per streamed chunk (the port's chunk_size)

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("option 'checkpoint' is required")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")


class FasterQwen3TtsPipeline(PortAdapter):
    label = "faster-qwen3-tts"
    capabilities = frozenset({Capability.SEEDED_SAMPLING})
    options_schema = FasterQwen3TtsOptions
    options: FasterQwen3TtsOptions

    def load(self) -> None:
        from faster_qwen3_tts import FasterQwen3TTS

        self.model = FasterQwen3TTS.from_pretrained(
            self.options.checkpoint,
            device=self.config.device,
            dtype=self.config.dtype,
            attn_implementation=self.config.attn_implementation,
            local_files_only=True,
        )

    def implementation(self) -> str:
        from qtts_eval.environment import package_version

        return f"faster-qwen3-tts {package_version('faster-qwen3-tts')}"

    def work(self) -> WorkDeclaration:
        import torch

        return WorkDeclaration(
            # Its streaming generator takes the clip as a file path and builds the prompt on every call.
            prompt=PromptReuse.BUILT,
            delivery=Delivery.STREAMED,
            packet_frames=self.options.chunk_frames,
            instrumentation="none",  # it yields no codes: nothing runs to expose them
            threads=torch.get_num_threads(),
            talker_precision=self.config.dtype,
        )

    def stream(self, request: Request) -> Iterator[Event]:
        import soundfile
        import torch

        sampling = request.sampling
        samples_out = 0
        with tempfile.TemporaryDirectory(prefix="faster-qwen3-tts-") as scratch:
            ref = Path(scratch) / "ref.wav"
            soundfile.write(ref, request.ref_audio, SAMPLE_RATE_HZ, subtype="FLOAT")
            torch.manual_seed(request.seed)
            for audio, _rate, _timing in self.model.generate_voice_clone_streaming(
                text=request.text,
                language=request.language,
                ref_audio=str(ref),
                ref_text=request.ref_text,
                max_new_tokens=request.max_frames,
                do_sample=sampling.do_sample,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty,
                chunk_size=self.options.chunk_frames,
                xvec_only=request.mode is CloneMode.XVECTOR,
                non_streaming_mode=self.prompt_layout(request),
                append_silence=False,
            ):
                samples = np.asarray(audio, dtype=np.float32).reshape(-1)
                samples_out += samples.size
                yield AudioChunk(samples=samples, t_ns=time.monotonic_ns())
        # The port yields no codes; the frame count is what its audio covers.
        frames = round(samples_out / SAMPLE_RATE_HZ * FRAME_RATE_HZ)
        yield StreamEnd(frames_generated=frames, codes=None)
