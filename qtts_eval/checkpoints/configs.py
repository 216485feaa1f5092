"""The config files of a checkpoint, written out key by key as in the released model.

``save_pretrained`` writes configs the official loader rejects (../shared/REFERENCE-NOTES.md), and third-party
ports read keys the reference ignores, so nothing here is left to a library's defaults.
"""

from __future__ import annotations

from typing import Any

from qtts_eval.checkpoints.presets import CODEC_IDS, CODEC_LANGUAGE_ID, Preset
from qtts_eval.checkpoints.tokenizer import ASSISTANT_TOKEN_ID, TEXT_VOCAB_SIZE, TOKEN_IDS


def model_config(preset: Preset) -> dict[str, Any]:
    """Top-level config.json, every key written out as in the released checkpoint."""
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
        "text_vocab_size": TEXT_VOCAB_SIZE,
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
        "assistant_token_id": ASSISTANT_TOKEN_ID,
        "im_end_token_id": TOKEN_IDS["<|im_end|>"],
        "im_start_token_id": TOKEN_IDS["<|im_start|>"],
        "model_type": "qwen3_tts",
        "speaker_encoder_config": speaker,
        "talker_config": talker,
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "transformers_version": "4.57.3",
        "tts_bos_token_id": TOKEN_IDS["<tts_text_bos>"],
        "tts_eos_token_id": TOKEN_IDS["<tts_text_eod>"],
        "tts_model_size": "0b6",
        "tts_model_type": "base",
        "tts_pad_token_id": TOKEN_IDS["<tts_pad>"],
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
