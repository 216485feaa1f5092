"""Known public ports: what each needs, how it is installed, and what the suite knows it cannot do.

Every port comes from its registry (PyPI) at install time, pinned; nothing of a port lives in this repository.
This module is imported inside candidate environments too, so it imports nothing heavier than the
pipeline base module.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass

from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import Request, UnsupportedRequest


class Device(str, enum.Enum):
    """Where a port runs."""

    CPU = "cpu"
    GPU = "gpu"  # CUDA; its venv sees the machine's torch (.ci/gpu/campaign.sh installs it offline)


class WeightFormat(str, enum.Enum):
    """What a port loads; `qtts-eval export` writes the formats the released checkpoint is not already in."""

    RELEASED = "released"  # the checkpoint directory as the official package loads it
    GGUF = "gguf"  # talker + codec GGUF files (qtts_eval.candidates.export)
    MNN = "mnn"  # MNN graphs, produced by the port's own tooling


class Support(str, enum.Enum):
    """How far the suite drives a port."""

    ADAPTER = "adapter"  # `candidates install` + `--pipeline NAME` (on its device)
    DOCUMENTED = "documented"  # known, not drivable offline; docs/ports.md says why


@dataclass(frozen=True)
class Candidate:
    """One public port."""

    name: str  # pipeline name, e.g. "qwentts-cpp"
    summary: str  # one line: what the port is
    device: Device  # where it runs
    weights: WeightFormat  # what it loads
    support: Support  # how far the suite drives it
    requirements: tuple[str, ...]  # pinned requirements of its environment (the port itself first)
    adapter: str = ""  # "module:Class" of the Pipeline the worker shim serves, inside the candidate env
    # A port built by cargo instead: its adapter crate in this repository (a worker binary on the port kit),
    # whose Cargo.lock pins the port's crate; `requirements` then name that pin as "crate==version".
    crate: str = ""
    storages: tuple[str, ...] = ()  # weight storage types it can load (GGUF: F32, BF16, Q8_0)
    limits: tuple[str, ...] = ()  # known limits, shown by `qtts-eval candidates` and docs/ports.md
    # Clone modes whose talker prompt the port lays out as the reference does with non_streaming_mode=True.
    non_streaming_modes: tuple[str, ...] = ()
    layout_selectable: bool = False  # the port takes the prompt layout as a parameter (then it is passed)

    def prompt_layout(self, request: Request) -> bool:
        """The non_streaming_mode layout the port runs `request` in: the one the request asks for when the
        port takes it as a parameter or builds that layout anyway; its own when the request asks none.
        Anything else is refused (UnsupportedRequest: recorded as unsupported, never compared)."""
        if self.layout_selectable:
            return bool(request.non_streaming_mode)
        own = request.mode.value in self.non_streaming_modes
        if request.non_streaming_mode is not None and request.non_streaming_mode != own:
            raise UnsupportedRequest(
                f"{self.name} builds the {request.mode.value} prompt with the non_streaming_mode={own} "
                f"layout; the request asks for non_streaming_mode={request.non_streaming_mode}"
            )
        return own

    @property
    def environment_requirements(self) -> list[str]:
        """What its installed environment is built from: a venv also gets the worker shim's needs."""
        return list(self.requirements) if self.crate else [*self.requirements, *SHIM_REQUIREMENTS]

    @property
    def pipeline_class(self) -> str:
        """The suite-side Pipeline class name for this candidate (qtts_eval.candidates.pipeline)."""
        return "".join(part.capitalize() for part in self.name.replace("-", " ").split()) + "Candidate"


# The worker shim's own needs in every candidate environment: the wire protocol imports numpy, and the
# fixture helpers it pulls in read audio with soundfile; websockets serves the WebSocket transport.
SHIM_REQUIREMENTS = ("numpy>=1.26", "soundfile>=0.12", "websockets>=13", "safetensors>=0.4")

CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        name="qwentts-cpp",
        summary="qwentts.cpp (ggml, C++) through the RealtimeTTS CPU wheel's ctypes binding",
        device=Device.CPU,
        weights=WeightFormat.GGUF,
        support=Support.ADAPTER,
        requirements=("realtimetts-qwen-native-cpu==0.4.2",),
        adapter="qtts_eval.candidates.qwentts_cpp:QwenTtsCppPipeline",
        storages=("F32", "BF16", "Q8_0"),
        non_streaming_modes=("xvector",),
        limits=(
            "no codes API: codes come from its debug dump directory (codebook 0 and the 15 predicted codes)",
            "x-vector prompt = the reference's non_streaming_mode=True layout; ICL = the default layout",
            "drops the reference clip's last partial frame before encoding (ICL)",
            "returns the whole frame budget (the reference returns budget - 1 when capped): one frame more",
            "repetition penalty differs from the reference's: with the default 1.05 x-vector codes diverge "
            "at frame 10, with 1.0 they are equal on all 40 common frames (en_short, 0.6b-base)",
            "no teacher forcing of generated codes; parity taps: text ids, clip, speaker mel, block 3 and "
            "embedding, clip codes, talker prefill (embeds, layers 0/7/14/21/27, norm), first-frame talker "
            "logits, codes, audio; no code-predictor logits or codec-decoder taps",
            "hard-coded speaker-encoder widths: only full-size checkpoints (0.6b-base, real weights) load",
        ),
    ),
    Candidate(
        name="qwen-tts-candle",
        summary="qwen_tts (crates.io, Rust/candle) through its adapter crate on the port kit",
        device=Device.CPU,
        weights=WeightFormat.RELEASED,
        support=Support.ADAPTER,
        requirements=("qwen_tts==0.1.1",),
        crate="ports/rust/qwen-tts-candle",
        layout_selectable=True,
        limits=(
            "built from source by cargo (Rust >= 1.88): the cold build of candle and its dependencies took "
            "~21 min on 2 cores; later installs reuse its target directory under the cache",
            "returns whole utterances (no streaming API): first byte = wall time",
            "normalises typographic text before tokenising (em dash -> '--', curly quotes, ellipsis)",
            "repetition penalty applied once per occurrence of a code (compounding), the reference once per "
            "distinct code",
            "a budget of N yields N frames; the adapter asks for N - 1 (the reference's convention)",
            "hard-codes an 8-layer codec encoder transformer: without it (0.6b-shallow) ICL is refused",
            "no teacher forcing of generated codes (its generation loop takes none); a forced speaker "
            "embedding and reference codes are taken; talker logits of the first frame only (recomputed)",
        ),
    ),
    Candidate(
        name="faster-qwen3-tts",
        summary="faster-qwen3-tts: CUDA graphs around a transformers-5 build of the official modules",
        device=Device.GPU,
        weights=WeightFormat.RELEASED,
        support=Support.ADAPTER,
        requirements=("faster-qwen3-tts==0.5.4",),
        adapter="qtts_eval.candidates.faster_qwen3_tts:FasterQwen3TtsPipeline",
        layout_selectable=True,
        limits=(
            "CUDA only; needs transformers>=5.15 and qwen-tts-hf (qwen_tts under the same import name), "
            "so its venv uses the GPU image's torch; installed from carried wheels (.ci/gpu/campaign.sh)",
            "no codes API: records carry no codes, so same-codes checks are unavailable",
            "prepared, not yet run (no device lent so far): see docs/benchmarks.md",
        ),
    ),
    Candidate(
        name="qwen3-tts-triton",
        summary="qwen3-tts-triton: Triton kernel fusion on top of faster-qwen3-tts",
        device=Device.GPU,
        weights=WeightFormat.RELEASED,
        support=Support.DOCUMENTED,
        requirements=("qwen3-tts-triton==0.3.0",),
        limits=(
            "Python >= 3.12 only; requires both qwen-tts and faster-qwen3-tts (whose qwen-tts-hf provides "
            "the same qwen_tts module for transformers 5), plus streamlit and plotly: no consistent "
            "environment has been built yet (docs/ports.md)",
        ),
    ),
    Candidate(
        name="qwen3-tts-streaming",
        summary="qwen3-tts-streaming (fast_tts): streaming decode with CUDA graphs",
        device=Device.GPU,
        weights=WeightFormat.RELEASED,
        support=Support.DOCUMENTED,
        requirements=("qwen3-tts-streaming==0.1.2",),
        limits=(
            "its engine (fast_tts.FastTTSv14) speaks with a CustomVoice speaker name and plays audio through "
            "sounddevice; it has no voice-clone entry point for the Base model, so it cannot run the "
            "suite's requests",
        ),
    ),
    Candidate(
        name="qwen3-tts-mnn",
        summary="qwen3-tts-mnn: MNN graphs on CPU",
        device=Device.CPU,
        weights=WeightFormat.MNN,
        support=Support.DOCUMENTED,
        requirements=("qwen3-tts-mnn==0.3.1",),
        limits=(
            "loads talker_step.mnn, cp_step.mnn, vocoder.mnn and fp16 weight .bin files that its author "
            "publishes on a model hub; the wheel ships no exporter (entry points: synthesis and voice "
            "extraction only), so they cannot be produced offline from a local checkpoint",
        ),
    ),
)


def candidate(name: str) -> Candidate:
    """The candidate called `name`, or a PipelineError with close matches."""
    for known in CANDIDATES:
        if known.name == name:
            return known
    names = [c.name for c in CANDIDATES]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise PipelineError(f"unknown candidate {name!r}.{hint} Known: {', '.join(names)}")
