"""Audio distances on signals with known answers; failure detectors on planted faults and on clean speech."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from qtts_eval.errors import MetricError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.metrics.audio import (
    SILENT_MAX_AUDIBLE_FRACTION,
    AudioFlags,
    audible_onset_s,
    audio_flags,
    duration_ratio,
    log_mel_l1,
    mrstft_distance,
    snr_db,
)
from qtts_eval.units import SAMPLE_RATE_HZ

FIXTURES = load_fixtures()
CLIPS = [
    pytest.param(path, text, id=f"{voice.id}/{path.stem}")
    for voice in FIXTURES.voices.values()
    for path, text in ((voice.ref_wav, voice.ref_text), *voice.alt)
]
SLT = FIXTURES.voice("slt")
NOISE_STD = 0.1  # -20 dBFS white noise: every STFT and mel bin far above the log floors


def _noise(seconds: float = 2.0, seed: int = 0) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE_HZ)) * NOISE_STD


def _with_noise_at(signal: npt.NDArray[np.float64], snr: float, seed: int = 1) -> npt.NDArray[np.float64]:
    """`signal` plus white noise scaled so that the SNR is exactly `snr` dB."""
    noise = np.random.default_rng(seed).standard_normal(signal.size)
    noise *= math.sqrt(np.sum(signal**2) / (np.sum(noise**2) * 10 ** (snr / 10)))
    return signal + noise


def _slt_ref() -> tuple[npt.NDArray[np.float32], str]:
    return read_reference_audio(SLT.ref_wav)[0], SLT.ref_text


def _fired(flags: AudioFlags) -> set[str]:
    return {name for name in ("silent", "nonfinite", "clipped", "duration_anomaly") if getattr(flags, name)}


# Distances: known answers.


def test_identical_signals_have_infinite_snr_and_zero_spectral_distance() -> None:
    signal = _noise()
    assert snr_db(signal, signal.copy()) == math.inf
    assert log_mel_l1(signal, signal.copy()) == 0.0
    assert mrstft_distance(signal, signal.copy()) == 0.0


@pytest.mark.parametrize("gain", [0.5, 2.0, 0.1])
def test_scaled_signal_gives_the_closed_form_distances(gain: float) -> None:
    signal = _noise()
    scaled = gain * signal
    assert snr_db(signal, scaled) == pytest.approx(-20 * math.log10(abs(1 - gain)), abs=1e-9)
    # Magnitude spectra scale by the gain: log differences are |ln gain| in every bin.
    assert log_mel_l1(signal, scaled) == pytest.approx(abs(math.log(gain)), rel=1e-9)
    # Spectral convergence |1 - gain| plus log magnitude |ln gain|, equal at every resolution.
    assert mrstft_distance(signal, scaled) == pytest.approx(abs(1 - gain) + abs(math.log(gain)), rel=1e-9)


@pytest.mark.parametrize("snr", [40.0, 20.0, 10.0, 0.0])
def test_noise_at_a_set_snr_is_measured_exactly(snr: float) -> None:
    signal = _noise()
    assert snr_db(signal, _with_noise_at(signal, snr)) == pytest.approx(snr, abs=1e-9)


def test_spectral_distances_grow_as_the_snr_falls() -> None:
    signal = _noise()
    noisy = [_with_noise_at(signal, snr) for snr in (40.0, 20.0, 10.0, 0.0)]
    mel = [log_mel_l1(signal, candidate) for candidate in noisy]
    stft = [mrstft_distance(signal, candidate) for candidate in noisy]
    assert mel == sorted(mel) and mel[0] < 0.01 < mel[-1]
    assert stft == sorted(stft) and stft[0] < 0.05 < stft[-1]


def test_delay_ruins_snr_but_costs_little_spectrally() -> None:
    signal = _noise()
    delay = round(0.001 * SAMPLE_RATE_HZ)  # 1 ms
    delayed = np.concatenate([np.zeros(delay), signal[:-delay]])
    # A delayed copy of white noise is uncorrelated with it: the error carries twice the signal's energy.
    assert snr_db(signal, delayed) == pytest.approx(10 * math.log10(0.5), abs=0.1)
    ten_db = _with_noise_at(signal, 10.0)
    assert log_mel_l1(signal, delayed) < log_mel_l1(signal, ten_db) / 2
    assert mrstft_distance(signal, delayed) < mrstft_distance(signal, ten_db)


@pytest.mark.parametrize(
    ("reference", "candidate", "message"),
    [
        (np.zeros(100), np.zeros(99), "100 samples but candidate has 99"),
        (np.zeros(0), np.zeros(0), "empty"),
        (np.array([0.1, np.nan, 0.2]), np.zeros(3), "reference: 1 samples are NaN"),
        (np.zeros(3), np.array([np.inf, 0.0, 0.0]), "candidate: 1 samples are NaN or infinite"),
        (np.zeros((2, 100)), np.zeros((2, 100)), "expected mono"),
        (np.zeros(100, dtype=np.int16), np.zeros(100, dtype=np.int16), "expected float samples"),
    ],
)
def test_distances_refuse_bad_input(
    reference: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64], message: str
) -> None:
    for distance in (snr_db, log_mel_l1, mrstft_distance):
        with pytest.raises(MetricError, match=message):
            distance(reference, candidate)


# Detectors: quiet on clean speech, firing on planted faults.


@pytest.mark.parametrize(("path", "text"), CLIPS)
def test_clean_fixture_speech_raises_no_flag(path: object, text: str) -> None:
    audio, _ = read_reference_audio(path)  # type: ignore[arg-type]
    flags = audio_flags(audio, text, "english")
    assert _fired(flags) == set(), flags
    assert flags.audible_fraction > 3 * SILENT_MAX_AUDIBLE_FRACTION
    assert flags.nonfinite_fraction == 0.0 and flags.clipping_fraction == 0.0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda audio: np.zeros_like(audio), id="digital_silence"),
        pytest.param(lambda audio: audio * 10 ** (-60 / 20), id="speech_60dB_down"),
        pytest.param(lambda audio: np.full_like(audio, 1e-4), id="dc_at_-80dBFS"),
    ],
)
def test_silence_is_flagged(make: object) -> None:
    audio, text = _slt_ref()
    flags = audio_flags(make(audio), text, "english")  # type: ignore[operator]
    assert _fired(flags) == {"silent"}, flags
    assert flags.audible_fraction < 0.01


def test_nan_and_inf_are_flagged_with_their_share() -> None:
    audio, text = _slt_ref()
    broken = audio.copy()
    tenth = audio.size // 10
    broken[2 * tenth : 3 * tenth] = np.nan  # a burst of NaN, as a bf16 overflow in the codec produces
    broken[5 * tenth] = np.inf
    flags = audio_flags(broken, text, "english")
    assert flags.nonfinite and not flags.silent
    assert flags.nonfinite_fraction == pytest.approx((tenth + 1) / audio.size)
    all_nan = audio_flags(np.full_like(audio, np.nan), text, "english")
    assert all_nan.nonfinite_fraction == 1.0 and all_nan.silent


def test_clipping_is_flagged_and_a_single_peak_is_not() -> None:
    audio, text = _slt_ref()
    clipped = np.clip(audio * 4, -1.0, 1.0)
    flags = audio_flags(clipped, text, "english")
    assert _fired(flags) == {"clipped"}, flags
    assert flags.clipping_fraction > 0.01
    one_peak = audio.copy()
    one_peak[1000] = 1.0
    assert not audio_flags(one_peak, text, "english").clipped


def test_too_long_and_too_short_output_are_flagged() -> None:
    audio, text = _slt_ref()
    runaway = audio_flags(np.tile(audio, 3), text, "english")  # EOS missed: the model kept talking
    assert _fired(runaway) == {"duration_anomaly"} and runaway.duration_ratio > 2
    truncated = audio_flags(audio[: audio.size // 3], text, "english")
    assert _fired(truncated) == {"duration_anomaly"} and truncated.duration_ratio < 0.5


def test_empty_output_is_silent_and_too_short() -> None:
    flags = audio_flags(np.zeros(0, dtype=np.float32), "Hello there.", "english")
    assert _fired(flags) == {"silent", "duration_anomaly"}
    assert flags.duration_ratio == 0.0


def test_duration_ratio_uses_the_bench_speaking_rates() -> None:
    text = "x" * 140  # 10 s at 14 characters per second (English)
    assert duration_ratio(5.0, text, "english") == pytest.approx(0.5)
    assert duration_ratio(10.0, "字" * 45, "chinese") == pytest.approx(1.0)  # 4.5 characters per second
    with pytest.raises(MetricError, match="non-negative"):
        duration_ratio(-1.0, text, "english")


def test_audible_onset_finds_the_first_loud_window() -> None:
    audio, _ = _slt_ref()
    lead = np.zeros(round(0.5 * SAMPLE_RATE_HZ), dtype=np.float32)
    own_onset = audible_onset_s(audio)  # the clip starts with a short pause of its own
    assert own_onset is not None and own_onset < 0.5
    # 0.5 s is 50 whole windows, so the lead shifts the onset by exactly that.
    assert audible_onset_s(np.concatenate([lead, audio])) == pytest.approx(0.5 + own_onset)
    assert audible_onset_s(np.zeros(24_000, dtype=np.float32)) is None
