"""Speaker similarity: cosine similarity of speaker embeddings of generated audio and the reference clip.

An `Embedder` turns 24 kHz mono audio into a vector. The default is resemblyzer's VoiceEncoder with the
weights bundled in its package (offline); any other model plugs in as a ``module:Class`` (or
``path/to/file.py:Class``) subclass of `Embedder`, constructed with the local path of its weights. A score
carries the name of the embedder that made it: scores of different embedders live on different scales and
are never compared (`SpeakerScore.delta` refuses).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from qtts_eval.errors import MetricError, NoSpeechError
from qtts_eval.fixtures import FixtureSet, read_reference_audio
from qtts_eval.metrics.audio import as_mono
from qtts_eval.metrics.plugins import load_model
from qtts_eval.units import SAMPLE_RATE_HZ

RESEMBLYZER_RATE_HZ = 16_000  # resemblyzer's mel front end is built for 16 kHz (its hparams.sampling_rate)
MEL_STEP_S = 0.010  # resemblyzer's mel hop (hparams.mel_window_step, 10 ms)
MIN_VOICED_S = 0.3  # 300 ms: less voiced audio than this after silence trimming is treated as no speech
# Drift windows and threshold, chosen on the fixture clips with resemblyzer 0.1.4 (tests/test_speaker.py
# checks both sides): with 2 s windows every 1 s, windows of clean clips drop at most 0.06 below their first
# window, while a clip that switches to another fixture voice halfway drops 0.15 (awb -> rms, the closest
# pair) to 0.44. 1.6 s windows (one resemblyzer partial) were noisier: clean clips dropped up to 0.14.
DRIFT_WINDOW_S = 2.0  # seconds
DRIFT_HOP_S = 1.0  # seconds
DRIFT_MAX_DROP = 0.1  # cosine similarity
DEFAULT_EMBEDDER = "resemblyzer"

Embedding = npt.NDArray[np.float32]


class Embedder(ABC):
    """A speaker embedding model. Subclasses loaded by spec take ``model_path`` (a local path) when given."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Names model and weights, e.g. ``resemblyzer-0.1.4``; scores compare only within one name."""

    @abstractmethod
    def embed(self, audio: npt.NDArray[np.float32]) -> Embedding:
        """Embed float32 mono audio at 24 kHz; raise `NoSpeechError` when it holds no speech to embed."""

    def embed_windows(
        self, audio: npt.NDArray[np.float32], window_s: float, hop_s: float
    ) -> list[tuple[float, Embedding]]:
        """(start seconds, embedding) of every whole window holding speech; audio shorter than one window
        is one window. Embedders that can batch override this."""
        samples = _checked_audio(audio).astype(np.float32)
        width, step = round(window_s * SAMPLE_RATE_HZ), round(hop_s * SAMPLE_RATE_HZ)
        found = []
        for start in range(0, max(1, samples.size - width + 1), step):
            with contextlib.suppress(NoSpeechError):
                found.append((start / SAMPLE_RATE_HZ, self.embed(samples[start : start + width])))
        return found


class ResemblyzerEmbedder(Embedder):
    """resemblyzer's VoiceEncoder (3-layer LSTM d-vector) with the weights bundled in the package.

    Input is resampled 24 -> 16 kHz with soxr, then preprocessed as resemblyzer documents (volume raised to
    -30 dBFS if quieter, silences trimmed with its WebRTC VAD), so scores are comparable to published ones.
    """

    def __init__(self, model_path: Path | None = None, device: str = "cpu", threads: int | None = 1) -> None:
        """`model_path`: a VoiceEncoder state file to use instead of the bundled ``pretrained.pt``.
        `threads`: torch intra-op threads while embedding (None leaves torch's setting alone): the model is
        too small to gain from threads, and on a busy 2-core CPU two threads made a 5 s clip take 5-7 s to
        embed against 0.05 s with one."""
        with warnings.catch_warnings():
            # webrtcvad imports the deprecated pkg_resources and resemblyzer a deprecated scipy path: noise
            # at every import, nothing to act on here (pyproject.toml explains the setuptools cap).
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder, preprocess_wav

        self._name = f"resemblyzer-{importlib.metadata.version('resemblyzer')}"
        if model_path is not None:
            self._name += f"@sha256:{_sha256_prefix(Path(model_path))}"
        self._preprocess = preprocess_wav
        self._encoder = VoiceEncoder(device, verbose=False, weights_fpath=model_path)
        self._threads = threads

    @property
    def name(self) -> str:
        return self._name

    def _voiced(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        samples = _checked_audio(audio)
        if not np.any(samples):
            raise NoSpeechError("the audio is digital silence")
        resampled = soxr.resample(samples, SAMPLE_RATE_HZ, RESEMBLYZER_RATE_HZ).astype(np.float32)
        voiced: npt.NDArray[np.float32] = self._preprocess(resampled)
        if voiced.size < MIN_VOICED_S * RESEMBLYZER_RATE_HZ:
            raise NoSpeechError(
                f"resemblyzer's VAD kept {voiced.size / RESEMBLYZER_RATE_HZ:.2f} s of "
                f"{samples.size / SAMPLE_RATE_HZ:.2f} s as speech (at least {MIN_VOICED_S:g} s needed)"
            )
        return voiced

    def embed(self, audio: npt.NDArray[np.float32]) -> Embedding:
        voiced = self._voiced(audio)
        with _torch_threads(self._threads):
            return np.asarray(self._encoder.embed_utterance(voiced), dtype=np.float32)

    def embed_windows(
        self, audio: npt.NDArray[np.float32], window_s: float, hop_s: float
    ) -> list[tuple[float, Embedding]]:
        """One pass: silences trimmed and the mel computed once over the whole output, then every window
        embedded in one batch (about 15x faster than window by window on a 60 s output). Window starts are
        on the trimmed timeline."""
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        mel = wav_to_mel_spectrogram(self._voiced(audio))  # [frames, 40], one frame per MEL_STEP_S
        width, step = round(window_s / MEL_STEP_S), round(hop_s / MEL_STEP_S)
        starts = range(0, max(1, mel.shape[0] - width + 1), step)
        batch = torch.from_numpy(np.stack([mel[start : start + width] for start in starts])).float()
        with _torch_threads(self._threads), torch.no_grad():
            embeddings = self._encoder(batch.to(self._encoder.device)).cpu().numpy().astype(np.float32)
        return [(start * MEL_STEP_S, embedding) for start, embedding in zip(starts, embeddings, strict=True)]


@dataclass(frozen=True)
class SpeakerScore:
    """A speaker similarity and the embedder it came from."""

    embedder: str  # Embedder.name; a score means nothing without it
    value: float  # cosine similarity, in [-1, 1]

    def delta(self, other: SpeakerScore) -> float:
        """self − other; refuses scores from different embedders, whose scales differ."""
        if other.embedder != self.embedder:
            raise MetricError(
                f"cannot compare a speaker score from {self.embedder!r} with one from {other.embedder!r}: "
                f"each embedder has its own scale"
            )
        return self.value - other.value


@dataclass(frozen=True)
class SpeakerDrift:
    """Speaker similarity of successive windows of one output to the reference."""

    embedder: str  # Embedder.name
    window_s: float  # window length, seconds
    hop_s: float  # step between window starts, seconds
    starts_s: tuple[float, ...]  # start of each scored window (windows without speech are skipped), seconds
    similarities: tuple[float, ...]  # cosine similarity of each scored window to the reference
    min: float  # lowest window similarity
    drop: float  # first window's similarity minus the lowest: how far the voice moved away after the start
    drifted: bool  # drop > DRIFT_MAX_DROP


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cosine of the angle between two embeddings of the same shape."""
    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape:
        raise MetricError(f"embeddings must be 1-D of one shape, got {first.shape} and {second.shape}")
    norms = float(np.linalg.norm(first) * np.linalg.norm(second))
    if not np.isfinite(norms) or norms == 0.0:
        raise MetricError("an embedding is zero or not finite")
    return float(np.dot(first, second) / norms)


def speaker_similarity(
    audio: npt.NDArray[np.float32], reference: npt.NDArray[np.float32], embedder: Embedder
) -> SpeakerScore:
    """Similarity of the speaker in `audio` to the one in `reference` (both 24 kHz mono)."""
    value = cosine_similarity(embedder.embed(audio), embedder.embed(reference))
    return SpeakerScore(embedder=embedder.name, value=value)


def speaker_drift(
    audio: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    embedder: Embedder,
    window_s: float = DRIFT_WINDOW_S,
    hop_s: float = DRIFT_HOP_S,
) -> SpeakerDrift:
    """Windowed similarity of `audio` to `reference`: catches a voice that changes mid-utterance."""
    return speaker_drift_from_embedding(audio, embedder.embed(reference), embedder, window_s, hop_s)


def speaker_drift_from_embedding(
    audio: npt.NDArray[np.float32],
    reference_embedding: Embedding,
    embedder: Embedder,
    window_s: float = DRIFT_WINDOW_S,
    hop_s: float = DRIFT_HOP_S,
) -> SpeakerDrift:
    """`speaker_drift` against an embedding already made by `embedder` (saves re-embedding the reference).

    Audio shorter than one window is one window; windows in which the embedder finds no speech are skipped,
    and `NoSpeechError` is raised when none has any.
    """
    if not 0 < hop_s <= window_s:
        raise MetricError(f"need 0 < hop_s <= window_s, got hop_s={hop_s} and window_s={window_s}")
    scored = [
        (start, cosine_similarity(embedding, reference_embedding))
        for start, embedding in embedder.embed_windows(audio, window_s, hop_s)
    ]
    if not scored:
        raise NoSpeechError(f"no {window_s:g} s window of the audio holds speech")
    similarities = tuple(value for _, value in scored)
    lowest = min(similarities)
    drop = similarities[0] - lowest
    return SpeakerDrift(
        embedder=embedder.name,
        window_s=window_s,
        hop_s=hop_s,
        starts_s=tuple(start for start, _ in scored),
        similarities=similarities,
        min=lowest,
        drop=drop,
        drifted=drop > DRIFT_MAX_DROP,
    )


@dataclass(frozen=True)
class SpeakerMatrix:
    """Pairwise speaker similarity of every fixture clip (each voice's reference and alternate clips)."""

    embedder: str  # Embedder.name
    clips: tuple[tuple[str, str], ...]  # (voice id, clip file stem) for each row and column
    values: npt.NDArray[np.float64]  # symmetric cosine similarities; the diagonal is 1

    def same_speaker_min(self, voices: Collection[str]) -> float:
        """Lowest similarity between two different clips of one voice, over `voices`."""
        return min(self._pairs(voices, same=True))

    def cross_speaker_max(self, voices: Collection[str]) -> float:
        """Highest similarity between clips of two different voices, both in `voices`."""
        return max(self._pairs(voices, same=False))

    def separates(self, voices: Collection[str]) -> bool:
        """Every same-speaker pair of `voices` scores above every cross-speaker pair among them."""
        return self.same_speaker_min(voices) > self.cross_speaker_max(voices)

    def _pairs(self, voices: Collection[str], same: bool) -> list[float]:
        unknown = set(voices) - {voice for voice, _ in self.clips}
        if unknown:
            raise MetricError(f"voices not in the matrix: {', '.join(sorted(unknown))}")
        pairs = [
            float(self.values[i, j])
            for i, (voice_i, _) in enumerate(self.clips)
            for j, (voice_j, _) in enumerate(self.clips)
            if i < j and voice_i in voices and voice_j in voices and (voice_i == voice_j) == same
        ]
        if not pairs:
            kind = "same-speaker" if same else "cross-speaker"
            raise MetricError(f"no {kind} clip pairs among voices {', '.join(sorted(voices))}")
        return pairs


def speaker_matrix(fixtures: FixtureSet, embedder: Embedder) -> SpeakerMatrix:
    """Embed every clip of every fixture voice once and compare all pairs."""
    clips: list[tuple[str, str]] = []
    embeddings: list[Embedding] = []
    for voice in fixtures.voices.values():
        for path in (voice.ref_wav, *(wav for wav, _ in voice.alt)):
            clips.append((voice.id, path.stem))
            embeddings.append(embedder.embed(read_reference_audio(path)[0]))
    count = len(clips)
    values = np.ones((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            values[i, j] = values[j, i] = cosine_similarity(embeddings[i], embeddings[j])
    return SpeakerMatrix(embedder=embedder.name, clips=tuple(clips), values=values)


def load_embedder(spec: str = DEFAULT_EMBEDDER, model_path: Path | str | None = None) -> Embedder:
    """Create the embedder `spec` names: ``resemblyzer``, ``package.module:Class`` or ``file.py:Class``.

    The class must subclass `Embedder`; it is called with no arguments, or with ``model_path=Path(...)``
    when `model_path` is given (e.g. the directory of a WavLM + ECAPA-TDNN verifier).
    """
    return load_model(spec, Embedder, _BUILTIN, "embedder", model_path)


_BUILTIN: dict[str, type[Embedder]] = {"resemblyzer": ResemblyzerEmbedder}


def _checked_audio(audio: npt.ArrayLike) -> npt.NDArray[np.float64]:
    samples = as_mono(audio)
    if samples.size == 0:
        raise MetricError("cannot embed empty audio")
    if not np.all(np.isfinite(samples)):
        raise MetricError("cannot embed audio with NaN or infinite samples")
    return samples


def _sha256_prefix(path: Path) -> str:
    if not path.is_file():
        raise MetricError(f"speaker embedder weights {path} do not exist")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run with `count` torch intra-op threads (a process-wide setting), restoring the previous count."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
