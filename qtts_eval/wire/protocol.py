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
from pathlib import PurePosixPath
from typing import IO, Any

import numpy as np

from qtts_eval.errors import MalformedMessage, ProtocolError, RequestError
from qtts_eval.fixtures import MAX_REFERENCE_S
from qtts_eval.pipelines.base import Capability, CloneMode, ForcedInputs, Request, Sampling
from qtts_eval.units import CODEBOOKS, FRAME_RATE_HZ, SAMPLE_RATE_HZ

PROTOCOL_VERSION = 1
SPEAK_PATH = "/api/v1/speak"  # WebSocket endpoint path
HEADER = struct.Struct(">IB")  # stdio frame header: payload length in bytes, kind
MAX_FRAME_BYTES = 64 * 2**20  # 64 MiB: a 30 s f32 reference in base64 is ~4 MB; larger is a broken stream
KIND_JSON = 0x01  # stdio frame kind: UTF-8 JSON control message
KIND_AUDIO = 0x02  # stdio frame kind: audio samples in the session encoding
DUMP_SUFFIX = ".safetensors"  # a dump_path names a safetensors stage dump (docs/parity.md)
MAX_DUMP_PATH_CHARS = 200  # a relative dump name, not a place: long enough for run/request/side names
MAX_DUMP_PATH_PARTS = 4  # directory levels a dump name may have under the server's dump directory
MAX_CODE = 2**16  # codes are ids of 2048-entry codebooks (3072 talker ids); anything this large is garbage
MAX_EMBEDDING_DIMS = 8192  # speaker embedding length bound: the released model's is 1024 (talker hidden size)
MAX_REF_FRAMES = int(MAX_REFERENCE_S * FRAME_RATE_HZ) + 1  # codes of the longest reference clip allowed


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
        raise MalformedMessage(f"malformed JSON control message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise MalformedMessage(
            f"control message must be a JSON object with a string 'type', got {text[:80]!r}"
        )
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


def speak_message(
    request: Request,
    return_codes: bool,
    *,
    forced: ForcedInputs | None = None,
    dump_path: str | None = None,
) -> dict[str, Any]:
    """`speak`: everything in a Request except the voice, which the session's `start` carried.

    With `dump_path` it is a parity request: the candidate writes a stage dump there (relative to its dump
    directory) and answers `dumped`; `forced` makes it teacher-forced.
    """
    sampling = request.sampling
    message: dict[str, Any] = {
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
    if request.non_streaming_mode is not None:  # absent: the candidate's own prompt layout
        message["non_streaming_mode"] = request.non_streaming_mode
    if dump_path is not None:
        message["dump_path"] = dump_path
    if forced is not None:  # each input is forced or left free on its own (docs/parity.md)
        if forced.codes is not None:
            message["forced_codes"] = forced.codes.astype(int).tolist()
        if forced.ref_codes is not None:
            message["forced_ref_codes"] = forced.ref_codes.astype(int).tolist()
        if forced.spk_embedding is not None:
            spk = np.ascontiguousarray(forced.spk_embedding, dtype="<f4").tobytes()
            message["forced_spk_embedding"] = base64.b64encode(spk).decode("ascii")
    return message


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


@dataclass(frozen=True)
class Speak:
    """A validated `speak`."""

    request: Request  # the utterance, with the session's voice
    return_codes: bool  # codes wanted in `complete`
    dump_path: PurePosixPath | None  # parity request: the stage dump's name under the dump directory
    forced: ForcedInputs | None  # teacher forcing (only with dump_path)


def parse_speak(
    message: dict[str, Any], voice: tuple[np.ndarray, str], capabilities: frozenset[Capability]
) -> Speak:
    """Validate a `speak` and build the Request it stands for, with the session's voice.

    `dump_path` and the `forced_*` fields are honoured only when the served pipeline declares the capability
    (UNSUPPORTED otherwise); their sizes are bounded before anything is allocated for them.
    """
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
    layout = message.get("non_streaming_mode")
    if layout is not None and not isinstance(layout, bool):
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "speak: 'non_streaming_mode' must be true or false")
    forcing = [name for name in FORCED_FIELDS if message.get(name) is not None]
    for name, capability in (
        ("dump_path", Capability.STAGE_DUMPS),
        *((name, Capability.FORCED_CODES) for name in forcing[:1]),
    ):
        if message.get(name) is not None and capability not in capabilities:
            raise InvalidMessage(
                ErrorCode.UNSUPPORTED, f"speak: {name} needs the {capability.value} capability, not declared"
            )
    try:
        request = Request(
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
            non_streaming_mode=layout,
        )
    except RequestError as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"speak: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"speak: bad sampling value: {exc}") from None
    dump_path = None if message.get("dump_path") is None else parse_dump_path(message["dump_path"])
    forced = None
    if forcing:
        if dump_path is None:
            raise InvalidMessage(
                ErrorCode.INVALID_REQUEST,
                f"speak: {forcing[0]} only make sense in a parity request (dump_path)",
            )
        forced = _parse_forced(message, request)
    return Speak(request, bool(message.get("return_codes", False)), dump_path, forced)


FORCED_FIELDS = ("forced_codes", "forced_ref_codes", "forced_spk_embedding")  # speak fields of a forced run


def parse_dump_path(value: object) -> PurePosixPath:
    """A dump name relative to the server's dump directory: no absolute path, no `..`, bounded."""
    if not isinstance(value, str) or not value:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "speak: dump_path must be a non-empty string")
    if len(value) > MAX_DUMP_PATH_CHARS:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"speak: dump_path has {len(value)} characters, over the {MAX_DUMP_PATH_CHARS}-character limit",
        )
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value or ":" in value:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"speak: dump_path {value!r} must be relative to the server's dump directory",
        )
    if any(part in ("..", ".") for part in value.split("/")) or "" in value.split("/"):
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"speak: dump_path {value!r} has '..', '.' or '//'")
    if len(path.parts) > MAX_DUMP_PATH_PARTS:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"speak: dump_path {value!r} is deeper than {MAX_DUMP_PATH_PARTS} levels",
        )
    if path.suffix != DUMP_SUFFIX:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: dump_path {value!r} must end in {DUMP_SUFFIX}"
        )
    return path


def _codes(message: dict[str, Any], name: str, max_frames: int) -> np.ndarray:
    value = message.get(name)
    # Bounded by the row count before numpy sees it: a huge list is refused, not converted.
    if not isinstance(value, list) or not 0 < len(value) <= max_frames:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: {name} must be a list of 1 to {max_frames} frames"
        )
    try:
        codes = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: {name} is not an integer array: {exc}"
        ) from None
    if codes.ndim != 2 or codes.shape[1] != CODEBOOKS:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"speak: {name} has shape {codes.shape}, expected [frames, {CODEBOOKS}]",
        )
    if codes.min() < 0 or codes.max() >= MAX_CODE:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: {name} holds codes outside 0..{MAX_CODE - 1}"
        )
    return codes


def _parse_forced(message: dict[str, Any], request: Request) -> ForcedInputs:
    """The forced inputs present in `message`; the others stay free (partial forcing)."""
    codes = None
    if message.get("forced_codes") is not None:
        codes = _codes(message, "forced_codes", request.max_frames)
    ref_codes = None
    if message.get("forced_ref_codes") is not None:
        ref_codes = _codes(message, "forced_ref_codes", MAX_REF_FRAMES)
    text = message.get("forced_spk_embedding")
    if text is None:
        return ForcedInputs(codes=codes, ref_codes=ref_codes, spk_embedding=None)
    # base64 of float32: 4 bytes per value in 4/3 characters per byte.
    if not isinstance(text, str) or not 0 < len(text) <= MAX_EMBEDDING_DIMS * 4 * 4 // 3 + 4:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST,
            f"speak: forced_spk_embedding must be base64 of at most {MAX_EMBEDDING_DIMS} float32 values",
        )
    try:
        embedding = decode_audio(base64.b64decode(text, validate=True), Encoding.F32)
    except (ValueError, ProtocolError) as exc:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"speak: forced_spk_embedding is unusable: {exc}"
        ) from None
    return ForcedInputs(codes=codes, ref_codes=ref_codes, spk_embedding=embedding)


# --- stdio framing ---------------------------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def json_frame(message: dict[str, Any]) -> bytes:
    return frame(KIND_JSON, dumps(message).encode())


def parse_header(header: bytes) -> tuple[int, int]:
    """(length, kind) of a stdio frame header; raises ProtocolError for an unknown kind or absurd length."""
    length, kind = HEADER.unpack(header)
    if kind not in (KIND_JSON, KIND_AUDIO):
        raise MalformedMessage(
            f"malformed frame: unknown kind byte 0x{kind:02x} (expected 0x01 JSON or 0x02 audio)"
        )
    if length > MAX_FRAME_BYTES:
        raise MalformedMessage(
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
        raise MalformedMessage(f"malformed frame: JSON frame is not UTF-8: {exc}") from exc


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
