"""Load generation against a candidate over the wire: closed-loop concurrency sweeps and open-loop arrivals.

Closed loop: N sessions each send their next request as soon as the previous one completes. Open loop:
requests arrive as a Poisson process at a given rate whatever the candidate's state, so queueing shows up
in first-byte latency (t0 is the scheduled arrival). Every level is bounded in requests and in time, and
only loopback URLs or local worker commands are accepted.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtts_eval.errors import BenchError, QttsEvalError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.metrics.latency import ChunkTiming, in_one_burst, playback_underruns
from qtts_eval.pipelines.base import CloneMode, Request, Sampling, UnsupportedRequest
from qtts_eval.results import Record, RequestOutcome, delivered_outcome, error_outcome
from qtts_eval.units import SAMPLE_RATE_HZ
from qtts_eval.wire.client import RemoteSession, Timeouts, collect, open_channel
from qtts_eval.wire.protocol import Encoding
from qtts_eval.wire.server import LOOPBACK_HOSTS
from qtts_eval.wire.slo import Slo

PERCENTILES = (50, 95, 99)
OUTCOMES = tuple(outcome.value for outcome in RequestOutcome)  # the per-level counts, one column each


@dataclass(frozen=True)
class LoadOptions:
    """What to send and how hard."""

    concurrency: tuple[int, ...] = (1, 3, 6, 10)  # closed-loop session counts, one level each
    rates_hz: tuple[float, ...] = ()  # open-loop arrival rates, requests per second, one level each
    requests_per_session: int = 2  # closed loop: requests each session sends
    open_requests: int = 10  # open loop: arrivals per rate
    max_sessions: int = 10  # open loop: concurrent sessions at most; later arrivals wait for one
    max_level_s: float = 300.0  # no new request starts after this many seconds into a level
    frames: int = 8  # frame budget per request
    mode: CloneMode = CloneMode.XVECTOR  # clone mode
    voice: str = "slt"  # fixture voice
    text: str = "The quick brown fox jumps over the lazy dog."  # text of every request
    seed: int = 0  # arrival-time seed (open loop) and request seed
    timeouts: Timeouts = field(default_factory=Timeouts)  # waits per session and message
    model: str | None = None  # the checkpoint a worker command's {model_dir} stands for


@dataclass(frozen=True)
class Sample:
    """One request as the harness saw it."""

    t0_ns: int  # speak sent (closed loop) or scheduled arrival (open loop)
    sent_ns: int  # speak sent (later than t0 in open loop when the harness or a session was late)
    first_ns: int | None  # first audio frame decoded at the harness
    last_ns: int | None  # last audio frame decoded
    end_ns: int  # the request finished, well or not
    chunks: int  # audio chunks received
    audio_s: float  # seconds of audio received
    underruns: int  # playback stalls if playback starts at the first byte
    error: str | None  # what went wrong, if anything
    outcome: str  # how the request ended: one of OUTCOMES

    @property
    def ok(self) -> bool:
        return self.error is None and self.first_ns is not None and self.audio_s > 0

    @property
    def streaming_window(self) -> float | None:
        """Seconds from first to last audio byte per second of audio: 0 for audio sent in one burst."""
        if not self.ok or self.last_ns is None or self.first_ns is None:
            return None
        return (self.last_ns - self.first_ns) / 1e9 / self.audio_s

    @property
    def buffered(self) -> bool:
        """Several chunks, but all in one burst at the end of the time after speak was sent (in_one_burst)."""
        if not self.ok or self.chunks < 2 or self.last_ns is None or self.first_ns is None:
            return False
        return in_one_burst(self.first_ns - self.sent_ns, self.last_ns - self.sent_ns)


@dataclass(frozen=True)
class LevelResult:
    kind: str  # "closed" or "open"
    level: float  # sessions (closed) or arrivals per second (open)
    samples: list[Sample]
    wall_s: float  # first t0 to last completion


def check_target_is_local(target: str) -> None:
    if target.startswith(("ws://", "wss://")):
        host = urllib.parse.urlsplit(target).hostname or ""
        if host not in LOOPBACK_HOSTS:
            raise BenchError(f"load testing is loopback only; {target} is not on 127.0.0.1, ::1 or localhost")


class SessionPool:
    """Sessions to the target, opened on demand up to a bound and reused."""

    def __init__(self, target: str, timeouts: Timeouts, size: int, model: str | None = None) -> None:
        self.target = target
        self.timeouts = timeouts
        self.model = model
        self._slots = threading.Semaphore(size)
        self._idle: list[RemoteSession] = []
        self._all: list[RemoteSession] = []
        self._lock = threading.Lock()

    def acquire(self) -> RemoteSession:
        self._slots.acquire()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            session = RemoteSession(open_channel(self.target, self.timeouts, self.model), self.timeouts)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._all.append(session)
        return session

    def warm(self, count: int) -> None:
        """Open ``count`` sessions now, so opening (a worker's model load) is not timed as latency."""
        opened = [self.acquire() for _ in range(count)]
        for session in opened:
            self.release(session, broken=False)

    def release(self, session: RemoteSession, broken: bool) -> None:
        with self._lock:
            if broken:
                self._all.remove(session)
                with contextlib.suppress(Exception):
                    session.channel.close()
            else:
                self._idle.append(session)
        self._slots.release()

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                with contextlib.suppress(Exception):
                    session.channel.close()
            self._all.clear()
            self._idle.clear()


class LoadRunner:
    def __init__(self, target: str, options: LoadOptions) -> None:
        check_target_is_local(target)
        if any(n < 1 for n in options.concurrency) or any(r <= 0 for r in options.rates_hz):
            raise BenchError("concurrency levels must be >= 1 and arrival rates > 0")
        self.target = target
        self.options = options
        self.request = Request.for_voice(
            load_fixtures().voice(options.voice),
            options.text,
            "english",
            options.mode,
            max_frames=options.frames,
            seed=options.seed,
        )

    def one(self, pool: SessionPool, t0_ns: int | None) -> Sample:
        """Run one request; t0_ns None means t0 is when speak is sent."""
        broken = False

        def failed(exc: Exception) -> Sample:
            now = time.monotonic_ns()
            t0 = now if t0_ns is None else t0_ns
            error = f"{type(exc).__name__}: {exc}"
            return Sample(t0, now, None, None, now, 0, 0.0, 0, error, error_outcome(exc).value)

        try:
            session = pool.acquire()
        except QttsEvalError as exc:
            return failed(exc)
        try:
            session.start(self.request.ref_audio, self.request.ref_text, Encoding.F32)
            sent_ns = time.monotonic_ns()
            utterance = collect(session.speak(self.request, return_codes=False))
        except (QttsEvalError, UnsupportedRequest) as exc:
            broken = True
            return failed(exc)
        finally:
            pool.release(session, broken)
        times = utterance.arrived_ns
        counts = [chunk.samples.shape[0] for chunk in utterance.chunks]
        return Sample(
            t0_ns=sent_ns if t0_ns is None else t0_ns,
            sent_ns=sent_ns,
            first_ns=times[0] if times else None,
            last_ns=times[-1] if times else None,
            end_ns=time.monotonic_ns(),
            chunks=len(times),
            audio_s=sum(counts) / SAMPLE_RATE_HZ,
            underruns=playback_underruns(
                [ChunkTiming((t - times[0]) / 1e9, n) for t, n in zip(times, counts, strict=True)]
            )[0],
            error=None,
            outcome=delivered_outcome(
                utterance.cancelled, utterance.end.frames_generated, self.request.max_frames
            ).value,
        )

    def closed_loop(self, sessions: int) -> LevelResult:
        pool = SessionPool(self.target, self.options.timeouts, sessions, self.options.model)
        samples: list[Sample] = []
        lock = threading.Lock()
        deadline = time.monotonic() + self.options.max_level_s

        def session_loop() -> None:
            for _ in range(self.options.requests_per_session):
                if time.monotonic() > deadline:
                    return
                sample = self.one(pool, None)
                with lock:
                    samples.append(sample)

        pool.warm(sessions)
        began = time.monotonic_ns()
        try:
            _run_threads([session_loop] * sessions)
        finally:
            pool.close()
        return LevelResult("closed", sessions, samples, (time.monotonic_ns() - began) / 1e9)

    def open_loop(self, rate_hz: float) -> LevelResult:
        pool = SessionPool(self.target, self.options.timeouts, self.options.max_sessions, self.options.model)
        rng = np.random.default_rng(self.options.seed)
        gaps_s = rng.exponential(1.0 / rate_hz, self.options.open_requests)
        samples: list[Sample] = []
        lock = threading.Lock()
        threads: list[threading.Thread] = []
        pool.warm(self.options.max_sessions)
        began = time.monotonic_ns()

        def arrival(t0_ns: int) -> None:
            sample = self.one(pool, t0_ns)
            with lock:
                samples.append(sample)

        try:
            arrival_ns = began
            for gap_s in gaps_s:
                arrival_ns += int(gap_s * 1e9)
                if (arrival_ns - began) / 1e9 > self.options.max_level_s:
                    break
                time.sleep(max(0.0, (arrival_ns - time.monotonic_ns()) / 1e9))
                thread = threading.Thread(target=arrival, args=(arrival_ns,), daemon=True)
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
        finally:
            pool.close()
        return LevelResult("open", rate_hz, samples, (time.monotonic_ns() - began) / 1e9)

    def run(self, on_level: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
        levels = [lambda n=n: self.closed_loop(n) for n in self.options.concurrency]
        levels += [lambda r=r: self.open_loop(r) for r in self.options.rates_hz]
        results = []
        for level in levels:
            result = level()
            results.append(result)
            if on_level is not None:
                on_level(result)
        return results


def _run_threads(bodies: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=body, daemon=True) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def request_measures(sample: Sample) -> dict[str, float] | None:
    """The per-request SLO quantities of a request that ended with audio; None for one that failed."""
    if not sample.ok or sample.first_ns is None or sample.last_ns is None:
        return None
    return {
        "first_byte": (sample.first_ns - sample.t0_ns) / 1e9,
        "rtf": (sample.last_ns - sample.t0_ns) / 1e9 / sample.audio_s,
        "underruns": float(sample.underruns),
    }


def meets_slo(sample: Sample, slo: Slo) -> bool:
    measured = request_measures(sample)
    return measured is not None and slo.request_ok(measured)


def peak_in_flight(samples: list[Sample]) -> int:
    """Most requests arrived (t0) and not yet finished at any one time."""
    events = sorted([(s.t0_ns, 1) for s in samples] + [(s.end_ns, -1) for s in samples])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def summarise(result: LevelResult, slo: Slo | None = None) -> dict[str, float | int | str]:
    """Per-level row: counts, first-byte and RTF percentiles, throughput, continuity, streaming, goodput."""
    ok = [s for s in result.samples if s.ok]
    first_ms = [(s.first_ns - s.t0_ns) / 1e6 for s in ok if s.first_ns is not None]
    rtf = [(s.last_ns - s.t0_ns) / 1e9 / s.audio_s for s in ok if s.last_ns is not None]
    lag_ms = [(s.sent_ns - s.t0_ns) / 1e6 for s in result.samples]
    windows = [w for s in ok if (w := s.streaming_window) is not None]
    requests = len(result.samples)
    row: dict[str, float | int | str] = {
        "kind": result.kind,
        "level": result.level,
        "requests": requests,
        "errors": requests - len(ok),
    }
    for q in PERCENTILES:
        row[f"first_ms_p{q}"] = float(np.percentile(first_ms, q)) if first_ms else math.nan
    for q in PERCENTILES:
        row[f"rtf_p{q}"] = float(np.percentile(rtf, q)) if rtf else math.nan
    row["audio_s_per_s"] = sum(s.audio_s for s in ok) / result.wall_s if result.wall_s > 0 else math.nan
    row["underruns"] = sum(s.underruns for s in ok)
    row["continuity_ok"] = sum(s.underruns == 0 for s in ok) / len(ok) if ok else math.nan
    row["lag_ms_p95"] = float(np.percentile(lag_ms, 95)) if lag_ms else math.nan
    row["peak_in_flight"] = peak_in_flight(result.samples)
    row["window_p50"] = float(np.median(windows)) if windows else math.nan
    row["buffered"] = sum(s.buffered for s in ok)
    for outcome in OUTCOMES:
        row[outcome] = sum(s.outcome == outcome for s in result.samples)
    if slo is not None:
        goodput = sum(meets_slo(s, slo) for s in result.samples) / requests if requests else 0.0
        row["goodput"] = goodput
        row["slo_met"] = int(requests > 0 and slo.level_ok(goodput, (requests - len(ok)) / requests))
    return row


def streaming_verdict(row: dict[str, float | int | str]) -> str | None:
    """'not streaming' when most requests' audio came in one burst at the end (see in_one_burst)."""
    delivered = int(row["requests"]) - int(row["errors"])
    if delivered and int(row["buffered"]) * 2 > delivered:
        return (
            f"not streaming: {row['buffered']} of {delivered} requests sent all audio in one burst at the end"
        )
    return None


@dataclass(frozen=True)
class RateSearch:
    """What --find-max-rate found: the highest passing rate tried and the lowest failing one above it."""

    passed_hz: float | None  # highest rate whose level met the SLO (None: even the lowest tried failed)
    failed_hz: float | None  # lowest rate above it that failed (None: the bound ran out while still passing)
    levels: list[tuple[LevelResult, dict[str, float | int | str]]]


def find_max_rate(
    runner: LoadRunner,
    slo: Slo,
    start_hz: float,
    max_levels: int,
    max_total_s: float,
    on_level: Callable[[LevelResult], None] | None = None,
) -> RateSearch:
    """Double the open-loop rate while the SLO holds, then bisect between the last pass and the first fail.

    Bounded by ``max_levels`` levels and ``max_total_s`` seconds (no new level starts after that). Starting
    below capacity matters: if ``start_hz`` fails, the rate halves until one passes.
    """
    if start_hz <= 0 or max_levels < 1:
        raise BenchError("--find-max-rate needs a start rate > 0 and at least one level")
    deadline = time.monotonic() + max_total_s
    passed: float | None = None
    failed: float | None = None
    levels: list[tuple[LevelResult, dict[str, float | int | str]]] = []
    rate = start_hz
    while len(levels) < max_levels and time.monotonic() < deadline:
        result = runner.open_loop(rate)
        row = summarise(result, slo)
        levels.append((result, row))
        if on_level is not None:
            on_level(result)
        if row["slo_met"]:
            passed = rate
        else:
            failed = rate
        if failed is None:
            rate = rate * 2
        elif passed is None:
            rate = rate / 2
        else:
            rate = (passed + failed) / 2
    return RateSearch(passed, failed, levels)


def first_error(result: LevelResult) -> str | None:
    return next((s.error for s in result.samples if s.error is not None), None)


def load_records(
    run_id: str,
    target: str,
    options: LoadOptions,
    results: list[LevelResult],
    env: dict[str, Any],
    slo: Slo | None = None,
) -> list[Record]:
    """Every request of a load test as a results record, so gates and history apply to load runs too.

    Each level is its own fixture (`load-closed-3`, `load-open-0.5`): a series compares like with like. t0 is
    as in `summarise` (speak sent, or the scheduled arrival), so `first_byte_s` includes queueing.
    """
    transport = "websocket" if target.startswith(("ws://", "wss://")) else "worker"
    records = []
    for result in results:
        fixture = f"load-{result.kind}-{result.level:g}"
        for index, sample in enumerate(result.samples):
            ok = sample.error is None and sample.first_ns is not None and sample.last_ns is not None
            wall_s = (sample.last_ns - sample.t0_ns) / 1e9 if ok and sample.last_ns is not None else None
            records.append(
                Record(
                    run_id=run_id,
                    request_key=f"{transport}|{fixture}|{options.voice}|{options.mode.value}|{index}",
                    pipeline=transport,
                    fixture_id=fixture,
                    language="english",
                    category="load",
                    voice_id=options.voice,
                    mode=options.mode.value,
                    repeat=index,
                    seed=options.seed,
                    sampling=Sampling().name,
                    text_chars=len(options.text),
                    frame_budget=options.frames,
                    status="ok" if ok else "error",
                    outcome=sample.outcome,
                    error=sample.error,
                    audio_seconds=sample.audio_s if ok else None,
                    wall_s=wall_s,
                    rtf=wall_s / sample.audio_s if wall_s is not None and sample.audio_s > 0 else None,
                    first_byte_s=(sample.first_ns - sample.t0_ns) / 1e9 if ok and sample.first_ns else None,
                    underruns=sample.underruns if ok else None,
                    info={
                        "load_kind": result.kind,
                        "load_level": result.level,
                        "sched_lag_s": (sample.sent_ns - sample.t0_ns) / 1e9,
                        "streaming_window": sample.streaming_window,
                        "buffered": sample.buffered,
                        **({"slo": str(slo), "meets_slo": meets_slo(sample, slo)} if slo else {}),
                    },
                    env={**env, "candidate": target, "transport": transport},
                )
            )
    return records
