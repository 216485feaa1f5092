"""Speaker similarity with resemblyzer on the fixture voices: the matrix separates speakers, drift catches a
voice switch, scores never mix embedders, other embedders plug in by spec, and the bench's quality columns."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from qtts_eval.budget import estimated_frames
from qtts_eval.cli import main
from qtts_eval.errors import MetricError, NoSpeechError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.measure import measure
from qtts_eval.metrics.quality import quality_columns
from qtts_eval.metrics.speaker import (
    DRIFT_MAX_DROP,
    Embedder,
    ResemblyzerEmbedder,
    SpeakerMatrix,
    SpeakerScore,
    cosine_similarity,
    load_embedder,
    speaker_drift,
    speaker_matrix,
    speaker_similarity,
)
from qtts_eval.pipelines.base import CloneMode, Pipeline, Request

FIXTURES = load_fixtures()
RECORDED_VOICES = ("slt", "rms", "awb")  # CMU ARCTIC recorded speakers; kal16 is a diphone voice
MATRIX_DOC = Path(__file__).resolve().parent.parent / "docs" / "speaker-matrix.md"
# The document prints 3 decimals (rounding error 5e-4); the rest covers float differences between CPUs.
MATRIX_DOC_TOLERANCE = 0.002
PLUGIN_SOURCE = textwrap.dedent(
    """
    import numpy as np

    from qtts_eval.metrics.speaker import Embedder


    class SpectrumEmbedder(Embedder):
        '''A crude embedder: the long-term average log spectrum in 64 bands.'''

        def __init__(self, model_path=None):
            self.model_path = model_path

        @property
        def name(self):
            return "long-term-spectrum"

        def embed(self, audio):
            frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::256]
            spectrum = np.abs(np.fft.rfft(frames, axis=1))[:, :1024:16].mean(axis=0)
            return np.log(spectrum + 1e-6).astype(np.float32)


    class DeafEmbedder(Embedder):
        '''Planted fault: hears no difference between voices.'''

        @property
        def name(self):
            return "deaf"

        def embed(self, audio):
            return np.ones(8, dtype=np.float32)


    class NotAnEmbedder:
        pass
    """
)


def _clips(voice_id: str) -> list[npt.NDArray[np.float32]]:
    voice = FIXTURES.voice(voice_id)
    return [read_reference_audio(path)[0] for path in (voice.ref_wav, *(wav for wav, _ in voice.alt))]


def _switch(first: str, second: str) -> npt.NDArray[np.float32]:
    """A clip of `first` followed by a clip of `second`: a clone that changes speaker mid-utterance."""
    return np.concatenate([_clips(first)[1], _clips(second)[2]])


@pytest.fixture(scope="module")
def matrix(resemblyzer_embedder: Embedder) -> SpeakerMatrix:
    return speaker_matrix(FIXTURES, resemblyzer_embedder)


def test_recorded_voices_separate(matrix: SpeakerMatrix) -> None:
    assert matrix.separates(RECORDED_VOICES), (
        matrix.same_speaker_min(RECORDED_VOICES),
        matrix.cross_speaker_max(RECORDED_VOICES),
    )
    assert matrix.same_speaker_min(RECORDED_VOICES) > 0.85  # measured 0.860 (rms alt_1 vs alt_2)


def test_the_diphone_voice_separates_too(matrix: SpeakerMatrix) -> None:
    assert matrix.separates(list(FIXTURES.voices))  # measured: same-speaker min 0.830 > cross max 0.748


def _doc_problems(text: str, matrix: SpeakerMatrix) -> list[str]:
    """Where a matrix document disagrees with `matrix`; empty when it is current."""
    if f"`{matrix.embedder}`" not in text:
        return [f"made with another embedder than {matrix.embedder}"]
    rows = {
        match.group(1): [float(value) for value in match.group(2).split(" | ")]
        for match in re.finditer(r"^\| `([a-z0-9_]+/[a-z0-9_]+)` \| ([0-9.| ]+) \|$", text, re.MULTILINE)
    }
    expected = {
        f"{voice}/{clip}": row for (voice, clip), row in zip(matrix.clips, matrix.values, strict=True)
    }
    if rows.keys() != expected.keys():
        return [f"lists clips {sorted(rows)}, expected {sorted(expected)}"]
    return [
        f"row {label} differs"
        for label, row in expected.items()
        if not np.allclose(rows[label], row, atol=MATRIX_DOC_TOLERANCE)
    ]


def test_matrix_document_is_present_and_current(matrix: SpeakerMatrix) -> None:
    assert MATRIX_DOC.is_file(), f"{MATRIX_DOC} is missing: create it with `qtts-eval speakers`"
    problems = _doc_problems(MATRIX_DOC.read_text(encoding="utf-8"), matrix)
    assert not problems, f"{MATRIX_DOC} is out of date ({'; '.join(problems)}): rerun `qtts-eval speakers`"


def test_a_stale_matrix_document_is_caught(matrix: SpeakerMatrix) -> None:
    text = MATRIX_DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `rms/alt_1` |"))
    value = matrix.values[matrix.clips.index(("rms", "alt_1")), matrix.clips.index(("rms", "alt_2"))]
    tampered = row.replace(f"| {value:.3f} |", f"| {value - 0.01:.3f} |")
    assert _doc_problems(text.replace(row, tampered), matrix) == ["row rms/alt_1 differs"]
    assert _doc_problems(text.replace("resemblyzer-0.1.4", "resemblyzer-9"), matrix)


def test_matrix_refuses_unknown_voices(matrix: SpeakerMatrix) -> None:
    with pytest.raises(MetricError, match="not in the matrix: bob"):
        matrix.separates(["slt", "bob"])


def test_speakers_command_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "matrix.md"
    assert main(["speakers", "--output", str(output), "--require", ",".join(RECORDED_VOICES)]) == 0
    text = output.read_text(encoding="utf-8")
    assert f"qtts-eval speakers --embedder resemblyzer --output {output} --require slt,rms,awb" in text
    assert "| all |" in text and text.count("| yes |") == len(FIXTURES.voices) + 1
    assert "slt, rms, awb: same-speaker min" in capsys.readouterr().out


def test_speakers_command_fails_when_the_embedder_cannot_separate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "spectrum_plugin.py"
    plugin.write_text(PLUGIN_SOURCE, encoding="utf-8")
    output = tmp_path / "matrix.md"
    assert main(["speakers", "--embedder", f"{plugin}:DeafEmbedder", "--output", str(output)]) == 1
    assert "NOT separated" in capsys.readouterr().out
    assert "| all | | 1.000 | 1.000 | +0.000 | no |" in output.read_text(encoding="utf-8")


def test_speakers_command_rejects_an_unknown_voice(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speakers", "--require", "slt,smt"]) == 2
    assert "unknown voice id 'smt'; did you mean 'slt'" in capsys.readouterr().err


def test_similarity_is_high_for_the_same_voice_and_named(resemblyzer_embedder: Embedder) -> None:
    ref, alt, _ = _clips("slt")
    same = speaker_similarity(alt, ref, resemblyzer_embedder)
    other = speaker_similarity(_clips("rms")[1], ref, resemblyzer_embedder)
    assert same.embedder == other.embedder == "resemblyzer-0.1.4"
    assert same.value > 0.85 > 0.65 > other.value
    assert same.delta(other) == pytest.approx(same.value - other.value)


def test_scores_of_different_embedders_are_never_compared() -> None:
    with pytest.raises(MetricError, match="each embedder has its own scale"):
        SpeakerScore("resemblyzer-0.1.4", 0.9).delta(SpeakerScore("wavlm-ecapa", 0.5))


@pytest.mark.parametrize("voice_id", list(FIXTURES.voices))
def test_drift_stays_quiet_on_one_speaker(resemblyzer_embedder: Embedder, voice_id: str) -> None:
    ref, alt_1, alt_2 = _clips(voice_id)
    drift = speaker_drift(np.concatenate([alt_1, alt_2]), ref, resemblyzer_embedder)
    assert not drift.drifted, drift
    assert len(drift.similarities) >= 4 and drift.drop < DRIFT_MAX_DROP / 1.5


@pytest.mark.parametrize(
    ("first", "second"), [(a, b) for a in FIXTURES.voices for b in FIXTURES.voices if a != b]
)
def test_drift_fires_on_a_speaker_switch(resemblyzer_embedder: Embedder, first: str, second: str) -> None:
    drift = speaker_drift(_switch(first, second), _clips(first)[0], resemblyzer_embedder)
    assert drift.drifted, drift
    assert drift.similarities.index(drift.min) > 0  # the lowest window is after the switch, not the first


def test_silence_and_broken_audio_cannot_be_embedded(resemblyzer_embedder: Embedder) -> None:
    with pytest.raises(NoSpeechError, match="digital silence"):
        resemblyzer_embedder.embed(np.zeros(48_000, dtype=np.float32))
    with pytest.raises(NoSpeechError, match="VAD kept"):
        resemblyzer_embedder.embed(np.full(48_000, 1e-3, dtype=np.float32))
    with pytest.raises(MetricError, match="empty"):
        resemblyzer_embedder.embed(np.zeros(0, dtype=np.float32))
    with pytest.raises(MetricError, match="NaN"):
        resemblyzer_embedder.embed(np.full(48_000, np.nan, dtype=np.float32))


def test_cosine_similarity_checks_its_inputs() -> None:
    assert cosine_similarity([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert cosine_similarity([1.0, 1.0], [3.0, 3.0]) == pytest.approx(1.0)
    with pytest.raises(MetricError, match="one shape"):
        cosine_similarity([1.0, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(MetricError, match="zero"):
        cosine_similarity([0.0, 0.0], [1.0, 0.0])


def test_custom_resemblyzer_weights_are_named_by_hash(resemblyzer_embedder: Embedder) -> None:
    import resemblyzer

    bundled = Path(resemblyzer.__file__).parent / "pretrained.pt"
    custom = load_embedder("resemblyzer", bundled)
    assert re.fullmatch(r"resemblyzer-0\.1\.4@sha256:[0-9a-f]{12}", custom.name)
    clip = _clips("awb")[1]
    assert np.allclose(custom.embed(clip), resemblyzer_embedder.embed(clip))
    with pytest.raises(MetricError, match="do not exist"):
        ResemblyzerEmbedder(model_path=Path("/nonexistent/pretrained.pt"))


def test_an_embedder_plugs_in_from_a_file_or_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "spectrum_plugin.py"
    plugin.write_text(PLUGIN_SOURCE, encoding="utf-8")
    from_file = load_embedder(f"{plugin}:SpectrumEmbedder", model_path=tmp_path)
    assert from_file.name == "long-term-spectrum"
    assert from_file.model_path == tmp_path  # type: ignore[attr-defined]
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_embedder("spectrum_plugin:SpectrumEmbedder")
    ref, alt, _ = _clips("slt")
    score = speaker_similarity(alt, ref, from_module)
    assert score.embedder == "long-term-spectrum" and -1.0 <= score.value <= 1.0
    with pytest.raises(MetricError, match="own scale"):
        score.delta(SpeakerScore("resemblyzer-0.1.4", score.value))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resemblyser", "unknown embedder 'resemblyser'"),
        ("no_such_module_xyz:Embedder", "cannot import embedder module 'no_such_module_xyz'"),
        ("{plugin}:SpectrumEmbeder", "did you mean 'SpectrumEmbedder'"),
        ("{plugin}:NotAnEmbedder", "not a subclass of qtts_eval.metrics.speaker.Embedder"),
        ("missing_dir/plugin.py:X", "does not exist"),
    ],
)
def test_bad_embedder_specs_are_explained(tmp_path: Path, spec: str, message: str) -> None:
    plugin = tmp_path / "spectrum_plugin.py"
    plugin.write_text(PLUGIN_SOURCE, encoding="utf-8")
    with pytest.raises(MetricError, match=re.escape(message)):
        load_embedder(spec.format(plugin=plugin))


def test_quality_columns_on_clean_speech(resemblyzer_embedder: Embedder) -> None:
    voice = FIXTURES.voice("slt")
    ref, alt, _ = _clips("slt")
    columns = quality_columns(alt, ref, voice.alt[0][1], "english", False, resemblyzer_embedder)
    assert columns["quality_verdict_valid"] is True
    assert columns["speaker_embedder"] == "resemblyzer-0.1.4"
    assert isinstance(columns["speaker_sim"], float) and columns["speaker_sim"] > 0.85
    assert columns["speaker_drift"] is False
    for flag in ("silent", "nonfinite", "clipped", "duration_anomaly"):
        assert columns[flag] is False, flag


def test_quality_columns_flag_a_switch_and_mark_synthetic_runs(resemblyzer_embedder: Embedder) -> None:
    ref = _clips("slt")[0]
    text = FIXTURES.voice("slt").ref_text
    columns = quality_columns(_switch("slt", "awb"), ref, text, "english", True, resemblyzer_embedder)
    assert columns["speaker_drift"] is True
    assert columns["quality_verdict_valid"] is False  # computed and stored, never a verdict
    assert isinstance(columns["speaker_sim"], float)


def test_quality_columns_without_a_voice_to_compare(resemblyzer_embedder: Embedder) -> None:
    ref = _clips("slt")[0]
    speaker_columns = ("speaker_sim", "speaker_drift_min", "speaker_drift_drop", "speaker_drift")
    silent = quality_columns(np.zeros_like(ref), ref, "Hello.", "english", False, resemblyzer_embedder)
    assert silent["silent"] is True and all(silent[name] is None for name in speaker_columns)
    broken = quality_columns(np.full_like(ref, np.nan), ref, "Hello.", "english", False, resemblyzer_embedder)
    assert broken["nonfinite"] is True and broken["speaker_sim"] is None
    no_embedder = quality_columns(ref, ref, "Hello.", "english", False, None)
    assert no_embedder["speaker_embedder"] is None and no_embedder["speaker_sim"] is None


def test_quality_columns_on_synthetic_weights(
    tiny_reference: Pipeline, resemblyzer_embedder: Embedder
) -> None:
    """Random weights give noise-like audio: every column is computed, and the verdict is marked invalid."""
    voice = FIXTURES.voice("slt")
    ref = _clips("slt")[0]
    text = "The train to the coast leaves in ten minutes."
    request = Request(
        text=text,
        language="english",
        ref_audio=ref,
        ref_text=voice.ref_text,
        mode=CloneMode.XVECTOR,
        max_frames=estimated_frames(text, "english"),
        seed=0,
    )
    audio = measure(tiny_reference, request).audio
    columns = quality_columns(audio, ref, text, "english", True, resemblyzer_embedder)
    assert columns["quality_verdict_valid"] is False
    assert isinstance(columns["audible_fraction"], float) and isinstance(columns["duration_ratio"], float)
    assert columns["nonfinite"] is False and columns["silent"] is False  # tiny's decoder peaks near 0.5
    # Noise-like audio scores far below any same-speaker pair of the fixtures (measured 0.557).
    assert isinstance(columns["speaker_sim"], float) and columns["speaker_sim"] < 0.75
