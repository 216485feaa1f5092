"""Quality columns of one request's record: failure detectors, speaker similarity and drift, intelligibility.

On synthetic (random) weights the audio is noise-like: every column is still computed and stored, so the
machinery is exercised and ports can be compared on it, but `quality_verdict_valid` is False and reports and
gates must not read these numbers as a verdict on speech quality.
"""

from __future__ import annotations

import enum
from typing import Any

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

SPEAKER_SCORE_COLUMNS = ("speaker_sim", "speaker_drift_min", "speaker_drift_drop", "speaker_drift")
ASR_SCORE_COLUMNS = ("asr_status", "asr_transcript", "wer", "cer", "asr_errors", "asr_reference_length")
METRIC_ERROR = "metric_error"  # quality_columns' extra key when a column could not be computed: column -> why


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
) -> dict[str, Any]:
    """Flat record columns for one output, defined in docs/metrics.md ("Audio quality and failure detectors").

    Speaker columns are None when `embedder` is None, or when the output is silent, non-finite or holds no
    speech the embedder can find: then there is no voice to compare, and the flags say why. Intelligibility
    columns are None without a `recognizer`; every output in a language it knows is transcribed, silent or
    not (a silent output says none of its words: error rate 1). A column the embedder or recogniser fails to
    compute stays None, and the extra METRIC_ERROR key maps it to the reason.
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
    }
    errors: dict[str, str] = {}
    try:
        columns.update(_asr_columns(audio, text, language, recognizer))
    except Exception as exc:  # an output the recogniser cannot score: its columns stay null, with the reason
        columns.update(asr_recognizer=None if recognizer is None else recognizer.name)
        errors.update(dict.fromkeys(ASR_SCORE_COLUMNS, f"{type(exc).__name__}: {exc}"))
    if embedder is not None and not (flags.silent or flags.nonfinite):
        try:
            reference = embedder.embed(ref_audio)
            columns["speaker_sim"] = cosine_similarity(embedder.embed(audio), reference)
            drift = speaker_drift_from_embedding(audio, reference, embedder)
            columns["speaker_drift_min"] = drift.min
            columns["speaker_drift_drop"] = drift.drop
            columns["speaker_drift"] = drift.drifted
        except NoSpeechError:
            pass  # no voice to compare: the speaker columns stay None, as for silence
        except Exception as exc:  # the embedder failed on this output: null with the reason, not a crash
            columns.update(dict.fromkeys(SPEAKER_SCORE_COLUMNS))
            errors.update(dict.fromkeys(SPEAKER_SCORE_COLUMNS, f"{type(exc).__name__}: {exc}"))
    return {**columns, METRIC_ERROR: errors} if errors else columns


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
