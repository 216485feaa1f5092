"""Quality columns of one request's record: failure detectors, speaker similarity and drift, intelligibility.

On synthetic (random) weights the audio is noise-like: every column is still computed and stored, so the
machinery is exercised and ports can be compared on it, but `quality_verdict_valid` is False and reports and
gates must not read these numbers as a verdict on speech quality.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import NoSpeechError
from qtts_eval.metrics.asr import Recognizer, Unit, intelligibility
from qtts_eval.metrics.audio import audio_flags
from qtts_eval.metrics.speaker import Embedder, cosine_similarity, speaker_drift_from_embedding

QualityValue = float | bool | str | None
# Every column quality_columns writes (the record fields of the same names are defined in results.Record).
QUALITY_COLUMNS = (
    "audible_fraction",
    "silent",
    "nonfinite_fraction",
    "nonfinite",
    "clipping_fraction",
    "clipped",
    "duration_ratio",
    "duration_anomaly",
    "quality_verdict_valid",
    "speaker_embedder",
    "speaker_sim",
    "speaker_drift_min",
    "speaker_drift_drop",
    "speaker_drift",
    "asr_recognizer",
    "asr_status",
    "asr_transcript",
    "wer",
    "cer",
    "asr_errors",
    "asr_reference_length",
)


class AsrStatus(str, enum.Enum):
    """Whether a record's intelligibility columns hold a score."""

    SCORED = "scored"  # transcribed and scored: wer (or cer) is set
    NOT_APPLICABLE = "not_applicable"  # the recogniser does not know the request's language


def quality_columns(
    audio: npt.NDArray[np.float32],
    ref_audio: npt.NDArray[np.float32],
    text: str,
    language: str,
    synthetic: bool,
    embedder: Embedder | None,
    recognizer: Recognizer | None = None,
) -> dict[str, QualityValue]:
    """Flat record columns for one output, defined in docs/metrics.md ("Audio quality and failure detectors").

    Speaker columns are None when `embedder` is None, or when the output is silent, non-finite or holds no
    speech the embedder can find: then there is no voice to compare, and the flags say why. Intelligibility
    columns are None without a `recognizer`; every output in a language it knows is transcribed, silent or
    not (a silent output says none of its words: error rate 1).
    """
    flags = audio_flags(audio, text, language)
    columns: dict[str, QualityValue] = {
        "audible_fraction": flags.audible_fraction,
        "silent": flags.silent,
        "nonfinite_fraction": flags.nonfinite_fraction,
        "nonfinite": flags.nonfinite,
        "clipping_fraction": flags.clipping_fraction,
        "clipped": flags.clipped,
        "duration_ratio": flags.duration_ratio,
        "duration_anomaly": flags.duration_anomaly,
        "quality_verdict_valid": not synthetic,
        "speaker_embedder": None if embedder is None else embedder.name,
        "speaker_sim": None,
        "speaker_drift_min": None,
        "speaker_drift_drop": None,
        "speaker_drift": None,
        **_asr_columns(audio, text, language, recognizer),
    }
    if embedder is None or flags.silent or flags.nonfinite:
        return columns
    try:
        reference = embedder.embed(ref_audio)
        columns["speaker_sim"] = cosine_similarity(embedder.embed(audio), reference)
        drift = speaker_drift_from_embedding(audio, reference, embedder)
    except NoSpeechError:
        return columns
    columns["speaker_drift_min"] = drift.min
    columns["speaker_drift_drop"] = drift.drop
    columns["speaker_drift"] = drift.drifted
    return columns


def _asr_columns(
    audio: npt.NDArray[np.float32], text: str, language: str, recognizer: Recognizer | None
) -> dict[str, QualityValue]:
    columns: dict[str, QualityValue] = {
        "asr_recognizer": None if recognizer is None else recognizer.name,
        "asr_status": None,
        "asr_transcript": None,
        "wer": None,
        "cer": None,
        "asr_errors": None,
        "asr_reference_length": None,
    }
    if recognizer is None:
        return columns
    if language not in recognizer.languages:
        return columns | {"asr_status": AsrStatus.NOT_APPLICABLE.value}
    score = intelligibility(audio, text, language, recognizer)
    return columns | {
        "asr_status": AsrStatus.SCORED.value,
        "asr_transcript": score.transcript,
        "wer" if score.unit is Unit.WORD else "cer": score.rate,
        "asr_errors": score.errors,
        "asr_reference_length": score.reference_length,
    }
