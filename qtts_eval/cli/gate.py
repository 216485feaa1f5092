"""`qtts-eval gate`: evaluate a gates file against a run and its baseline(s); the exit code is the verdict.

Every metric and error gate is evaluated per group (pipeline, fixture and mode by default) and prints a
run-level line, then one line per group. Exit codes: 0 every gate passed (quality gates on synthetic weights
are reported as not gated), 1 a gate failed in some group (a regression, or too many failed requests),
3 no gate failed but one was refused (runs not comparable or mixing segments, no baseline, too few paired
requests), 2 bad input (unreadable gates file or run).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtts_eval.gates import Outcome, evaluate, load_gates, load_inputs

EXIT_FAILED = 1  # a regression
EXIT_REFUSED = 3  # nothing failed, but a gate could not be evaluated as asked


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "gate",
        help="check a run against thresholds and baselines (exit 1 on a regression)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("current", type=Path, help="results run directory under test")
    parser.add_argument("--gates", type=Path, required=True, help="gates TOML file (docs/gates.md)")
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="baseline run directory (repeat: thresholds calibrate to the spread between them)",
    )
    parser.add_argument(
        "--parity", type=Path, metavar="REPORT_JSON", help="parity report.json for parity gates"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_gates(args.gates)
    results = evaluate(spec, load_inputs(args.current, args.baseline, args.parity))
    for result in results:
        print(f"{result.outcome.value.upper():9s} {result.report()}")
    outcomes = {result.outcome for result in results}
    counts = ", ".join(f"{sum(r.outcome is o for r in results)} {o.value}" for o in Outcome)
    print(f"\n{len(results)} gates: {counts}")
    if Outcome.FAIL in outcomes:
        return EXIT_FAILED
    return EXIT_REFUSED if Outcome.REFUSED in outcomes else 0
