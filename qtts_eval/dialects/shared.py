"""What the dialects share, client and server: the voice-cloning fields, PCM16 decoding across chunk
boundaries, and the request a server builds from a body (docs/dialects.md).

PCM16 has one scale everywhere: qtts_eval.wire.protocol's (int16 full scale 32767, as docs/protocol.md and the
Rust port kit define it).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile

from qtts_eval.errors import ProtocolError, QttsEvalError
from qtts_eval.pipelines.base import CloneMode, Request
from qtts_eval.units import MAX_TEXT_CHARS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from qtts_eval.wire.protocol import Encoding, decode_audio

CODES_KEY = "codes"  # StreamEnd.info: "not_available", a dialect that carries no codes
NOT_AVAILABLE = "not_available"
MAX_FRAMES = 4096  # the largest frame budget a served request may ask for
DEFAULT_FRAMES = 256  # a served request's frame budget when it names none


@dataclass(frozen=True)
class CloneOptions:
    """How a client names the voice to clone: a voice registered on the server, or the request's own
    reference clip (as base64 audio, or as a path the server reads) with its transcript."""

    voice: str = ""  # a voice registered on the server; empty: clone from the request's reference clip
    ref_audio_field: str = "ref_audio"  # body field for the reference clip as base64 WAV ("" to omit)
    ref_text_field: str = "ref_text"  # body field for the reference transcript ("" to omit)
    ref_path: str = ""  # a path the server itself reads the reference clip from, sent instead of the audio
    ref_path_field: str = "ref_audio_path"  # the body field that carries ref_path
    mode_field: str = ""  # the body field for the clone mode (icl | xvector), where a server takes one


def clone_fields(options: CloneOptions, request: Request) -> dict[str, Any]:
    """The body fields that clone the request's voice (the registered voice's name is the dialect's own)."""
    fields: dict[str, Any] = {}
    if not options.voice:
        if options.ref_path:
            fields[options.ref_path_field] = options.ref_path
        elif options.ref_audio_field:
            fields[options.ref_audio_field] = encode_wav_base64(request.ref_audio)
        if options.ref_text_field:
            fields[options.ref_text_field] = request.ref_text
    if options.mode_field:
        fields[options.mode_field] = request.mode.value
    return fields


def encode_wav_base64(audio: np.ndarray) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE_HZ, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def within_budget(samples: int, budget: int, where: str) -> int:
    """`samples` so far, if a frame budget of `budget` allows them: N frames yield N - 1 (the reference) or N,
    never more, so a server past it ignored the request's max_frames and did other work."""
    if samples > budget * SAMPLES_PER_FRAME:
        raise ProtocolError(f"{where}: {samples} samples, more than a budget of {budget} frames allows")
    return samples


def check_rate(rate: object, where: str) -> None:
    if rate != SAMPLE_RATE_HZ:
        raise ProtocolError(
            f"{where}: sample rate {rate} Hz, the suite compares audio at {SAMPLE_RATE_HZ} Hz"
        )


class Pcm16Decoder:
    """Little-endian PCM16 bytes to float32 samples, carrying an odd byte across chunk boundaries (an HTTP
    body is cut wherever the network cuts it)."""

    def __init__(self) -> None:
        self.pending = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self.pending + data
        whole = len(data) - len(data) % 2
        self.pending = data[whole:]
        if not whole:
            return np.zeros(0, np.float32)
        return decode_audio(data[:whole], Encoding.PCM16)

    def finish(self, where: str) -> None:
        if self.pending:
            raise ProtocolError(f"{where}: the stream ended mid-sample (a PCM16 sample cut in half)")


class BadRequest(QttsEvalError):
    """A request a dialect server refuses (HTTP 400, or an INVALID_REQUEST error message)."""


def parse_request(body: dict[str, Any], text_field: str) -> Request:
    """The suite's Request from a dialect's request body (text in `text_field`, the clone fields under their
    default names); every field bounded, a bad one named."""
    text = body.get(text_field)
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"{text_field!r} must be non-empty text of at most {MAX_TEXT_CHARS} characters")
    encoded = body.get("ref_audio")
    if not isinstance(encoded, str):
        raise BadRequest(
            "'ref_audio' (the reference clip as base64 WAV) is required; this server has no registered voices"
        )
    try:
        audio, rate = soundfile.read(io.BytesIO(base64.b64decode(encoded, validate=True)), dtype="float32")
    except Exception as exc:  # soundfile raises its own and binascii errors alike
        raise BadRequest(f"'ref_audio' is not a base64 WAV file: {exc}") from exc
    if rate != SAMPLE_RATE_HZ or audio.ndim != 1:
        raise BadRequest(
            f"'ref_audio' must be mono at {SAMPLE_RATE_HZ} Hz, got {rate} Hz shape {audio.shape}"
        )
    ref_text = body.get("ref_text", "")
    mode = body.get("mode", CloneMode.ICL.value if ref_text else CloneMode.XVECTOR.value)
    frames, seed, language = (
        body.get("max_frames", DEFAULT_FRAMES),
        body.get("seed", 0),
        body.get("language", "auto"),
    )
    if not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise BadRequest(f"'max_frames' must be an integer in 1..{MAX_FRAMES}")
    if not isinstance(seed, int) or not isinstance(language, str) or not isinstance(ref_text, str):
        raise BadRequest("'seed' must be an integer, 'language' and 'ref_text' strings")
    if mode not in {m.value for m in CloneMode}:
        raise BadRequest(f"'mode' {mode!r} is not icl or xvector")
    try:
        return Request(
            text=text,
            language=language,
            ref_audio=audio,
            ref_text=ref_text,
            mode=CloneMode(mode),
            max_frames=frames,
            seed=seed,
        )
    except QttsEvalError as exc:
        raise BadRequest(str(exc)) from exc
