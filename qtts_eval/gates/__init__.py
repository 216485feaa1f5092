"""Regression gates for CI: gates files (spec) and their evaluation over results runs (evaluation).

The package's public names, for the CLI, the pytest plugin, the notebooks and tests; docs/gates.md.
"""

from qtts_eval.gates.evaluation import (
    GateInputs,
    GateResult,
    GroupResult,
    Outcome,
    evaluate,
    evaluate_gate,
    is_synthetic,
    load_inputs,
    results_table,
)
from qtts_eval.gates.spec import (
    Better,
    ErrorGate,
    Gate,
    GateSpec,
    GoodputGate,
    MetricGate,
    ParityGate,
    load_gates,
    parse_gates,
)

__all__ = [
    "Better",
    "ErrorGate",
    "Gate",
    "GateInputs",
    "GateResult",
    "GateSpec",
    "GoodputGate",
    "GroupResult",
    "MetricGate",
    "Outcome",
    "ParityGate",
    "evaluate",
    "evaluate_gate",
    "is_synthetic",
    "load_gates",
    "load_inputs",
    "parse_gates",
    "results_table",
]
