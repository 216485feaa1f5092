"""Stage dumps: one safetensors file per (request, side), with a documented key schema and a metadata header.

A dump is what one implementation computed for one request, stage by stage. The reference writes them through
forward hooks on the official modules (`qtts_eval.parity.capture`); a port writes the same keys natively
(safetensors has writers in Rust, C++ and Python). docs/parity.md is the human-readable form of `STAGES`.

The metadata header is the safetensors ``__metadata__`` entry ``qtts_parity``: a JSON object with the fields
of `DumpMeta`. Tensors are stored as float32 (floating stages; the computing dtype is in the header) or int64
(token ids and codes).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import ParityError
from qtts_eval.pipelines.base import ForcedInput

SCHEMA_VERSION = 2  # bump when a key or header field changes meaning; older files are migrated or refused
METADATA_KEY = "qtts_parity"  # the safetensors __metadata__ entry holding the JSON header


@dataclass(frozen=True)
class Stage:
    """One entry of the key schema: a key pattern, what it holds, and how it is compared."""

    pattern: str  # fnmatch pattern of dump keys, e.g. "talker.prefill.layer.*"
    kind: str  # "ids" (exact ints), "tensor", "logits", "codes", "margin" (reference-only) or "audio"
    group: str  # pipeline stage the key belongs to; a fault is located by its group
    shape: str  # documented shape
    meaning: str  # what the tensor is and which official module it comes from


# In pipeline order: the first failing stage is the first key, in this order, whose comparison fails.
STAGES: tuple[Stage, ...] = (
    Stage("inputs.text_ids", "ids", "inputs", "[N]", "target prompt token ids (processor output)"),
    Stage("inputs.ref_text_ids", "ids", "inputs", "[M]", "reference transcript token ids (ICL only)"),
    Stage(
        "inputs.ref_audio", "tensor", "inputs", "[S]", "reference waveform as given to the encoders, 24 kHz"
    ),
    Stage("spk.mel", "tensor", "speaker_encoder", "[F, 128]", "log-mel input of speaker_encoder"),
    Stage("spk.block.*", "tensor", "speaker_encoder", "[C, F]", "output of speaker_encoder.blocks[i]"),
    Stage("spk.embedding", "tensor", "speaker_encoder", "[D]", "speaker_encoder output (x-vector)"),
    Stage("codec_enc.input", "tensor", "codec_encoder", "[S]", "waveform entering the Mimi encoder convs"),
    Stage("codec_enc.latent", "tensor", "codec_encoder", "[C, T]", "encoder.downsample output (RVQ input)"),
    Stage(
        "codec_enc.rvq_in.*", "tensor", "codec_encoder", "[T, D]", "semantic/acoustic RVQ input_proj output"
    ),
    Stage("codec_enc.margin", "margin", "codec_encoder", "[T, 16]", "2nd-best minus best codebook distance"),
    Stage("codec_enc.codes", "codes", "codec_encoder", "[T, 16]", "reference audio codes (ICL only)"),
    Stage("talker.prefill.embeds", "tensor", "talker", "[L, H]", "inputs_embeds of talker.model at prefill"),
    Stage("talker.prefill.layer.*", "tensor", "talker", "[L, H]", "talker.model.layers[i] output at prefill"),
    Stage("talker.prefill.norm", "tensor", "talker", "[L, H]", "talker.model.norm output at prefill"),
    Stage("talker.logits", "logits", "talker", "[steps, V]", "codec_head logits, last position, per step"),
    Stage("code_predictor.logits", "logits", "code_predictor", "[T, 15, Vc]", "lm_head[j] logits per frame"),
    Stage("codes", "codes", "code_predictor", "[T, 16]", "generated codes (codebook 0 from the talker)"),
    Stage("codec_dec.codes", "ids", "codec_decoder", "[16, T']", "codes entering the decoder (ICL: ref+gen)"),
    Stage("codec_dec.dequant", "tensor", "codec_decoder", "[C, T']", "RVQ dequantised input of pre_conv"),
    Stage("codec_dec.pre_conv", "tensor", "codec_decoder", "[C, T']", "pre_conv output"),
    Stage("codec_dec.pre_transformer", "tensor", "codec_decoder", "[T', C]", "pre_transformer output"),
    Stage("codec_dec.upsample.*", "tensor", "codec_decoder", "[C, T'']", "upsample[i] (ConvNeXt) output"),
    Stage("codec_dec.block.*", "tensor", "codec_decoder", "[C, samples]", "decoder.decoder[i] output"),
    Stage("codec_dec.wav", "audio", "codec_decoder", "[samples]", "decoder output (ref + generated in ICL)"),
    Stage("output.wav", "audio", "output", "[samples]", "waveform returned to the caller, 24 kHz"),
)


# What any port can dump, so every candidate must: the codes it generated, the audio it returned, the speaker
# embedding it conditioned on and, in ICL mode, the reference codes it conditioned on. A candidate dump
# missing one of these fails; every other stage is optional and counted in the verdict's coverage.
REQUIRED_KEYS = ("codes", "output.wav", "spk.embedding")
REQUIRED_KEYS_ICL = ("codec_enc.codes",)


def required_keys(clone_mode: str) -> tuple[str, ...]:
    """The keys a candidate dump of `clone_mode` ("icl" or "xvector") must hold."""
    return REQUIRED_KEYS + (REQUIRED_KEYS_ICL if clone_mode == "icl" else ())


def stage_of(key: str) -> Stage:
    """The schema entry of a dump key; unknown keys are refused so a typo in a port shows up."""
    for stage in STAGES:
        if fnmatch.fnmatchcase(key, stage.pattern):
            return stage
    raise ParityError(f"dump key {key!r} is not in the parity key schema (see docs/parity.md)")


# The axis along which a stage grows with the clip (samples, codec frames) or with the generated frames:
# where the clip-rounding and frame-budget conventions cut, and where overlaps are compared.
_TIME_AXES = {
    "inputs.ref_audio": 0,
    "codec_enc.input": 0,
    "codec_enc.latent": -1,
    "codec_enc.rvq_in.*": 0,
    "codec_enc.margin": 0,
    "codec_enc.codes": 0,
    "talker.logits": 0,
    "code_predictor.logits": 0,
    "codes": 0,
    "codec_dec.codes": -1,
    "codec_dec.dequant": -1,
    "codec_dec.pre_conv": -1,
    "codec_dec.pre_transformer": 0,
    "codec_dec.upsample.*": -1,
    "codec_dec.block.*": -1,
    "codec_dec.wav": 0,
    "output.wav": 0,
}


def time_axis(key: str) -> int | None:
    """The time axis of a dump key, or None for stages without one (embeddings, prefill activations)."""
    return _TIME_AXES.get(stage_of(key).pattern)


def stage_sort_key(key: str) -> tuple[int, str]:
    """Pipeline order of a key: schema position, then the key (zero-padded indices sort numerically)."""
    stage = stage_of(key)
    return STAGES.index(stage), key


@dataclass(frozen=True)
class DumpMeta:
    """The header every dump carries; the fields marked 'must match' are checked before comparing."""

    implementation: str  # who wrote the dump, e.g. "qwen-tts 0.1.1" or "my-candle-port 0.3"
    versions: Mapping[str, str]  # package or crate versions that shaped the numbers
    dtype: str  # computing dtype of the talker: float32, bfloat16, float16, or a quantisation name
    codec_dtype: str  # dtype of the speech tokenizer (codec encoder and decoder)
    device: str  # e.g. "cpu", "cuda:0"
    attn_implementation: str  # eager, sdpa, flash_attention_2, or the port's own name
    tf32: Mapping[str, bool]  # TF32 switches (matmul, cudnn); all False on CPU
    seed: int  # seed set right before generation
    sampling: Mapping[str, Any]  # must match: do_sample, top_k, top_p, temperature, repetition_penalty
    clone_mode: str  # must match: "icl" or "xvector"
    non_streaming_mode: bool  # must match: the talker prompt layout (see REFERENCE-NOTES)
    text: str  # must match: text to speak
    language: str  # must match: language argument
    max_frames: int  # must match: frame budget (max_new_tokens)
    forced: tuple[ForcedInput, ...]  # inputs taken from the reference dump; () for a free-running dump
    model_ref: str = ""  # checkpoint the dump came from (preset name, path or hub id); checked, see below
    weights_hash: str = (
        ""  # sha256 of the checkpoint's safetensors files (checkpoints.weights_hash), if known
    )
    voice: str = ""  # fixture voice whose clip and transcript were the reference ("" = not a fixture voice)
    schema_version: int = SCHEMA_VERSION  # key schema and header version
    stored_dtypes: Mapping[str, str] = field(default_factory=dict)  # key -> dtype before float32 storage

    MUST_MATCH = ("sampling", "clone_mode", "non_streaming_mode", "text", "language", "max_frames")

    def forces(self, forced_input: ForcedInput) -> bool:
        return forced_input in self.forced


def _migrate(fields: dict[str, Any]) -> dict[str, Any]:
    """A header of any supported older schema version, rewritten step by step to the current one."""
    if fields.get("schema_version", SCHEMA_VERSION) == 1:
        # Version 1 had one teacher-forcing switch covering every input (ICL) or speaker + codes (x-vector).
        icl = fields.get("clone_mode") == "icl"
        everything = [f.value for f in ForcedInput if icl or f is not ForcedInput.REF_CODES]
        fields = {**fields, "forced": everything if fields.get("forced") else [], "schema_version": 2}
    return fields


def _meta_from_json(fields: dict[str, Any]) -> DumpMeta:
    fields = _migrate(fields)
    try:
        forced = tuple(ForcedInput(name) for name in fields.get("forced", ()))
    except (TypeError, ValueError) as exc:
        known = ", ".join(f.value for f in ForcedInput)
        raise ParityError(f"header field forced must list inputs among {known}: {exc}") from exc
    return DumpMeta(**{**fields, "forced": forced})


@dataclass(frozen=True)
class StageDump:
    """The tensors of one dump, by key, and its header."""

    meta: DumpMeta
    tensors: Mapping[str, npt.NDArray[Any]]

    def keys_in_order(self) -> list[str]:
        return sorted(self.tensors, key=stage_sort_key)


def write_dump(dump: StageDump, path: Path) -> Path:
    """Write `dump` to `path` (a .safetensors file), validating every key against the schema."""
    from safetensors.numpy import save_file

    arrays: dict[str, npt.NDArray[Any]] = {}
    for key, value in dump.tensors.items():
        stage_of(key)
        array = np.asarray(value)
        integral = np.issubdtype(array.dtype, np.integer)
        arrays[key] = np.ascontiguousarray(array, dtype=np.int64 if integral else np.float32)
    header = json.dumps({**asdict(dump.meta), "forced": [f.value for f in dump.meta.forced]}, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path), metadata={METADATA_KEY: header})
    return path


def read_dump(path: Path) -> StageDump:
    """Read a dump written by any implementation; a missing header, newer schema or unknown key is refused."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ParityError(f"{path}: no such dump file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own untyped errors for corrupt files
        raise ParityError(f"{path}: not a readable safetensors file: {exc}") from exc
    if METADATA_KEY not in metadata:
        raise ParityError(f"{path}: no {METADATA_KEY!r} metadata header; see docs/parity.md for the header")
    try:
        fields = json.loads(metadata[METADATA_KEY])
        version = int(fields.get("schema_version", SCHEMA_VERSION))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ParityError(f"{path}: malformed {METADATA_KEY!r} header: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise ParityError(
            f"{path}: schema version {version} is newer than this qtts-eval's {SCHEMA_VERSION}; "
            "upgrade qtts-eval"
        )
    if version < 1:
        raise ParityError(f"{path}: schema version {version} is not a parity dump version")
    try:
        meta = _meta_from_json(fields)
    except TypeError as exc:
        raise ParityError(f"{path}: malformed {METADATA_KEY!r} header: {exc}") from exc
    for key in tensors:
        stage_of(key)
    return StageDump(meta=meta, tensors=tensors)
