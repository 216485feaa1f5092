"""The OpenAI-style speech dialect, server side: any pipeline behind `POST /v1/audio/speech` (starlette and
uvicorn).

`fault` plants one misbehaviour (FAULTS) so the client's error paths are tested against a real server.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from qtts_eval.dialects.shared import BadRequest, parse_request
from qtts_eval.pipelines.base import AudioChunk, Pipeline, Request
from qtts_eval.units import SAMPLE_RATE_HZ
from qtts_eval.wire.protocol import Encoding, encode_audio

MAX_BODY_BYTES = 32 * 1024 * 1024  # a request body (the base64 reference clip dominates)
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
    "over-budget",  # every chunk sent twice: more audio than the request's max_frames
)


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
                    piece = encode_audio(event.samples, Encoding.PCM16)
                    yield from (piece, piece) if fault == "over-budget" else (piece,)

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
            request = parse_request(body, "input")
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
    sock.listen()  # before the URL is announced: a client that connects first waits in the backlog
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, fault), log_level="warning"))
    announce(f"http://{host}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])
