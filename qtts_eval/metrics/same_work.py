"""Same work or flagged: did a candidate produce the reference's codes on the same request?

A faster candidate that stopped earlier, or generated other codes, did other work; its latency is not
comparable until that is visible beside it. These are the per-record columns that make it visible.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import MetricError
from qtts_eval.metrics.audio import MEL_N_FFT, log_mel_l1
from qtts_eval.units import CODEBOOKS

DIGEST_HEX_DIGITS = 16  # 64 bits of sha256: a collision between two runs' codes is not a practical concern


class StopVsReference(str, enum.Enum):
    """Where a candidate stopped, against the reference on the same cell."""

    SAME = "same"  # the same number of frames
    EARLIER = "earlier"  # fewer frames: less work, or an early EOS
    LATER = "later"  # more frames (e.g. a frame budget honoured literally: budget frames, not budget - 1)


def codes_digest(codes: npt.ArrayLike | None) -> str | None:
    """Digest of a [frames, 16] code array as int64 little-endian; equal digests mean equal codes."""
    if codes is None:
        return None
    array = np.ascontiguousarray(np.asarray(codes, dtype="<i8").reshape(-1, CODEBOOKS))
    digest = hashlib.sha256(array.tobytes())
    digest.update(str(array.shape[0]).encode())
    return digest.hexdigest()[:DIGEST_HEX_DIGITS]


def same_work_columns(
    reference_codes: npt.ArrayLike | None,
    codes: npt.ArrayLike | None,
    reference_audio: npt.ArrayLike,
    audio: npt.ArrayLike,
) -> dict[str, Any]:
    """Record columns comparing a candidate's request with the reference's on the same cell.

    codes_match_reference: share of frames, over the longer of the two runs, whose 16 codes are identical
    at the same index (1.0 = same codes); first_divergent_frame: the first index that differs, a missing
    frame included (None when identical); stop_vs_reference: frame counts compared; audio_mel_l1_reference:
    log-mel L1 (qtts_eval.metrics.audio) over the common length, None when under one FFT window or unusable.
    """
    columns: dict[str, Any] = {"audio_mel_l1_reference": _mel_distance(reference_audio, audio)}
    if reference_codes is None or codes is None:
        return columns
    ref = np.asarray(reference_codes, dtype=np.int64).reshape(-1, CODEBOOKS)
    cand = np.asarray(codes, dtype=np.int64).reshape(-1, CODEBOOKS)
    common = min(len(ref), len(cand))
    equal = np.all(ref[:common] == cand[:common], axis=1)
    longest = max(len(ref), len(cand))
    differing = np.flatnonzero(~equal)
    first = int(differing[0]) if differing.size else (common if len(ref) != len(cand) else None)
    stop = (
        StopVsReference.SAME
        if len(cand) == len(ref)
        else StopVsReference.EARLIER
        if len(cand) < len(ref)
        else StopVsReference.LATER
    )
    columns.update(
        codes_match_reference=float(np.count_nonzero(equal)) / longest if longest else 1.0,
        first_divergent_frame=first,
        stop_vs_reference=stop.value,
    )
    return columns


def _mel_distance(reference_audio: npt.ArrayLike, audio: npt.ArrayLike) -> float | None:
    ref = np.asarray(reference_audio, dtype=np.float32)
    cand = np.asarray(audio, dtype=np.float32)
    common = min(ref.size, cand.size)
    if common < MEL_N_FFT:
        return None
    try:
        return log_mel_l1(ref[:common], cand[:common])
    except MetricError:  # NaN audio: the quality columns already flag it
        return None


class WorkDifference(str, enum.Enum):
    """A way two sides of a comparison did different work for the same request (docs/metrics.md)."""

    PROMPT_CACHE_DIFFERS = "prompt_cache_differs"  # one reused a cached clone prompt, the other built it
    DELIVERY_DIFFERS = "delivery_differs"  # streamed against whole, or streamed in other packet sizes
    LAYOUT_DIFFERS = "layout_differs"  # another talker prompt layout
    BUDGET_CONVENTION_DIFFERS = (
        "budget_convention_differs"  # a budget of N yields N - 1 frames on one side, N on the other
    )
    INSTRUMENTATION_DIFFERS = "instrumentation_differs"  # other work run only to expose the codes
    THREADS_DIFFER = "threads_differ"  # other CPU thread counts
    PRECISION_DIFFERS = "precision_differs"  # another talker or codec precision
    MEMORY_KIND_DIFFERS = "memory_kind_differs"  # peak memory measured as different things: no ratio


# Record column(s) behind each difference. packet_frames matters only when both sides stream.
WORK_DIFFERENCE_COLUMNS: dict[WorkDifference, tuple[str, ...]] = {
    WorkDifference.PROMPT_CACHE_DIFFERS: ("work_prompt",),
    WorkDifference.DELIVERY_DIFFERS: ("work_delivery", "work_packet_frames"),
    WorkDifference.LAYOUT_DIFFERS: ("work_layout",),
    WorkDifference.BUDGET_CONVENTION_DIFFERS: ("work_budget_convention",),
    WorkDifference.INSTRUMENTATION_DIFFERS: ("work_instrumentation",),
    WorkDifference.THREADS_DIFFER: ("work_threads",),
    WorkDifference.PRECISION_DIFFERS: ("work_talker_precision", "work_codec_precision"),
    WorkDifference.MEMORY_KIND_DIFFERS: ("peak_mem_kind",),
}


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def work_differences(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[WorkDifference]:
    """Each way two records (one request, two sides) did different work, from their work_* and
    peak_mem_kind columns. A column only one side declares is unknown, not a difference."""
    found = []
    for difference, columns in WORK_DIFFERENCE_COLUMNS.items():
        for column in columns:
            mine, theirs = candidate.get(column), baseline.get(column)
            if not (_known(mine) and _known(theirs)):
                continue
            if column == "work_packet_frames" and candidate.get("work_delivery") != "streamed":
                continue  # packet sizes matter between two streams only
            if mine != theirs:
                found.append(difference)
                break
    return found
