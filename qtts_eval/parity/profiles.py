"""Tolerance profiles: data in profiles.json, one per family of dtypes, every threshold with its source.

A rule applies to the dump keys matching its fnmatch pattern and bounds one metric (see compare.METRICS).
The first matching rule for a (key, metric) wins, so specific patterns come before "*".
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qtts_eval.errors import ParityError

PROFILES_PATH = Path(__file__).with_name("profiles.json")


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
    dtypes: tuple[str, ...]  # candidate dtypes this profile is the default for
    report_only: bool  # True: compute and show everything, fail nothing (quantised ports)
    exact_codes: bool  # True: any code divergence fails; False: near-tie flips are allowed, real ones fail
    exact_codes_source: str  # why
    rules: tuple[Rule, ...]  # thresholds, first match wins

    def rule(self, key: str, metric: str) -> Rule | None:
        for rule in self.rules:
            if rule.metric == metric and fnmatch.fnmatchcase(key, rule.stages):
                return rule
        return None


def _parse(name: str, raw: Mapping[str, Any]) -> Profile:
    try:
        rules = tuple(Rule(**rule) for rule in raw["rules"])
        profile = Profile(
            name=name,
            description=raw["description"],
            dtypes=tuple(raw["dtypes"]),
            report_only=bool(raw["report_only"]),
            exact_codes=bool(raw["exact_codes"]),
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


def profile_for(name_or_dtype: str, path: Path = PROFILES_PATH) -> Profile:
    """A profile by name, or the default profile of a dtype; unknown names list what exists."""
    profiles = load_profiles(path)
    if name_or_dtype in profiles:
        return profiles[name_or_dtype]
    for profile in profiles.values():
        if name_or_dtype in profile.dtypes:
            return profile
    known = sorted(profiles) + sorted(d for p in profiles.values() for d in p.dtypes)
    raise ParityError(
        f"no tolerance profile named or defaulting for {name_or_dtype!r}; known: {', '.join(known)}"
    )
