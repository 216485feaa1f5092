"""Service-level objectives for load tests: which requests count as good, and whether a level holds.

Syntax (``qtts-eval load --slo``): comma-separated terms ``NAME OP VALUE`` with OP one of ``<=``, ``<``,
``>=``, ``>``, ``==``. Per-request terms decide whether one request is good:

  first_byte   seconds from t0 (speak sent, or the scheduled arrival in open loop) to the first audio byte
  rtf          (last audio byte - t0) / audio seconds
  underruns    playback stalls if playback starts at the first byte

Level terms decide whether a level holds, given its requests:

  errors       share of requests that failed (any error, or no audio)
  goodput      share of requests that finished without error and met every per-request term
               (default ``goodput>=0.9`` when the SLO does not name it)

Example: ``first_byte<=0.2,underruns==0,errors<=0.01,goodput>=0.95``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from qtts_eval.errors import BenchError

REQUEST_TERMS = ("first_byte", "rtf", "underruns")
LEVEL_TERMS = ("errors", "goodput")
DEFAULT_GOODPUT = 0.9

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|==|<|>)\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Term:
    name: str
    op: str
    value: float

    def holds(self, measured: float) -> bool:
        return _OPERATORS[self.op](measured, self.value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Slo:
    request_terms: tuple[Term, ...]
    errors: Term | None
    goodput: Term

    def request_ok(self, measured: dict[str, float]) -> bool:
        return all(term.holds(measured[term.name]) for term in self.request_terms)

    def level_ok(self, goodput: float, error_share: float) -> bool:
        return self.goodput.holds(goodput) and (self.errors is None or self.errors.holds(error_share))

    def __str__(self) -> str:
        terms = [*self.request_terms, *([self.errors] if self.errors else []), self.goodput]
        return ",".join(str(term) for term in terms)


def parse_slo(text: str) -> Slo:
    """Parse the --slo syntax above; an unknown name, operator or number is an error naming the term."""
    request_terms: list[Term] = []
    level: dict[str, Term] = {}
    for part in text.split(","):
        match = _TERM.match(part)
        if match is None:
            raise BenchError(f"SLO term {part.strip()!r} is not NAME OP VALUE (e.g. first_byte<=0.2)")
        name, op, number = match.groups()
        try:
            term = Term(name, op, float(number))
        except ValueError:
            raise BenchError(f"SLO term {part.strip()!r}: {number!r} is not a number") from None
        if name in REQUEST_TERMS:
            request_terms.append(term)
        elif name in LEVEL_TERMS:
            if name in level:
                raise BenchError(f"SLO names {name} twice")
            level[name] = term
        else:
            known = ", ".join((*REQUEST_TERMS, *LEVEL_TERMS))
            raise BenchError(f"SLO term {part.strip()!r}: unknown name {name!r} (known: {known})")
    goodput = level.get("goodput", Term("goodput", ">=", DEFAULT_GOODPUT))
    return Slo(tuple(request_terms), level.get("errors"), goodput)
