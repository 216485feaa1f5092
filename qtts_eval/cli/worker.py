"""`qtts-eval worker`: serve a pipeline to one client over stdin/stdout (docs/protocol.md, stdio framing)."""

from __future__ import annotations

import argparse
from typing import Any

from qtts_eval.cli.serve import add_pipeline_arguments, load_host
from qtts_eval.wire.server import run_stdio_worker


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("worker", help="serve a pipeline over stdin/stdout frames (one client)")
    add_pipeline_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    run_stdio_worker(lambda: load_host(args))
    return 0
