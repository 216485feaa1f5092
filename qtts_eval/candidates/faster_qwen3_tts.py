"""Adapter for faster-qwen3-tts (CUDA graphs around the official modules), run by the worker shim on a GPU.

Prepared for the GPU campaign (.ci/gpu/campaign.sh); it has not run yet (docs/benchmarks.md). The port needs
transformers 5 and `qwen-tts-hf`, a transformers-5 build of qwen_tts under the same import name, so it
cannot share the reference's environment. Its streaming generator takes the reference clip as a file path,
so the request's clip is written to a scratch WAV once per request; `append_silence` is off because the
official package appends none, and the talker prompt layout is the one the run compares against.

Its streamed chunks need not hold whole frames: it cuts each chunk's decode at round(context frames x the
samples per frame it measured on its first decode). The frame count is the one its generator reports
(`chunk_steps` of every chunk), and WholeFrames regroups the audio so every chunk the suite receives holds
whole 1920-sample frames and the total is frames x 1920, the client's exact-count rule.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtts_eval.candidates.adapter import PortAdapter, SourceCheckpoint
from qtts_eval.errors import PipelineError
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
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME


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


class WholeFrames:
    """Regroups audio chunks of any length into whole frames: each push returns the whole frames received
    so far and keeps the rest for the next one; finish ends the utterance at exactly ``frames`` frames."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.received = 0  # samples the port sent
        self.sent = 0  # samples passed on, always a multiple of SAMPLES_PER_FRAME

    def push(self, samples: np.ndarray) -> np.ndarray | None:
        self.received += samples.size
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = self._pending.size - self._pending.size % SAMPLES_PER_FRAME
        if not whole:
            return None
        out, self._pending = self._pending[:whole], self._pending[whole:]
        self.sent += whole
        return out

    def finish(self, frames: int) -> np.ndarray | None:
        """The last chunk: what is left up to ``frames`` whole frames, cut or padded with silence there."""
        missing = frames * SAMPLES_PER_FRAME - self.sent
        if missing < 0:  # the port sent whole frames beyond the count it reported: a fault, not a rounding
            raise PipelineError(
                f"faster-qwen3-tts sent {self.sent // SAMPLES_PER_FRAME} whole frames of audio but reported "
                f"{frames} frames"
            )
        tail = np.zeros(missing, dtype=np.float32)
        kept = self._pending[:missing]
        tail[: kept.size] = kept
        self._pending = np.zeros(0, dtype=np.float32)
        self.sent += missing
        return tail if missing else None


def reported_frames(timing: dict[str, object]) -> int:
    """Frames in one streamed chunk, as the port's generator reports them."""
    steps = timing.get("chunk_steps")
    if not isinstance(steps, int):
        raise PipelineError(
            f"faster-qwen3-tts reported no 'chunk_steps' for a chunk (its timing keys: {sorted(timing)}); "
            "this adapter needs the frame count the port generated"
        )
    return steps


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
        frames = 0
        regroup = WholeFrames()
        with tempfile.TemporaryDirectory(prefix="faster-qwen3-tts-") as scratch:
            ref = Path(scratch) / "ref.wav"
            soundfile.write(ref, request.ref_audio, SAMPLE_RATE_HZ, subtype="FLOAT")
            torch.manual_seed(request.seed)
            for audio, _rate, timing in self.model.generate_voice_clone_streaming(
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
                frames += reported_frames(timing)
                whole = regroup.push(np.asarray(audio, dtype=np.float32).reshape(-1))
                if whole is not None:
                    yield AudioChunk(samples=whole, t_ns=time.monotonic_ns())
        tail = regroup.finish(frames)
        if tail is not None:
            yield AudioChunk(samples=tail, t_ns=time.monotonic_ns())
        # The port yields no codes; how far its own audio was from whole frames is kept as a fact.
        yield StreamEnd(
            frames_generated=frames,
            codes=None,
            info={
                "port_samples": regroup.received,
                "port_samples_over_frames": regroup.received - regroup.sent,
            },
        )
