"""`--option KEY=VALUE` parsing, shared by the subcommands that build pipelines."""

from __future__ import annotations

import json
from typing import Any

from qtts_eval.errors import PipelineError


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs to a dict; VALUE is parsed as JSON when it can be ("true", "72"), else kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
