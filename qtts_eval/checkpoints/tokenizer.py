"""The synthetic checkpoints' text tokenizer: byte-level BPE with Qwen2's pre-tokenizer and special tokens."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from qtts_eval.checkpoints.presets import Preset
from qtts_eval.errors import CheckpointError

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


def _text_layout(preset: Preset, ordinary_tokens: int) -> tuple[int, int]:
    """(id of the first special token, text vocabulary size) for a tokenizer with this many tokens."""
    if preset.real_text_vocab:
        return REAL_SPECIAL_BASE, 151936
    base = ordinary_tokens
    return base, base + len(SPECIAL_TOKENS)


def tokenizer_corpus() -> list[str]:
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
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)

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
