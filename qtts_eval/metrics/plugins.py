"""Metric models named by spec: a built-in name, ``package.module:Class`` or ``path/to/file.py:Class``.

Speaker embedders and speech recognisers load this way, so a user plugs in a model the suite does not
bundle (its weights on local disk) without changing the suite.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from qtts_eval.errors import MetricError

Model = TypeVar("Model")


def load_model(
    spec: str, base: type[Any], builtin: Mapping[str, type[Model]], kind: str, model_path: Path | str | None
) -> Model:
    """Create the `kind` (e.g. "embedder") that `spec` names, a concrete subclass of `base` (which
    `builtin`'s classes are too).

    The class is called with no arguments, or with ``model_path=Path(...)`` when `model_path` is given.
    """
    cls = builtin[spec] if spec in builtin else _plugin_class(spec, base, builtin, kind)
    model: Model = cls() if model_path is None else cls(model_path=Path(model_path))  # type: ignore[call-arg]
    return model


def _plugin_class(spec: str, base: type[Any], builtin: Mapping[str, type[Model]], kind: str) -> type[Model]:
    module_name, _, class_name = spec.rpartition(":")
    if not module_name or not class_name:
        raise MetricError(
            f"unknown {kind} {spec!r}: give a built-in name ({', '.join(builtin)}) or "
            f"'module:Class' / 'path/to/file.py:Class'"
        )
    module = _import_module(module_name, kind)
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [name for name, value in vars(module).items() if _is_concrete_subclass(value, base)]
        hint = difflib.get_close_matches(class_name, found, n=1)
        raise MetricError(
            f"{module_name} has no {class_name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" {base.__name__} classes there: {', '.join(found) or '(none)'}"
        )
    if not _is_concrete_subclass(cls, base):
        raise MetricError(f"{spec}: not a subclass of {base.__module__}.{base.__qualname__}")
    concrete: type[Model] = cls
    return concrete


def _is_concrete_subclass(value: object, base: type) -> bool:
    return inspect.isclass(value) and issubclass(value, base) and not inspect.isabstract(value)


def _import_module(name: str, kind: str) -> ModuleType:
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise MetricError(f"{kind} file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"qtts_eval_{kind}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise MetricError(f"cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise MetricError(f"cannot import {kind} module {name!r}: {exc}") from exc
