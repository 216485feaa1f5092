"""Frame budgets: how many codec frames a text may take, from a nominal speaking rate."""

from __future__ import annotations

import math

from qtts_eval.units import FRAME_RATE_HZ

# Nominal speaking rates in characters per second (spaces and punctuation included), used only to size
# frame budgets: ~150 words/min English, ~4.5 Chinese characters/s, ~7 Japanese characters/s. They are
# round working values chosen for this suite, not measurements.
SPEAKING_RATE_CPS = {"english": 14.0, "chinese": 4.5, "japanese": 7.0}
DEFAULT_SPEAKING_RATE_CPS = 8.0  # "auto" and other languages: between the alphabetic and CJK rates
MIN_FRAME_BUDGET = 8  # 0.64 s: even a one-word text gets a few frames
REAL_BUDGET_FACTOR = 2.0  # real weights stop at EOS; the budget only catches runaway generation
REAL_BUDGET_SLACK_FRAMES = 25  # 2 s on top, for very short texts


def estimated_frames(text: str, language: str) -> int:
    """Codec frames a speaker at the nominal rate would need for ``text``."""
    rate = SPEAKING_RATE_CPS.get(language.lower(), DEFAULT_SPEAKING_RATE_CPS)
    return max(MIN_FRAME_BUDGET, math.ceil(len(text.strip()) / rate * FRAME_RATE_HZ))


def frame_budget(text: str, language: str, synthetic: bool) -> int:
    """max_new_tokens for a request.

    Random weights never emit EOS, so a synthetic run generates exactly its budget: the estimate itself.
    Real weights get head room; hitting the budget then means EOS was missed (a runaway generation).
    """
    estimate = estimated_frames(text, language)
    if synthetic:
        return estimate
    return math.ceil(estimate * REAL_BUDGET_FACTOR) + REAL_BUDGET_SLACK_FRAMES


LENGTH_CLASSES = ((64, "short"), (256, "medium"))  # (most estimated frames, class); longer texts are "long"


def length_class(text: str, language: str) -> str:
    """A coarse prompt-size class (short up to ~5 s of speech, medium up to ~20 s, long): requests of one
    class share their shapes closely enough to share a warm-up."""
    frames = estimated_frames(text, language)
    return next((name for limit, name in LENGTH_CLASSES if frames <= limit), "long")
