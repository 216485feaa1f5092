"""`qtts-eval` command line: one module per subcommand, each with add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qtts_eval.errors import QttsEvalError

# One module per subcommand, each with add_parser() and run(); listed here, imported when the CLI starts.
SUBCOMMANDS = (
    "asr",
    "bench",
    "cache",
    "candidates",
    "check_worker",
    "checkpoint",
    "compare",
    "doctor",
    "export",
    "fixtures",
    "gate",
    "history",
    "lab",
    "load",
    "parity",
    "scoreboard",
    "serve",
    "speakers",
    "worker",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtts-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"qtts_eval.cli.{name}").add_parser(commands)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except QttsEvalError as exc:
        print(f"qtts-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code
