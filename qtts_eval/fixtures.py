"""Committed fixtures: the texts to synthesise and the reference voices to clone.

A fixtures directory (the repository's ``fixtures/``, or the one named by ``$QTTS_EVAL_FIXTURES``) holds::

    texts.json           list of {"id", "language", "category", "text"}
    voices/voices.json   list of voices; their wav paths are relative to voices/
    voices/<id>/*.wav    reference clips, 24 kHz mono
    manifest.json        {"schema_version", "version", "files": {path: sha256}, "content_hash"}

`load_fixtures` refuses a tree that differs from its manifest in any way (a listed file missing or changed, a
fixture file not listed, a hand-edited file list), so the manifest's ``version`` and ``content_hash`` name
exactly which inputs a run used. After an intentional change, `write_manifest` (``qtts-eval fixtures
--rehash``) rewrites the manifest; nothing rewrites it implicitly.

``content_hash`` is the sha256 of the UTF-8 lines ``f"{path}\\t{sha256}\\n"``, one per listed file, sorted by
path, where paths are POSIX paths relative to the fixtures directory.

Reference audio is checked, never repaired. `read_reference_audio` raises `AudioError`, naming the file, when:

- the file is missing, or cannot be decoded (empty, corrupt, unknown format): the message has the decoder's
  reason;
- its sample rate is not 24 kHz: the message gives the found rate and a sox command that converts it. We
  refuse instead of resampling because a reference fed at the wrong rate is a classic port bug, and this suite
  exists to make such bugs visible, not to paper over them;
- it has more than one channel: the message gives a sox command that mixes it down;
- it is shorter than 1 s or longer than 30 s;
- any sample is NaN or infinite.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile as sf

from qtts_eval.errors import AudioError, FixtureError
from qtts_eval.units import SAMPLE_RATE_HZ

MIN_REFERENCE_S = 1.0  # below this (12.5 codec frames) a clip holds too little speech to carry a voice
MAX_REFERENCE_S = 30.0  # longer is more likely a mistake than a prompt; ICL context grows 12.5 frames/s

ENV_FIXTURES_DIR = "QTTS_EVAL_FIXTURES"  # names a fixtures directory to use instead of the repository's
DEFAULT_FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"

MANIFEST_NAME = "manifest.json"
TEXTS_NAME = "texts.json"
VOICES_DIR = "voices"
VOICES_NAME = f"{VOICES_DIR}/voices.json"
MANIFEST_SCHEMA_VERSION = 1  # layout of manifest.json; bump when its fields change meaning

# The languages these fixtures exercise, as the model names them; "auto" lets the model detect the language,
# which is what code-switched text needs. The model knows more: add one here together with a fixture for it.
LANGUAGES = frozenset({"english", "chinese", "japanese", "auto"})

_ID_PATTERN = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")  # ids end up in file names and result keys
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_REHASH_HINT = "If the change was intentional, rewrite the manifest with `qtts-eval fixtures --rehash`."

_T = TypeVar("_T")


@dataclass(frozen=True)
class TextFixture:
    """One text to synthesise."""

    id: str  # short snake_case key, e.g. "en_short"
    language: str  # one of LANGUAGES; passed to the model as its language argument
    category: str  # what the text exercises, e.g. "numbers_dates", "long_form"
    text: str  # the exact text to synthesise


@dataclass(frozen=True)
class Voice:
    """One reference speaker: a clip to clone plus extra clips of the same speaker for similarity checks."""

    id: str  # short snake_case key, e.g. "slt"
    speaker: str  # who is speaking, e.g. "CMU ARCTIC speaker SLT"
    gender: str  # as documented by the source
    accent: str  # e.g. "US English"
    source: str  # where the recording comes from, precise enough to regenerate it
    license: str  # terms under which the recording is redistributed
    ref_wav: Path  # absolute path of the reference clip (24 kHz mono)
    ref_text: str  # exact transcript of ref_wav
    alt: tuple[tuple[Path, str], ...]  # other clips of this speaker: (absolute wav path, exact transcript)


@dataclass(frozen=True)
class FixtureSet:
    """A verified fixture directory."""

    root: Path  # the fixtures directory
    version: str  # the manifest's version, e.g. "2026.11.0"
    content_hash: str  # sha256 over every listed file; equal hashes mean byte-identical fixtures
    texts: Mapping[str, TextFixture]  # by id, in file order
    voices: Mapping[str, Voice]  # by id, in file order

    def text(self, text_id: str) -> TextFixture:
        """Return the text fixture `text_id`; an unknown id raises `FixtureError` with suggestions."""
        return _lookup(self.texts, text_id, "text")

    def voice(self, voice_id: str) -> Voice:
        """Return the voice `voice_id`; an unknown id raises `FixtureError` with suggestions."""
        return _lookup(self.voices, voice_id, "voice")


@dataclass(frozen=True)
class _Manifest:
    path: Path
    version: str
    files: Mapping[str, str]  # relative POSIX path -> sha256
    content_hash: str


def fixtures_dir() -> Path:
    """The fixtures directory to use: ``$QTTS_EVAL_FIXTURES`` if set, else the repository's ``fixtures/``."""
    override = os.environ.get(ENV_FIXTURES_DIR)
    return Path(override) if override else DEFAULT_FIXTURES_DIR


def load_fixtures(root: Path | None = None) -> FixtureSet:
    """Load and verify the fixtures under `root` (default: `fixtures_dir()`).

    Raises `FixtureError` when the tree does not match its manifest or a JSON file is malformed, and
    `AudioError` when a voice clip is not a valid reference.
    """
    root = (Path(root) if root is not None else fixtures_dir()).resolve()
    manifest = _read_manifest(root)

    expected_hash = _content_hash(manifest.files)
    if manifest.content_hash != expected_hash:
        raise FixtureError(
            f"{manifest.path}: content_hash {manifest.content_hash} does not match the listed files "
            f"(they hash to {expected_hash}): was the list edited by hand? {_REHASH_HINT}"
        )
    for rel, expected in manifest.files.items():
        path = root / rel
        if not path.is_file():
            raise FixtureError(f"{path}: listed in {manifest.path} but missing. {_REHASH_HINT}")
        actual = _sha256_file(path)
        if actual != expected:
            raise FixtureError(
                f"{path}: contents changed (sha256 {actual}, manifest says {expected}). {_REHASH_HINT}"
            )

    texts = _parse_texts(root)
    voices = _parse_voices(root)
    for rel in _tracked_files(root, voices):
        if rel not in manifest.files:
            raise FixtureError(f"{root / rel}: fixture file not listed in {manifest.path}. {_REHASH_HINT}")
    _check_voice_audio(voices)

    return FixtureSet(
        root=root,
        version=manifest.version,
        content_hash=manifest.content_hash,
        texts=MappingProxyType(texts),
        voices=MappingProxyType(voices),
    )


def write_manifest(root: Path, version: str | None = None) -> Path:
    """Hash the fixtures under `root` into ``manifest.json`` and return its path.

    `version` defaults to the existing manifest's. The texts, voices and voice audio are validated first, so a
    broken tree is never blessed.
    """
    root = Path(root).resolve()
    if version is None:
        if not (root / MANIFEST_NAME).is_file():
            raise FixtureError(f"{root / MANIFEST_NAME}: missing, so there is no version to keep: give one")
        version = _read_manifest(root).version
    if not version.strip():
        raise FixtureError("the fixtures version must be a non-empty string")

    _parse_texts(root)
    voices = _parse_voices(root)
    _check_voice_audio(voices)

    files = {rel: _sha256_file(root / rel) for rel in sorted(_tracked_files(root, voices))}
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "version": version,
        "files": files,
        "content_hash": _content_hash(files),
    }
    path = root / MANIFEST_NAME
    # Write beside the target and rename, so an interrupted rehash never leaves half a manifest.
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_reference_audio(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    """Read a reference clip as float32 mono samples at `SAMPLE_RATE_HZ`; errors: see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as exc:
        raise AudioError(f"{path}: cannot decode as audio: {exc}") from exc

    if rate != SAMPLE_RATE_HZ:
        raise AudioError(
            f"{path}: sample rate is {rate} Hz, but the model takes {SAMPLE_RATE_HZ} Hz only. This suite "
            f"does not resample for you, so that a wrong-rate reference shows up instead of being hidden. "
            f"Convert it with: {_sox_command(path, f'-r {SAMPLE_RATE_HZ} -c 1 -b 16', 'rate -v')}"
        )
    channels = data.shape[1]
    if channels != 1:
        raise AudioError(
            f"{path}: has {channels} channels, but a reference must be mono. Mix it down with: "
            f"{_sox_command(path, '-c 1', '')}"
        )

    samples = np.ascontiguousarray(data[:, 0])
    duration_s = len(samples) / SAMPLE_RATE_HZ
    if not MIN_REFERENCE_S <= duration_s <= MAX_REFERENCE_S:
        raise AudioError(
            f"{path}: lasts {duration_s:.2f} s, but a reference must last "
            f"{MIN_REFERENCE_S:g} to {MAX_REFERENCE_S:g} s"
        )
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        raise AudioError(
            f"{path}: {bad.size} samples are NaN or infinite (the first at {bad[0] / SAMPLE_RATE_HZ:.3f} s)"
        )
    return samples, SAMPLE_RATE_HZ


def _lookup(items: Mapping[str, _T], key: str, kind: str) -> _T:
    if key in items:
        return items[key]
    message = f"unknown {kind} id {key!r}"
    close = difflib.get_close_matches(key, list(items), n=3)
    if close:
        message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    message += f" Valid {kind} ids: {', '.join(items) or '(none)'}."
    raise FixtureError(message)


def _sox_command(path: Path, output_options: str, effect: str) -> str:
    out = path.with_name(f"{path.stem}_fixed.wav")
    parts = ["sox", shlex.quote(str(path)), output_options, shlex.quote(str(out)), effect]
    return " ".join(part for part in parts if part)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_hash(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\t{files[rel]}\n".encode())
    return digest.hexdigest()


def _tracked_files(root: Path, voices: Mapping[str, Voice]) -> set[str]:
    """Relative paths the manifest must list: both JSON files, every WAV on disk, every referenced clip."""
    tracked = {TEXTS_NAME, VOICES_NAME}
    tracked.update(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))
    for voice in voices.values():
        for clip in (voice.ref_wav, *(wav for wav, _ in voice.alt)):
            tracked.add(clip.relative_to(root).as_posix())
    return tracked


def _check_voice_audio(voices: Mapping[str, Voice]) -> None:
    for voice in voices.values():
        for clip in (voice.ref_wav, *(wav for wav, _ in voice.alt)):
            read_reference_audio(clip)


def _is_safe_relative(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return bool(rel) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in rel


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FixtureError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FixtureError(f"{path}: not valid JSON: {exc}") from exc


def _read_manifest(root: Path) -> _Manifest:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FixtureError(
            f"{path}: no manifest, so the fixtures cannot be verified. Point ${ENV_FIXTURES_DIR} at a "
            f"fixtures directory, or, for a new fixture set, create the manifest with "
            f"`qtts-eval fixtures --rehash`."
        )
    try:
        data = _read_json(path)
    except FixtureError as exc:
        raise FixtureError(f"{exc}. {_REHASH_HINT}") from exc
    if not isinstance(data, dict):
        raise FixtureError(f"{path}: must be a JSON object. {_REHASH_HINT}")

    schema = data.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise FixtureError(
            f"{path}: schema_version must be a positive integer, not {schema!r}. {_REHASH_HINT}"
        )
    if schema > MANIFEST_SCHEMA_VERSION:
        raise FixtureError(
            f"{path}: manifest schema {schema} is newer than this qtts-eval reads "
            f"(up to {MANIFEST_SCHEMA_VERSION}); upgrade qtts-eval"
        )

    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise FixtureError(f"{path}: no version (a non-empty string is required). {_REHASH_HINT}")

    files = data.get("files")
    if not isinstance(files, dict):
        raise FixtureError(f"{path}: 'files' must map relative paths to sha256 digests. {_REHASH_HINT}")
    for rel, digest in files.items():
        if not _is_safe_relative(rel):
            raise FixtureError(f"{path}: {rel!r} is not a relative path inside the fixtures. {_REHASH_HINT}")
        if not isinstance(digest, str) or not _SHA256_PATTERN.fullmatch(digest):
            raise FixtureError(f"{path}: {rel} has no valid sha256 (got {digest!r}). {_REHASH_HINT}")

    content_hash = data.get("content_hash")
    if not isinstance(content_hash, str):
        raise FixtureError(f"{path}: no content_hash. {_REHASH_HINT}")
    return _Manifest(path=path, version=version, files=files, content_hash=content_hash)


def _record(item: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """Check that a JSON list entry is an object with exactly `fields`."""
    if not isinstance(item, dict):
        raise FixtureError(f"{where} must be a JSON object")
    missing = [f for f in fields if f not in item]
    if missing:
        raise FixtureError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(set(item) - set(fields))
    if unknown:
        raise FixtureError(f"{where} has unknown keys {', '.join(unknown)}; expected {', '.join(fields)}")
    return item


def _nonempty_str(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item[key]
    if not isinstance(value, str) or not value.strip():
        raise FixtureError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _check_id(item_id: str, where: str, seen: Mapping[str, object]) -> None:
    if not _ID_PATTERN.fullmatch(item_id):
        raise FixtureError(f"{where}: id {item_id!r} is not snake_case (lowercase letters, digits and _)")
    if item_id in seen:
        raise FixtureError(f"{where}: id {item_id!r} appears more than once")


def _parse_texts(root: Path) -> dict[str, TextFixture]:
    path = root / TEXTS_NAME
    data = _read_json(path)
    if not isinstance(data, list):
        raise FixtureError(f"{path}: must be a JSON list of text fixtures")
    texts: dict[str, TextFixture] = {}
    for index, raw in enumerate(data):
        where = f"{path}: entry {index}"
        item = _record(raw, where, ("id", "language", "category", "text"))
        fixture = TextFixture(
            id=_nonempty_str(item, "id", where),
            language=_nonempty_str(item, "language", where),
            category=_nonempty_str(item, "category", where),
            text=_nonempty_str(item, "text", where),
        )
        _check_id(fixture.id, where, texts)
        if fixture.language not in LANGUAGES:
            raise FixtureError(
                f"{where} ({fixture.id!r}): unknown language {fixture.language!r}; "
                f"known: {', '.join(sorted(LANGUAGES))}"
            )
        texts[fixture.id] = fixture
    return texts


def _parse_voices(root: Path) -> dict[str, Voice]:
    path = root / VOICES_NAME
    data = _read_json(path)
    if not isinstance(data, list):
        raise FixtureError(f"{path}: must be a JSON list of voices")
    fields = ("id", "speaker", "gender", "accent", "source", "license", "ref_wav", "ref_text", "alt")
    voices: dict[str, Voice] = {}
    for index, raw in enumerate(data):
        where = f"{path}: entry {index}"
        item = _record(raw, where, fields)
        voice_id = _nonempty_str(item, "id", where)
        _check_id(voice_id, where, voices)
        where = f"{path}: voice {voice_id!r}"
        if not isinstance(item["alt"], list):
            raise FixtureError(f"{where}: alt must be a list of {{wav, text}} objects")
        alt = []
        for alt_index, raw_alt in enumerate(item["alt"]):
            alt_where = f"{where}: alt entry {alt_index}"
            alt_item = _record(raw_alt, alt_where, ("wav", "text"))
            alt.append(
                (
                    _clip_path(root, _nonempty_str(alt_item, "wav", alt_where), alt_where),
                    _nonempty_str(alt_item, "text", alt_where),
                )
            )
        voices[voice_id] = Voice(
            id=voice_id,
            speaker=_nonempty_str(item, "speaker", where),
            gender=_nonempty_str(item, "gender", where),
            accent=_nonempty_str(item, "accent", where),
            source=_nonempty_str(item, "source", where),
            license=_nonempty_str(item, "license", where),
            ref_wav=_clip_path(root, _nonempty_str(item, "ref_wav", where), where),
            ref_text=_nonempty_str(item, "ref_text", where),
            alt=tuple(alt),
        )
    return voices


def _clip_path(root: Path, rel: str, where: str) -> Path:
    """Resolve a clip path from voices.json, which is relative to the voices directory."""
    if not _is_safe_relative(rel):
        raise FixtureError(f"{where}: clip path {rel!r} must be relative and stay inside {VOICES_DIR}/")
    clip = root / VOICES_DIR / rel
    if not clip.is_file():
        raise FixtureError(f"{clip}: referenced by {where} but missing")
    return clip
