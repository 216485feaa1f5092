"""Model refs and deterministic random-weight checkpoints in the exact Qwen3-TTS-12Hz-0.6B-Base layout.

A model ref is one of:
  * a synthetic preset name (``tiny``, ``0.6b-base``), optionally with a seed: ``tiny@seed=3``;
  * a local directory holding a checkpoint (real weights, or a synthetic one built earlier);
  * a hub id such as ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` (resolved from the local hub cache).

Synthetic checkpoints are built through the official ``qwen_tts`` model classes (so every tensor has
the name and shape the official loader expects), initialised from a seed, and written with their
config.json files spelled out key by key: ``save_pretrained`` writes configs the loader rejects
(../shared/REFERENCE-NOTES.md), and third-party ports read keys the reference ignores. They are cached
by content: the cache key hashes the configs, the seed and the builder version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtts_eval.errors import CheckpointError

BUILDER_VERSION = 1  # bump when the builder's output changes for the same preset and seed
MARKER_FILE = "qtts_eval_synthetic.json"  # written into every synthetic checkpoint
DEFAULT_SEED = 0

# Files the official loader opens; a directory missing one is refused before loading.
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "speech_tokenizer/config.json",
    "speech_tokenizer/preprocessor_config.json",
    "speech_tokenizer/model.safetensors",
)

# Qwen2's pre-tokenizer split pattern (as in the Qwen2 tokenizer.json): the processor relies on it
# keeping "<|im_start|>", "assistant" and "\n" as separate tokens.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens of the Qwen3 text vocabulary in id order from 151643 (Qwen2/Qwen3 tokenizer_config
# "added_tokens_decoder"; the TTS tokens 151669-151675 from the Qwen3-TTS tokenizer_config).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)
REAL_SPECIAL_BASE = 151643  # id of <|endoftext|> in the real vocabulary

# Codec-side ids of the real talker (vocab 3072: codebook 0 uses ids 0-2047, specials sit above).
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
CODEC_LANGUAGE_ID = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
}


@dataclass(frozen=True)
class Preset:
    """Sizes of one synthetic checkpoint; everything else follows the real model."""

    name: str
    talker_layers: int
    talker_hidden: int
    talker_intermediate: int
    talker_heads: int
    talker_kv_heads: int
    head_dim: int
    mrope_section: tuple[int, int, int]  # sums to head_dim / 2
    text_hidden: int
    predictor_layers: int
    speaker_channels: tuple[int, int, int, int, int]
    speaker_attention_channels: int
    speaker_se_channels: int
    speaker_res2net_scale: int
    decoder_hidden: int
    decoder_intermediate: int
    decoder_layers: int
    decoder_heads: int
    decoder_head_dim: int
    decoder_latent: int
    decoder_codebook_dim: int
    decoder_dim: int
    encoder: dict[str, Any]  # MimiConfig overrides for the speech-tokenizer encoder
    real_text_vocab: bool  # True: the real 151936-entry id layout; False: a compact vocabulary
    bpe_vocab: int  # merges learned by the synthetic BPE tokenizer (ordinary tokens)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        talker_layers=2,
        talker_hidden=64,
        talker_intermediate=128,
        talker_heads=4,
        talker_kv_heads=2,
        head_dim=16,
        mrope_section=(4, 2, 2),
        text_hidden=64,
        predictor_layers=2,
        speaker_channels=(64, 64, 64, 64, 192),
        speaker_attention_channels=16,
        speaker_se_channels=16,
        speaker_res2net_scale=4,
        decoder_hidden=32,
        decoder_intermediate=64,
        decoder_layers=1,
        decoder_heads=2,
        decoder_head_dim=16,
        decoder_latent=64,
        decoder_codebook_dim=32,
        decoder_dim=64,
        encoder={
            "hidden_size": 64,
            "num_filters": 4,
            "num_hidden_layers": 1,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "codebook_dim": 32,
            "vector_quantization_hidden_dimension": 32,
            "upsample_groups": 64,
        },
        real_text_vocab=False,
        bpe_vocab=1024,
    ),
    "0.6b-base": Preset(
        name="0.6b-base",
        talker_layers=28,
        talker_hidden=1024,
        talker_intermediate=3072,
        talker_heads=16,
        talker_kv_heads=8,
        head_dim=128,
        mrope_section=(24, 20, 20),
        text_hidden=2048,
        predictor_layers=5,
        speaker_channels=(512, 512, 512, 512, 1536),
        speaker_attention_channels=128,
        speaker_se_channels=128,
        speaker_res2net_scale=8,
        decoder_hidden=512,
        decoder_intermediate=1024,
        decoder_layers=8,
        decoder_heads=16,
        decoder_head_dim=64,
        decoder_latent=1024,
        decoder_codebook_dim=512,
        decoder_dim=1536,
        encoder={},  # the real encoder is the default Mimi configuration
        real_text_vocab=True,
        bpe_vocab=4096,
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model ref points and what is known about its weights."""

    ref: str  # the ref as the user gave it
    path: Path  # local checkpoint directory handed to Qwen3TTSModel.from_pretrained
    synthetic: bool  # random weights built by this module
    weights_hash: str  # sha256 over the checkpoint's safetensors files (talker + speech tokenizer)
    preset: str | None = None  # synthetic preset name
    seed: int | None = None  # synthetic seed


# ---------------------------------------------------------------------------------------------------
# Configs


def _text_layout(preset: Preset, ordinary_tokens: int) -> tuple[int, int]:
    """(id of the first special token, text vocabulary size) for a tokenizer with this many tokens."""
    if preset.real_text_vocab:
        return REAL_SPECIAL_BASE, 151936
    base = ordinary_tokens
    return base, base + len(SPECIAL_TOKENS)


def model_config(preset: Preset, special_base: int, text_vocab_size: int) -> dict[str, Any]:
    """Top-level config.json, every key written out as in the released checkpoint."""
    special = {token: special_base + index for index, token in enumerate(SPECIAL_TOKENS)}
    rope = {
        "interleaved": True,
        "mrope_section": list(preset.mrope_section),
        "rope_type": "default",
        "type": "default",
    }
    predictor = {
        "attention_bias": False,
        "attention_dropout": 0,
        "head_dim": preset.head_dim,
        "hidden_act": "silu",
        "hidden_size": preset.talker_hidden,
        "initializer_range": 0.02,
        "intermediate_size": preset.talker_intermediate,
        "layer_types": ["full_attention"] * preset.predictor_layers,
        "max_position_embeddings": 65536,
        "max_window_layers": 28,
        "model_type": "qwen3_tts_talker_code_predictor",
        "num_attention_heads": preset.talker_heads,
        "num_code_groups": 16,
        "num_hidden_layers": preset.predictor_layers,
        "num_key_value_heads": preset.talker_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 2048,
    }
    talker = {
        "attention_bias": False,
        "attention_dropout": 0,
        "code_predictor_config": predictor,
        **CODEC_IDS,
        "codec_language_id": dict(CODEC_LANGUAGE_ID),
        "head_dim": preset.head_dim,
        "hidden_act": "silu",
        "hidden_size": preset.talker_hidden,
        "initializer_range": 0.02,
        "intermediate_size": preset.talker_intermediate,
        "max_position_embeddings": 32768,
        "model_type": "qwen3_tts_talker",
        "num_attention_heads": preset.talker_heads,
        "num_code_groups": 16,
        "num_hidden_layers": preset.talker_layers,
        "num_key_value_heads": preset.talker_kv_heads,
        "position_id_per_seconds": 13,
        "rms_norm_eps": 1e-06,
        "rope_scaling": rope,
        "rope_theta": 1000000,
        "sliding_window": None,
        "spk_id": {},
        "spk_is_dialect": {},
        "text_hidden_size": preset.text_hidden,
        "text_vocab_size": text_vocab_size,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 3072,
    }
    speaker = {
        "enc_attention_channels": preset.speaker_attention_channels,
        "enc_channels": list(preset.speaker_channels),
        "enc_dilations": [1, 2, 3, 4, 1],
        "enc_dim": preset.talker_hidden,  # the x-vector is added to talker inputs
        "enc_kernel_sizes": [5, 3, 3, 3, 1],
        "enc_res2net_scale": preset.speaker_res2net_scale,
        "enc_se_channels": preset.speaker_se_channels,
        "mel_dim": 128,
        "sample_rate": 24000,
    }
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "assistant_token_id": None,  # filled by the tokenizer builder
        "im_end_token_id": special["<|im_end|>"],
        "im_start_token_id": special["<|im_start|>"],
        "model_type": "qwen3_tts",
        "speaker_encoder_config": speaker,
        "talker_config": talker,
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "transformers_version": "4.57.3",
        "tts_bos_token_id": special["<tts_text_bos>"],
        "tts_eos_token_id": special["<tts_text_eod>"],
        "tts_model_size": "0b6",
        "tts_model_type": "base",
        "tts_pad_token_id": special["<tts_pad>"],
    }


def speech_tokenizer_config(preset: Preset) -> dict[str, Any]:
    """speech_tokenizer/config.json; the decoder block carries keys only ports read."""
    encoder = {
        "_frame_rate": 12.5,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "audio_channels": 1,
        "codebook_dim": 256,
        "codebook_size": 2048,
        "compress": 2,
        "dilation_growth_rate": 2,
        "dtype": "float32",
        "head_dim": 64,
        "hidden_act": "gelu",
        "hidden_size": 512,
        "initializer_range": 0.02,
        "intermediate_size": 2048,
        "kernel_size": 7,
        "last_kernel_size": 3,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "model_type": "mimi",
        "norm_eps": 1e-05,
        "num_attention_heads": 8,
        "num_filters": 64,
        "num_hidden_layers": 8,
        "num_key_value_heads": 8,
        "num_quantizers": 32,
        "num_residual_layers": 1,
        "num_semantic_quantizers": 1,
        "pad_mode": "constant",
        "residual_kernel_size": 3,
        "rope_theta": 10000.0,
        "sampling_rate": 24000,
        "sliding_window": 250,
        "trim_right_ratio": 1.0,
        "upsample_groups": 512,
        "upsampling_ratios": [8, 6, 5, 4],
        "use_cache": False,
        "use_causal_conv": True,
        "use_conv_shortcut": False,
        "use_streaming": False,
        "vector_quantization_hidden_dimension": 256,
    }
    encoder.update(preset.encoder)
    decoder = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "codebook_dim": preset.decoder_codebook_dim,
        "codebook_size": 2048,
        "decoder_dim": preset.decoder_dim,
        "head_dim": preset.decoder_head_dim,
        "hidden_act": "silu",
        "hidden_size": preset.decoder_hidden,
        "intermediate_size": preset.decoder_intermediate,
        "latent_dim": preset.decoder_latent,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "num_attention_heads": preset.decoder_heads,
        "num_hidden_layers": preset.decoder_layers,
        "num_key_value_heads": preset.decoder_heads,
        "num_quantizers": 16,
        "num_semantic_quantizers": 1,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
        "semantic_codebook_size": 4096,
        "sliding_window": 72,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
        "vector_quantization_hidden_dimension": 512,
    }
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "decode_upsample_rate": 1920,
        "decoder_config": decoder,
        "encode_downsample_rate": 1920,
        "encoder_config": encoder,
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": 24000,
        "model_type": "qwen3_tts_tokenizer_12hz",
        "output_sample_rate": 24000,
        "transformers_version": "4.57.3",
    }


GENERATION_CONFIG = {
    "do_sample": True,
    "max_new_tokens": 8192,
    "repetition_penalty": 1.05,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "temperature": 0.9,
    "top_k": 50,
    "top_p": 1.0,
}

# Top-level preprocessor_config.json (the text processor) and the speech tokenizer's feature extractor.
PROCESSOR_CONFIG = {
    "padding_side": "left",
    "padding_value": 0.0,
    "processor_class": "Qwen3TTSProcessor",
    "return_attention_mask": True,
}
FEATURE_EXTRACTOR_CONFIG = {
    "chunk_length_s": None,
    "feature_extractor_type": "EncodecFeatureExtractor",
    "feature_size": 1,
    "overlap": None,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": 24000,
}


# ---------------------------------------------------------------------------------------------------
# Build


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_corpus() -> list[str]:
    corpus = (Path(__file__).parent / "data" / "tokenizer_corpus.txt").read_text(encoding="utf-8")
    # "assistant" must be a single token (the processor slices the prompt by token position).
    return [line for line in corpus.splitlines() if line.strip()] + ["assistant\n"] * 64


def build_text_tokenizer(preset: Preset, directory: Path) -> dict[str, int]:
    """Byte-level BPE with Qwen2's pre-tokenizer, saved as Qwen2TokenizerFast files.

    Returns the ids the model config needs. With the real layout the ordinary vocabulary is padded
    with unreachable filler tokens so the special tokens keep their real ids (151643 on).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + preset.bpe_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer)

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = tokenizer.model.save(scratch)
        vocab: dict[str, int] = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        merges_text = Path(merges_file).read_text(encoding="utf-8")
    special_base, text_vocab_size = _text_layout(preset, len(vocab))
    for filler in range(len(vocab), special_base):
        # Never produced: BPE only emits tokens reachable through merges.
        vocab[f"<|qtts_eval_filler_{filler}|>"] = filler
    merges = [
        tuple(line.split(" ")) for line in merges_text.splitlines() if line and not line.startswith("#")
    ]
    tokenizer.model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))

    fast = Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        errors="replace",
        split_special_tokens=False,
    )
    fast.save_pretrained(str(directory))
    ids = {token: fast.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    if ids["<|endoftext|>"] != special_base:
        raise CheckpointError(
            f"tokenizer build: special tokens start at {ids['<|endoftext|>']}, not {special_base}"
        )
    for piece in ("assistant", "\n"):
        if len(fast.encode(piece, add_special_tokens=False)) != 1:
            raise CheckpointError(f"tokenizer build: {piece!r} is not a single token")
    return {
        "special_base": special_base,
        "text_vocab_size": text_vocab_size,
        "assistant": fast.encode("assistant", add_special_tokens=False)[0],
    }


def _randomise(speech_tokenizer: Any, seed: int) -> None:
    """Fix what random init leaves degenerate (../shared/REFERENCE-NOTES.md).

    Codebooks initialise to zero (every input would encode to code 0 and every code decode alike),
    so they get random entries; the decoder output is rescaled to an audible peak of about 0.5.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in sorted(speech_tokenizer.state_dict().items()):
            if name.endswith("embedding_sum") or name.endswith("embed_sum"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif name.endswith("cluster_usage") or name.endswith("initialized"):
                tensor.fill_(1.0)
        decoder = speech_tokenizer.decoder
        codes = torch.randint(0, 2048, (1, 16, 24), generator=generator)
        peak = _raw_decoder_peak(decoder, codes)
        if peak > 0:
            final = _final_conv(decoder)
            final.weight.mul_(0.5 / peak)
            if final.bias is not None:
                final.bias.mul_(0.5 / peak)


def _final_conv(decoder: Any) -> Any:
    import torch

    convs = [module for module in decoder.decoder.modules() if isinstance(module, torch.nn.Conv1d)]
    return convs[-1]


def _raw_decoder_peak(decoder: Any, codes: Any) -> float:
    """Peak of the decoder output before its final clamp to [-1, 1]."""
    captured: list[float] = []
    final = _final_conv(decoder)
    handle = final.register_forward_hook(lambda _m, _i, out: captured.append(float(out.abs().max())))
    try:
        decoder(codes)
    finally:
        handle.remove()
    return captured[-1]


def _save_safetensors(module: Any, path: Path, dtype: Any) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(dtype).contiguous() for name, tensor in module.state_dict().items()}
    save_file(dict(sorted(state.items())), str(path), metadata={"format": "pt"})


def build_checkpoint(preset_name: str, seed: int, directory: Path) -> None:
    """Write a complete synthetic checkpoint for ``preset_name`` into ``directory``."""
    import torch
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    preset = preset_by_name(preset_name)
    directory.mkdir(parents=True, exist_ok=True)
    ids = build_text_tokenizer(preset, directory)
    config = model_config(preset, ids["special_base"], ids["text_vocab_size"])
    config["assistant_token_id"] = ids["assistant"]
    tokenizer_config = speech_tokenizer_config(preset)

    torch.manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**copy.deepcopy(config))).eval()
    speech_tokenizer = Qwen3TTSTokenizerV2Model(
        Qwen3TTSTokenizerV2Config(**copy.deepcopy(tokenizer_config))
    ).eval()
    _randomise(speech_tokenizer, seed)

    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", GENERATION_CONFIG)
    # The released files store the talker and speaker encoder in bf16, the speech tokenizer in fp32.
    _save_safetensors(model, directory / "model.safetensors", torch.bfloat16)
    _write_json(directory / "speech_tokenizer" / "config.json", tokenizer_config)
    _write_json(directory / "preprocessor_config.json", PROCESSOR_CONFIG)
    _write_json(directory / "speech_tokenizer" / "preprocessor_config.json", FEATURE_EXTRACTOR_CONFIG)
    _write_json(
        directory / "speech_tokenizer" / "configuration.json",
        {"framework": "pytorch", "task": "feature-extraction", "allow_remote": True},
    )
    _save_safetensors(speech_tokenizer, directory / "speech_tokenizer" / "model.safetensors", torch.float32)
    _write_json(
        directory / MARKER_FILE,
        {
            "preset": preset.name,
            "seed": seed,
            "builder_version": BUILDER_VERSION,
            "weights_hash": weights_hash(directory),
        },
    )


# ---------------------------------------------------------------------------------------------------
# Resolve


def preset_by_name(name: str) -> Preset:
    if name not in PRESETS:
        raise CheckpointError(f"unknown synthetic preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def weights_hash(directory: Path) -> str:
    """sha256 over the checkpoint's safetensors files, in a fixed order."""
    digest = hashlib.sha256()
    for relative in ("model.safetensors", "speech_tokenizer/model.safetensors"):
        path = directory / relative
        digest.update(relative.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    env = os.environ.get("QTTS_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qtts-eval"


def cache_key(preset_name: str, seed: int) -> str:
    preset = preset_by_name(preset_name)
    spec = json.dumps(
        {"builder": BUILDER_VERSION, "preset": preset.__dict__, "seed": seed, "corpus": _tokenizer_corpus()},
        sort_keys=True,
        default=list,
    )
    return f"{preset_name}-seed{seed}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def synthetic_checkpoint(preset_name: str, seed: int = DEFAULT_SEED) -> Path:
    """Path of the cached synthetic checkpoint, building it first if needed."""
    target = cache_root() / "checkpoints" / cache_key(preset_name, seed)
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build_checkpoint(preset_name, seed, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MARKER_FILE).is_file():  # lost a race to a concurrent builder: theirs is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_PRESET_REF = re.compile(r"^(?P<preset>[\w.\-]+?)(?:@seed=(?P<seed>\d+))?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # owner/name, as opposed to a filesystem path


def check_checkpoint_dir(path: Path) -> None:
    """Refuse a directory missing any file the official loader needs, naming the missing files."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing {', '.join(missing)}; a Qwen3-TTS-12Hz checkpoint needs "
            f"{', '.join(REQUIRED_FILES)}"
        )


def _hub_snapshot(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
    except Exception as exc:
        raise CheckpointError(
            f"model ref {ref!r} is not a preset ({', '.join(PRESETS)}), not a local directory, and could not "
            f"be fetched from the hub: {exc}"
        ) from exc


def resolve(ref: str) -> ResolvedModel:
    """Turn a model ref into a local checkpoint directory, building or fetching it if needed."""
    match = _PRESET_REF.match(ref)
    if match and match["preset"] in PRESETS:
        seed = int(match["seed"]) if match["seed"] else DEFAULT_SEED
        path = synthetic_checkpoint(match["preset"], seed)
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    elif _HUB_ID.match(ref):
        path = _hub_snapshot(ref)
    else:
        raise CheckpointError(
            f"model ref {ref!r} is neither a preset ({', '.join(PRESETS)}), an existing directory, "
            "nor a hub id (owner/name)"
        )
    check_checkpoint_dir(path)
    marker = path / MARKER_FILE
    if marker.is_file():
        info = json.loads(marker.read_text())
        return ResolvedModel(ref, path, True, info["weights_hash"], info["preset"], info["seed"])
    return ResolvedModel(ref, path, False, weights_hash(path))
