"""Adapter for qwentts.cpp (ggml) through the RealtimeTTS CPU wheel's ctypes binding ``qwentts_cpp_cpu``.

Runs inside the candidate's environment, served by the worker shim; imports numpy and the binding, not
torch.
The binding streams audio through a callback but has no codes API: each request runs with a scratch debug
dump directory, and the codes (and, for parity, the stage taps) are read from the raw files the library writes
there: ``int32 ndims``, ``int32 shape[ndims]``, then float32 values in row-major order.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.candidates.adapter import PortAdapter, SourceCheckpoint
from qtts_eval.candidates.export import GgufType
from qtts_eval.errors import PipelineError
from qtts_eval.parity.dumps import DumpMeta, StageDump
from qtts_eval.pipelines.base import (
    AudioChunk,
    BudgetConvention,
    Capability,
    CloneMode,
    Delivery,
    Event,
    PromptReuse,
    Request,
    StreamEnd,
    WorkDeclaration,
)

PORT = "qwentts.cpp"
DISTRIBUTION = "realtimetts-qwen-native-cpu"
NUM_CODEBOOKS = 16  # codebook 0 from the talker, 1-15 from the code predictor
# The port's debug taps that have a key in the parity schema (docs/parity.md), by file stem. Its prefill layer
# taps are the outputs of layers 0, 7, 14, 21 and 27; "final" is after the talker's last norm.
STAGE_FILES = {
    "mel-spk": "spk.mel",
    "spk-emb": "spk.embedding",
    "talker-input-embed": "talker.prefill.embeds",
    **{f"talker-hidden-prefill-l{i}": f"talker.prefill.layer.{i:02d}" for i in (0, 7, 14, 21, 27)},
    "talker-hidden-prefill-final": "talker.prefill.norm",
    "audio-input": "inputs.ref_audio",  # the clip as the port encodes it (cut to whole 12 Hz frames)
}
# Taps the port stores in another layout than the schema's: stem -> (key, conversion).
CONVERTED_FILES: dict[str, tuple[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[Any]]]] = {
    "prompt-ids": ("inputs.text_ids", lambda ids: np.rint(ids).astype(np.int64)),
    "ref-codes": ("codec_enc.codes", lambda codes: np.rint(codes).astype(np.int64).T),  # [16, F] -> [F, 16]
    "spk-block3": ("spk.block.03", lambda hidden: hidden.T),  # [F, C] -> [C, F]
    # The first frame's codebook-0 logits (after prefill): the evidence a frame-0 talker flip is decided on.
    "talker-logits-prefill": ("talker.logits", lambda logits: logits.reshape(1, -1)),
}
CODES_FILE = "codes-full"  # [frames, 16] codes of the whole utterance, as floats


@dataclass(frozen=True)
class QwenTtsCppOptions(SourceCheckpoint):
    """What the suite-side candidate pipeline hands the adapter."""

    talker: str = ""  # talker GGUF (qtts-eval export)
    codec: str = ""  # codec GGUF
    storage: str = "F32"  # GGUF storage of the talker matrices: F32, BF16 or Q8_0
    threads: int = 0  # CPU threads (the suite side passes the reference's torch count); 0: library default

    def __post_init__(self) -> None:
        if not (self.talker and self.codec):
            raise ValueError("options 'talker' and 'codec' (GGUF paths) are required")


def read_tap(path: Path) -> npt.NDArray[np.float32]:
    """One raw debug file of the port: int32 ndims, int32 shape, float32 data."""
    raw = path.read_bytes()
    ndims = int(np.frombuffer(raw, dtype="<i4", count=1)[0])
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype="<i4", count=ndims, offset=4))
    data = np.frombuffer(raw, dtype="<f4", offset=4 * (1 + ndims))
    if data.size != int(np.prod(shape)):
        raise PipelineError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape).copy()


def read_codes(dump_dir: Path) -> npt.NDArray[np.int64] | None:
    path = dump_dir / f"{CODES_FILE}.bin"
    if not path.is_file():
        return None
    codes = read_tap(path)
    return np.rint(codes).astype(np.int64).reshape(-1, NUM_CODEBOOKS)


class QwenTtsCppPipeline(PortAdapter):
    """qwentts.cpp behind the pipeline protocol (served by the worker shim)."""

    label = "qwentts-cpp"
    capabilities = frozenset({Capability.SEEDED_SAMPLING})
    options_schema = QwenTtsCppOptions
    options: QwenTtsCppOptions

    def load(self) -> None:
        from qwentts_cpp_cpu import QwenTTS

        threads = self.options.threads or None
        self.tts = QwenTTS(self.options.talker, self.options.codec, cpu_threads=threads)

    def implementation(self) -> str:
        from qtts_eval.environment import package_version

        return f"{PORT} via {DISTRIBUTION} {package_version(DISTRIBUTION)}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self.options.storage}

    def work(self) -> WorkDeclaration:
        storage = GgufType(self.options.storage)
        return WorkDeclaration(
            # The binding takes the reference clip with every call and encodes it again: no voice cache.
            prompt=PromptReuse.BUILT,
            delivery=Delivery.STREAMED,
            budget_convention=BudgetConvention.N,  # docs/ports.md: a budget of N gives N frames
            # Its codes exist only in the debug files a scratch dump directory collects on every request.
            instrumentation="debug_dump_dir",
            threads=self.options.threads or None,  # 0: the library picks, and does not say how many
            talker_precision=storage.dtype_name,
            codec_precision="float32",
        )

    def _run(self, request: Request, dump_dir: Path) -> Iterator[np.ndarray]:
        self.prompt_layout(request)  # the port's layout is fixed per mode: refuse another
        sampling = request.sampling
        icl = request.mode is CloneMode.ICL
        for chunk, _rate in self.tts.stream(
            text=request.text,
            lang=request.language,
            ref_audio_24k=request.ref_audio,
            ref_text=request.ref_text if icl else None,
            seed=request.seed,
            max_new_tokens=request.max_frames,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            dump_dir=str(dump_dir),
        ):
            yield np.asarray(chunk, dtype=np.float32)

    def stream(self, request: Request) -> Iterator[Event]:
        with tempfile.TemporaryDirectory(prefix="qwentts-cpp-") as scratch:
            dump_dir = Path(scratch)
            for samples in self._run(request, dump_dir):
                yield AudioChunk(samples=samples, t_ns=time.monotonic_ns())
            codes = read_codes(dump_dir)
        profile = getattr(self.tts, "last_stream_profile", None) or {}
        info = {"port_native_ms": profile.get("native_synthesize_ms")}
        yield StreamEnd(frames_generated=0 if codes is None else len(codes), codes=codes, info=info)

    def stage_dump(self, request: Request) -> StageDump:
        """Run `request` free and collect the taps the schema has keys for, plus codes and audio."""
        with tempfile.TemporaryDirectory(prefix="qwentts-cpp-") as scratch:
            dump_dir = Path(scratch)
            audio = [samples for samples in self._run(request, dump_dir)]
            tensors: dict[str, np.ndarray] = {
                key: read_tap(dump_dir / f"{stem}.bin")
                for stem, key in STAGE_FILES.items()
                if (dump_dir / f"{stem}.bin").is_file()
            }
            tensors.update(
                (key, convert(read_tap(dump_dir / f"{stem}.bin")))
                for stem, (key, convert) in CONVERTED_FILES.items()
                if (dump_dir / f"{stem}.bin").is_file()
            )
            codes = read_codes(dump_dir)
        if codes is not None:
            tensors["codes"] = codes
        tensors["output.wav"] = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        if "spk.embedding" in tensors:
            tensors["spk.embedding"] = tensors["spk.embedding"].reshape(-1)
        info = self.describe()
        meta = DumpMeta(
            implementation=info["implementation"],
            versions={DISTRIBUTION: str(info["implementation"]).rsplit(" ", 1)[-1]},
            dtype=GgufType(self.options.storage).dtype_name,
            codec_dtype="float32",
            device="cpu",
            attn_implementation="ggml",
            tf32={"matmul": False, "cudnn": False},
            seed=request.seed,
            sampling=dataclasses.asdict(request.sampling),
            clone_mode=request.mode.value,
            non_streaming_mode=self.prompt_layout(request),
            text=request.text,
            language=request.language,
            max_frames=request.max_frames,
            forced=(),
            model_ref=self.options.model_ref,
        )
        return StageDump(meta=meta, tensors=tensors)
