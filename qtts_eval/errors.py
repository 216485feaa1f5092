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


class ResultsError(QttsEvalError):
    """A results directory that cannot be read or written safely."""


class BenchError(QttsEvalError):
    """A bench matrix or request that is invalid before anything runs."""


class RequestError(QttsEvalError):
    """A synthesis request that no pipeline should be given (empty text, bad reference audio, ...)."""
