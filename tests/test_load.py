"""Goodput at an SLO, the max-rate search and the streaming window, against a real tone worker on loopback.

The tone worker (``qtts_eval.wire.faulty_worker``) paces its frames like a model, so a larger frame delay is a
planted slowdown and ``--fault buffer-all`` a server that sends the whole utterance in one burst at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import running_server

from qtts_eval.errors import BenchError
from qtts_eval.gates import GateInputs, Outcome, evaluate_gate, parse_gates
from qtts_eval.wire.load import LoadOptions, LoadRunner, find_max_rate, streaming_verdict, summarise
from qtts_eval.wire.slo import parse_slo

FAULTY = [sys.executable, "-m", "qtts_eval.wire.faulty_worker", "--websocket"]
# One session, so one request at a time: each costs its start (the voice upload, ~70 ms on the 2-core dev box)
# plus 4 frames at D ms, and a first byte (from the scheduled arrival) within 250 ms needs a short queue.
OPTIONS = LoadOptions(concurrency=(), open_requests=8, max_sessions=1, frames=4, max_level_s=5.0)
SLO = parse_slo("first_byte<=0.25,errors<=0,goodput>=0.75")


def _serve(*extra: str) -> Iterator[str]:
    return running_server([*FAULTY, *extra], "ws")


def _max_rate(frame_delay_ms: float) -> tuple[float | None, float | None]:
    for url in _serve("--frame-delay-ms", str(frame_delay_ms)):
        search = find_max_rate(LoadRunner(url, OPTIONS), SLO, start_hz=4.0, max_levels=5, max_total_s=20.0)
    for _, row in search.levels:
        assert row["errors"] == 0 and row["requests"] > 0
    return search.passed_hz, search.failed_hz


def test_slo_syntax_and_its_errors() -> None:
    slo = parse_slo("first_byte<=0.2, underruns==0,errors<=0.01")
    assert str(slo) == "first_byte<=0.2,underruns==0,errors<=0.01,goodput>=0.9"  # default goodput target
    assert slo.request_ok({"first_byte": 0.2, "underruns": 0.0, "rtf": 9.0})
    assert not slo.request_ok({"first_byte": 0.21, "underruns": 0.0, "rtf": 0.1})
    assert slo.level_ok(0.95, 0.0) and not slo.level_ok(0.85, 0.0) and not slo.level_ok(1.0, 0.02)
    with pytest.raises(BenchError, match="unknown name 'first_byte_p95'"):
        parse_slo("first_byte_p95<=0.2")
    with pytest.raises(BenchError, match="is not NAME OP VALUE"):
        parse_slo("first_byte=<0.2")
    with pytest.raises(BenchError, match="names goodput twice"):
        parse_slo("goodput>=0.9,goodput>=0.5")


def test_find_max_rate_finds_a_rate_and_a_planted_slowdown_lowers_it() -> None:
    fast_pass, fast_fail = _max_rate(5.0)  # ~90 ms per request: about 10 per second
    slow_pass, slow_fail = _max_rate(60.0)  # ~310 ms per request: about 3 per second
    assert fast_pass is not None and slow_pass is not None, (fast_pass, slow_pass)
    assert slow_fail is not None, "the slowed server never failed: the search saw no limit"
    assert slow_pass < fast_pass, (slow_pass, slow_fail, fast_pass, fast_fail)


def test_streaming_window_flags_a_server_that_buffers_the_utterance() -> None:
    options = LoadOptions(concurrency=(1,), requests_per_session=3, frames=6)
    rows = {}
    windows = {}
    for fault in ("none", "buffer-all"):
        for url in _serve("--frame-delay-ms", "25", "--fault", fault):
            (level,) = LoadRunner(url, options).run()
        rows[fault] = summarise(level, SLO)
        windows[fault] = [s.streaming_window for s in level.samples]
    streamed, buffered = rows["none"], rows["buffer-all"]
    assert streamed["buffered"] == 0 and streaming_verdict(streamed) is None
    # frames spread over generation: 5 gaps of 25 ms over 480 ms of audio
    assert float(streamed["window_p50"]) > 0.2, windows
    assert buffered["buffered"] == 3 and float(buffered["window_p50"]) < 0.02, windows
    assert (
        streaming_verdict(buffered) == "not streaming: 3 of 3 requests sent all audio in one burst at the end"
    )


def test_load_cli_stores_slo_facts_and_prints_the_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qtts_eval.cli import main
    from qtts_eval.results import load_run

    for url in _serve("--frame-delay-ms", "5"):
        args = [
            "load",
            url,
            "--concurrency",
            "",
            "--open-requests",
            "6",
            "--max-sessions",
            "1",
            "--frames",
            "4",
        ]
        args += ["--slo", "first_byte<=0.06,goodput>=0.8", "--find-max-rate", "4", "--max-levels", "2"]
        assert main([*args, "--results", str(tmp_path), "--run-id", "slo"]) == 0
    out = capsys.readouterr().out
    assert "max rate: " in out and "bracket between the last passing and first failing" in out
    frame = load_run(tmp_path / "slo")
    assert len(frame) == 12 and set(frame["fixture_id"]) <= {"load-open-4", "load-open-8", "load-open-2"}
    assert (
        frame["info_meets_slo"].notna().all() and (frame["info_slo"] == "first_byte<=0.06,goodput>=0.8").all()
    )
    assert (frame["info_sched_lag_s"] >= 0).all() and (frame["info_streaming_window"] > 0).all()
    # A goodput gate holds each level to the SLO, from the records alone (as CI would).
    spec = parse_gates({"gate": [{"min_goodput": 0.8}]})
    result = evaluate_gate(spec.gates[0], spec, GateInputs(frame))
    shares = frame.groupby("fixture_id")["info_meets_slo"].mean()
    for group in result.groups:
        share = shares[group.group.split("fixture_id=")[1].split()[0]]
        assert group.current == pytest.approx(share)
        assert group.outcome is (Outcome.PASS if share >= 0.8 else Outcome.FAIL), group.message


def test_outcomes_say_how_each_request_ended() -> None:
    # The tone worker never ends at EOS: it always fills the budget, so each request is length_limited.
    options = LoadOptions(concurrency=(1,), requests_per_session=2, frames=3)
    for url in _serve("--frame-delay-ms", "5"):
        (level,) = LoadRunner(url, options).run()
    row = summarise(level)
    assert (row["length_limited"], row["eos"], row["errors"]) == (2, 0, 0)
    for url in _serve("--frame-delay-ms", "5", "--fault", "malformed"):
        (level,) = LoadRunner(url, options).run()
    assert level.samples[0].outcome == "malformed", [s.error for s in level.samples]
