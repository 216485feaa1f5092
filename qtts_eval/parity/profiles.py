"""Tolerance profiles: data in profiles.json, every threshold with its source; and how a profile is chosen.

A rule applies to the dump keys matching its fnmatch pattern and bounds one metric (see compare.py).
The first matching rule for a (key, metric) wins, so specific patterns come before "*".

A profile is chosen by the user (``--profile``) or from the precision the suite asked for (the candidate
dtype flags, or the reference's for a dump) through `DEFAULT_PROFILES`, an explicit table of (talker, codec)
precisions; never from the candidate's own declaration, so a header cannot loosen its limits. Quantised
precisions have no default: a report-only profile is always the user's choice.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qtts_eval.errors import ParityError

PROFILES_PATH = Path(__file__).with_name("profiles.json")


class Precision(str, enum.Enum):
    """A family of numeric formats that share tolerances."""

    FP32 = "fp32"  # IEEE float32 (torch float32, ggml F32)
    FP16 = "fp16"  # IEEE float16 (torch float16, ggml F16)
    BF16 = "bf16"  # bfloat16 (torch bfloat16, ggml BF16)
    QUANTISED = "quantised"  # integer or 8-bit-float weights: ggml Q*/IQ*, int8, int4, fp8


# Exact names, case-insensitive: torch dtype names, ggml/GGUF type names and common spellings.
_PRECISION_NAMES = {
    "float32": Precision.FP32,
    "fp32": Precision.FP32,
    "f32": Precision.FP32,
    "float": Precision.FP32,
    "float16": Precision.FP16,
    "fp16": Precision.FP16,
    "f16": Precision.FP16,
    "half": Precision.FP16,
    "bfloat16": Precision.BF16,
    "bf16": Precision.BF16,
}
# ggml/GGUF quantisation types (Q8_0, Q4_K, Q5_K_M, IQ4_XS, TQ1_0, ...) and int/fp8 spellings.
_QUANTISED_NAME = re.compile(r"^(i?q\d|tq\d|int[248]\b|fp8|f8|float8)", re.IGNORECASE)


def precision_of(name: str) -> Precision:
    """The precision family of a dtype name (torch or ggml spelling); unknown names are refused."""
    found = _PRECISION_NAMES.get(name.strip().lower())
    if found is not None:
        return found
    if _QUANTISED_NAME.match(name.strip()):
        return Precision.QUANTISED
    raise ParityError(
        f"unknown precision {name!r}; known: {', '.join(sorted(_PRECISION_NAMES))}, and ggml quantisation "
        "types (Q8_0, Q4_K, IQ4_XS, ...), int8, int4, fp8"
    )


# The explicit mapping from an asked-for (talker, codec) precision to its default profile.
# Quantised precisions are absent on purpose: their profile must be chosen by the user.
DEFAULT_PROFILES: Mapping[tuple[Precision, Precision], str] = MappingProxyType(
    {
        (Precision.FP32, Precision.FP32): "fp32",
        (Precision.FP32, Precision.FP16): "fp32-codec-f16",  # ggml's usual setup: f16 conv kernels
        (Precision.FP32, Precision.BF16): "bf16",
        (Precision.BF16, Precision.FP32): "bf16",
        (Precision.BF16, Precision.BF16): "bf16",
        (Precision.BF16, Precision.FP16): "bf16",
        (Precision.FP16, Precision.FP32): "bf16",
        (Precision.FP16, Precision.FP16): "bf16",
        (Precision.FP16, Precision.BF16): "bf16",
    }
)


@dataclass(frozen=True)
class Rule:
    """One threshold."""

    stages: str  # fnmatch pattern of dump keys, e.g. "talker.*"
    metric: str  # metric name, e.g. "rel_l2", "cosine", "snr_db"
    bound: str  # "max" (metric must be <= limit) or "min" (metric must be >= limit)
    limit: float  # the threshold, in the metric's unit
    source: str  # where the number comes from: a measurement (machine, command) or a stated reason

    def ok(self, value: float) -> bool:
        return value <= self.limit if self.bound == "max" else value >= self.limit


@dataclass(frozen=True)
class Profile:
    """How strict a comparison is."""

    name: str  # e.g. "fp32"
    description: str  # one line for reports
    report_only: bool  # True: compute and show everything, fail nothing; the verdict is then "report-only"
    exact_codes: tuple[str, ...]  # fnmatch patterns of code keys where any divergence fails
    exact_codes_source: str  # why those, and why near-tie flips are allowed elsewhere
    rules: tuple[Rule, ...]  # thresholds, first match wins

    def rule(self, key: str, metric: str) -> Rule | None:
        for rule in self.rules:
            if rule.metric == metric and fnmatch.fnmatchcase(key, rule.stages):
                return rule
        return None

    def codes_exact(self, key: str) -> bool:
        """True when any divergence in the code key `key` fails, near tie or not."""
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.exact_codes)


def _parse(name: str, raw: Mapping[str, Any]) -> Profile:
    try:
        rules = tuple(Rule(**rule) for rule in raw["rules"])
        profile = Profile(
            name=name,
            description=raw["description"],
            report_only=bool(raw["report_only"]),
            exact_codes=tuple(raw["exact_codes"]),
            exact_codes_source=raw["exact_codes_source"],
            rules=rules,
        )
    except (KeyError, TypeError) as exc:
        raise ParityError(f"{PROFILES_PATH}: profile {name!r} is malformed: {exc}") from exc
    for rule in rules:
        if rule.bound not in ("max", "min") or not rule.source.strip():
            raise ParityError(f"profile {name!r}: rule {rule} needs bound max|min and a source")
    return profile


def load_profiles(path: Path = PROFILES_PATH) -> Mapping[str, Profile]:
    """Every profile in `path`, by name."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return MappingProxyType({name: _parse(name, body) for name, body in raw.items()})


def profile_named(name: str, path: Path = PROFILES_PATH) -> Profile:
    """A profile by name; unknown names list what exists."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise ParityError(f"no tolerance profile named {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


def profile_for_precision(dtype: str, codec_dtype: str, path: Path = PROFILES_PATH) -> Profile:
    """The default profile of an asked-for (talker, codec) precision, through `DEFAULT_PROFILES`."""
    key = (precision_of(dtype), precision_of(codec_dtype or dtype))
    if key not in DEFAULT_PROFILES:
        known = ", ".join(sorted(load_profiles(path)))
        raise ParityError(
            f"no default tolerance profile for talker {dtype!r} with codec {codec_dtype!r}: a quantised "
            f"candidate's profile must be chosen with --profile (known: {known}; 'quantised' reports "
            "without gating and yields the verdict report-only)"
        )
    return profile_named(DEFAULT_PROFILES[key], path)
