"""`qtts-eval history`: every run under a results directory, oldest first, with detected steps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from qtts_eval.history import KEY_METRICS, StepOptions, history_steps, load_history

_DEFAULTS = StepOptions()
_SHOWN = [
    "run_id",
    "created_at",
    "commit",
    "dirty",
    "machine",
    "model",
    "synthetic",
    "dtype",
    "pipeline",
    "n",
    "errors",
    "mixed",
]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("history", help="list runs across commits and machines; mark metric steps")
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"), help="results directory")
    parser.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        help=f"metric to detect steps in (repeatable; default: {', '.join(KEY_METRICS)})",
    )
    parser.add_argument("--window", type=int, default=_DEFAULTS.window, help="runs pooled on each side")
    parser.add_argument(
        "--min-change", type=float, default=_DEFAULTS.min_change, help="relative change a step needs"
    )
    parser.add_argument("--alpha", type=float, default=_DEFAULTS.alpha, help="Mann-Whitney significance")
    parser.add_argument(
        "--may-differ",
        action="append",
        default=[],
        metavar="ENV_COLUMN",
        help="an env_ column that may change within a series on purpose (repeatable), as in gates files",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    history = load_history(args.results, args.may_differ)
    options = StepOptions(window=args.window, min_change=args.min_change, alpha=args.alpha)
    table = history.runs.copy()
    table["steps"] = ""
    for metric in args.metrics or KEY_METRICS:
        for step in history_steps(history, metric, options).itertuples():
            where = (table["run_id"] == step.run_id) & (table["pipeline"] == step.pipeline)
            table.loc[where, "steps"] += f"{metric} {step.change:+.0%} (p={step.p_value:.2g}) "
    metrics = [metric for metric in KEY_METRICS if metric in table]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format
    ):
        print(table[[*_SHOWN, *metrics, "steps"]].to_string(index=False))
    print(
        f"\n{len(table)} runs; steps: medians of {options.window}-run windows differ by >= "
        f"{options.min_change:.0%} and Mann-Whitney p < {options.alpha:g} (docs/gates.md)"
    )
    return 0
