"""pytest plugin (entry point ``pytest11``): a gates file becomes one test item per gate.

    pytest results/baselines/gates.toml --qtts-current results/<run> --qtts-baseline results/baselines/<run>

Files named ``gates*.toml`` are collected when pytest is pointed at them (or at a directory holding them).
A gate is one item; its failure message names the failing groups (pipeline, fixture, mode), then lists every
group with metric, baseline, current value, change and p-value; a refused comparison fails too (a CI gate
that silently compares nothing is worse than a red build); a quality metric on synthetic
weights is skipped with the reason. Everything heavy is imported lazily: this module loads in every pytest
session of an environment where qtts-eval is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from qtts_eval.gates import Gate, GateInputs, GateSpec

_INPUTS_KEY = pytest.StashKey["GateInputs"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qtts-eval", "qtts-eval regression gates (gates*.toml files)")
    group.addoption("--qtts-current", type=Path, metavar="RUN_DIR", help="results run under test")
    group.addoption(
        "--qtts-baseline",
        type=Path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="baseline run (repeat to calibrate thresholds from several)",
    )
    group.addoption(
        "--qtts-parity", type=Path, metavar="REPORT_JSON", help="parity report.json for parity gates"
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".toml" and file_path.name.startswith("gates"):
        collector: pytest.Collector = GatesFile.from_parent(parent, path=file_path)
        return collector
    return None


def _inputs(config: pytest.Config) -> GateInputs:
    """Runs are loaded once per session and shared by every gate item."""
    if _INPUTS_KEY not in config.stash:
        from qtts_eval.gates import load_inputs

        current = config.getoption("qtts_current")
        if current is None:
            raise pytest.UsageError("gates need a run to check: pass --qtts-current RUN_DIR")
        config.stash[_INPUTS_KEY] = load_inputs(
            current, config.getoption("qtts_baseline"), config.getoption("qtts_parity")
        )
    return config.stash[_INPUTS_KEY]


class GatesFile(pytest.File):
    """A gates TOML file: yields one GateItem per gate."""

    def collect(self) -> Any:
        from qtts_eval.gates import load_gates

        spec = load_gates(self.path)
        for gate in spec.gates:
            yield GateItem.from_parent(self, name=gate.label, gate=gate, spec=spec)


class GateItem(pytest.Item):
    """One gate, evaluated against --qtts-current and --qtts-baseline."""

    def __init__(self, *, gate: Gate, spec: GateSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.spec = spec

    def runtest(self) -> None:
        from qtts_eval.errors import QttsEvalError
        from qtts_eval.gates import Outcome, evaluate_gate

        try:
            result = evaluate_gate(self.gate, self.spec, _inputs(self.config))
        except QttsEvalError as exc:
            pytest.fail(f"{self.gate.label}: {exc}", pytrace=False)
        if result.outcome is Outcome.NOT_GATED:
            pytest.skip(result.message)
        if result.outcome is not Outcome.PASS:
            pytest.fail(f"{result.outcome.value.upper()}: {result.report()}", pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"gate {self.name}"
