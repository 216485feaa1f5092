"""Audio distances for parity and per-request failure detectors; definitions live in docs/metrics.md.

Distances compare a candidate with a reference of the same length, sample for sample (SNR) or through
magnitude spectra (log-mel L1, multi-resolution STFT), which ignore phase and so tolerate small delays.
Detectors look at one output alone: silence, NaN/Inf, clipping, and a duration far from what the text needs.
All functions take float mono audio at 24 kHz, full scale = 1.0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import librosa
import numpy as np
import numpy.typing as npt
from scipy.signal import get_window

from qtts_eval.budget import REAL_BUDGET_FACTOR, estimated_frames
from qtts_eval.errors import MetricError
from qtts_eval.units import FRAME_RATE_HZ, SAMPLE_RATE_HZ

# Audible: a window's RMS level above this, as DESIGN.md defines audible onset (10 ms above -45 dBFS).
AUDIBLE_WINDOW_S = 0.010  # 10 ms
AUDIBLE_THRESHOLD_DBFS = -45.0  # dB relative to an RMS of 1.0
# Silent output: fewer audible windows than this. The fixture clips, flite speech with pauses, measure
# 0.64-0.87 (tests/test_audio_metrics.py checks them); a run that decodes to near-silence measures ~0.
SILENT_MAX_AUDIBLE_FRACTION = 0.2  # fraction of 10 ms windows
# Clipping: samples at or above this magnitude. Catches a float output clamped to ±1.0 and PCM16 full scale
# (32767 / 32768 = 0.99997); the fixture clips peak at 0.32-0.76.
CLIP_LEVEL = 0.999  # linear, full scale = 1.0
# Flag when more samples than this clip: a working value for this suite (one isolated full-scale peak is not
# audible; recurring ones are). The fixture clips have none.
CLIPPED_MIN_FRACTION = 0.001  # 0.1 % of samples, ~24 per second
# Duration anomaly: output shorter or longer than the text at the nominal speaking rate by more than the
# factor the bench allows real weights before calling a run a runaway.
DURATION_RATIO_MIN = 1 / REAL_BUDGET_FACTOR  # audio seconds / expected seconds
DURATION_RATIO_MAX = REAL_BUDGET_FACTOR  # audio seconds / expected seconds

# Log-mel L1: the 80-bin magnitude mel of HiFi-GAN-style vocoder losses, at the model's 24 kHz.
MEL_N_FFT = 1024  # samples, 42.7 ms
MEL_HOP = 256  # samples, 10.7 ms
MEL_BINS = 80
MEL_FMAX_HZ = 12_000.0  # Nyquist at 24 kHz
MEL_FLOOR = 1e-5  # linear magnitude floor before the log (HiFi-GAN's clamp), about -100 dB
# Multi-resolution STFT: Parallel WaveGAN's three resolutions for 24 kHz (Yamamoto et al., 2020):
# (n_fft, hop, window) in samples.
MRSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
STFT_FLOOR = 1e-7  # linear magnitude floor before the log, as in Parallel WaveGAN

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AudioFlags:
    """What the failure detectors found in one output."""

    audible_fraction: float  # share of 10 ms windows above AUDIBLE_THRESHOLD_DBFS (0 for empty audio)
    silent: bool  # audible_fraction < SILENT_MAX_AUDIBLE_FRACTION: silence or near-silence came out
    nonfinite_fraction: float  # share of samples that are NaN or ±Inf
    nonfinite: bool  # any sample is NaN or ±Inf (a numerical blow-up, e.g. bf16 overflow in the codec)
    clipping_fraction: float  # share of samples with |x| >= CLIP_LEVEL
    clipped: bool  # clipping_fraction > CLIPPED_MIN_FRACTION
    duration_ratio: float  # audio seconds / seconds the text needs at the nominal speaking rate
    duration_anomaly: bool  # duration_ratio outside [DURATION_RATIO_MIN, DURATION_RATIO_MAX]


def as_mono(audio: npt.ArrayLike, what: str = "audio") -> FloatArray:
    """`audio` as a 1-D float64 array; anything else raises `MetricError` naming `what`."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise MetricError(f"{what}: expected mono samples (a 1-D array), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise MetricError(f"{what}: expected float samples (full scale 1.0), got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def window_levels_dbfs(audio: npt.ArrayLike, window_s: float = AUDIBLE_WINDOW_S) -> FloatArray:
    """RMS level of each whole `window_s` window, in dB relative to an RMS of 1.0 (-inf for digital zero).

    Non-finite samples count as zero here; `audio_flags` reports them separately. Audio shorter than one
    window is one window.
    """
    samples = np.nan_to_num(as_mono(audio), nan=0.0, posinf=0.0, neginf=0.0)
    if samples.size == 0:
        return np.zeros(0)
    width = max(1, round(window_s * SAMPLE_RATE_HZ))
    count = max(1, samples.size // width)
    windows = samples[: count * width] if samples.size >= width else samples
    mean_square: FloatArray = np.mean(windows.reshape(count, -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        levels: FloatArray = 10.0 * np.log10(mean_square)
    return levels


def audible_fraction(audio: npt.ArrayLike) -> float:
    """Share of 10 ms windows whose RMS level is above AUDIBLE_THRESHOLD_DBFS (0 for empty audio)."""
    levels = window_levels_dbfs(audio)
    return float(np.mean(levels > AUDIBLE_THRESHOLD_DBFS)) if levels.size else 0.0


def audible_onset_s(audio: npt.ArrayLike) -> float | None:
    """Start time of the first 10 ms window above AUDIBLE_THRESHOLD_DBFS, or None if none is."""
    audible = np.flatnonzero(window_levels_dbfs(audio) > AUDIBLE_THRESHOLD_DBFS)
    return float(audible[0] * AUDIBLE_WINDOW_S) if audible.size else None


def duration_ratio(audio_seconds: float, text: str, language: str) -> float:
    """`audio_seconds` over the seconds `text` takes at the bench's nominal speaking rate for `language`."""
    if not math.isfinite(audio_seconds) or audio_seconds < 0:
        raise MetricError(f"audio_seconds must be a finite non-negative number, got {audio_seconds!r}")
    return audio_seconds / (estimated_frames(text, language) / FRAME_RATE_HZ)


def audio_flags(audio: npt.ArrayLike, text: str, language: str) -> AudioFlags:
    """Run every failure detector on one output of `text` in `language`."""
    samples = as_mono(audio)
    finite = np.isfinite(samples)
    count = samples.size
    nonfinite_fraction = float(np.mean(~finite)) if count else 0.0
    clipping = np.abs(np.where(finite, samples, 0.0)) >= CLIP_LEVEL
    clipping_fraction = float(np.mean(clipping)) if count else 0.0
    audible = audible_fraction(samples)
    ratio = duration_ratio(count / SAMPLE_RATE_HZ, text, language)
    return AudioFlags(
        audible_fraction=audible,
        silent=audible < SILENT_MAX_AUDIBLE_FRACTION,
        nonfinite_fraction=nonfinite_fraction,
        nonfinite=nonfinite_fraction > 0.0,
        clipping_fraction=clipping_fraction,
        clipped=clipping_fraction > CLIPPED_MIN_FRACTION,
        duration_ratio=ratio,
        duration_anomaly=not DURATION_RATIO_MIN <= ratio <= DURATION_RATIO_MAX,
    )


def snr_db(reference: npt.ArrayLike, candidate: npt.ArrayLike) -> float:
    """Signal-to-noise ratio of `candidate` against `reference`, sample for sample, in dB.

    10·log10(Σ reference² / Σ (reference − candidate)²): +inf when identical, −inf for a silent reference
    that the candidate does not match. No alignment: a delay counts as error, as it must for parity.
    """
    ref, cand = _pair(reference, candidate)
    signal = float(np.sum(ref**2))
    noise = float(np.sum((ref - cand) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def log_mel_l1(reference: npt.ArrayLike, candidate: npt.ArrayLike) -> float:
    """Mean absolute difference of natural-log 80-bin magnitude mel spectrograms (0 when identical).

    Scaling the candidate by a gives |ln a| while no bin hits MEL_FLOOR.
    """
    ref, cand = _pair(reference, candidate)
    basis = _mel_basis()
    ref_mel = basis @ _stft_magnitude(ref, MEL_N_FFT, MEL_HOP, MEL_N_FFT)
    cand_mel = basis @ _stft_magnitude(cand, MEL_N_FFT, MEL_HOP, MEL_N_FFT)
    difference = np.log(np.maximum(ref_mel, MEL_FLOOR)) - np.log(np.maximum(cand_mel, MEL_FLOOR))
    return float(np.mean(np.abs(difference)))


def mrstft_distance(reference: npt.ArrayLike, candidate: npt.ArrayLike) -> float:
    """Multi-resolution STFT distance (0 when identical): the mean over MRSTFT_RESOLUTIONS of
    spectral convergence ‖|S_ref| − |S_cand|‖_F / ‖|S_ref|‖_F plus the mean |ln|S_ref| − ln|S_cand||.

    Scaling the candidate by a gives |1 − a| + |ln a| while no bin hits STFT_FLOOR.
    """
    ref, cand = _pair(reference, candidate)
    total = 0.0
    for n_fft, hop, window in MRSTFT_RESOLUTIONS:
        ref_mag = np.maximum(_stft_magnitude(ref, n_fft, hop, window), STFT_FLOOR)
        cand_mag = np.maximum(_stft_magnitude(cand, n_fft, hop, window), STFT_FLOOR)
        convergence = np.linalg.norm(ref_mag - cand_mag) / np.linalg.norm(ref_mag)
        log_magnitude = np.mean(np.abs(np.log(ref_mag) - np.log(cand_mag)))
        total += float(convergence + log_magnitude)
    return total / len(MRSTFT_RESOLUTIONS)


def _pair(reference: npt.ArrayLike, candidate: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Validate two signals for a distance: mono float, same non-zero length, all finite."""
    ref = as_mono(reference, "reference")
    cand = as_mono(candidate, "candidate")
    if ref.size != cand.size:
        raise MetricError(
            f"reference has {ref.size} samples but candidate has {cand.size}: distances compare equal "
            f"lengths (a length mismatch is itself a parity failure)"
        )
    if ref.size == 0:
        raise MetricError("reference and candidate are empty")
    for name, signal in (("reference", ref), ("candidate", cand)):
        bad = np.flatnonzero(~np.isfinite(signal))
        if bad.size:
            raise MetricError(f"{name}: {bad.size} samples are NaN or infinite (first at sample {bad[0]})")
    return ref, cand


def _stft_magnitude(signal: FloatArray, n_fft: int, hop: int, window: int) -> FloatArray:
    """|STFT| as (n_fft // 2 + 1, frames): periodic Hann window, no centring, short signals zero-padded."""
    if signal.size < window:
        signal = np.pad(signal, (0, window - signal.size))
    frames = np.lib.stride_tricks.sliding_window_view(signal, window)[::hop]
    spectrum = np.fft.rfft(frames * _hann(window), n=n_fft, axis=1)
    return np.abs(spectrum).T


@functools.cache
def _hann(window: int) -> FloatArray:
    return np.asarray(get_window("hann", window, fftbins=True), dtype=np.float64)


@functools.cache
def _mel_basis() -> FloatArray:
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE_HZ, n_fft=MEL_N_FFT, n_mels=MEL_BINS, fmin=0.0, fmax=MEL_FMAX_HZ
    )
    return np.asarray(basis, dtype=np.float64)
