"""Typed pipeline options: each pipeline declares a frozen dataclass; values are checked against it.

``--option KEY=VALUE`` goes to every pipeline of a run that declares KEY, ``--option PIPELINE.KEY=VALUE`` to
that pipeline only. A key no pipeline declares, or a scope naming no pipeline of the run, is an error with a
suggestion, never silently ignored. Values are coerced to the field's type (JSON from the command line gives
numbers and booleans; text "true"/"false" is accepted for booleans), and the dataclass's ``__post_init__``
checks ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from qtts_eval.errors import PipelineError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A pipeline that takes no options."""


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Known: {', '.join(sorted(known)) or 'none'}"


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` as ``kind``, or ValueError: bool, int, float, str, None, lists and unions of them."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(kind):
            try:
                return _coerce(value, member)
            except ValueError:
                continue
        raise ValueError(f"{value!r} is not a {kind}")
    if kind is Any:
        return value
    if kind is type(None):
        if value is None:
            return None
        raise ValueError(f"{value!r} is not null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{value!r} is not true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not an integer")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{value!r} is not a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{value!r} is not text")
    if origin in (list, tuple):
        if isinstance(value, list | tuple):
            (item,) = typing.get_args(kind)[:1]
            return origin(_coerce(each, item) for each in value)
        raise ValueError(f"{value!r} is not a list")
    raise ValueError(f"unsupported option type {kind}")


def parse(owner: str, schema: type[T], options: Mapping[str, Any]) -> T:
    """``options`` as an instance of the dataclass ``schema``; errors name ``owner`` and the key."""
    hints = typing.get_type_hints(schema)
    names = [field.name for field in dataclasses.fields(schema)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in names:
            raise PipelineError(f"{owner}: unknown option {key!r}.{_suggest(key, names)}")
        try:
            values[key] = _coerce(value, hints[key])
        except ValueError as exc:
            raise PipelineError(f"{owner}: option {key!r}: {exc}") from None
    try:
        return schema(**values)
    except ValueError as exc:
        raise PipelineError(f"{owner}: {exc}") from None


def option_names(schema: type) -> frozenset[str]:
    return frozenset(field.name for field in dataclasses.fields(schema))


def scope(options: Mapping[str, Any], schemas: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """Split run-wide options per pipeline name. ``schemas`` maps each pipeline of the run to its options
    dataclass; every key must reach at least one pipeline."""
    scoped: dict[str, dict[str, Any]] = {name: {} for name in schemas}
    for key, value in options.items():
        name, dot, field = key.partition(".")
        if dot:
            if name not in schemas:
                hint = _suggest(name, list(schemas))
                raise PipelineError(f"option {key!r} is scoped to {name!r}, which is not in this run.{hint}")
            scoped[name][field] = value  # checked by that pipeline's own parse
            continue
        takers = [pipeline for pipeline, schema in schemas.items() if key in option_names(schema)]
        if not takers:
            known = sorted(set().union(*(option_names(schema) for schema in schemas.values())))
            raise PipelineError(f"no pipeline of this run takes option {key!r}.{_suggest(key, known)}")
        for pipeline in takers:
            scoped[pipeline][key] = value
    return scoped
