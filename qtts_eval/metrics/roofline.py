"""A floor for the time per frame: the weights a frame must read over the device's memory bandwidth.

At batch 1 every decode step reads each weight matrix it uses once, so memory bandwidth bounds a frame
from below whatever the kernels do (docs/benchmarks.md, "Roofline"). Per 80 ms frame the talker runs one
step (its decoder layers and codec head) and the code predictor runs num_code_groups - 1 passes (its layers
every pass; pass i uses lm_head i alone). Embedding lookups read one row, and the text projection and the
speaker encoder run on the prompt only: none of them counts. The codec decoder is left out too: it is the
same for every pipeline and runs per packet, not per talker step.

Shapes come from the checkpoint's own safetensors header (or, for a preset, from the code that builds it:
qtts_eval.checkpoints.build.preset_weight_shapes); the bytes per element from the precision the pipeline
declared (work_talker_precision), which covers talker and code predictor alike.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtts_eval.errors import CheckpointError, MetricError

# Bytes per weight element for each precision name a pipeline declares (torch's spelling, or a GGUF type).
ELEMENT_BYTES: dict[str, float] = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "q8_0": 34 / 32,  # ggml Q8_0: blocks of 32 int8 values and one float16 scale
}
TALKER_STEP = ("talker.model.layers.", "talker.model.norm.", "talker.codec_head.")  # once per frame
PREDICTOR_PASS = (  # once per code-predictor pass
    "talker.code_predictor.model.layers.",
    "talker.code_predictor.model.norm.",
    "talker.code_predictor.small_to_mtp_projection.",
)
PREDICTOR_HEADS = ("talker.code_predictor.lm_head.",)  # each head once per frame, by its own pass
HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not one (the real one is ~60 kB)
COPY_BYTES = 256 << 20  # bandwidth probe: a 256 MiB tensor copied device to device
COPY_REPEATS = 5  # best of this many timed copies, after one untimed


@dataclass(frozen=True)
class WeightTraffic:
    """Weight bytes one frame reads, by part, at one precision."""

    precision: str  # the precision the elements were counted at
    talker_bytes: float  # talker decoder layers, final norm and codec head: one step
    predictor_bytes: float  # code predictor: every pass's layers plus each pass's own lm_head
    predictor_passes: int  # code-predictor passes per frame (num_code_groups - 1)

    @property
    def total_bytes(self) -> float:
        return self.talker_bytes + self.predictor_bytes


def checkpoint_weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the checkpoint's model.safetensors, read from its header (no weights load)."""
    path = directory / "model.safetensors"
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > HEADER_LIMIT:
                raise CheckpointError(f"{path}: header of {length} bytes; not a safetensors file")
            header = json.loads(handle.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read its safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return {name: tuple(entry["shape"]) for name, entry in header.items()}


def checkpoint_code_groups(directory: Path) -> int:
    """num_code_groups of the checkpoint's talker (16 for Qwen3-TTS-12Hz)."""
    config = json.loads((directory / "config.json").read_text())
    return int(config["talker_config"]["num_code_groups"])


def weight_traffic(shapes: Mapping[str, tuple[int, ...]], code_groups: int, precision: str) -> WeightTraffic:
    """Bytes of weights one frame reads at ``precision``; refuses shapes that are not a Qwen3-TTS talker."""
    if precision not in ELEMENT_BYTES:
        raise MetricError(
            f"no element size known for precision {precision!r}; known: {', '.join(ELEMENT_BYTES)}"
        )
    size = ELEMENT_BYTES[precision]

    def elements(prefixes: tuple[str, ...]) -> int:
        return sum(math.prod(shape) for name, shape in shapes.items() if name.startswith(prefixes))

    talker, per_pass, heads = elements(TALKER_STEP), elements(PREDICTOR_PASS), elements(PREDICTOR_HEADS)
    if not talker or not per_pass:
        raise CheckpointError(
            "the shapes hold no talker or code-predictor layers; not a Qwen3-TTS checkpoint"
        )
    passes = code_groups - 1
    return WeightTraffic(precision, talker * size, (per_pass * passes + heads) * size, passes)


@functools.cache  # once per process and device: every run of a test session or a campaign shares it
def measure_bandwidth(device: str) -> float:
    """Memory bandwidth of ``device`` in bytes per second: the best of a few copies of one tensor into
    another, counting the bytes read and the bytes written (a copy moves each byte twice)."""
    import torch

    cuda = device.startswith("cuda")
    source = torch.ones(COPY_BYTES // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best = math.inf
    for attempt in range(COPY_REPEATS + 1):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        target.copy_(source)
        if cuda:
            torch.cuda.synchronize(device)
        if attempt:  # the first copy pays page faults and allocator set-up
            best = min(best, time.perf_counter() - started)
    del source, target
    if cuda:  # hand the blocks back: NVML would count them as the process's memory (nvml_mem_bytes)
        torch.cuda.empty_cache()
    return 2 * COPY_BYTES / best


@dataclass(frozen=True)
class Roofline:
    """What the floor of one run is made of: the checkpoint's shapes and the device's bandwidth."""

    shapes: dict[str, tuple[int, ...]]  # model.safetensors tensor shapes
    code_groups: int  # codebooks per frame
    bandwidth_bytes_per_s: float  # measured by measure_bandwidth on the run's device

    def columns(self, precision: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The roofline_* record columns for a pipeline computing at ``precision``, or why they are empty."""
        try:
            traffic = weight_traffic(self.shapes, self.code_groups, precision)
        except MetricError as exc:
            return {}, {"roofline_weight_bytes_per_frame": str(exc)}
        return {
            "roofline_weight_bytes_per_frame": traffic.total_bytes,
            "roofline_bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "roofline_floor_frame_s": traffic.total_bytes / self.bandwidth_bytes_per_s,
        }, {}


def roofline(checkpoint: Path, device: str) -> Roofline:
    return Roofline(
        checkpoint_weight_shapes(checkpoint), checkpoint_code_groups(checkpoint), measure_bandwidth(device)
    )
