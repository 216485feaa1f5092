"""The reference pipeline: the official package, deterministic, honouring modes, budgets and seeds."""

from __future__ import annotations

import numpy as np
import pytest

from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.measure import measure
from qtts_eval.pipelines.base import CloneMode, Request, Sampling

BUDGET = 12  # frames: enough to tell outputs apart, small enough to stay fast on CPU


@pytest.fixture(scope="module")
def slt() -> tuple[np.ndarray, str]:
    voice = load_fixtures().voice("slt")
    audio, _ = read_reference_audio(voice.ref_wav)
    return audio, voice.ref_text


def _request(
    slt: tuple[np.ndarray, str], mode: CloneMode, seed: int = 0, sampling: Sampling | None = None
) -> Request:
    audio, ref_text = slt
    return Request(
        text="The train to the coast leaves in ten minutes.",
        language="english",
        ref_audio=audio,
        ref_text=ref_text,
        mode=mode,
        max_frames=BUDGET,
        seed=seed,
        sampling=sampling or Sampling(),
    )


@pytest.mark.parametrize("mode", list(CloneMode))
def test_two_greedy_runs_are_bit_identical(tiny_reference, slt, mode: CloneMode) -> None:
    first = measure(tiny_reference, _request(slt, mode))
    second = measure(tiny_reference, _request(slt, mode))
    assert first.audio.size > 0
    assert first.audio.tobytes() == second.audio.tobytes()


def test_budget_caps_generation(tiny_reference, slt) -> None:
    result = measure(tiny_reference, _request(slt, CloneMode.XVECTOR))
    # Random weights run to the budget; the last step's frame is never emitted (REFERENCE-NOTES).
    assert result.end.frames_generated == BUDGET - 1
    assert result.audio.shape[0] == (BUDGET - 1) * 1920


def test_modes_condition_differently(tiny_reference, slt) -> None:
    icl = measure(tiny_reference, _request(slt, CloneMode.ICL)).audio
    xvector = measure(tiny_reference, _request(slt, CloneMode.XVECTOR)).audio
    assert not np.array_equal(icl[: xvector.size], xvector[: icl.size])


def test_sampling_follows_the_seed(tiny_reference, slt) -> None:
    sampling = Sampling(do_sample=True)
    same = [measure(tiny_reference, _request(slt, CloneMode.XVECTOR, 7, sampling)).audio for _ in range(2)]
    other = measure(tiny_reference, _request(slt, CloneMode.XVECTOR, 8, sampling)).audio
    assert same[0].tobytes() == same[1].tobytes()
    assert same[0].tobytes() != other.tobytes()


def test_describe_records_the_weights(tiny_reference) -> None:
    info = tiny_reference.describe()
    assert info["synthetic"] is True and info["synthetic_preset"] == "tiny"
    assert len(info["weights_hash"]) == 64
    assert info["non_streaming_mode"] is False
