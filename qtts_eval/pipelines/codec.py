"""The reference's speech tokenizer on its own: decodes 16-codebook codes to 24 kHz audio.

Loaded through the official package's own loader from a checkpoint's ``speech_tokenizer`` directory, so a
candidate's codes are decoded exactly as the reference decodes its own (the conformance kit checks that a
candidate's audio is the decode of the codes it returns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval import checkpoints, official
from qtts_eval.errors import PipelineError
from qtts_eval.units import CODEBOOKS, SAMPLE_RATE_HZ


class ReferenceCodec:
    """The official 12 Hz speech tokenizer of one checkpoint (fp32: the notes' bf16 codec is slow on CPU)."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        import torch

        resolved = checkpoints.resolve(model)
        self.model = model  # the model ref it was loaded from
        self.weights_hash = resolved.weights_hash  # of the whole checkpoint, as the reference describes it
        Qwen3TTSTokenizer = official.qwen_tts().Qwen3TTSTokenizer
        try:
            self.tokenizer: Any = Qwen3TTSTokenizer.from_pretrained(
                str(resolved.path / "speech_tokenizer"), device_map=device, dtype=torch.float32
            )
        except Exception as exc:
            raise PipelineError(f"codec: the official loader rejected {resolved.path}: {exc}") from exc

    def decode(self, codes: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """[frames, 16] codes -> audio, as the reference's offline decode of an x-vector utterance."""
        import torch

        array = np.asarray(codes, dtype=np.int64)
        if array.ndim != 2 or array.shape[1] != CODEBOOKS:
            raise PipelineError(f"codec: codes must have shape [frames, {CODEBOOKS}], got {array.shape}")
        wavs, rate = self.tokenizer.decode([{"audio_codes": torch.from_numpy(array)}])
        if rate != SAMPLE_RATE_HZ:
            raise PipelineError(f"codec: decoded at {rate} Hz, expected {SAMPLE_RATE_HZ}")
        return np.asarray(wavs[0], dtype=np.float32)
