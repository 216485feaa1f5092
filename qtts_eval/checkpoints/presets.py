"""Synthetic checkpoint presets (sizes) and the real model's fixed codec ids."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from qtts_eval.errors import CheckpointError

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
    """Sizes of one synthetic checkpoint; everything else follows the real model, including the text
    vocabulary (151936 ids, the real Qwen2 BPE), which every preset shares so the same ids are valid."""

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
    ),
}
# The released widths of every module (a port may hard-code any of them: speaker encoder, codec encoder and
# decoder, talker, code predictor, the 2048-wide text embedding) with one layer wherever the config says how
# many, so a full-width port loads it and runs a parity request far faster than on 0.6b-base (docs/ports.md).
PRESETS["0.6b-shallow"] = dataclasses.replace(
    PRESETS["0.6b-base"],
    name="0.6b-shallow",
    talker_layers=1,
    predictor_layers=1,
    decoder_layers=1,
    encoder={"num_hidden_layers": 1},
)


def preset_by_name(name: str) -> Preset:
    if name not in PRESETS:
        raise CheckpointError(f"unknown synthetic preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
