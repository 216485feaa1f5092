"""Pipeline registry: names map to lazy "module:Class" targets, so heavy backends load only when asked.

Built-in and third-party pipelines register the same way, through the entry-point group
``qtts_eval.pipelines`` (see pyproject.toml); ``register`` adds one at run time (tests, notebooks).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata

from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import Pipeline, PipelineConfig
from qtts_eval.pipelines.installed import installed

ENTRY_POINT_GROUP = "qtts_eval.pipelines"

_runtime: dict[str, str | type[Pipeline]] = {}


def register(name: str, target: str | type[Pipeline]) -> None:
    """Register a pipeline class, or a "module:Class" string resolved on first use."""
    _runtime[name] = target


def available() -> dict[str, str | type[Pipeline]]:
    """Every known pipeline name and its target: entry points, then installed candidates (their environment
    manifests, read without importing anything of theirs), then run-time registrations, each overriding."""
    found: dict[str, str | type[Pipeline]] = {
        entry.name: entry.value for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    }
    found.update({name: manifest.pipeline for name, manifest in installed().items()})
    found.update(_runtime)
    return found


def pipeline_class(name: str) -> type[Pipeline]:
    targets = available()
    if name not in targets:
        close = difflib.get_close_matches(name, list(targets), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineError(f"unknown pipeline {name!r}.{hint} Known: {', '.join(sorted(targets)) or 'none'}")
    target = targets[name]
    if isinstance(target, str):
        module_name, _, class_name = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise PipelineError(f"pipeline {name!r}: cannot load {targets[name]!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Pipeline)):
        raise PipelineError(f"pipeline {name!r}: {target!r} is not a qtts_eval Pipeline subclass")
    return target


def create(name: str, config: PipelineConfig) -> Pipeline:
    return pipeline_class(name)(config)
