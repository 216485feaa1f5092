"""Builds a synthetic checkpoint through the official ``qwen_tts`` model classes, from a seed."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from qtts_eval import official
from qtts_eval.checkpoints.configs import (
    FEATURE_EXTRACTOR_CONFIG,
    GENERATION_CONFIG,
    PROCESSOR_CONFIG,
    model_config,
    speech_tokenizer_config,
)
from qtts_eval.checkpoints.presets import preset_by_name
from qtts_eval.checkpoints.tokenizer import build_text_tokenizer

BUILDER_VERSION = 2  # bump when the builder's output changes for the same preset and seed
MARKER_FILE = "qtts_eval_synthetic.json"  # written into every synthetic checkpoint


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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


def _talker_model(config: dict[str, Any]) -> Any:
    """The official model class holding talker, code predictor and speaker encoder (model.safetensors)."""
    official.qwen_tts()  # its start-up notices in one line, before the submodules below
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

    return Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**copy.deepcopy(config))).eval()


def preset_weight_shapes(preset_name: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a preset's model.safetensors holds, from the construction build_checkpoint
    uses, on torch's meta device: no memory and no weights, so 0.6b-base's shapes cost no 2.4 GB build."""
    import torch

    with torch.device("meta"):
        model = _talker_model(model_config(preset_by_name(preset_name)))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def build_checkpoint(preset_name: str, seed: int, directory: Path) -> None:
    """Write a complete synthetic checkpoint for ``preset_name`` into ``directory``."""
    import torch

    official.qwen_tts()  # its start-up notices in one line, before the submodules below
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    preset = preset_by_name(preset_name)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_source = build_text_tokenizer(directory)
    config = model_config(preset)
    tokenizer_config = speech_tokenizer_config(preset)

    torch.manual_seed(seed)
    model = _talker_model(config)
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
            "text_tokenizer": dataclasses.asdict(tokenizer_source),
        },
    )


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
