"""The OpenAI-style speech dialect, server side: any pipeline behind `POST /v1/audio/speech` (starlette and
uvicorn).

`fault` plants one misbehaviour (FAULTS) so the client's error paths are tested against a real server.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import soundfile

from qtts_eval.errors import QttsEvalError
from qtts_eval.pipelines.base import AudioChunk, CloneMode, Pipeline, Request
from qtts_eval.units import MAX_TEXT_CHARS, SAMPLE_RATE_HZ

MAX_BODY_BYTES = 32 * 1024 * 1024  # a request body (the base64 reference clip dominates)
MAX_FRAMES = 4096  # the largest frame budget a request may ask for
DEFAULT_FRAMES = 256
HANG_S = 3600.0
FAULTS = (
    "http-500-json",  # a 5xx with a JSON error body
    "http-400-text",  # a 4xx with a plain-text body
    "wrong-content-type",  # audio labelled text/html
    "rate-16k",  # a WAV header saying 16 kHz
    "wav-lying-length",  # a WAV header declaring more data than is sent
    "cut-mid-chunk",  # the connection dropped in the middle of the chunked body
    "sse-not-json",  # an SSE event whose data is not JSON
    "hang",  # headers sent, then nothing
)


class BadRequest(QttsEvalError):
    """A request body the server refuses (HTTP 400)."""


def _pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes())


def wav_header(rate: int, data_bytes: int) -> bytes:
    """A mono PCM16 WAV header; data_bytes 0xFFFFFFFF says "length unknown" (a stream)."""
    riff = 0xFFFFFFFF if data_bytes == 0xFFFFFFFF else 36 + data_bytes
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def parse_request(body: dict[str, Any]) -> Request:
    """The suite's Request from a speech body; every field bounded, a bad one named."""
    text = body.get("input")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"'input' must be non-empty text of at most {MAX_TEXT_CHARS} characters")
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


def create_app(pipeline: Pipeline, fault: str | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    lock = threading.Lock()  # one request at a time: a pipeline is not re-entrant

    def audio(request: Request) -> Iterator[bytes]:
        with lock:
            for event in pipeline.stream(request):
                if isinstance(event, AudioChunk):
                    yield _pcm16(event.samples)

    def shaped(pieces: Iterator[bytes], fmt: str, sse: bool) -> Iterator[bytes]:
        if sse:
            for piece in pieces:
                data = (
                    "not json"
                    if fault == "sse-not-json"
                    else json.dumps({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
                )
                yield f"data: {data}\n\n".encode()
            yield b'data: {"type": "speech.audio.done"}\n\n'
            return
        if fmt == "wav":
            rate = 16000 if fault == "rate-16k" else SAMPLE_RATE_HZ
            yield wav_header(rate, 10**6 if fault == "wav-lying-length" else 0xFFFFFFFF)
        for piece in pieces:
            if fault == "cut-mid-chunk":  # an odd byte count: the cut also splits a sample
                yield piece[: len(piece) // 2 | 1]
                raise ConnectionAbortedError("planted fault: the stream is cut mid-chunk")
            yield piece

    def hang(pieces: Iterator[bytes]) -> Iterator[bytes]:
        time.sleep(HANG_S)
        yield from pieces

    async def speech(http: HttpRequest) -> Response:
        raw = await http.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"error": {"message": f"body over {MAX_BODY_BYTES} bytes"}}, status_code=413)
        if fault == "http-500-json":
            return JSONResponse({"error": {"message": "planted fault: internal error"}}, status_code=500)
        if fault == "http-400-text":
            return PlainTextResponse("planted fault: bad request", status_code=400)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the body is not a JSON object")
            request = parse_request(body)
        except (json.JSONDecodeError, BadRequest) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        fmt = body.get("response_format", "pcm")
        sse = body.get("stream_format") == "sse"
        if fmt not in ("pcm", "wav"):
            return JSONResponse(
                {"error": {"message": f"response_format {fmt!r} is not pcm or wav"}}, status_code=400
            )
        pieces = shaped(audio(request), fmt, sse)
        if fault == "hang":
            pieces = hang(pieces)
        media = "text/event-stream" if sse else ("audio/wav" if fmt == "wav" else "audio/pcm")
        if fault == "wrong-content-type":
            media = "text/html"
        return StreamingResponse(pieces, media_type=media)

    return Starlette(routes=[Route("/v1/audio/speech", speech, methods=["POST"])])


def serve_openai(
    pipeline: Pipeline, host: str, port: int, announce: Callable[[str], None], fault: str | None = None
) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, fault), log_level="warning"))
    announce(f"http://{host}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])
