"""Conformance kit for port authors: drive a worker command or a WebSocket URL through every protocol rule.

Rules run in order over one session; a rule that breaks the connection (crash, hang, early close) fails,
and the next rule gets a fresh connection (a new process for a worker). Every wait is bounded by the
timeouts, so a hung candidate fails the rule it hung in rather than hanging the kit. A rule never passes
without comparing: when it has nothing to compare (no codes returned, an earlier rule failed) it says
"n/a" and why, which is not a pass.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qtts_eval.errors import CandidateTimeout, ProtocolError, QttsEvalError, RemoteError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.pipelines.base import CloneMode, Request, UnsupportedRequest
from qtts_eval.pipelines.codec import ReferenceCodec
from qtts_eval.units import SAMPLES_PER_FRAME
from qtts_eval.wire import protocol
from qtts_eval.wire.client import Channel, RemoteSession, Timeouts, Utterance, collect, open_channel
from qtts_eval.wire.protocol import Encoding, ErrorCode

PCM16_TOLERANCE = 1.0 / 32767  # one pcm16 step: rounding alone moves a sample by at most half of it
# Two runs of the same greedy request may differ by less than one pcm16 step (e.g. a GPU reduction order):
# that is lost in the encoding the endpoint serves. More is nondeterminism.
REPEAT_TOLERANCE = PCM16_TOLERANCE
# Audio vs the reference codec's decode of the returned codes, relative L2. Streaming decoders with a
# bounded left context land at 2.4e-2 (25 frames) and 1.9e-3 (72 frames) on full-size random weights
# (docs: REFERENCE-NOTES streaming facts); audio unrelated to the codes, at equal power, scores about 1.4.
DECODE_TOLERANCE = 0.1
CANCEL_BUDGET_FACTOR = 4  # the cancelled (and the busy) utterance asks for this many times the normal budget
# A cancel sent right after speak must end the utterance in under this share of the time the whole utterance
# would take (estimated from the audio-f32 request, a quarter of its budget): a port that finishes the work
# first and only then reports `cancelled` cannot be interrupted. The floor absorbs the noise of a shared host.
CANCEL_SHARE = 0.5
CANCEL_FLOOR_S = 0.25
# hello.implementation fields the bench relies on: frame budget and quality verdict (synthetic), same-weights
# checks (weights_hash), and the candidate's identity in every record and comparison (name, version).
REQUIRED_IMPLEMENTATION: dict[str, type] = {
    "name": str,
    "version": str,
    "synthetic": bool,
    "weights_hash": str,
}


class Verdict(str, enum.Enum):
    """How a rule ended."""

    PASS = "pass"  # the candidate did what the rule expects, and the kit compared it
    FAIL = "FAIL"  # it did not
    NOT_APPLICABLE = "n/a"  # nothing to compare (no codes returned, an earlier rule failed): not a pass


NOT_STARTED = "not run: the candidate did not start (see the failed rule above)"


class RuleFailure(Exception):
    """A rule's expectation was not met; the message says what was expected and what came."""


class NotApplicable(Exception):
    """A rule has nothing to compare; the message says why."""


@dataclass(frozen=True)
class CheckOptions:
    """What the kit asks the candidate to say."""

    frames: int = 4  # frame budget of each utterance (synthetic weights run to it)
    mode: CloneMode = CloneMode.XVECTOR  # clone mode of the utterances
    voice: str = "slt"  # fixture voice uploaded in start
    text: str = "Checking the wire protocol."  # text of the utterances
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(start_s=600.0, message_s=60.0))  # waits
    # Checkpoint whose reference codec decodes the candidate's codes (preset, directory or hub id); None: the
    # model_ref of its hello, used only when its weights hash matches the candidate's.
    model: str | None = None
    stderr_log: Path | None = None  # a worker's whole stderr (bounded) is appended here; None: only its tail


@dataclass(frozen=True)
class RuleResult:
    rule: str  # rule name, as in RULES
    verdict: Verdict  # pass, FAIL or n/a
    detail: str  # what was checked, or why it failed or could not compare

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL


class Checker:
    """State shared by the rules: the target, the session (reopened after a break) and earlier results."""

    def __init__(self, target: str, options: CheckOptions) -> None:
        self.target = target
        self.options = options
        self.voice = load_fixtures().voice(options.voice)
        self._session: RemoteSession | None = None
        self._channel: Channel | None = None
        self._codec: ReferenceCodec | None = None
        self.f32: Utterance | None = None  # the f32 utterance, repeated and compared against pcm16
        self.f32_wall_s: float | None = None  # seconds from its speak to its complete
        self.load_failure: str | None = None  # why the candidate could not be started; no rule runs after
        self.repeat_diff: float | None = None  # largest sample difference of two identical requests

    @property
    def session(self) -> RemoteSession:
        if self._session is None:
            try:
                self._channel = open_channel(
                    self.target, self.options.timeouts, self.options.model, self.options.stderr_log
                )
                self._session = RemoteSession(self._channel, self.options.timeouts)
            except QttsEvalError as exc:
                # A candidate that cannot start (load error, no hello) will not start for the next rule.
                self.load_failure = f"{type(exc).__name__}: {exc}"
                raise
        return self._session

    def codec(self) -> ReferenceCodec:
        """The reference codec of the candidate's checkpoint; NotApplicable when it cannot be known."""
        if self._codec is not None:
            return self._codec
        implementation = self.session.hello.implementation
        model = self.options.model or implementation.get("model_ref")
        if not isinstance(model, str) or not model:
            raise NotApplicable("no checkpoint to decode the codes with: pass --model")
        try:
            codec = ReferenceCodec(model)
        except QttsEvalError as exc:
            raise NotApplicable(
                f"cannot load the reference codec of {model!r} ({exc}); pass --model"
            ) from None
        claimed = implementation.get("weights_hash")
        if self.options.model is None and claimed != codec.weights_hash:
            raise NotApplicable(
                f"the candidate's weights ({claimed!r}) are not those of {model!r} "
                f"({codec.weights_hash[:16]}...): another checkpoint's codec would blame it wrongly; "
                "pass --model"
            )
        self._codec = codec
        return codec

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


def _audio(utterance: Utterance) -> np.ndarray:
    if not utterance.chunks:
        return np.zeros(0, np.float32)
    return np.concatenate([chunk.samples for chunk in utterance.chunks])


def _hello(check: Checker) -> str:
    hello = check.session.hello
    implementation = hello.implementation
    problems = [
        f"{key} ({kind.__name__}) {'missing' if key not in implementation else f'is {implementation[key]!r}'}"
        for key, kind in REQUIRED_IMPLEMENTATION.items()
        if not isinstance(implementation.get(key), kind) or implementation.get(key) == ""
    ]
    if problems:
        raise RuleFailure(
            f"hello.implementation must say {', '.join(REQUIRED_IMPLEMENTATION)}: {'; '.join(problems)} "
            "(without them the bench cannot choose the frame budget, judge quality or compare the candidate)"
        )
    return (
        f"protocol {protocol.PROTOCOL_VERSION}, capabilities [{', '.join(sorted(hello.capabilities))}], "
        f"{implementation['name']} {implementation['version']}, synthetic={implementation['synthetic']}"
    )


def _speak_before_start(check: Checker) -> str:
    check.session.channel.send(protocol.speak_message(check.request(), return_codes=False))
    check.expect_error(ErrorCode.INVALID_REQUEST)
    return "speak without a session is refused with INVALID_REQUEST"


def _start(check: Checker) -> str:
    return f"ready with voice_id {check.start()}"


def _audio_f32(check: Checker) -> str:
    check.start()
    began = time.monotonic()
    utterance = collect(check.session.speak(check.request()))
    check.f32_wall_s = time.monotonic() - began
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


def _determinism(check: Checker) -> str:
    first = check.f32
    if first is None:
        raise NotApplicable("no f32 utterance to repeat (rule audio-f32 failed)")
    check.start()
    again = collect(check.session.speak(check.request()))
    codes = _same_codes(first, again, "the second run")
    before, after = _audio(first), _audio(again)
    if before.shape != after.shape:
        raise RuleFailure(f"same greedy request twice: {before.shape[0]} then {after.shape[0]} samples")
    worst = float(np.max(np.abs(before - after))) if before.size else 0.0
    if worst > REPEAT_TOLERANCE:
        raise RuleFailure(
            f"same greedy request twice (seed 0): audio differs by up to {worst:.3g}, more than one pcm16 "
            f"step ({REPEAT_TOLERANCE:.3g})"
        )
    check.repeat_diff = worst
    return f"same greedy request twice: {codes}audio within {worst:.2g} (allowed {REPEAT_TOLERANCE:.2g})"


def _same_codes(first: Utterance, again: Utterance, which: str) -> str:
    """'identical codes, ' when both carry equal codes, '' when neither does; raises when they disagree."""
    if first.end.codes is None and again.end.codes is None:
        return ""
    if first.end.codes is None or again.end.codes is None:
        raise RuleFailure(f"codes were returned for only one of two identical requests ({which})")
    if not np.array_equal(first.end.codes, again.end.codes):
        if first.end.codes.shape != again.end.codes.shape:
            raise RuleFailure(
                f"{which} gave codes {again.end.codes.shape}, the first {first.end.codes.shape}"
            )
        frame = int(np.flatnonzero((first.end.codes != again.end.codes).any(axis=1))[0])
        raise RuleFailure(f"{which} of the same greedy request gave other codes from frame {frame} on")
    return "identical codes, "


def _codes_decode(check: Checker) -> str:
    utterance = check.f32
    if utterance is None:
        raise NotApplicable("no f32 utterance (rule audio-f32 failed)")
    if utterance.end.codes is None:
        raise NotApplicable("the candidate returned no codes: nothing to decode")
    if check.options.mode is not CloneMode.XVECTOR:
        raise NotApplicable("ICL audio is decoded after the reference clip's codes; run with --mode xvector")
    codec = check.codec()
    decoded = codec.decode(utterance.end.codes)
    audio = _audio(utterance)
    if decoded.shape != audio.shape:
        raise RuleFailure(
            f"{audio.shape[0]} samples sent, but its {utterance.end.codes.shape[0]} codes decode to "
            f"{decoded.shape[0]} with the reference codec of {codec.model}"
        )
    power = float(np.linalg.norm(decoded))
    error = float(np.linalg.norm(audio - decoded)) / power if power else float(np.linalg.norm(audio))
    if error > DECODE_TOLERANCE:
        raise RuleFailure(
            f"the audio is not the decode of the returned codes: relative L2 {error:.3g} against the "
            f"reference codec of {codec.model} (allowed {DECODE_TOLERANCE:g})"
        )
    return (
        f"codes decode to the audio sent with the reference codec of {codec.model} (relative L2 {error:.2g})"
    )


def _audio_pcm16(check: Checker) -> str:
    reference = check.f32
    if reference is None or check.repeat_diff is None:
        raise NotApplicable("no reproducible f32 utterance to compare with (rules audio-f32, determinism)")
    check.start(Encoding.PCM16)
    utterance = collect(check.session.speak(check.request()))
    _same_codes(reference, utterance, "the pcm16 run")
    audio, exact = _audio(utterance), _audio(reference)
    if exact.shape != audio.shape:
        raise RuleFailure(
            f"{audio.shape[0]} pcm16 samples against {exact.shape[0]} in f32 for the same request"
        )
    worst = float(np.max(np.abs(np.clip(exact, -1, 1) - audio))) if audio.size else 0.0
    allowed = PCM16_TOLERANCE + check.repeat_diff
    if worst > allowed:
        raise RuleFailure(f"pcm16 differs from f32 by {worst:.3g}, more than one step ({allowed:.3g})")
    return f"pcm16 matches f32 within one step (worst {worst:.2g})"


def _busy(check: Checker) -> str:
    check.start()
    session = check.session
    session.channel.send(
        protocol.speak_message(check.request(check.options.frames * CANCEL_BUDGET_FACTOR), False)
    )
    session.channel.send(protocol.speak_message(check.request(), return_codes=False))
    refused = completed = False
    while not (refused and completed):
        try:
            raw = session.channel.receive(session.timeouts.message_s)
        except CandidateTimeout:
            if completed:  # the first utterance is over and the second speak got no answer at all
                raise RuleFailure(
                    "a speak sent during an utterance got no answer; expected error BUSY"
                ) from None
            raise
        if isinstance(raw, bytes):
            if completed:
                raise RuleFailure("a speak sent during an utterance was served instead of refused with BUSY")
            continue
        message = protocol.loads(raw)
        if message["type"] == "error" and message.get("code") == ErrorCode.UNSUPPORTED.value:
            check.reset()  # the second speak's refusal is still on its way: the next rule starts clean
            raise UnsupportedRequest(str(message.get("message", "")))
        if message["type"] == "error" and message.get("code") == ErrorCode.BUSY.value and not refused:
            refused = True
        elif message["type"] == "complete" and not completed:
            completed = True
        elif message["type"] != "mark" or completed:
            raise RuleFailure(
                f"expected BUSY for a speak during an utterance, got {protocol.dumps(message)[:200]}"
            )
    return "a speak during an utterance is refused with BUSY; the utterance completes"


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
    began = time.monotonic()
    utterance = collect(session.receive_utterance())
    took_s = time.monotonic() - began
    if not utterance.cancelled:
        raise RuleFailure(
            f"cancel sent right after speak, but the {frames}-frame utterance completed uncancelled"
        )
    timing = "not timed against a bound (no audio-f32 run to estimate the utterance from)"
    if check.f32_wall_s is not None:
        whole_s = check.f32_wall_s * CANCEL_BUDGET_FACTOR  # the uncancelled utterance, estimated
        bound_s = max(CANCEL_FLOOR_S, CANCEL_SHARE * whole_s)
        if took_s > bound_s:
            raise RuleFailure(
                f"the cancel took {took_s:.2f} s to end the utterance, over the {bound_s:.2f} s allowed "
                f"({CANCEL_SHARE:g} of the ~{whole_s:.2f} s the whole {frames}-frame utterance takes): "
                "the port finished the work before honouring it; check for a cancel between frames"
            )
        timing = f"within {bound_s:.2f} s"
    after = collect(session.speak(check.request()))
    return (
        f"complete(cancelled) {took_s * 1000:.0f} ms after the cancel ({timing}), after "
        f"{sum(c.samples.shape[0] for c in utterance.chunks)} samples; next speak gave "
        f"{after.end.frames_generated} frames"
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
    Rule("determinism", _determinism),
    Rule("codes-decode", _codes_decode),
    Rule("voice-cache", _voice_cache),
    Rule("audio-pcm16", _audio_pcm16),
    Rule("busy", _busy),
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
            if checker.load_failure is not None:
                results.append(RuleResult(rule.name, Verdict.NOT_APPLICABLE, NOT_STARTED))
                continue
            try:
                detail = rule.check(checker)
            except NotApplicable as exc:
                results.append(RuleResult(rule.name, Verdict.NOT_APPLICABLE, str(exc)))
            except UnsupportedRequest as exc:  # a valid request the candidate says it cannot do
                results.append(RuleResult(rule.name, Verdict.NOT_APPLICABLE, f"(unsupported: {exc})"))
            except (RuleFailure, QttsEvalError, RemoteError) as exc:
                results.append(RuleResult(rule.name, Verdict.FAIL, f"{type(exc).__name__}: {exc}"))
                checker.reset()  # whatever state the candidate is in, the next rule starts clean
            else:
                results.append(RuleResult(rule.name, Verdict.PASS, detail))
    finally:
        checker.reset()
    return results


def format_table(results: list[RuleResult]) -> str:
    width = max(len(result.rule) for result in results)
    lines = [f"{'rule':<{width}}  result  detail"]
    lines += [f"{r.rule:<{width}}  {r.verdict.value:<6}  {r.detail}" for r in results]
    failed = [r for r in results if r.failed]
    skipped = [r.rule for r in results if r.verdict is Verdict.NOT_APPLICABLE]
    unchecked = f"; not applicable (not checked): {', '.join(skipped)}" if skipped else ""
    if failed:
        lines.append(
            f"\nFAILED {len(failed)} of {len(results)} rules; first failing rule: {failed[0].rule}{unchecked}"
        )
    else:
        lines.append(f"\n{len(results) - len(skipped)} of {len(results)} rules passed{unchecked}")
    return "\n".join(lines)
