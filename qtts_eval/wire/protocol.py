"""Wire protocol version 1 (docs/protocol.md): messages, stdio framing, audio encodings, validation.

One message set travels over two transports. Over WebSocket, JSON control messages are text frames and audio
is binary frames. Over a subprocess's stdin/stdout, every message is a frame: a 5-byte header (4-byte
big-endian payload length, 1-byte kind) and the payload. The server, the stdio worker, the client pipelines,
the conformance kit and the load generator all use this module, so there is one definition of each rule.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from qtts_eval.errors import ProtocolError, RequestError
from qtts_eval.pipelines.base import CloneMode, Request, Sampling
from qtts_eval.units import SAMPLE_RATE_HZ

PROTOCOL_VERSION = 1
SPEAK_PATH = "/api/v1/speak"  # WebSocket endpoint path
HEADER = struct.Struct(">IB")  # stdio frame header: payload length in bytes, kind
MAX_FRAME_BYTES = 64 * 2**20  # 64 MiB: a 30 s f32 reference in base64 is ~4 MB; larger is a broken stream
KIND_JSON = 0x01  # stdio frame kind: UTF-8 JSON control message
KIND_AUDIO = 0x02  # stdio frame kind: audio samples in the session encoding


class Encoding(str, enum.Enum):
    """Sample formats on the wire; both little-endian, mono, 24 kHz."""

    PCM16 = "pcm16"  # int16, full scale 32767
    F32 = "f32"  # IEEE float32, exact: the only encoding that can show bit parity

    @property
    def sample_bytes(self) -> int:
        return 2 if self is Encoding.PCM16 else 4


class ErrorCode(str, enum.Enum):
    """Codes of server `error` messages."""

    INVALID_REQUEST = "INVALID_REQUEST"  # malformed or out-of-order message, bad field value
    UNSUPPORTED_PROTOCOL = "UNSUPPORTED_PROTOCOL"  # the client's protocol version is not served
    VOICE_NOT_FOUND = "VOICE_NOT_FOUND"  # start named a voice_id the server does not hold
    UNSUPPORTED = "UNSUPPORTED"  # a valid request this implementation cannot do (capability missing)
    BUSY = "BUSY"  # speak or start while an utterance is still in progress
    TTS_UNAVAILABLE = "TTS_UNAVAILABLE"  # the model is not loaded or has failed
    SYNTHESIS_ERROR = "SYNTHESIS_ERROR"  # the model raised while generating


_PCM16_SCALE = 32767.0  # int16 full scale


def encode_audio(samples: np.ndarray, encoding: Encoding) -> bytes:
    """Float samples in [-1, 1] to wire bytes; pcm16 clips, f32 is exact."""
    if encoding is Encoding.F32:
        return bytes(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    scaled = np.clip(np.nan_to_num(samples), -1.0, 1.0) * _PCM16_SCALE
    return bytes(np.round(scaled).astype("<i2").tobytes())


def decode_audio(data: bytes, encoding: Encoding) -> np.ndarray:
    """Wire bytes to float32 samples; raises ProtocolError for a partial sample or non-finite values."""
    if not data:
        raise ProtocolError("empty audio frame: every audio frame must carry at least one sample")
    if len(data) % encoding.sample_bytes:
        raise ProtocolError(
            f"audio frame of {len(data)} bytes is not a whole number of {encoding.value} samples "
            f"({encoding.sample_bytes} bytes each)"
        )
    if encoding is Encoding.F32:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        samples = (np.frombuffer(data, dtype="<i2") / _PCM16_SCALE).astype(np.float32)
    if not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise ProtocolError(f"audio frame holds {bad} NaN or infinite samples of {samples.size}")
    return samples


def voice_id(audio: np.ndarray, ref_text: str) -> str:
    """The id a server gives a voice: content-addressed, so a client can predict and reuse it."""
    digest = hashlib.sha256(np.ascontiguousarray(audio, dtype="<f4").tobytes())
    digest.update(ref_text.encode())
    return "v-" + digest.hexdigest()[:16]


# --- messages -------------------------------------------------------------------------------------------


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a control message; raises ProtocolError naming what is wrong."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON control message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"control message must be a JSON object with a string 'type', got {text[:80]!r}")
    return message


def start_message(
    encoding: Encoding,
    *,
    voice: tuple[np.ndarray, str] | None = None,
    cached_voice_id: str | None = None,
    protocol: int = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """`start`: open a session with an uploaded voice (f32 audio, transcript) or a cached voice id."""
    message: dict[str, Any] = {
        "type": "start",
        "protocol": protocol,
        "encoding": encoding.value,
        "sample_rate": SAMPLE_RATE_HZ,
    }
    if cached_voice_id is not None:
        message["voice_id"] = cached_voice_id
    elif voice is not None:
        audio, ref_text = voice
        message["voice"] = {
            "audio": base64.b64encode(encode_audio(audio, Encoding.F32)).decode("ascii"),
            "audio_encoding": Encoding.F32.value,
            "text": ref_text,
        }
    return message


def speak_message(request: Request, return_codes: bool) -> dict[str, Any]:
    """`speak`: everything in a Request except the voice, which the session's `start` carried."""
    sampling = request.sampling
    return {
        "type": "speak",
        "text": request.text,
        "language": request.language,
        "mode": request.mode.value,
        "max_frames": request.max_frames,
        "seed": request.seed,
        "sampling": {
            "do_sample": sampling.do_sample,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty,
        },
        "return_codes": return_codes,
    }


def error_message(code: ErrorCode, text: str, fatal: bool = False) -> dict[str, Any]:
    return {"type": "error", "code": code.value, "message": text, "fatal": fatal}


# --- server-side parsing ---------------------------------------------------------------------------------


class InvalidMessage(Exception):
    """A client message the server answers with an error; never leaves the server."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class SessionSettings:
    """What a `start` message fixed for the utterances that follow."""

    encoding: Encoding  # audio format of binary frames sent to the client
    voice_id: str  # the id the voice is cached under


def _field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = message.get(name, default)
    # bool is an int subclass: refuse it where a number is expected.
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"{message.get('type')}: field {name!r} is missing or wrong type"
        )
    return value


def parse_start(message: dict[str, Any]) -> tuple[Encoding, tuple[np.ndarray, str] | None, str | None]:
    """Validate a `start`; returns the encoding and either the uploaded voice or the requested voice id."""
    version = message.get("protocol")
    if version != PROTOCOL_VERSION:
        raise InvalidMessage(
            ErrorCode.UNSUPPORTED_PROTOCOL,
            f"protocol {version!r} is not served; this server speaks {PROTOCOL_VERSION}",
        )
    try:
        encoding = Encoding(message.get("encoding"))
    except ValueError:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"start: encoding {message.get('encoding')!r} is not pcm16 or f32"
        ) from None
    if message.get("sample_rate") != SAMPLE_RATE_HZ:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"start: sample_rate {message.get('sample_rate')!r} is not served; audio is {SAMPLE_RATE_HZ} Hz",
        )
    if "voice_id" in message:
        return encoding, None, _field(message, "voice_id", str)
    voice = _field(message, "voice", dict)
    try:
        audio_encoding = Encoding(voice.get("audio_encoding", Encoding.F32.value))
        audio = decode_audio(base64.b64decode(_field(voice, "audio", str), validate=True), audio_encoding)
    except (ValueError, ProtocolError) as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"start: voice audio is unusable: {exc}") from None
    return encoding, (audio, _field(voice, "text", str, "")), None


def parse_speak(message: dict[str, Any], voice: tuple[np.ndarray, str]) -> Request:
    """Validate a `speak` and build the Request it stands for, with the session's voice."""
    sampling = message.get("sampling", {})
    if not isinstance(sampling, dict):
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "speak: 'sampling' must be an object")
    defaults = Sampling()
    try:
        mode = CloneMode(message.get("mode", CloneMode.ICL.value))
    except ValueError:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: mode {message.get('mode')!r} is not icl or xvector"
        ) from None
    for unsupported in ("forced_codes", "dump_path"):
        if message.get(unsupported) is not None:
            raise InvalidMessage(
                ErrorCode.UNSUPPORTED, f"speak: {unsupported} needs a capability this server does not declare"
            )
    try:
        return Request(
            text=_field(message, "text", str),
            language=_field(message, "language", str, "auto"),
            ref_audio=voice[0],
            ref_text=voice[1],
            mode=mode,
            max_frames=_field(message, "max_frames", int),
            seed=_field(message, "seed", int, 0),
            sampling=Sampling(
                do_sample=bool(sampling.get("do_sample", defaults.do_sample)),
                temperature=float(sampling.get("temperature", defaults.temperature)),
                top_k=int(sampling.get("top_k", defaults.top_k)),
                top_p=float(sampling.get("top_p", defaults.top_p)),
                repetition_penalty=float(sampling.get("repetition_penalty", defaults.repetition_penalty)),
            ),
        )
    except RequestError as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"speak: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"speak: bad sampling value: {exc}") from None


# --- stdio framing ---------------------------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def json_frame(message: dict[str, Any]) -> bytes:
    return frame(KIND_JSON, dumps(message).encode())


def parse_header(header: bytes) -> tuple[int, int]:
    """(length, kind) of a stdio frame header; raises ProtocolError for an unknown kind or absurd length."""
    length, kind = HEADER.unpack(header)
    if kind not in (KIND_JSON, KIND_AUDIO):
        raise ProtocolError(
            f"malformed frame: unknown kind byte 0x{kind:02x} (expected 0x01 JSON or 0x02 audio)"
        )
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"malformed frame: length {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
        )
    return length, kind


def read_frame(stream: IO[bytes]) -> str | bytes | None:
    """Read one stdio frame: str for JSON, bytes for audio, None at a clean end of stream."""
    header = _read_exactly(stream, HEADER.size, allow_eof=True)
    if header is None:
        return None
    length, kind = parse_header(header)
    payload = _read_exactly(stream, length, allow_eof=False) or b""
    if kind == KIND_AUDIO:
        return payload
    try:
        return payload.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"malformed frame: JSON frame is not UTF-8: {exc}") from exc


def _read_exactly(stream: IO[bytes], size: int, allow_eof: bool) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            if allow_eof and not data:
                return None
            raise ProtocolError(f"stream closed mid-frame after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
