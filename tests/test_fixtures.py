"""The committed fixtures, their manifest check, and reference-audio validation."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from qtts_eval.errors import AudioError, FixtureError
from qtts_eval.fixtures import (
    DEFAULT_FIXTURES_DIR,
    ENV_FIXTURES_DIR,
    MANIFEST_NAME,
    SAMPLE_RATE_HZ,
    FixtureSet,
    load_fixtures,
    read_reference_audio,
    write_manifest,
)

# What the benchmark plan needs from the text fixtures.
REQUIRED_CATEGORIES = {
    "short",
    "medium",
    "long",
    "numbers_dates",
    "punctuation",
    "one_word",
    "japanese",
    "chinese",
    "code_switched",
    "long_form",
}
# 300 codec frames are 24 s; at a brisk 180 words/min that is about 72 words, so 110 words clearly exceed it.
LONG_FORM_MIN_WORDS = 110
REF_CLIP_SECONDS = (4.0, 8.0)  # the length this project chose for cloning references
SILENCE_RMS = 0.01  # flite speech measures 0.036-0.18 RMS; a silent or broken clip falls far below this

HAN = re.compile(r"[\u4e00-\u9fff]")
KANA = re.compile(r"[\u3040-\u30ff]")
LATIN_WORD = re.compile(r"[A-Za-z]{3,}")


@pytest.fixture(scope="module")
def committed() -> FixtureSet:
    return load_fixtures(DEFAULT_FIXTURES_DIR)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of the committed fixtures that a test may damage."""
    copy = tmp_path / "fixtures"
    shutil.copytree(DEFAULT_FIXTURES_DIR, copy)
    return copy


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE_HZ, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def tone(seconds: float, rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)


# --- the committed fixtures -------------------------------------------------------------------------------


def test_committed_fixtures_load_with_a_version_and_hash(committed: FixtureSet) -> None:
    assert committed.version.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", committed.content_hash)
    assert len(committed.texts) >= 14
    assert len(committed.voices) >= 3


def test_required_categories_and_languages_are_present(committed: FixtureSet) -> None:
    categories = {t.category for t in committed.texts.values()}
    assert categories >= REQUIRED_CATEGORIES, f"missing: {REQUIRED_CATEGORIES - categories}"
    languages = {t.language for t in committed.texts.values()}
    assert languages >= {"english", "chinese", "japanese", "auto"}


def test_texts_are_written_in_their_declared_language(committed: FixtureSet) -> None:
    for text in committed.texts.values():
        if text.language == "japanese":
            assert KANA.search(text.text), text.id
        elif text.language == "chinese":
            assert HAN.search(text.text) and not KANA.search(text.text), text.id
        elif text.language == "english":
            assert not HAN.search(text.text) and not KANA.search(text.text), text.id
    for text in committed.texts.values():
        if text.category == "code_switched":
            assert text.language == "auto"
            assert HAN.search(text.text) and LATIN_WORD.search(text.text), text.id


def test_long_form_text_exceeds_300_frames_of_speech(committed: FixtureSet) -> None:
    long_form = [t for t in committed.texts.values() if t.category == "long_form"]
    assert long_form
    for text in long_form:
        assert len(text.text.split()) >= LONG_FORM_MIN_WORDS, text.id


def test_one_word_text_is_at_most_two_words(committed: FixtureSet) -> None:
    one_word = [t for t in committed.texts.values() if t.category == "one_word"]
    assert one_word
    for text in one_word:
        assert 1 <= len(text.text.split()) <= 2, text.id


def test_every_voice_is_24khz_mono_speech_with_a_transcript(committed: FixtureSet) -> None:
    for voice in committed.voices.values():
        clips = [(voice.ref_wav, voice.ref_text), *voice.alt]
        assert len(voice.alt) >= 2, voice.id
        for wav, transcript in clips:
            assert transcript.strip() == transcript and transcript, wav
            info = sf.info(str(wav))
            assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE_HZ, 1, "PCM_16"), wav
            samples, rate = read_reference_audio(wav)
            assert rate == SAMPLE_RATE_HZ
            assert samples.dtype == np.float32 and samples.ndim == 1
            assert float(np.sqrt(np.mean(samples**2))) > SILENCE_RMS, f"{wav} looks silent"
        ref_seconds = sf.info(str(voice.ref_wav)).duration
        assert REF_CLIP_SECONDS[0] <= ref_seconds <= REF_CLIP_SECONDS[1], voice.ref_wav


def test_voices_are_distinct_speakers_of_both_genders(committed: FixtureSet) -> None:
    voices = list(committed.voices.values())
    assert len({v.speaker for v in voices}) == len(voices)
    assert {"female", "male"} <= {v.gender for v in voices}
    assert len({v.ref_wav for v in voices}) == len(voices)


def test_env_var_selects_another_fixtures_dir(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FIXTURES_DIR, str(tree))
    assert load_fixtures().root == tree.resolve()


# --- lookups ------------------------------------------------------------------------------------------------


def test_unknown_text_id_suggests_the_close_one(committed: FixtureSet) -> None:
    with pytest.raises(FixtureError, match=r"unknown text id 'en_shrot'.*did you mean 'en_short'") as info:
        committed.text("en_shrot")
    assert "en_long_form" in str(info.value)  # the valid ids are listed


def test_unknown_voice_id_lists_valid_ids(committed: FixtureSet) -> None:
    with pytest.raises(FixtureError, match=r"did you mean 'slt'") as info:
        committed.voice("stl")
    assert all(voice_id in str(info.value) for voice_id in committed.voices)
    assert committed.voice("slt").id == "slt"


# --- manifest checks ----------------------------------------------------------------------------------------


def test_modified_file_is_reported_by_name(tree: Path) -> None:
    wav = tree / "voices" / "slt" / "ref.wav"
    data = bytearray(wav.read_bytes())
    data[-100] ^= 0x40  # one changed sample: still a valid WAV, so only the hash can notice
    wav.write_bytes(bytes(data))
    with pytest.raises(FixtureError, match=r"voices/slt/ref\.wav: contents changed.*--rehash"):
        load_fixtures(tree)


def test_missing_manifest_is_an_error(tree: Path) -> None:
    (tree / MANIFEST_NAME).unlink()
    with pytest.raises(FixtureError, match=r"manifest\.json: no manifest"):
        load_fixtures(tree)


def test_listed_file_missing_is_reported_by_name(tree: Path) -> None:
    (tree / "voices" / "rms" / "alt_2.wav").unlink()
    with pytest.raises(FixtureError, match=r"voices/rms/alt_2\.wav: listed in .* but missing.*--rehash"):
        load_fixtures(tree)


def test_unlisted_fixture_file_is_reported_by_name(tree: Path) -> None:
    shutil.copy(tree / "voices" / "slt" / "ref.wav", tree / "voices" / "slt" / "extra.wav")
    with pytest.raises(FixtureError, match=r"voices/slt/extra\.wav: fixture file not listed.*--rehash"):
        load_fixtures(tree)


def edit_manifest(tree: Path, **changes: object) -> None:
    path = tree / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def test_manifest_from_a_newer_schema_is_refused(tree: Path) -> None:
    edit_manifest(tree, schema_version=99)
    with pytest.raises(FixtureError, match=r"schema 99 is newer.*upgrade qtts-eval"):
        load_fixtures(tree)


def test_garbled_manifest_is_refused(tree: Path) -> None:
    (tree / MANIFEST_NAME).write_text('{"version": "2026.11.0", "files": {', encoding="utf-8")
    with pytest.raises(FixtureError, match=r"manifest\.json: not valid JSON.*--rehash"):
        load_fixtures(tree)


def test_manifest_without_version_is_refused(tree: Path) -> None:
    edit_manifest(tree, version="")
    with pytest.raises(FixtureError, match=r"manifest\.json: no version"):
        load_fixtures(tree)


def test_hand_edited_file_list_fails_the_content_hash(tree: Path) -> None:
    path = tree / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["files"]["voices/awb/alt_1.wav"]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(FixtureError, match=r"content_hash .* does not match the listed files"):
        load_fixtures(tree)


def test_rehash_makes_an_intentional_change_load_and_keeps_the_version(
    tree: Path, committed: FixtureSet
) -> None:
    texts_path = tree / "texts.json"
    texts = json.loads(texts_path.read_text(encoding="utf-8"))
    texts[0]["text"] = "A deliberately changed sentence."
    texts_path.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(FixtureError, match=r"texts\.json: contents changed"):
        load_fixtures(tree)

    write_manifest(tree)
    reloaded = load_fixtures(tree)
    assert reloaded.version == committed.version
    assert reloaded.content_hash != committed.content_hash
    assert reloaded.text(texts[0]["id"]).text == "A deliberately changed sentence."


def test_rehash_of_an_unchanged_tree_reproduces_the_committed_hash(tree: Path, committed: FixtureSet) -> None:
    write_manifest(tree)
    assert load_fixtures(tree).content_hash == committed.content_hash


def test_new_version_is_written_and_required_without_a_manifest(tree: Path) -> None:
    (tree / MANIFEST_NAME).unlink()
    with pytest.raises(FixtureError, match="no version to keep"):
        write_manifest(tree)
    write_manifest(tree, version="2099.1.0")
    assert load_fixtures(tree).version == "2099.1.0"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda texts: texts.append(dict(texts[0])), r"'en_short' appears more than once"),
        (lambda texts: texts[1].update(text="   "), r"text must be a non-empty string"),
        (lambda texts: texts[2].update(language="klingon"), r"unknown language 'klingon'"),
        (lambda texts: texts[3].pop("category"), r"entry 3 lacks category"),
        (lambda texts: texts[4].update(id="En Punct"), r"'En Punct' is not snake_case"),
    ],
    ids=["duplicate_id", "blank_text", "unknown_language", "missing_key", "bad_id"],
)
def test_invalid_texts_are_refused_and_never_rehashed(
    tree: Path, edit: Callable[[list[dict[str, Any]]], object], problem: str
) -> None:
    texts_path = tree / "texts.json"
    texts = json.loads(texts_path.read_text(encoding="utf-8"))
    edit(texts)
    texts_path.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    manifest_before = (tree / MANIFEST_NAME).read_bytes()
    with pytest.raises(FixtureError, match=problem):
        write_manifest(tree)
    assert (tree / MANIFEST_NAME).read_bytes() == manifest_before


# --- reference audio ----------------------------------------------------------------------------------------


def test_valid_reference_reads_as_float32_mono(tmp_path: Path) -> None:
    samples, rate = read_reference_audio(write_wav(tmp_path / "ok.wav", tone(2.0)))
    assert rate == SAMPLE_RATE_HZ
    assert samples.dtype == np.float32 and samples.shape == (2 * SAMPLE_RATE_HZ,)
    assert np.max(np.abs(samples - tone(2.0))) < 1e-4  # PCM16 quantisation step is 3e-5


def test_corrupt_file_names_the_file_and_the_decoder_reason(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match=r"corrupt\.wav: cannot decode as audio: .*(?i:format)"):
        read_reference_audio(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError, match=r"empty\.wav: cannot decode"):
        read_reference_audio(path)


def test_wrong_sample_rate_is_refused_with_a_sox_command(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "narrow.wav", tone(2.0, 16_000), rate=16_000)
    with pytest.raises(AudioError, match=r"narrow\.wav: sample rate is 16000 Hz.*sox .*-r 24000.*rate -v"):
        read_reference_audio(path)


def test_stereo_is_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "stereo.wav", np.stack([tone(2.0), tone(2.0)], axis=1))
    with pytest.raises(AudioError, match=r"stereo\.wav: has 2 channels.*mono.*sox .*-c 1"):
        read_reference_audio(path)


@pytest.mark.parametrize("seconds", [0.5, 31.0])
def test_too_short_or_too_long_is_refused(tmp_path: Path, seconds: float) -> None:
    path = write_wav(tmp_path / "clip.wav", tone(seconds))
    with pytest.raises(AudioError, match=rf"clip\.wav: lasts {seconds:.2f} s.*1 to 30 s"):
        read_reference_audio(path)


def test_nan_samples_are_refused(tmp_path: Path) -> None:
    samples = tone(2.0)
    samples[SAMPLE_RATE_HZ] = np.nan
    path = write_wav(tmp_path / "nan.wav", samples, subtype="FLOAT")
    with pytest.raises(
        AudioError, match=r"nan\.wav: 1 samples are NaN or infinite \(the first at 1\.000 s\)"
    ):
        read_reference_audio(path)
