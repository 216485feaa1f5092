"""Model refs and deterministic random-weight checkpoints in the exact Qwen3-TTS-12Hz-0.6B-Base layout.

A model ref is one of:
  * a synthetic preset name (``tiny``, ``0.6b-base``), optionally with a seed: ``tiny@seed=3``;
  * a local directory holding a checkpoint (real weights, or a synthetic one built earlier);
  * a hub id such as ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` (resolved from the local hub cache).

Synthetic checkpoints are built through the official ``qwen_tts`` model classes (so every tensor has
the name and shape the official loader expects), initialised from a seed, and written with their
config.json files spelled out key by key: ``save_pretrained`` writes configs the loader rejects
(../shared/REFERENCE-NOTES.md), and third-party ports read keys the reference ignores. They are cached
by content: the cache key hashes the configs, the seed, the builder version and the text tokenizer's source.
Their text tokenizer is the real Qwen2 BPE (``tokenizer.py``), so text ids are those of the released model.
"""

from qtts_eval.checkpoints.build import MARKER_FILE, build_checkpoint, preset_weight_shapes, weights_hash
from qtts_eval.checkpoints.cache import (
    DEFAULT_SEED,
    ResolvedModel,
    cache_root,
    resolve,
    staging_dir,
    staging_owner,
    synthetic_checkpoint,
    unbuilt_preset,
)
from qtts_eval.checkpoints.configs import model_config, speech_tokenizer_config
from qtts_eval.checkpoints.presets import PRESETS, Preset
from qtts_eval.checkpoints.tokenizer import TokenizerSource, build_text_tokenizer, tokenizer_source

__all__ = [
    "DEFAULT_SEED",
    "MARKER_FILE",
    "PRESETS",
    "Preset",
    "ResolvedModel",
    "TokenizerSource",
    "build_checkpoint",
    "build_text_tokenizer",
    "cache_root",
    "model_config",
    "preset_weight_shapes",
    "resolve",
    "speech_tokenizer_config",
    "staging_dir",
    "staging_owner",
    "synthetic_checkpoint",
    "tokenizer_source",
    "unbuilt_preset",
    "weights_hash",
]
