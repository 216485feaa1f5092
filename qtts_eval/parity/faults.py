"""Planted faults: real modifications of the reference run, each caught by the comparison at its stage.

Each is a classic port bug reproduced with the official code: a modified copy of the checkpoint, the package's
own function called with a wrong argument, or loaded modules rearranged. `FAULTS` maps CLI names to classes.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from qtts_eval.parity.capture import Fault
from qtts_eval.units import SAMPLE_RATE_HZ

WRONG_RATE_HZ = 16_000  # the clip is resampled to this rate but still labelled 24 kHz
WRONG_FMAX_HZ = 8_000  # speaker-encoder mel upper edge instead of the official 12 kHz
WEIGHT_DELTA = 0.5  # added to one talker MLP weight; tiny's weights are ~0.02, so this is a large local error
WRONG_ROPE_THETA = 10_000.0  # instead of the official 1e6
SMALL_CHUNK_FRAMES = 4  # decoder chunk without left context, as a naive streaming port would decode
UNBOUNDED_WINDOW = 1 << 20  # decoder attention window that reaches every frame of any request


class NoResample(Fault):
    """Reference audio handed over at 16 kHz while labelled 24 kHz: the "malformed ICL audio" port bug."""

    name: ClassVar[str] = "no-resample"
    group: ClassVar[str] = "inputs"
    description: ClassVar[str] = (
        "reference audio at 16 kHz labelled 24 kHz (not resampled before the encoders)"
    )

    def ref_audio(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import librosa

        resampled = librosa.resample(audio, orig_sr=SAMPLE_RATE_HZ, target_sr=WRONG_RATE_HZ)
        return np.asarray(resampled, dtype=np.float32)


class WrongMelFmax(Fault):
    """Speaker-encoder mel computed by the package's own mel_spectrogram with fmax 8 kHz instead of 12 kHz."""

    name: ClassVar[str] = "mel-fmax"
    group: ClassVar[str] = "speaker_encoder"
    description: ClassVar[str] = f"speaker-encoder mel with fmax {WRONG_FMAX_HZ} Hz instead of 12000 Hz"

    def speaker_embedding(self, model: Any, audio: npt.NDArray[np.float32]) -> Any:
        import torch
        from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

        inner = model.model
        mels = mel_spectrogram(
            torch.from_numpy(audio.copy()).unsqueeze(0),  # the clip may be a read-only view
            n_fft=1024,
            num_mels=128,
            sampling_rate=SAMPLE_RATE_HZ,
            hop_size=256,
            win_size=1024,
            fmin=0,
            fmax=WRONG_FMAX_HZ,
        ).transpose(1, 2)
        with torch.inference_mode():
            return inner.speaker_encoder(mels.to(inner.device).to(inner.dtype))[0]


class TalkerWeight(Fault):
    """One weight of talker layer 1's MLP perturbed in a copied model.safetensors."""

    name: ClassVar[str] = "talker-weight"
    group: ClassVar[str] = "talker"
    description: ClassVar[str] = f"talker.model.layers.1.mlp.down_proj.weight[0, 0] += {WEIGHT_DELTA}"
    tensor: ClassVar[str] = "talker.model.layers.1.mlp.down_proj.weight"
    edits_checkpoint: ClassVar[bool] = True

    def edit_checkpoint(self, directory: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        path = directory / "model.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        tensors[self.tensor][0, 0] += WEIGHT_DELTA
        save_file(tensors, str(path), metadata=metadata)


class WrongRopeTheta(Fault):
    """The talker's rope_theta edited in a copied config.json."""

    name: ClassVar[str] = "rope-theta"
    group: ClassVar[str] = "talker"
    description: ClassVar[str] = f"talker rope_theta {WRONG_ROPE_THETA:g} instead of the checkpoint's"
    edits_checkpoint: ClassVar[bool] = True

    def edit_checkpoint(self, directory: Path) -> None:
        path = directory / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["talker_config"]["rope_theta"] = WRONG_ROPE_THETA
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


class CodePredictorOrder(Fault):
    """Code-predictor steps 0 and 1 run each other's heads (steps out of order)."""

    name: ClassVar[str] = "cp-order"
    group: ClassVar[str] = "code_predictor"
    description: ClassVar[str] = "code-predictor lm_head[0] and lm_head[1] swapped"

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        heads = model.model.talker.code_predictor.lm_head
        heads[0], heads[1] = heads[1], heads[0]
        try:
            yield
        finally:
            heads[0], heads[1] = heads[1], heads[0]


class DecoderNoContext(Fault):
    """The official chunked_decode with 4-frame chunks and no left context."""

    name: ClassVar[str] = "decoder-no-context"
    group: ClassVar[str] = "codec_decoder"
    description: ClassVar[str] = f"chunked_decode(chunk_size={SMALL_CHUNK_FRAMES}, left_context_size=0)"

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        decoder = model.model.speech_tokenizer.model.decoder
        # The package calls chunked_decode with its defaults; this instance gets the wrong ones.
        decoder.chunked_decode = functools.partial(
            type(decoder).chunked_decode, decoder, chunk_size=SMALL_CHUNK_FRAMES, left_context_size=0
        )
        try:
            yield
        finally:
            del decoder.chunked_decode


class DecoderNoWindow(Fault):
    """The codec decoder's transformer attends to all earlier frames, without the official 72-frame sliding
    window (config.sliding_window): identical up to decoder frame 71, different from frame 72 on."""

    name: ClassVar[str] = "decoder-no-window"
    group: ClassVar[str] = "codec_decoder"
    description: ClassVar[str] = "codec decoder attention over all frames instead of the 72-frame window"

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        transformer = model.model.speech_tokenizer.model.decoder.pre_transformer
        # The mask is built from the config per call; each attention also keeps its own copy.
        holders = [transformer.config, *(layer.self_attn for layer in transformer.layers)]
        saved = [holder.sliding_window for holder in holders]
        for holder in holders:
            holder.sliding_window = UNBOUNDED_WINDOW
        try:
            yield
        finally:
            for holder, window in zip(holders, saved, strict=True):
                holder.sliding_window = window


FAULTS: dict[str, type[Fault]] = {
    fault.name: fault
    for fault in (
        NoResample,
        WrongMelFmax,
        TalkerWeight,
        WrongRopeTheta,
        CodePredictorOrder,
        DecoderNoContext,
        DecoderNoWindow,
    )
}
