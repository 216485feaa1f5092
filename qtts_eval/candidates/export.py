"""Weight export: a checkpoint in the released layout to the GGUF files the ggml port (qwentts.cpp) loads.

Two files come out of one checkpoint directory: the talker (talker, code predictor, speaker encoder, text BPE
vocabulary) from the top level, and the codec (the 12 Hz speech tokenizer's encoder and decoder) from
``speech_tokenizer/``. Tensor names and metadata keys are the ones the port's loader reads (learned from its
public converter and checked against the strings in the library the PyPI wheel ships); the code is ours.

Safetensors are read with numpy alone (bfloat16 widened by hand), so export needs neither torch nor the
reference. Quantised files follow the port's own quantiser policy: only matrices are converted; RVQ
codebooks, snake activations and the speaker encoder's final projection stay float32; a matrix whose rows
do not fit the block size is stored as float16 (conv kernels, which the port loads as float16 anyway).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.environment import package_version
from qtts_eval.errors import CheckpointError

TALKER_ARCH = "qwen3-tts"  # general.architecture the port checks for the talker file
CODEC_ARCH = "qwen3-tts-tokenizer"  # and for the codec file
RVQ_EPSILON = 1e-5  # the official EuclideanCodebook clamps cluster_usage at this before dividing
CODEBOOK_INTERNAL_DIM = 256  # codec decoder: codebook vector width before output_proj (port metadata key)
BPE_EOS_TOKEN_ID = 151643  # <|endoftext|> of the Qwen2 vocabulary
# Token types of the GGUF tokenizer convention.
TOKEN_NORMAL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 4, 5
# What an export reads besides the two weight files; these and the exporter's version key the export cache, so
# a checkpoint whose tokenizer or config changed under the same weights is exported again.
EXPORT_INPUTS = (
    "config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "speech_tokenizer/config.json",
)
# The exporter's own version, derived rather than hand-bumped: this module's source and the GGUF writer's
# release. Any change to the code that writes the files re-exports (a forgotten bump once served a stale
# vocabulary).
EXPORTER_VERSION = hashlib.sha256(
    Path(__file__).read_bytes() + f"|gguf {package_version('gguf')}".encode()
).hexdigest()[:16]


class GgufType(str, enum.Enum):
    """Storage types `qtts-eval export` writes; the port's quantiser offers the same names."""

    F32 = "F32"  # float32 everywhere: the exact source of truth
    BF16 = "BF16"  # matrices in bfloat16
    Q8_0 = "Q8_0"  # matrices in 8-bit blocks of 32 with a float16 scale

    @property
    def dtype_name(self) -> str:
        """How the computing precision is named in records and parity headers."""
        return {"F32": "float32", "BF16": "bfloat16", "Q8_0": "q8_0"}[self.value]


@dataclass(frozen=True)
class GgufExport:
    """The files one export wrote."""

    talker: Path  # talker GGUF
    codec: Path  # speech tokenizer GGUF
    storage: GgufType  # how matrices are stored


def export_key(checkpoint: Path, weights_hash: str) -> str:
    """The export cache's key of a checkpoint: its weights hash, every EXPORT_INPUTS file, the exporter."""
    digest = hashlib.sha256(f"{EXPORTER_VERSION}|{weights_hash}".encode())
    for name in EXPORT_INPUTS:
        path = checkpoint / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(absent)"))
    return digest.hexdigest()[:16]


# --- safetensors without torch -----------------------------------------------------------------------------

_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "BOOL": "?", "U8": "u1"}


def read_safetensors(path: Path) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """(name, array) for every tensor of a .safetensors file, floating tensors as float32."""
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
        base = 8 + header_size
        for name, entry in sorted(header.items()):
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            handle.seek(base + start)
            raw = handle.read(end - start)
            dtype = entry["dtype"]
            if dtype == "BF16":
                # bfloat16 is the top half of a float32: widen by shifting the bits into place.
                array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype in _NUMPY_DTYPES:
                array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype])
            else:
                raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}, which export cannot read")
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            yield name, array.reshape(entry["shape"])


# --- tensor names ------------------------------------------------------------------------------------------

# Transformer-layer suffixes shared by the talker, the code predictor and the codec decoder's pre-transformer.
_LAYER_ROLES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn_layer_scale.scale": "attn_scale",
    "mlp_layer_scale.scale": "ffn_scale",
    # The codec encoder's Mimi transformer: LayerNorm with bias, a two-matrix MLP.
    "input_layernorm.bias": "attn_norm.bias",
    "post_attention_layernorm.bias": "ffn_norm.bias",
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc2.weight": "ffn_down.weight",
}


def _layer(prefix: str) -> Callable[[re.Match[str]], str]:
    def rename(match: re.Match[str]) -> str:
        role = _LAYER_ROLES.get(match["role"])
        if role is None:
            raise CheckpointError(f"export: no GGUF name for layer tensor role {match['role']!r}")
        return f"{prefix}.{match['i']}.{role}"

    return rename


def _decoder_chain(match: re.Match[str]) -> str:
    """decoder.decoder.{i}...: entry conv (0), four upsampling blocks (1-4), snake (5), output conv (6)."""
    i, rest = int(match["i"]), match["rest"]
    if i in (0, 6):
        return f"tok_dec.dec.{i}.{rest}"
    if i == 5:
        return f"tok_dec.dec.5.snake.{rest}"
    part = re.fullmatch(r"block\.(\d+)\.(.+)", rest)
    if part is None:
        raise CheckpointError(f"export: unexpected codec decoder tensor decoder.decoder.{i}.{rest}")
    j, tail = int(part[1]), part[2]
    if j == 0:
        return f"tok_dec.dec.{i}.snake.{tail}"
    if j == 1:
        return f"tok_dec.dec.{i}.conv_t.{tail.removeprefix('conv.')}"
    # Residual units 2-4: act1/act2 snakes and conv1/conv2 (whose parameters sit under .conv).
    return f"tok_dec.dec.{i}.res.{j - 2}.{tail.replace('.conv.', '.', 1)}"


_Rule = tuple[re.Pattern[str], "str | Callable[[re.Match[str]], str]"]


def _rules(table: list[tuple[str, str | Callable[[re.Match[str]], str]]]) -> list[_Rule]:
    return [(re.compile(pattern), target) for pattern, target in table]


TALKER_RULES = _rules(
    [
        (r"talker\.model\.layers\.(?P<i>\d+)\.(?P<role>.+)", _layer("talker.blk")),
        (r"talker\.code_predictor\.model\.layers\.(?P<i>\d+)\.(?P<role>.+)", _layer("code_pred.blk")),
        (r"talker\.model\.codec_embedding\.weight", "talker.codec_embd.weight"),
        (r"talker\.model\.text_embedding\.weight", "talker.text_embd.weight"),
        (r"talker\.model\.norm\.weight", "talker.output_norm.weight"),
        (r"talker\.codec_head\.weight", "talker.codec_head.weight"),
        (
            r"talker\.text_projection\.linear_fc(?P<n>[12])\.(?P<p>weight|bias)",
            r"talker.text_proj.fc\g<n>.\g<p>",
        ),
        (
            r"talker\.code_predictor\.model\.codec_embedding\.(?P<i>\d+)\.weight",
            r"code_pred.codec_embd.\g<i>.weight",
        ),
        (r"talker\.code_predictor\.lm_head\.(?P<i>\d+)\.weight", r"code_pred.lm_head.\g<i>.weight"),
        (r"talker\.code_predictor\.model\.norm\.weight", "code_pred.output_norm.weight"),
        (r"talker\.code_predictor\.small_to_mtp_projection\.(?P<p>weight|bias)", r"code_pred.mtp_proj.\g<p>"),
        (r"speaker_encoder\.blocks\.0\.conv\.(?P<p>weight|bias)", r"spk_enc.conv0.\g<p>"),
        (
            r"speaker_encoder\.blocks\.(?P<i>\d+)\.res2net_block\.blocks\.(?P<j>\d+)\.conv\.(?P<p>weight|bias)",
            r"spk_enc.blk.\g<i>.res2net.\g<j>.\g<p>",
        ),
        (
            r"speaker_encoder\.blocks\.(?P<i>\d+)\.se_block\.(?P<c>conv[12])\.(?P<p>weight|bias)",
            r"spk_enc.blk.\g<i>.se.\g<c>.\g<p>",
        ),
        (
            r"speaker_encoder\.blocks\.(?P<i>\d+)\.(?P<t>tdnn[12])\.conv\.(?P<p>weight|bias)",
            r"spk_enc.blk.\g<i>.\g<t>.\g<p>",
        ),
        (r"speaker_encoder\.asp\.conv\.(?P<p>weight|bias)", r"spk_enc.asp.conv.\g<p>"),
        (r"speaker_encoder\.asp\.tdnn\.conv\.(?P<p>weight|bias)", r"spk_enc.asp.tdnn.\g<p>"),
        (r"speaker_encoder\.mfa\.conv\.(?P<p>weight|bias)", r"spk_enc.mfa.\g<p>"),
        (r"speaker_encoder\.fc\.(?P<p>weight|bias)", r"spk_enc.fc.\g<p>"),
    ]
)

CODEC_RULES = _rules(
    [
        (r"encoder\.encoder\.layers\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", r"tok_enc.conv.\g<i>.\g<p>"),
        (
            r"encoder\.encoder\.layers\.(?P<i>\d+)\.block\.(?P<j>\d+)\.conv\.(?P<p>weight|bias)",
            r"tok_enc.res.\g<i>.blk.\g<j>.\g<p>",
        ),
        (r"encoder\.encoder_transformer\.layers\.(?P<i>\d+)\.(?P<role>.+)", _layer("tok_enc.blk")),
        (r"encoder\.downsample\.conv\.(?P<p>weight|bias)", r"tok_enc.downsample.\g<p>"),
        (
            r"encoder\.quantizer\.(?P<side>semantic|acoustic)_residual_vector_quantizer\.(?P<proj>input_proj|output_proj)\.weight",
            r"tok_enc.vq_\g<side>.\g<proj>.weight",
        ),
        (
            r"decoder\.quantizer\.r(?P<side>vq_first|vq_rest)\.output_proj\.weight",
            r"tok_dec.\g<side>.output_proj.weight",
        ),
        (r"decoder\.pre_conv\.conv\.(?P<p>weight|bias)", r"tok_dec.pre_conv.\g<p>"),
        (r"decoder\.pre_transformer\.layers\.(?P<i>\d+)\.(?P<role>.+)", _layer("tok_dec.pre_tfm.blk")),
        (
            r"decoder\.pre_transformer\.(?P<n>input_proj|output_proj|norm)\.(?P<p>weight|bias)",
            r"tok_dec.pre_tfm.\g<n>.\g<p>",
        ),
        (r"decoder\.upsample\.(?P<i>\d+)\.0\.conv\.(?P<p>weight|bias)", r"tok_dec.upsample.\g<i>.conv.\g<p>"),
        (
            r"decoder\.upsample\.(?P<i>\d+)\.1\.dwconv\.conv\.(?P<p>weight|bias)",
            r"tok_dec.upsample.\g<i>.dwconv.\g<p>",
        ),
        (
            r"decoder\.upsample\.(?P<i>\d+)\.1\.(?P<n>norm|pwconv1|pwconv2)\.(?P<p>weight|bias)",
            r"tok_dec.upsample.\g<i>.\g<n>.\g<p>",
        ),
        (r"decoder\.upsample\.(?P<i>\d+)\.1\.gamma", r"tok_dec.upsample.\g<i>.gamma"),
        (r"decoder\.decoder\.(?P<i>\d+)\.(?P<rest>.+)", _decoder_chain),
    ]
)

# Tensors the port does not read: the decoder's input_proj duplicates the encoder's; "initialized" is a flag.
_DROPPED = re.compile(r"decoder\.quantizer\.rvq_(first|rest)\.input_proj\.weight|.*\.codebook\.initialized")
# RVQ codebook parts, fused into one ready-to-index table per layer.
_CODEBOOK = re.compile(
    r"(?:encoder\.quantizer\.(?P<enc>semantic|acoustic)_residual_vector_quantizer\.layers\.(?P<ei>\d+)\.codebook"
    r"|decoder\.quantizer\.r(?P<dec>vq_first|vq_rest)\.vq\.layers\.(?P<di>\d+)\._codebook)"
    r"\.(?P<part>embed_sum|embedding_sum|cluster_usage)"
)


def gguf_name(name: str, rules: list[_Rule]) -> str:
    """The port's name for a checkpoint tensor; a tensor no rule covers is an error, never skipped."""
    for pattern, target in rules:
        match = pattern.fullmatch(name)
        if match:
            return target(match) if callable(target) else match.expand(target)
    raise CheckpointError(f"export: no GGUF name for checkpoint tensor {name!r}")


# --- storage types -----------------------------------------------------------------------------------------

# Kept float32 in every storage type, as the port's quantiser does: nearest-neighbour codebook lookups and
# per-channel activation parameters are sensitive to rounding.
_KEEP_F32 = re.compile(r".*(\.vq_|\.snake\.|\.act[12]\.).*|spk_enc\.fc\.weight")


def _store(writer: Any, name: str, array: npt.NDArray[np.float32], storage: GgufType) -> None:
    import gguf

    if storage is GgufType.F32 or array.ndim < 2 or _KEEP_F32.fullmatch(name):
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        return
    qtype = gguf.GGMLQuantizationType[storage.value]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        # Rows that do not fill whole blocks (conv kernels of width 7, 3, 1): float16, as the port does,
        # unless a value would overflow it (random synthetic weights can): then float32, losing nothing.
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(half if np.isfinite(half).all() else array))
        return
    packed = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)
    writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)


# --- metadata ----------------------------------------------------------------------------------------------


def _talker_metadata(writer: Any, checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    talker = config["talker_config"]
    predictor = talker["code_predictor_config"]
    generation_path = checkpoint / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    u32, f32, text = writer.add_uint32, writer.add_float32, writer.add_string

    text("general.name", f"Qwen3-TTS-12Hz-{config['tts_model_size']}-{config['tts_model_type']}")
    text(f"{TALKER_ARCH}.tokenizer_type", config["tokenizer_type"])
    text(f"{TALKER_ARCH}.model_size", config["tts_model_size"])
    text(f"{TALKER_ARCH}.model_type", config["tts_model_type"])
    u32(f"{TALKER_ARCH}.num_code_groups", talker["num_code_groups"])
    for part, source in (("talker", talker), ("code_pred", predictor)):
        key = f"{TALKER_ARCH}.{part}"
        u32(f"{key}.embedding_length", source["hidden_size"])
        u32(f"{key}.feed_forward_length", source["intermediate_size"])
        u32(f"{key}.block_count", source["num_hidden_layers"])
        u32(f"{key}.attention.head_count", source["num_attention_heads"])
        u32(f"{key}.attention.head_count_kv", source["num_key_value_heads"])
        u32(f"{key}.attention.key_length", source["head_dim"])
        u32(f"{key}.vocab_size", source["vocab_size"])
        f32(f"{key}.rope.freq_base", float(source["rope_theta"]))
        f32(f"{key}.attention.layer_norm_rms_epsilon", float(source["rms_norm_eps"]))
    rope = talker.get("rope_scaling") or {}
    if "mrope_section" in rope:
        writer.add_array(f"{TALKER_ARCH}.talker.rope.mrope_section", list(rope["mrope_section"]))
        writer.add_bool(f"{TALKER_ARCH}.talker.rope.mrope_interleaved", bool(rope.get("interleaved", False)))
    speaker = config.get("speaker_encoder_config")
    if speaker is not None:
        u32(f"{TALKER_ARCH}.spk_enc.embedding_length", speaker["enc_dim"])
        u32(f"{TALKER_ARCH}.spk_enc.sample_rate", speaker["sample_rate"])
    for key, source_key in (
        ("pad_id", "codec_pad_id"),
        ("bos_id", "codec_bos_id"),
        ("eos_id", "codec_eos_token_id"),
        ("think_id", "codec_think_id"),
        ("nothink_id", "codec_nothink_id"),
        ("think_bos_id", "codec_think_bos_id"),
        ("think_eos_id", "codec_think_eos_id"),
    ):
        u32(f"{TALKER_ARCH}.codec.{key}", talker[source_key])
    languages = talker.get("codec_language_id") or {}
    writer.add_array(f"{TALKER_ARCH}.codec.language_names", list(languages))
    writer.add_array(f"{TALKER_ARCH}.codec.language_ids", [int(v) for v in languages.values()])
    speakers = talker.get("spk_id") or {}
    if speakers:  # CustomVoice checkpoints only; Base has an empty table
        dialects = talker.get("spk_is_dialect") or {}
        writer.add_array(f"{TALKER_ARCH}.codec.speaker_names", list(speakers))
        writer.add_array(f"{TALKER_ARCH}.codec.speaker_ids", [int(v) for v in speakers.values()])
        writer.add_array(
            f"{TALKER_ARCH}.codec.speaker_dialects",
            [d if isinstance(d := dialects.get(k), str) else "" for k in speakers],
        )
    for key in ("im_start", "im_end", "tts_pad", "tts_bos", "tts_eos"):
        u32(f"{TALKER_ARCH}.text.{key}_id", config[f"{key}_token_id"])
    for key, kind in (
        ("do_sample", bool),
        ("top_k", int),
        ("top_p", float),
        ("temperature", float),
        ("repetition_penalty", float),
        ("subtalker_dosample", bool),
        ("subtalker_top_k", int),
        ("subtalker_top_p", float),
        ("subtalker_temperature", float),
        ("max_new_tokens", int),
    ):
        if key in generation:
            name = "generation." + key.replace("subtalker_dosample", "subtalker_do_sample")
            {bool: writer.add_bool, int: u32, float: f32}[kind](name, kind(generation[key]))
    tokens, token_types, merges = _bpe_vocabulary(checkpoint)
    text("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", token_types)
    writer.add_array("tokenizer.ggml.merges", merges)
    u32("tokenizer.ggml.eos_token_id", BPE_EOS_TOKEN_ID)


def _bpe_vocabulary(checkpoint: Path) -> tuple[list[str], list[int], list[str]]:
    """The Qwen2 BPE vocabulary as GGUF arrays: tokens by id (gaps filled), token types, merges."""
    vocab: dict[str, int] = json.loads((checkpoint / "vocab.json").read_text())
    added = json.loads((checkpoint / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
    size = 1 + max([*vocab.values(), *(int(i) for i in added)])
    tokens = [f"<|unused-{i}|>" for i in range(size)]
    types = [TOKEN_UNUSED] * size
    for token, index in vocab.items():
        tokens[index], types[index] = token, TOKEN_NORMAL
    for index, info in added.items():
        tokens[int(index)], types[int(index)] = info["content"], TOKEN_USER_DEFINED
    lines = (checkpoint / "merges.txt").read_text().splitlines()
    return tokens, types, [line for line in lines if line and not line.startswith("#")]


def _codec_metadata(writer: Any, tokenizer_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((tokenizer_dir / "config.json").read_text())
    decoder, encoder = config["decoder_config"], config["encoder_config"]
    u32, f32 = writer.add_uint32, writer.add_float32
    writer.add_string("general.name", "Qwen3-TTS-Tokenizer-12Hz")
    for key in (
        "input_sample_rate",
        "output_sample_rate",
        "decode_upsample_rate",
        "encode_downsample_rate",
        "encoder_valid_num_quantizers",
    ):
        u32(f"{CODEC_ARCH}.{key}", config[key])
    for side, source, ints, floats, arrays in (
        (
            "decoder",
            decoder,
            (
                "latent_dim", "codebook_dim", "codebook_size", "decoder_dim", "hidden_size",
                "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "num_quantizers", "num_semantic_quantizers", "sliding_window",
            ),
            ("rms_norm_eps", "rope_theta", "layer_scale_initial_scale"),
            ("upsample_rates", "upsampling_ratios"),
        ),
        (
            "encoder",
            encoder,
            (
                "num_filters", "kernel_size", "last_kernel_size", "residual_kernel_size",
                "num_residual_layers", "dilation_growth_rate", "compress", "hidden_size",
                "intermediate_size", "head_dim",
                "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "codebook_dim",
                "codebook_size", "num_quantizers", "num_semantic_quantizers",
            ),
            ("norm_eps", "rope_theta", "layer_scale_initial_scale"),
            ("upsampling_ratios",),
        ),
    ):  # fmt: skip
        for key in ints:
            if key in source:  # the encoder (a Mimi config) has no decoder-only keys and vice versa
                u32(f"{CODEC_ARCH}.{side}.{key}", int(source[key]))
        for key in floats:
            f32(f"{CODEC_ARCH}.{side}.{key}", float(source[key]))
        for key in arrays:
            writer.add_array(f"{CODEC_ARCH}.{side}.{key}", [int(v) for v in source[key]])
        u32(
            f"{CODEC_ARCH}.{side}.vector_quantization_hidden_dim",
            int(source["vector_quantization_hidden_dimension"]),
        )
    u32(f"{CODEC_ARCH}.decoder.codebook_dim_internal", CODEBOOK_INTERNAL_DIM)
    return config


# --- the two files -----------------------------------------------------------------------------------------


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_talker(checkpoint: Path, out: Path, storage: GgufType) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(out), TALKER_ARCH)
    _talker_metadata(writer, checkpoint)
    for name, array in read_safetensors(checkpoint / "model.safetensors"):
        _store(writer, gguf_name(name, TALKER_RULES), array, storage)
    _write(writer)
    return out


def export_codec(tokenizer_dir: Path, out: Path, storage: GgufType) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(out), CODEC_ARCH)
    config = _codec_metadata(writer, tokenizer_dir)
    # The encoder ships more acoustic codebooks than it uses; keep the ones the decoder consumes.
    acoustic_kept = (
        config["encoder_valid_num_quantizers"] - config["encoder_config"]["num_semantic_quantizers"]
    )
    codebooks: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for name, array in read_safetensors(tokenizer_dir / "model.safetensors"):
        if _DROPPED.fullmatch(name):
            continue
        match = _CODEBOOK.fullmatch(name)
        if match is None:
            _store(writer, gguf_name(name, CODEC_RULES), array, storage)
            continue
        if match["enc"] == "acoustic" and int(match["ei"]) >= acoustic_kept:
            continue
        target = (
            f"tok_enc.vq_{match['enc']}.{match['ei']}.codebook"
            if match["enc"]
            else f"tok_dec.{match['dec']}.{match['di']}.codebook"
        )
        part = "usage" if match["part"] == "cluster_usage" else "sum"
        codebooks.setdefault(target, {})[part] = array
    for target, parts in sorted(codebooks.items()):
        if set(parts) != {"usage", "sum"}:
            raise CheckpointError(f"export: codebook {target} lacks {({'usage', 'sum'} - set(parts)).pop()}")
        # The official decode divides the running sum by the clamped usage; the port indexes the result.
        table = parts["sum"] / np.maximum(parts["usage"], RVQ_EPSILON)[:, None]
        _store(writer, target, table.astype(np.float32), storage)
    _write(writer)
    return out


def export_gguf(checkpoint: Path, out_dir: Path, storage: GgufType) -> GgufExport:
    """Write talker and codec GGUF files for a checkpoint directory in the released layout."""
    for required in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if not (checkpoint / required).is_file():
            raise CheckpointError(
                f"export: {checkpoint} has no {required}; is it a Qwen3-TTS-12Hz checkpoint?"
            )
    tokenizer_dir = checkpoint / "speech_tokenizer"
    if not (tokenizer_dir / "model.safetensors").is_file():
        raise CheckpointError(f"export: {checkpoint} has no speech_tokenizer/model.safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = storage.value
    talker = export_talker(checkpoint, out_dir / f"talker-{suffix}.gguf", storage)
    codec = export_codec(tokenizer_dir, out_dir / f"codec-{suffix}.gguf", storage)
    return GgufExport(talker=talker, codec=codec, storage=storage)
