"""Intelligibility: word and character error rates of a transcript of the output against the input text.

A `Recognizer` turns 24 kHz mono audio into text in the languages it declares. The default is pocketsphinx
with the English model bundled in its wheel (offline, CPU); any other model plugs in as a ``module:Class`` (or
``path/to/file.py:Class``) subclass of `Recognizer`, constructed with the local path of its weights (e.g. a
faster-whisper model directory). A score carries the name of the recogniser that made it: recognisers differ
in their own error rates, so scores of different recognisers are never compared (`AsrScore.delta` refuses).

Text and transcript are normalised alike (`normalize`, defined in docs/metrics.md) before they are aligned:
words for space-delimited languages (WER), characters for Chinese and Japanese (CER).
"""

from __future__ import annotations

import enum
import importlib.metadata
import re
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from qtts_eval.errors import MetricError
from qtts_eval.fixtures import FixtureSet, read_reference_audio
from qtts_eval.metrics.audio import as_mono
from qtts_eval.metrics.plugins import load_model
from qtts_eval.units import SAMPLE_RATE_HZ

DEFAULT_RECOGNIZER = "pocketsphinx"
POCKETSPHINX_RATE_HZ = 16_000  # the bundled en-us acoustic model is trained on 16 kHz speech
# At most this many HMMs active per frame (pocketsphinx's default is 30000). On noise-like output (synthetic
# weights) the search otherwise spreads: 0.72 s of CPU per audio second against 0.20 with the cap, while the
# fixture clips' mean WER stayed 0.339 (1500 raised it to 0.428). Measured 2026-11-30 (docs/benchmarks.md).
POCKETSPHINX_MAX_HMM_PER_FRAME = 3000
POCKETSPHINX_FRAME_S = 0.01  # pocketsphinx's feature frame rate is 100 frames per second (-frate 100)
_ALTERNATE_PRONUNCIATION = re.compile(r"\(\d+\)$")  # pocketsphinx marks dictionary variants: word(2)
CHARACTER_LANGUAGES = frozenset({"chinese", "japanese"})  # written without spaces between words: CER
# A request whose error rate is above this is a runaway (issue 28's definition: over 50 % WER): babble or a
# generation that never met EOS, not speech read less well. Summaries report rates with and without them.
RUNAWAY_RATE = 0.5
# Validation (`validate`): 3 s of white noise at -20 dBFS RMS, seeded, as the "no speech at all" case.
NOISE_S = 3.0  # seconds
NOISE_RMS = 0.1  # linear RMS, -20 dBFS: as loud as the fixture speech
NOISE_SEED = 0
NOISE_MIN_RATE = 0.9  # a recogniser that hears words in noise is unusable as an intelligibility judge


class Unit(str, enum.Enum):
    """What an error rate counts."""

    WORD = "word"  # WER: space-delimited languages
    CHARACTER = "character"  # CER: Chinese and Japanese


class Fault(str, enum.Enum):
    """A fault planted in a clean clip's audio to show the error rate catches it."""

    WORD_DROP = "word_drop"  # the longest word that is neither first nor last is cut out
    WORD_SWAP = "word_swap"  # the two longest words change places
    TRUNCATION = "truncation"  # the audio ends after the first half of the words


def unit_for(language: str) -> Unit:
    """The unit error rates of `language` (a fixture language name) are counted in."""
    return Unit.CHARACTER if language in CHARACTER_LANGUAGES else Unit.WORD


class Recognizer(ABC):
    """A speech recogniser. Subclasses loaded by spec take ``model_path`` (a local path) when given."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Names model and weights, e.g. ``pocketsphinx-5.1.1-en-us``; scores compare only within one name."""

    @property
    @abstractmethod
    def languages(self) -> frozenset[str]:
        """Fixture language names (``english``, ``chinese``, ...) it transcribes; others: not applicable."""

    @abstractmethod
    def transcribe(self, audio: npt.NDArray[np.float32], language: str) -> str:
        """The words spoken in float32 mono audio at 24 kHz ("" when it hears none)."""


_POCKETSPHINX_CONFIG = {
    "samprate": POCKETSPHINX_RATE_HZ,
    "maxhmmpf": POCKETSPHINX_MAX_HMM_PER_FRAME,
    "loglevel": "FATAL",  # its progress log goes to stderr on every utterance
}


class PocketsphinxRecognizer(Recognizer):
    """CMU pocketsphinx with the US English acoustic model, dictionary and 3-gram model bundled in its wheel.

    Input is resampled 24 -> 16 kHz with soxr and quantised to 16-bit PCM, the format the model expects. The
    search is capped at POCKETSPHINX_MAX_HMM_PER_FRAME active HMMs per frame.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        if model_path is not None:
            raise MetricError(
                "the bundled pocketsphinx recogniser takes no weights path; plug another model in as "
                "'module:Class' or 'path/to/file.py:Class'"
            )
        from pocketsphinx import Decoder

        self._decoder: Any = Decoder(**_POCKETSPHINX_CONFIG)
        self._aligner: Any = None  # a second decoder in alignment mode, made on first use
        self._name = f"pocketsphinx-{importlib.metadata.version('pocketsphinx')}-en-us"

    @property
    def name(self) -> str:
        return self._name

    @property
    def languages(self) -> frozenset[str]:
        return frozenset({"english"})

    def transcribe(self, audio: npt.NDArray[np.float32], language: str) -> str:
        if language not in self.languages:
            raise MetricError(
                f"{self.name} cannot transcribe {language!r}; it knows {sorted(self.languages)}"
            )
        hypothesis = _decode(self._decoder, _pcm16(audio))
        return hypothesis.hypstr if hypothesis is not None else ""

    def align(self, audio: npt.NDArray[np.float32], text: str) -> tuple[WordSpan, ...]:
        """Where each word of `text` (English, normalised) is spoken: forced alignment, in seconds."""
        words = normalize(text, "english")
        if self._aligner is None:
            from pocketsphinx import Decoder

            self._aligner = Decoder(**_POCKETSPHINX_CONFIG)
        aligner = self._aligner
        try:
            aligner.set_align_text(" ".join(words))
        except RuntimeError as exc:
            raise MetricError(f"pocketsphinx cannot align {text!r} (a word not in its dictionary?)") from exc
        _decode(aligner, _pcm16(audio))
        spans = []
        for segment in aligner.seg():
            word = _ALTERNATE_PRONUNCIATION.sub("", segment.word)  # "drifted(2)" is a variant of "drifted"
            if word in words:  # not silence or a filler
                start_s = segment.start_frame * POCKETSPHINX_FRAME_S
                spans.append(WordSpan(word, start_s, (segment.end_frame + 1) * POCKETSPHINX_FRAME_S))
        if [span.word for span in spans] != words:
            raise MetricError(f"pocketsphinx aligned {[s.word for s in spans]} to {words}")
        return tuple(spans)


def _pcm16(audio: npt.NDArray[np.float32]) -> bytes:
    samples = as_mono(audio)
    if samples.size == 0:
        raise MetricError("cannot transcribe empty audio")
    # NaN/Inf samples carry no sound; the `nonfinite` column reports them, the words around them still count.
    samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    resampled = np.asarray(soxr.resample(samples, SAMPLE_RATE_HZ, POCKETSPHINX_RATE_HZ))
    return bytes((np.clip(resampled, -1.0, 1.0) * 32767).astype(np.int16).tobytes())


def _decode(decoder: Any, pcm: bytes) -> Any:
    # Feature extraction keeps state between utterances (cepstral mean estimates): without a reset, a clip's
    # transcript depended on the clip decoded before it (seen on kal16/ref).
    decoder.reinit_feat()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return decoder.hyp()


@dataclass(frozen=True)
class WordSpan:
    """One word of a forced alignment."""

    word: str  # normalised word
    start_s: float  # seconds from the start of the audio
    end_s: float  # seconds from the start of the audio


# --- normalisation (docs/metrics.md, "Intelligibility") -----------------------------------------------------

_ONES = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"),
    *("twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth"}
_ORDINAL_WORDS |= {"nine": "ninth", "twelve": "twelfth"}
_CURRENCIES = {"$": ("dollars", "cents"), "£": ("pounds", "pence"), "€": ("euros", "cents")}
_YEARS = (range(1100, 2000), range(2010, 2100))  # read in pairs: "nineteen eighty four", "twenty twenty five"


def _cardinal(number: int) -> str:
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_cardinal(rest)}" if rest else "")
    for scale, word in _SCALES:
        if number >= scale:
            high, rest = divmod(number, scale)
            return f"{_cardinal(high)} {word}" + (f" {_cardinal(rest)}" if rest else "")
    raise AssertionError("unreachable: every number >= 1000 has a scale")


def _integer(digits: str) -> str:
    number = int(digits)
    if len(digits) == 4 and any(number in years for years in _YEARS):
        high, low = divmod(number, 100)
        tail = "hundred" if low == 0 else f"oh {_ONES[low]}" if low < 10 else _cardinal(low)
        return f"{_cardinal(high)} {tail}"
    return _cardinal(number)


def _ordinal(digits: str) -> str:
    *head, last = _cardinal(int(digits)).split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _decimal(whole: str, fraction: str) -> str:
    return f"{_integer(whole)} point {' '.join(_ONES[int(digit)] for digit in fraction)}"


def _money(match: re.Match[str]) -> str:
    major, minor = _CURRENCIES[match.group(1)]
    words = f" {_cardinal(int(match.group(2).replace(',', '')))} {major} "
    cents = match.group(3)
    return words + (f"{_cardinal(int(cents))} {minor} " if cents and int(cents) else "")


def _time(match: re.Match[str]) -> str:
    hour, minute = _cardinal(int(match.group(1))), int(match.group(2))
    if minute == 0:
        return f" {hour} "
    return f" {hour} {'oh ' if minute < 10 else ''}{_cardinal(minute)} "


# English number readings, applied in this order (each rewrites what the next would misread).
_NUMBER_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"([$£€])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d\d))?(?!\d)"), _money),
    (re.compile(r"(?<![\d:])(\d{1,2}):(\d\d)(?![\d:])"), _time),
    (re.compile(r"(?<!\d)(\d+)(?:st|nd|rd|th)\b"), lambda m: f" {_ordinal(m.group(1))} "),
    (re.compile(r"(?<!\d)(\d+)%"), lambda m: f" {_integer(m.group(1))} percent "),
    (
        re.compile(r"(?<![\d,])(\d{1,3}(?:,\d{3})+)(?![\d,])"),
        lambda m: f" {_cardinal(int(m[1].replace(',', '')))} ",
    ),
    (re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])"), lambda m: f" {_decimal(m.group(1), m.group(2))} "),
    (re.compile(r"\d+"), lambda m: f" {_integer(m.group(0))} "),
)


def normalize(text: str, language: str) -> list[str]:
    """The units of `text` (words; characters for Chinese and Japanese), normalised as docs/metrics.md says.

    Both sides of a comparison go through it: Unicode NFKC and case folding; punctuation and symbols removed;
    for words, diacritics removed and inner apostrophes kept; for English, numbers read out as words.
    """
    folded = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    if unit_for(language) is Unit.CHARACTER:
        return [char for char in folded if unicodedata.category(char)[0] in "LN"]
    if language == "english":
        for pattern, reading in _NUMBER_RULES:
            folded = pattern.sub(reading, folded)
    stripped = "".join(
        char for char in unicodedata.normalize("NFKD", folded) if unicodedata.category(char) != "Mn"
    )
    spaced = "".join(char if char.isalnum() or char == "'" else " " for char in stripped)
    return [word for word in (token.strip("'") for token in spaced.split()) if word]


# --- scores ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsrScore:
    """The error rate of one transcript against its text, and the recogniser it came from."""

    recognizer: str  # Recognizer.name; a score means nothing without it
    unit: Unit  # words (WER) or characters (CER)
    transcript: str  # the recogniser's output, as it gave it
    reference_length: int  # units in the normalised text
    substitutions: int  # units heard as another unit
    deletions: int  # units of the text not heard
    insertions: int  # units heard that the text does not have

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions of the best alignment."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference_length: 0 is perfect; can exceed 1 when the transcript adds units."""
        return self.errors / self.reference_length

    def delta(self, other: AsrScore) -> float:
        """self.rate − other.rate; refuses scores of different recognisers or units."""
        if (other.recognizer, other.unit) != (self.recognizer, self.unit):
            raise MetricError(
                f"cannot compare a {self.unit.value} error rate from {self.recognizer!r} with a "
                f"{other.unit.value} error rate from {other.recognizer!r}: each recogniser has its own errors"
            )
        return self.rate - other.rate


def edit_counts(reference: list[str], hypothesis: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-edit alignment of two unit sequences."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = np.zeros((rows, cols), dtype=np.int64)
    cost[:, 0] = np.arange(rows)
    cost[0, :] = np.arange(cols)
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i, j] = min(
                cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]),
                cost[i - 1, j] + 1,
                cost[i, j - 1] + 1,
            )
    substitutions = deletions = insertions = 0
    i, j = rows - 1, cols - 1
    while i or j:  # walk back along one optimal path, preferring the diagonal
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            substitutions += int(reference[i - 1] != hypothesis[j - 1])
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            deletions, i = deletions + 1, i - 1
        else:
            insertions, j = insertions + 1, j - 1
    return substitutions, deletions, insertions


def score_transcript(text: str, transcript: str, language: str, recognizer: str) -> AsrScore:
    """The error rate of `transcript` against `text`, both normalised for `language`."""
    reference = normalize(text, language)
    if not reference:
        raise MetricError(f"the text {text!r} has nothing to score once normalised")
    substitutions, deletions, insertions = edit_counts(reference, normalize(transcript, language))
    return AsrScore(
        recognizer=recognizer,
        unit=unit_for(language),
        transcript=transcript,
        reference_length=len(reference),
        substitutions=substitutions,
        deletions=deletions,
        insertions=insertions,
    )


def intelligibility(
    audio: npt.NDArray[np.float32], text: str, language: str, recognizer: Recognizer
) -> AsrScore:
    """Transcribe `audio` (24 kHz mono) and score it against the `text` it should say."""
    if language not in recognizer.languages:
        raise MetricError(
            f"{recognizer.name} cannot transcribe {language!r}; it knows {sorted(recognizer.languages)}"
        )
    return score_transcript(text, recognizer.transcribe(audio, language), language, recognizer.name)


def load_recognizer(spec: str = DEFAULT_RECOGNIZER, model_path: Path | str | None = None) -> Recognizer:
    """Create the recogniser `spec` names: ``pocketsphinx``, ``package.module:Class`` or ``file.py:Class``.

    The class must subclass `Recognizer`; it is called with no arguments, or with ``model_path=Path(...)``
    when `model_path` is given (e.g. a faster-whisper model directory).
    """
    return load_model(spec, Recognizer, _BUILTIN, "recognizer", model_path)


_BUILTIN: dict[str, type[Recognizer]] = {"pocketsphinx": PocketsphinxRecognizer}


# --- validation on the fixture voices --------------------------------------------------------------------


def plant(
    audio: npt.NDArray[np.float32], spans: tuple[WordSpan, ...], fault: Fault
) -> npt.NDArray[np.float32]:
    """`audio` with `fault` planted at the word boundaries `spans` give (at least three words)."""
    if len(spans) < 3:
        raise MetricError(f"planting a fault needs at least 3 aligned words, got {len(spans)}")

    def at(seconds: float) -> int:
        return min(audio.size, round(seconds * SAMPLE_RATE_HZ))

    def duration(span: WordSpan) -> float:
        return span.end_s - span.start_s

    if fault is Fault.WORD_DROP:
        cut = max(spans[1:-1], key=duration)
        return np.concatenate([audio[: at(cut.start_s)], audio[at(cut.end_s) :]])
    if fault is Fault.WORD_SWAP:
        first, second = sorted(sorted(spans, key=duration)[-2:], key=lambda span: span.start_s)
        a, b, c, d = at(first.start_s), at(first.end_s), at(second.start_s), at(second.end_s)
        return np.concatenate([audio[:a], audio[c:d], audio[b:c], audio[a:b], audio[d:]])
    return audio[: at(spans[len(spans) // 2 - 1].end_s)]


@dataclass(frozen=True)
class ClipValidation:
    """One fixture clip: the recogniser on the clean recording and on each planted fault."""

    voice_id: str  # fixture voice
    clip: str  # file stem: ref, alt_1, alt_2
    text: str  # the clip's transcript in voices.json
    audio_s: float  # clip length, seconds
    clean: AsrScore  # the recording as it is
    planted: tuple[tuple[Fault, AsrScore], ...]  # the recording with each fault planted, in Fault order

    def score(self, fault: Fault | None) -> AsrScore:
        """The clean score (None) or that of a planted fault."""
        return self.clean if fault is None else dict(self.planted)[fault]


@dataclass(frozen=True)
class AsrValidation:
    """A recogniser's error rates on the fixture voices' recordings, with faults planted, and on noise."""

    recognizer: str  # Recognizer.name
    clips: tuple[ClipValidation, ...]  # every clip of every fixture voice
    noise: AsrScore  # NOISE_S of white noise scored against the first voice's first alternate text
    cpu_s_per_audio_s: float  # process CPU time to transcribe the clean clips / their total length

    def mean_rate(self, fault: Fault | None = None) -> float:
        """Mean over clips of the per-clip error rate (clean for None)."""
        return float(np.mean([clip.score(fault).rate for clip in self.clips]))

    def pooled_rate(self, fault: Fault | None = None) -> float:
        """All errors over all reference units of the clips (clean for None)."""
        scores = [clip.score(fault) for clip in self.clips]
        return sum(s.errors for s in scores) / sum(s.reference_length for s in scores)

    def raised(self, fault: Fault) -> int:
        """Clips whose error rate the fault raised."""
        return sum(clip.score(fault).rate > clip.clean.rate for clip in self.clips)

    def problems(self) -> list[str]:
        """Why the recogniser fails as a judge: a fault that does not raise the mean rate; words in noise."""
        found = [
            f"{fault.value} did not raise the mean error rate ({self.mean_rate(fault):.3f} <= "
            f"{self.mean_rate():.3f} clean)"
            for fault in Fault
            if self.mean_rate(fault) <= self.mean_rate()
        ]
        if self.noise.rate < NOISE_MIN_RATE:
            found.append(
                f"noise scored {self.noise.rate:.3f} < {NOISE_MIN_RATE} (heard {self.noise.transcript!r})"
            )
        return found


def validate(fixtures: FixtureSet, recognizer: Recognizer, aligner: PocketsphinxRecognizer) -> AsrValidation:
    """Score `recognizer` on every English fixture clip as recorded and with each fault planted, and on noise.

    Faults are planted in the audio at word boundaries from `aligner`'s forced alignment of the clip's own
    transcript, whatever recogniser is under test.
    """
    clips = []
    cpu_s = audio_s = 0.0
    for voice in fixtures.voices.values():
        for path, text in ((voice.ref_wav, voice.ref_text), *voice.alt):
            audio = read_reference_audio(path)[0]
            started = time.process_time()
            clean = intelligibility(audio, text, "english", recognizer)
            cpu_s += time.process_time() - started
            audio_s += audio.size / SAMPLE_RATE_HZ
            spans = aligner.align(audio, text)
            planted = tuple(
                (fault, intelligibility(plant(audio, spans, fault), text, "english", recognizer))
                for fault in Fault
            )
            clips.append(
                ClipValidation(voice.id, path.stem, text, audio.size / SAMPLE_RATE_HZ, clean, planted)
            )
    noise = np.random.default_rng(NOISE_SEED).standard_normal(round(NOISE_S * SAMPLE_RATE_HZ)) * NOISE_RMS
    first_text = next(iter(fixtures.voices.values())).alt[0][1]
    return AsrValidation(
        recognizer=recognizer.name,
        clips=tuple(clips),
        noise=intelligibility(noise.astype(np.float32), first_text, "english", recognizer),
        cpu_s_per_audio_s=cpu_s / audio_s,
    )
