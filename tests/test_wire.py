"""Candidates over the wire: every fault gets a named error in time, the kit and the load generator work.

The candidates here are real processes speaking the protocol: ``qtts_eval.wire.faulty_worker`` (a tone
generator behind the suite's own protocol engine that misbehaves on command) and, in the slow tests,
``qtts-eval serve`` / ``qtts-eval worker`` around the official reference on the tiny checkpoint.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from servers import running_server

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.errors import CandidateTimeout, PipelineError, ProtocolError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.measure import measure
from qtts_eval.metrics.latency import ChunkTiming, playback_underruns
from qtts_eval.parity.faults import FAULTS
from qtts_eval.pipelines.base import CloneMode, Pipeline, PipelineConfig, Request
from qtts_eval.wire.client import collect
from qtts_eval.wire.conformance import (
    RULES,
    CheckOptions,
    RuleResult,
    Verdict,
    check_target,
    format_table,
)
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
    return running_server(command, "ws")


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("crash", ProtocolError, "died with exit code 3"),
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


@pytest.mark.parametrize("transport", ["worker", "websocket"])
def test_bench_restarts_a_crashed_worker_and_reconnects_a_dropped_socket(
    transport: str, tmp_path: Path
) -> None:
    # Every third request fails: the worker exits (restarted from zero) or the server drops the connection.
    fault = (
        ["--fault", "crash", "--after", "2"]
        if transport == "worker"
        else ["--fault", "close", "--after", "2"]
    )
    common = {"fixtures": ("en_one_word",), "modes": ("xvector",), "repeats": 9, "warmup": 0}
    options: dict[str, object] = {"timeout_s": TIMEOUT_S}
    if transport == "worker":
        options["command"] = [*FAULTY, *fault]
        frame = Bench.create(
            BenchConfig(pipelines=("worker",), options=options, **common), tmp_path, "crash"
        ).run(progress=False)
    else:
        for url in _serve([*FAULTY, *fault, "--recurring", "--websocket"]):
            frame = Bench.create(
                BenchConfig(pipelines=("websocket",), options={**options, "url": url}, **common),
                tmp_path,
                "drop",
            ).run(progress=False)
    assert list(frame["status"]) == ["ok", "ok", "error"] * 3
    message = "died with exit code 3" if transport == "worker" else "closed the connection"
    assert all(message in error for error in frame["error"].iloc[2::3])
    if transport == "worker":  # its stderr is kept beside the records, each start appended, and named
        log = tmp_path / "crash" / "worker.stderr.log"
        assert all(f"its stderr: {log}" in error for error in frame["error"].iloc[2::3])
        assert log.read_text().count(" started at ") == 3  # first start + 2 restarts
    ok = frame[frame["status"] == "ok"]
    assert list(ok["info_candidate_restarts"]) == [0, 0, 1, 1, 2, 2]  # each restart recorded
    assert (ok["frames_generated"] > 0).all()
    # The candidate is brought back before the clock starts: the request after each crash is marked, and its
    # first byte holds no process start, load or hello (a restart costs far more than a request here).
    assert list(frame["after_restart"]) == [False, False, False, True, False, False, True, False, False]
    after = ok[ok["after_restart"]]["first_byte_s"]
    others = ok[~ok["after_restart"]]["first_byte_s"]
    assert after.max() < 2 * others.max() + 0.02, (list(after), list(others))


def test_restarts_are_bounded(request_xv) -> None:
    pipeline = _worker([*FAULTY, "--fault", "crash"], timeout_s=TIMEOUT_S, max_restarts=1)
    try:
        for _ in range(2):  # the first worker crashes, then its one replacement
            with pytest.raises(ProtocolError, match="died with exit code 3"):
                collect(pipeline.stream(request_xv))
        with pytest.raises(PipelineError, match="already been restarted 1 times"):
            collect(pipeline.stream(request_xv))
    finally:
        pipeline.close()


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


def test_check_worker_stops_after_a_failed_load_and_keeps_the_worker_s_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qtts_eval.cli import main

    script = "import sys; print('cannot load: no weights under /nowhere', file=sys.stderr); sys.exit(3)"
    log = tmp_path / "worker.stderr.log"
    command = shlex.join([sys.executable, "-c", script])
    assert main(["check-worker", command, "--stderr-log", str(log), "--timeout", str(TIMEOUT_S)]) == 1
    out = capsys.readouterr().out
    assert out.count("cannot load: no weights under /nowhere") == 1  # one message, not one per rule
    assert out.count("not run: the candidate did not start") == len(RULES) - 1
    assert f"the worker's stderr: {log}" in out
    assert "cannot load: no weights under /nowhere" in log.read_text()


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


def test_load_writes_its_requests_as_records(tmp_path: Path) -> None:
    from qtts_eval.cli import main
    from qtts_eval.results import load_run

    for url in _serve([*FAULTY, "--websocket", "--frame-delay-ms", "5"]):
        args = ["load", url, "--concurrency", "1,2", "--requests-per-session", "2", "--frames", "3"]
        assert main([*args, "--results", str(tmp_path), "--run-id", "load"]) == 0
    frame = load_run(tmp_path / "load")
    assert list(frame.groupby("fixture_id").size().items()) == [("load-closed-1", 2), ("load-closed-2", 4)]
    assert (frame["status"] == "ok").all() and (frame["first_byte_s"] > 0).all()
    assert (frame["rtf"] > 0).all() and set(frame["env_candidate"]) == {url}
    assert frame["env_fixtures_hash"].notna().all() and frame["env_git_commit"].notna().all()
    assert (tmp_path / "load" / "records.parquet").is_file()


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


# --- parity over the wire -------------------------------------------------------------------------------


def _parity_verdicts(report: Path) -> tuple[str, object, list[tuple[str, list[tuple[str, str]]]]]:
    data = json.loads(report.read_text(encoding="utf-8"))
    stages = [(c["mode"], [(s["key"], s["status"]) for s in c["stages"]]) for c in data["comparisons"]]
    return data["verdict"], data["first_failing_stage"], stages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("transport", "served"), [("worker", "hooked-reference"), ("websocket", "fault:talker-weight")]
)
def test_parity_over_the_wire_gives_the_in_process_verdicts(
    transport: str, served: str, tmp_path: Path
) -> None:
    from qtts_eval.cli import main

    common = ["--mode", "xvector", "--frames", "4"]
    in_process = "reference" if served == "hooked-reference" else served
    local_code = main(["parity", in_process, *common, "--out", str(tmp_path / "local")])
    command = [*QTTS, "worker" if transport == "worker" else "serve", "--pipeline", served, "--model", "tiny"]
    command += ["--dump-dir", str(tmp_path / "served-dumps")]
    if transport == "worker":
        wire_code = main(["parity", shlex.join(command), *common, "--out", str(tmp_path / "wire")])
    else:
        for url in _serve([*command, "--port", "0"]):
            wire_code = main(["parity", url, *common, "--out", str(tmp_path / "wire")])
    local = _parity_verdicts(tmp_path / "local" / "report.json")
    wire = _parity_verdicts(tmp_path / "wire" / "report.json")
    assert wire_code == local_code
    assert wire == local  # same verdict, same first failing stage, every stage of free and forced alike
    assert [mode for mode, _ in wire[2]] == ["free", "forced"]  # teacher forcing crossed the wire too
    if served.startswith("fault:"):
        assert wire[0] == "fail" and isinstance(wire[1], dict)
        assert wire[1]["group"] == FAULTS[served.removeprefix("fault:")].group  # caught at its stage
    else:
        assert wire[0] == "pass"
    assert not list((tmp_path / "served-dumps").rglob("*.safetensors"))  # moved to the harness's report dir


def test_dumps_stay_inside_the_operator_chosen_directory(tmp_path: Path) -> None:
    from pathlib import PurePosixPath

    from qtts_eval.parity.capture import HookedReference
    from qtts_eval.pipelines.base import Capability
    from qtts_eval.wire.protocol import InvalidMessage
    from qtts_eval.wire.server import Host

    pipeline = HookedReference(PipelineConfig(model="tiny"))  # not loaded: only its declarations are used
    assert Capability.STAGE_DUMPS not in Host(pipeline, "h").capabilities  # no directory, no dumps
    host = Host(pipeline, "h", tmp_path / "dumps")
    assert {Capability.STAGE_DUMPS, Capability.FORCED_CODES} <= host.capabilities
    assert host.dump_target(PurePosixPath("run/a.safetensors")) == (tmp_path / "dumps/run/a.safetensors")
    (tmp_path / "dumps" / "link").symlink_to(tmp_path)  # a symlink planted inside must not lead outside
    with pytest.raises(InvalidMessage, match="leaves the dump directory"):
        host.dump_target(PurePosixPath("link/escape/a.safetensors"))
    assert not (tmp_path / "escape").exists()  # refused before any directory was made


# --- head-to-head through the wire -----------------------------------------------------------------------


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process on one CPU thread: the precondition of an exact same-codes check between processes.

    Random weights leave near-tie logits; a reduction order changed by another thread count (or a BLAS that
    adapts its threads to the machine's load) can flip one, which is then a real code difference.
    """
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # the servers and the worker this test starts
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_compare_shows_same_work_over_the_wire_and_flags_a_served_fault(
    tiny_reference, one_thread, tmp_path: Path
) -> None:
    from qtts_eval import compare
    from qtts_eval.cli import main
    from qtts_eval.results import load_run
    from qtts_eval.wire.pipelines import WebSocketPipeline

    pipelines.register("served-fault", WebSocketPipeline)  # a second WebSocket candidate in the same run
    worker = shlex.join([*QTTS, "worker", "--pipeline", "reference", "--model", "{model_dir}"])
    served = [*QTTS, "serve", "--model", "tiny", "--port", "0", "--pipeline"]
    for url in _serve([*served, "reference"]):
        for fault_url in _serve([*served, "fault:talker-weight"]):
            config = BenchConfig(
                pipelines=(
                    "websocket",
                    "worker",
                    "served-fault",
                    "reference",
                ),  # the reference still runs first
                fixtures=("en_one_word",),
                repeats=3,
                warmup=1,
                speaker_embedder=None,
                options={"websocket.url": url, "served-fault.url": fault_url, "worker.command": worker},
            )
            Bench.create(config, tmp_path, "h2h").run(progress=False)
    frame = load_run(tmp_path / "h2h")
    assert (frame["status"] == "ok").all(), frame["error"].dropna().tolist()

    served = frame[frame["pipeline"] == "websocket"]
    detail = served[["mode", "repeat", "codes_match_reference", "first_divergent_frame", "stop_vs_reference"]]
    same = compare.compare(*compare.within_run(frame, "websocket"))
    overall = same.iloc[0]
    assert overall["fixture_id"] == compare.ALL and overall["pairs"] == 6  # 2 modes x 3 repeats
    assert overall["codes_match"] == 1.0 and overall["flags"] == "", detail.to_string()
    for metric in ("first_playable_s", "first_byte_s", "rtf"):
        # The same work on the same machine: near 1 (the loopback hop is ~1 ms of requests of ~1 s), with
        # an interval around it. Loose bounds: the 2-core machine is shared with other jobs.
        low, ratio, high = overall[f"{metric}_low"], overall[f"{metric}_ratio"], overall[f"{metric}_high"]
        assert 0.5 < low <= ratio <= high < 2.0, (metric, low, ratio, high)

    worker_rows = frame[frame["pipeline"] == "worker"]
    reference_rows = frame[frame["pipeline"] == "reference"]
    assert (worker_rows["codes_match_reference"] == 1.0).all()
    assert (worker_rows["stop_vs_reference"] == "same").all()
    assert set(worker_rows["env_source_weights_hash"]) == set(
        reference_rows["env_weights_hash"]
    )  # handed over
    assert (worker_rows["peak_mem_kind"] == "worker_tree_rss").all()
    assert (worker_rows["peak_mem_bytes"] > 50 * 2**20).all()  # torch + the model live in the worker
    assert set(worker_rows["env_implementation_name"]) == {"qtts-eval/reference"}
    assert reference_rows["codes_match_reference"].isna().all()  # the reference is the yardstick

    fault_rows = frame[frame["pipeline"] == "served-fault"]
    # One perturbed talker weight changes the codes of some requests (on tiny, those of one clone mode): the
    # record says where, and compare flags the candidate.
    diverged = fault_rows[fault_rows["codes_match_reference"] < 1.0]
    assert len(diverged) and diverged["first_divergent_frame"].notna().all()
    flagged = compare.compare(*compare.within_run(frame, "served-fault"))
    assert "codes_differ" in flagged.iloc[0]["flags"] and flagged.iloc[0]["codes_match"] < 1.0
    markdown, page = tmp_path / "compare.md", tmp_path / "compare.html"
    args = ["compare", str(tmp_path / "h2h"), "--candidate", "served-fault"]
    assert main([*args, "--markdown", str(markdown), "--html", str(page)]) == 1  # flagged
    assert "codes_differ" in markdown.read_text(encoding="utf-8")
    assert "codes_differ" in page.read_text(encoding="utf-8")
    assert main(["compare", str(tmp_path / "h2h"), "--candidate", "websocket"]) == 0


@pytest.mark.slow
def test_the_asked_prompt_layout_crosses_the_wire_and_is_honoured(one_thread: None, tmp_path: Path) -> None:
    from qtts_eval.results import load_run

    worker = shlex.join([*QTTS, "worker", "--pipeline", "reference", "--model", "tiny"])
    codes = {}
    for name, layouts in (("whole-text", ("xvector",)), ("default", ())):
        config = BenchConfig(
            pipelines=("reference", "worker"),
            fixtures=("en_short",),
            modes=("xvector",),
            warmup=0,
            max_frames=6,
            speaker_embedder=None,
            asr=None,
            non_streaming_modes=layouts,
            options={"worker.command": worker},
        )
        Bench.create(config, tmp_path, name).run(progress=False)
        frame = load_run(tmp_path / name).set_index("pipeline")
        assert (frame["status"] == "ok").all(), frame["error"].dropna().tolist()
        assert frame.loc["worker", "codes_match_reference"] == 1.0  # both sides laid the prompt out alike
        assert set(frame["env_non_streaming_mode"]) == {bool(layouts)}  # recorded as asked, on both sides
        codes[name] = frame.loc["worker", "codes_digest"]
    assert codes["whole-text"] != codes["default"]  # the layout asked for reached the served reference


def test_conformance_times_the_cancel_and_fails_a_port_that_cannot_be_interrupted() -> None:
    from qtts_eval.wire.client import Timeouts

    # 60 ms frames: the whole 16-frame cancelled utterance (~1 s) is far over the bound (half of it).
    options = CheckOptions(frames=FRAMES, timeouts=Timeouts(start_s=60, message_s=TIMEOUT_S))
    slow = [*FAULTY, "--frame-delay-ms", "60"]
    healthy = {r.rule: r for r in check_target(" ".join(slow), options)}
    assert healthy["cancel"].verdict is Verdict.PASS and "ms after the cancel" in healthy["cancel"].detail
    results = check_target(" ".join([*slow, "--fault", "slow-cancel"]), options)
    assert [r.rule for r in results if r.failed] == ["cancel"], format_table(results)
    assert "finished the work before honouring it" in next(r for r in results if r.failed).detail


def test_conformance_stops_after_a_candidate_that_cannot_start() -> None:
    failing = "import sys; print('no weights here', file=sys.stderr); sys.exit(4)"
    command = shlex.join([sys.executable, "-c", failing])
    results = check_target(command, CheckOptions(frames=FRAMES))
    assert [r.verdict for r in results][:1] == [Verdict.FAIL] and "no weights here" in results[0].detail
    assert {r.verdict for r in results[1:]} == {Verdict.NOT_APPLICABLE}
    assert all("did not start" in r.detail for r in results[1:])


def test_model_dir_is_the_model_asked_for(tiny_checkpoint: str) -> None:
    from qtts_eval import checkpoints
    from qtts_eval.wire.client import hand_over

    with pytest.raises(PipelineError, match="pass --model"):
        hand_over("port --weights {model_dir}", None)
    argv, handed = hand_over("port --weights {model_dir}", tiny_checkpoint)
    assert handed is not None and argv == ["port", "--weights", str(checkpoints.resolve("tiny").path)]
    assert hand_over(["port", "--fast"], None) == (["port", "--fast"], None)


def test_an_empty_stream_and_a_nan_in_hello_are_recorded_and_the_run_finishes(tmp_path: Path) -> None:
    common = {"fixtures": ("en_one_word",), "modes": ("xvector",), "repeats": 2, "warmup": 0}

    def bench(*fault: str) -> pd.DataFrame:
        options = {"timeout_s": TIMEOUT_S, "command": [*FAULTY, *fault]}
        config = BenchConfig(pipelines=("worker",), options=options, **common)
        return Bench.create(config, tmp_path, fault[1]).run(progress=False)

    empty = bench("--fault", "empty", "--after", "1")
    assert list(empty["status"]) == ["ok", "error"]
    assert "0 samples for" in empty["error"].iloc[1]  # no audio is never a pass by omission
    nan = bench("--fault", "nan-hello")
    assert list(nan["status"]) == ["ok", "ok"]
    assert nan["env_load_s"].isna().all()  # stored as null, with the reason beside it
    assert (nan["metric_error_env.load_s"] == "non-finite value (nan) stored as null").all()
    from qtts_eval.results import load_run

    assert len(load_run(tmp_path / "nan-hello")) == 2  # parquet and jsonl both written


def test_a_dead_workers_error_names_its_stderr_file_which_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qtts_eval.wire import client

    monkeypatch.setattr(client, "STDERR_LOG_MAX_BYTES", 4096)
    chatter = "import sys\nfor i in range(1000): print(f'loading shard {i}', file=sys.stderr)\nsys.exit(3)"
    log = tmp_path / "run" / "worker.stderr.log"
    channel = client.WorkerChannel([sys.executable, "-c", chatter], log)
    try:
        with pytest.raises(ProtocolError, match="worker died with exit code 3; its stderr: ") as caught:
            client.RemoteSession(channel, client.Timeouts(start_s=30.0, message_s=30.0))
    finally:
        channel.close()
    assert str(log) in str(caught.value) and "loading shard 999" in str(caught.value)  # path, then tail
    text = log.read_text()
    assert text.startswith(f"--- {shlex.join([sys.executable, '-c', chatter])} (pid {channel.pid}) started")
    assert "loading shard 0\n" in text and "loading shard 999" not in text
    assert text.endswith("--- stderr cut at 4096 bytes\n") and len(text.encode()) <= 4096 + 64


def test_load_hands_a_worker_the_model_it_was_given() -> None:
    from qtts_eval import checkpoints
    from qtts_eval.wire.client import Timeouts
    from qtts_eval.wire.load import SessionPool

    says = "import sys; print('weights at', sys.argv[1], file=sys.stderr); sys.exit(3)"
    command = shlex.join([sys.executable, "-c", says, "{model_dir}"])
    timeouts = Timeouts(start_s=30.0, message_s=30.0)
    with pytest.raises(ProtocolError, match=f"weights at {checkpoints.resolve('tiny').path}"):
        SessionPool(command, timeouts, 1, model="tiny").acquire()
    with pytest.raises(PipelineError, match="pass --model"):
        SessionPool(command, timeouts, 1).acquire()


def test_the_websocket_client_offers_no_compression() -> None:
    """permessage-deflate, which websockets offers by default, puts zlib time on the clock for every audio
    message and clip upload: the native wire, the speak client and load all connect without it."""
    from qtts_eval.wire.client import WebSocketChannel

    for url in _serve([*FAULTY, "--websocket"]):
        channel = WebSocketChannel(url, 10.0)
        try:
            assert channel.connection.protocol.extensions == []
        finally:
            channel.close()


def test_bench_calls_audio_sliced_after_the_whole_utterance_whole_delivery(tmp_path: Path) -> None:
    """The rule load's streaming window uses (metrics.latency.in_one_burst) holds in bench too: chunks that
    all arrive in one burst at the end are whole delivery, a stream paced over generation is streamed."""
    common = {"fixtures": ("en_one_word",), "modes": ("xvector",), "repeats": 1, "warmup": 0}
    delivery = {}
    for name, fault in (("paced", []), ("burst", ["--fault", "buffer-all"])):
        options = {"timeout_s": TIMEOUT_S, "command": [*FAULTY, "--frame-delay-ms", "20", *fault]}
        config = BenchConfig(pipelines=("worker",), options=options, **common)
        frame = Bench.create(config, tmp_path, name).run(progress=False)
        assert frame["chunks"].iloc[0] > 1, frame.iloc[0].to_dict()
        delivery[name] = frame["work_delivery"].iloc[0]
    assert delivery == {"paced": "streamed", "burst": "whole"}
