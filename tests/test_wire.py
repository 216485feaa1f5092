"""Candidates over the wire: every fault gets a named error in time, the kit and the load generator work.

The candidates here are real processes speaking the protocol: ``qtts_eval.wire.faulty_worker`` (a tone
generator behind the suite's own protocol engine that misbehaves on command) and, in the slow tests,
``qtts-eval serve`` / ``qtts-eval worker`` around the official reference on the tiny checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.errors import CandidateTimeout, ProtocolError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.measure import measure
from qtts_eval.metrics.latency import ChunkTiming, playback_underruns
from qtts_eval.pipelines.base import CloneMode, Pipeline, PipelineConfig, Request
from qtts_eval.wire.client import collect
from qtts_eval.wire.conformance import CheckOptions, RuleResult, Verdict, check_target, format_table
from qtts_eval.wire.load import LoadOptions, LoadRunner, summarise

FAULTY = [sys.executable, "-m", "qtts_eval.wire.faulty_worker"]
QTTS = [sys.executable, "-m", "qtts_eval"]
TIMEOUT_S = 3.0  # per-message wait in fault tests: a hang must be reported within this (plus exit grace)
FRAMES = 4  # frame budget of the real-model requests: small, so the tiny model stays fast on 2 cores


@pytest.fixture(scope="module")
def request_xv() -> Request:
    voice = load_fixtures().voice("slt")
    audio, _ = read_reference_audio(voice.ref_wav)
    return Request(
        text="Hello over the wire.",
        language="english",
        ref_audio=audio,
        ref_text=voice.ref_text,
        mode=CloneMode.XVECTOR,
        max_frames=FRAMES,
        seed=0,
    )


def _worker(command: list[str], **options: object) -> Pipeline:
    pipeline = pipelines.create("worker", PipelineConfig(options={"command": command, **options}))
    pipeline.load()
    return pipeline


def _serve(command: list[str]) -> Iterator[str]:
    """Start a WebSocket server process, yield its URL, stop it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on ws://"), f"server did not come up: {line!r}"
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("crash", ProtocolError, "exited with code 3"),
        ("hang", CandidateTimeout, "sent nothing within 3 s"),
        ("close", ProtocolError, "closed its stdout mid-stream"),
        ("malformed", ProtocolError, "malformed JSON"),
        ("bad-frame", ProtocolError, "unknown kind byte 0x7f"),
        ("wrong-samples", ProtocolError, "wrong sample count: 7600 samples for 4 frames"),
        ("nan", ProtocolError, "NaN or infinite samples"),
    ],
)
def test_worker_fault_is_named_within_the_timeout(request_xv, fault, error, message) -> None:
    pipeline = _worker([*FAULTY, "--fault", fault], timeout_s=TIMEOUT_S)
    began = time.monotonic()
    try:
        with pytest.raises(error, match=message):
            collect(pipeline.stream(request_xv))
    finally:
        pipeline.close()
    assert time.monotonic() - began < TIMEOUT_S + 5  # the fault is reported, nothing waits forever


@pytest.mark.parametrize(
    ("fault", "message"), [("close", "closed the connection mid-stream"), ("nan", "NaN")]
)
def test_websocket_fault_is_named(request_xv, fault, message) -> None:
    for url in _serve([*FAULTY, "--fault", fault, "--websocket"]):
        config = PipelineConfig(options={"url": url, "timeout_s": TIMEOUT_S})
        pipeline = pipelines.create("websocket", config)
        pipeline.load()
        with pytest.raises(ProtocolError, match=message):
            collect(pipeline.stream(request_xv))
        pipeline.close()


def test_healthy_worker_streams_frames_and_codes(request_xv) -> None:
    pipeline = _worker(FAULTY)
    try:
        utterance = collect(pipeline.stream(request_xv))
        again = collect(pipeline.stream(request_xv))  # the voice is cached now: no upload
    finally:
        pipeline.close()
    assert len(utterance.chunks) == FRAMES  # the tone worker streams one chunk per frame
    assert utterance.end.codes is not None and utterance.end.codes.shape == (FRAMES, 16)
    times = [chunk.t_ns for chunk in utterance.chunks]
    assert times == sorted(times) and len(again.chunks) == FRAMES


def test_bench_records_a_crash_as_error_and_keeps_earlier_records(tmp_path: Path) -> None:
    command = [*FAULTY, "--fault", "crash", "--after", "1"]
    config = BenchConfig(
        pipelines=("worker",),
        fixtures=("en_one_word",),
        modes=("xvector",),
        repeats=3,
        warmup=0,
        options={"command": command, "timeout_s": TIMEOUT_S},
    )
    frame = Bench.create(config, tmp_path, "crash").run(progress=False)
    assert list(frame["status"]) == ["ok", "error", "error"]
    assert "exited with code 3" in frame["error"].iloc[1]
    assert frame["frames_generated"].iloc[0] > 0


def _verdicts(results: list[RuleResult]) -> dict[str, Verdict]:
    return {result.rule: result.verdict for result in results}


def test_conformance_passes_a_correct_worker_and_websocket_server() -> None:
    options = CheckOptions(frames=FRAMES)
    runs = [_verdicts(check_target(" ".join(FAULTY), options))]
    for url in _serve([*FAULTY, "--websocket"]):
        runs.append(_verdicts(check_target(url, options)))
    for verdicts in runs:
        # A tone's codes decode to nothing it sent, and "tone" names no checkpoint: not checked, not passed.
        assert verdicts.pop("codes-decode") is Verdict.NOT_APPLICABLE
        assert set(verdicts.values()) == {Verdict.PASS}, verdicts


@pytest.mark.parametrize(
    ("fault", "rule"),
    [
        ("wrong-samples", "audio-f32"),
        ("nan", "audio-f32"),
        ("no-synthetic", "hello"),
        ("nondeterministic", "determinism"),
        ("no-busy", "busy"),
    ],
)
def test_conformance_fails_a_broken_worker_at_the_right_rule(fault: str, rule: str) -> None:
    from qtts_eval.wire.client import Timeouts

    options = CheckOptions(frames=FRAMES, timeouts=Timeouts(start_s=60, message_s=TIMEOUT_S))
    results = check_target(" ".join([*FAULTY, "--fault", fault]), options)
    failed = [r.rule for r in results if r.failed]
    assert failed[0] == rule, format_table(results)
    if fault not in ("wrong-samples", "nan"):  # those break every later utterance too (cancel speaks again)
        assert failed == [rule], format_table(results)


def test_conformance_detail_names_what_is_missing_or_differs() -> None:
    from qtts_eval.wire.client import Timeouts

    options = CheckOptions(frames=FRAMES, timeouts=Timeouts(start_s=60, message_s=TIMEOUT_S))
    hello = check_target(" ".join([*FAULTY, "--fault", "no-synthetic"]), options)[0]
    assert "synthetic (bool) missing" in hello.detail
    results = _verdicts(check_target(" ".join([*FAULTY, "--fault", "nondeterministic"]), options))
    assert results["audio-pcm16"] is Verdict.NOT_APPLICABLE  # nothing reproducible to compare pcm16 with


def test_check_worker_exits_1_on_a_failed_rule(capsys: pytest.CaptureFixture[str]) -> None:
    from qtts_eval.cli import main

    command = " ".join([*FAULTY, "--fault", "no-synthetic"])
    assert main(["check-worker", command, "--frames", str(FRAMES), "--timeout", str(TIMEOUT_S)]) == 1
    out = capsys.readouterr().out
    assert "first failing rule: hello" in out and "not applicable (not checked): codes-decode" in out


@pytest.fixture(scope="module")
def tiny_checkpoint() -> str:
    from qtts_eval import checkpoints

    checkpoints.resolve("tiny")  # built into the session cache before a worker process looks for it
    return "tiny"


@pytest.mark.slow
def test_conformance_decodes_codes_with_the_reference_codec(tiny_checkpoint: str) -> None:
    options = CheckOptions(frames=FRAMES)
    worker = [*FAULTY, "--codec", tiny_checkpoint]
    healthy = check_target(" ".join(worker), options)
    assert not any(r.failed for r in healthy), format_table(healthy)
    decode = next(r for r in healthy if r.rule == "codes-decode")
    assert decode.verdict is Verdict.PASS and "reference codec of tiny" in decode.detail
    mismatched = check_target(" ".join([*worker, "--fault", "codes-mismatch"]), options)
    assert [r.rule for r in mismatched if r.failed] == ["codes-decode"], format_table(mismatched)
    assert "not the decode of the returned codes" in mismatched[5].detail


def test_underrun_simulation_counts_late_chunks() -> None:
    frame_s = 0.080  # one 1920-sample frame plays for 80 ms
    on_time = [ChunkTiming(t, 1920) for t in (0, frame_s, 2 * frame_s)]
    late = [ChunkTiming(t, 1920) for t in (0, frame_s + 0.005, 2 * frame_s + 0.005)]
    assert playback_underruns(on_time)[0] == 0
    assert playback_underruns(late)[0] == 1  # the player waits once, then is 5 ms behind but fed


def test_load_sweep_and_open_loop_report_percentiles() -> None:
    options = LoadOptions(
        concurrency=(1, 2),
        rates_hz=(20.0,),
        requests_per_session=2,
        open_requests=3,
        max_sessions=2,
        frames=3,
    )
    for url in _serve([*FAULTY, "--websocket", "--frame-delay-ms", "5"]):
        rows = [summarise(level) for level in LoadRunner(url, options).run()]
    assert [(row["kind"], row["level"], row["requests"], row["errors"]) for row in rows] == [
        ("closed", 1, 2, 0),
        ("closed", 2, 4, 0),
        ("open", 20.0, 3, 0),
    ]
    for row in rows:
        assert 0 < float(row["first_ms_p50"]) <= float(row["first_ms_p99"])
        assert float(row["audio_s_per_s"]) > 0


def test_load_refuses_a_remote_url() -> None:
    from qtts_eval.errors import BenchError

    with pytest.raises(BenchError, match="loopback only"):
        LoadRunner("ws://192.0.2.1:8765/api/v1/speak", LoadOptions())


# --- the real reference over the wire (tiny checkpoint) -------------------------------------------------


@pytest.fixture(scope="module")
def reference_url(tiny_reference) -> Iterator[str]:
    # Depends on tiny_reference so the checkpoint is built before the server process looks for it.
    yield from _serve([*QTTS, "serve", "--pipeline", "reference", "--model", "tiny", "--port", "0"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(CloneMode))
def test_reference_over_websocket_matches_in_process(tiny_reference, reference_url, request_xv, mode) -> None:
    import dataclasses

    request = dataclasses.replace(request_xv, mode=mode)
    local = measure(tiny_reference, request)
    pipeline = pipelines.create("websocket", PipelineConfig(options={"url": reference_url}))
    pipeline.load()
    try:
        remote = measure(pipeline, request)
        assert pipeline.describe()["synthetic"] is True  # the server's facts reach the records
    finally:
        pipeline.close()
    assert remote.end.frames_generated == local.end.frames_generated
    assert remote.audio.tobytes() == local.audio.tobytes()  # f32 on the wire: bit-identical


@pytest.mark.slow
def test_reference_stdio_worker_matches_in_process(tiny_reference, request_xv) -> None:
    local = measure(tiny_reference, request_xv)
    pipeline = _worker([*QTTS, "worker", "--pipeline", "reference", "--model", "tiny"])
    try:
        remote = measure(pipeline, request_xv)
    finally:
        pipeline.close()
    assert remote.audio.tobytes() == local.audio.tobytes()


@pytest.mark.slow
def test_bench_over_websocket_records_like_in_process(tiny_reference, reference_url, tmp_path: Path) -> None:
    common = {"fixtures": ("en_one_word",), "modes": ("xvector",), "repeats": 1, "warmup": 0}
    wire = Bench.create(
        BenchConfig(pipelines=("websocket",), options={"url": reference_url}, **common), tmp_path, "ws"
    ).run(progress=False)
    local = Bench.create(BenchConfig(pipelines=("reference",), **common), tmp_path, "ref").run(progress=False)
    assert list(wire["status"]) == ["ok"]
    for column in ("frame_budget", "frames_generated", "audio_seconds"):
        assert wire[column].iloc[0] == local[column].iloc[0], column
    assert bool(wire["env_synthetic"].iloc[0]) and wire["env_transport"].iloc[0] == "websocket"


@pytest.mark.slow
def test_conformance_passes_the_reference_server(reference_url) -> None:
    results = check_target(reference_url, CheckOptions(frames=3))
    assert set(_verdicts(results).values()) == {Verdict.PASS}, format_table(results)  # codes decoded too
    assert np.all([r.detail for r in results])
