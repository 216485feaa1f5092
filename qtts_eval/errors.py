"""Exceptions raised by qtts-eval.

Every error the suite raises on purpose derives from `QttsEvalError`, so a caller (the CLI) can tell a
diagnosed problem, whose message says what to do, from a bug.
"""


class QttsEvalError(Exception):
    """Base class of the errors qtts-eval raises on purpose."""


class FixtureError(QttsEvalError):
    """The fixture set is missing, malformed, or does not match its manifest."""


class AudioError(QttsEvalError):
    """An audio file cannot serve as a reference: unreadable, wrong rate or channels, bad length or values."""


class CheckpointError(QttsEvalError):
    """A model ref that cannot be resolved, built or loaded."""


class PipelineError(QttsEvalError):
    """A pipeline that cannot be found, created or run."""


class ClockError(PipelineError):
    """A pipeline whose events contradict the harness's clock: stamped before t0, after arrival, or out of
    order."""


class ResultsError(QttsEvalError):
    """A results directory that cannot be read or written safely."""


class BenchError(QttsEvalError):
    """A bench matrix or request that is invalid before anything runs."""


class RequestError(QttsEvalError):
    """A synthesis request that no pipeline should be given (empty text, bad reference audio, ...)."""


class ProtocolError(QttsEvalError):
    """A candidate broke the wire protocol (docs/protocol.md): bad frames or audio, a crash, a close."""


class MalformedMessage(ProtocolError):
    """A candidate sent what its protocol cannot carry: a text frame that is not JSON, an unknown frame kind
    or message type, an audio format it does not define. Its records say outcome `malformed`."""


class CandidateTimeout(ProtocolError):
    """A candidate sent nothing within the allowed time (hung, or far slower than its timeout)."""


class RemoteError(QttsEvalError):
    """A candidate answered with a protocol `error` message; `code` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ParityError(QttsEvalError):
    """Parity dumps that cannot be captured, read or compared (bad file, other request, nondeterminism)."""


class MetricError(QttsEvalError):
    """Audio a metric cannot use (empty, non-finite, mismatched lengths), or an embedder that cannot load."""


class NoSpeechError(MetricError):
    """A speaker embedder found no speech to embed in the audio it was given."""


class GateError(QttsEvalError):
    """A gates file, or runs given to gates, that cannot be read or used (unknown key, bad value, no run)."""


class StatsError(QttsEvalError):
    """A statistic or test that cannot be computed as asked: an unknown statistic, too few values."""
