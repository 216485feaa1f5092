"""Constants shared across the suite, each with its unit. Defined here once; everything imports them."""

from __future__ import annotations

SAMPLE_RATE_HZ = 24_000  # the model's only output rate
FRAME_RATE_HZ = 12.5  # codec frames per second of audio
SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz
CODEBOOKS = 16  # codes per codec frame: codebook 0 from the talker, 1-15 from the code predictor
MAX_TEXT_CHARS = 5000  # longer inputs are refused: ~6 minutes of speech, beyond any fixture or budget
TONE_HZ = 220.0  # pitch of the test tone that the calibration pipeline and the faulty worker send
TONE_LEVEL = 0.3  # linear amplitude of that tone, well inside full scale
