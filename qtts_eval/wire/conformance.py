"""Conformance kit for port authors: drive a worker command or a WebSocket URL through every protocol rule.

Rules run in order over one session; a rule that breaks the connection (crash, hang, early close) fails,
and the next rule gets a fresh connection (a new process for a worker). Every wait is bounded by the
timeouts, so a hung candidate fails the rule it hung in rather than hanging the kit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qtts_eval.errors import ProtocolError, QttsEvalError, RemoteError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.pipelines.base import CloneMode, Request
from qtts_eval.units import SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.client import Channel, RemoteSession, Timeouts, Utterance, collect, open_channel
from qtts_eval.wire.protocol import Encoding, ErrorCode

PCM16_TOLERANCE = 1.0 / 32767  # one pcm16 step: rounding alone moves a sample by at most half of it
CANCEL_BUDGET_FACTOR = 4  # the cancelled utterance asks for this many times the normal budget


class RuleFailure(Exception):
    """A rule's expectation was not met; the message says what was expected and what came."""


@dataclass(frozen=True)
class CheckOptions:
    """What the kit asks the candidate to say."""

    frames: int = 4  # frame budget of each utterance (synthetic weights run to it)
    mode: CloneMode = CloneMode.XVECTOR  # clone mode of the utterances
    voice: str = "slt"  # fixture voice uploaded in start
    text: str = "Checking the wire protocol."  # text of the utterances
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(start_s=600.0, message_s=60.0))  # waits


@dataclass(frozen=True)
class RuleResult:
    rule: str  # rule name, as in RULES
    passed: bool
    detail: str  # what was checked, or why it failed


class Checker:
    """State shared by the rules: the target, the session (reopened after a break) and earlier results."""

    def __init__(self, target: str, options: CheckOptions) -> None:
        self.target = target
        self.options = options
        self.voice = load_fixtures().voice(options.voice)
        self._session: RemoteSession | None = None
        self._channel: Channel | None = None
        self.f32: Utterance | None = None  # the f32 utterance, compared against pcm16

    @property
    def session(self) -> RemoteSession:
        if self._session is None:
            self._channel = open_channel(self.target, self.options.timeouts)
            self._session = RemoteSession(self._channel, self.options.timeouts)
        return self._session

    def reset(self) -> None:
        """Drop the connection; the next rule opens a new one."""
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
        self._channel = None
        self._session = None

    def request(self, frames: int | None = None, text: str | None = None) -> Request:
        return Request.for_voice(
            self.voice,
            self.options.text if text is None else text,
            "english",
            self.options.mode,
            max_frames=frames or self.options.frames,
            seed=0,
        )

    def start(self, encoding: Encoding = Encoding.F32) -> str:
        request = self.request()
        return self.session.start(request.ref_audio, request.ref_text, encoding)

    def expect_error(self, code: ErrorCode) -> None:
        message = self.session.next_message()
        if message["type"] != "error" or message.get("code") != code.value:
            raise RuleFailure(
                f"expected an error with code {code.value}, got {protocol.dumps(message)[:200]}"
            )


def _hello(check: Checker) -> str:
    hello = check.session.hello
    return f"protocol {protocol.PROTOCOL_VERSION}, capabilities [{', '.join(sorted(hello.capabilities))}]"


def _speak_before_start(check: Checker) -> str:
    check.session.channel.send(protocol.speak_message(check.request(), return_codes=False))
    check.expect_error(ErrorCode.INVALID_REQUEST)
    return "speak without a session is refused with INVALID_REQUEST"


def _start(check: Checker) -> str:
    return f"ready with voice_id {check.start()}"


def _audio_f32(check: Checker) -> str:
    check.start()
    utterance = collect(check.session.speak(check.request()))
    if utterance.end.frames_generated < 1 or not utterance.chunks:
        raise RuleFailure(
            f"no audio: {utterance.end.frames_generated} frames, {len(utterance.chunks)} chunks"
        )
    check.f32 = utterance
    samples = sum(chunk.samples.shape[0] for chunk in utterance.chunks)
    return (
        f"{len(utterance.chunks)} chunks, {samples} samples = {utterance.end.frames_generated} x "
        f"{SAMPLES_PER_FRAME}, all finite"
    )


def _voice_cache(check: Checker) -> str:
    first = check.start()
    check.session.channel.send(protocol.start_message(Encoding.F32, cached_voice_id=first))
    message = check.session.next_message()
    if message["type"] != "ready" or message.get("voice_id") != first:
        raise RuleFailure(f"start with cached voice_id {first} got {protocol.dumps(message)[:200]}")
    return f"start with voice_id {first} needs no upload"


def _audio_pcm16(check: Checker) -> str:
    check.start(Encoding.PCM16)
    utterance = collect(check.session.speak(check.request()))
    audio = np.concatenate([chunk.samples for chunk in utterance.chunks])
    reference = check.f32
    if reference is None or reference.end.codes is None or utterance.end.codes is None:
        return f"{audio.shape[0]} pcm16 samples (not compared with f32: no codes to prove equal generations)"
    if not np.array_equal(reference.end.codes, utterance.end.codes):
        return f"{audio.shape[0]} pcm16 samples (codes differ from the f32 run: not compared)"
    exact = np.concatenate([chunk.samples for chunk in reference.chunks])
    if exact.shape != audio.shape:
        raise RuleFailure(f"same codes but {audio.shape[0]} pcm16 samples against {exact.shape[0]} in f32")
    worst = float(np.max(np.abs(np.clip(exact, -1, 1) - audio)))
    if worst > PCM16_TOLERANCE:
        raise RuleFailure(
            f"pcm16 differs from f32 by {worst:.3g}, more than one step ({PCM16_TOLERANCE:.3g})"
        )
    return f"pcm16 matches f32 within one step (worst {worst:.2g})"


def _unknown_voice(check: Checker) -> str:
    check.session.channel.send(protocol.start_message(Encoding.F32, cached_voice_id="v-no-such-voice"))
    check.expect_error(ErrorCode.VOICE_NOT_FOUND)
    return "unknown voice_id is refused with VOICE_NOT_FOUND"


def _invalid(text: str, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> Callable[[Checker], str]:
    def rule(check: Checker) -> str:
        check.session.channel.send_text(text)
        check.expect_error(code)
        return f"refused with {code.value}"

    return rule


def _start_variant(**changes: object) -> str:
    message = {**protocol.start_message(Encoding.F32, cached_voice_id="v-unused"), **changes}
    return protocol.dumps(message)


def _empty_text(check: Checker) -> str:
    check.start()
    message = {**protocol.speak_message(check.request(), return_codes=False), "text": "   "}
    check.session.channel.send(message)
    check.expect_error(ErrorCode.INVALID_REQUEST)
    return "whitespace-only text is refused with INVALID_REQUEST"


def _cancel(check: Checker) -> str:
    check.start()
    session = check.session
    frames = check.options.frames * CANCEL_BUDGET_FACTOR
    session.channel.send(protocol.speak_message(check.request(frames), return_codes=False))
    session.cancel()
    utterance = collect(session.receive_utterance())
    if not utterance.cancelled:
        raise RuleFailure(
            f"cancel sent right after speak, but the {frames}-frame utterance completed uncancelled"
        )
    after = collect(session.speak(check.request()))
    return (
        f"complete(cancelled) after {sum(c.samples.shape[0] for c in utterance.chunks)} samples; "
        f"next speak gave {after.end.frames_generated} frames"
    )


def _stop(check: Checker) -> str:
    session = check.session
    session.stop()
    try:
        extra = session.channel.receive(session.timeouts.message_s)
    except ProtocolError:
        return "stopped, then the connection closed"
    raise RuleFailure(f"after stopped the candidate sent {type(extra).__name__} instead of closing")


@dataclass(frozen=True)
class Rule:
    name: str  # short id printed in the table
    check: Callable[[Checker], str]  # returns a detail line, raises on failure


RULES: tuple[Rule, ...] = (
    Rule("hello", _hello),
    Rule("speak-before-start", _speak_before_start),
    Rule("start", _start),
    Rule("audio-f32", _audio_f32),
    Rule("voice-cache", _voice_cache),
    Rule("audio-pcm16", _audio_pcm16),
    Rule("unknown-voice", _unknown_voice),
    Rule("malformed-json", _invalid("{not json")),
    Rule("unknown-type", _invalid(protocol.dumps({"type": "dance"}))),
    Rule("bad-encoding", _invalid(_start_variant(encoding="mp3"))),
    Rule("bad-sample-rate", _invalid(_start_variant(sample_rate=16000))),
    Rule("bad-protocol", _invalid(_start_variant(protocol=99), ErrorCode.UNSUPPORTED_PROTOCOL)),
    Rule("empty-text", _empty_text),
    Rule("cancel", _cancel),
    Rule("stop", _stop),
)


def check_target(target: str, options: CheckOptions | None = None) -> list[RuleResult]:
    """Run every rule against a worker command or ws:// URL; never raises for a candidate's fault."""
    checker = Checker(target, options or CheckOptions())
    results: list[RuleResult] = []
    try:
        for rule in RULES:
            try:
                detail = rule.check(checker)
            except (RuleFailure, QttsEvalError, RemoteError) as exc:
                results.append(RuleResult(rule.name, False, f"{type(exc).__name__}: {exc}"))
                checker.reset()  # whatever state the candidate is in, the next rule starts clean
            else:
                results.append(RuleResult(rule.name, True, detail))
    finally:
        checker.reset()
    return results


def format_table(results: list[RuleResult]) -> str:
    width = max(len(result.rule) for result in results)
    lines = [f"{'rule':<{width}}  result  detail"]
    lines += [f"{r.rule:<{width}}  {'pass' if r.passed else 'FAIL':<6}  {r.detail}" for r in results]
    failed = [r for r in results if not r.passed]
    if failed:
        lines.append(f"\nFAILED {len(failed)} of {len(results)} rules; first failing rule: {failed[0].rule}")
    else:
        lines.append(f"\nall {len(results)} rules passed")
    return "\n".join(lines)
