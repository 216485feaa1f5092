"""`qtts-eval check-worker CMD|URL`: the protocol conformance kit; prints a pass/FAIL/n/a table per rule.

Exit codes: 0 no rule failed (rules marked n/a had nothing to compare and say why), 1 a rule failed,
2 bad input.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from qtts_eval.pipelines.base import CloneMode
from qtts_eval.wire.client import Timeouts
from qtts_eval.wire.conformance import CheckOptions, check_target, format_table

_DEFAULTS = CheckOptions()


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "check-worker", help="check a worker command or ws:// URL against docs/protocol.md"
    )
    parser.add_argument(
        "target", help="worker command line (one quoted string) or ws://host:port/api/v1/speak"
    )
    parser.add_argument("--frames", type=int, default=_DEFAULTS.frames, help="frame budget per utterance")
    parser.add_argument("--mode", default=_DEFAULTS.mode.value, choices=[m.value for m in CloneMode])
    parser.add_argument("--voice", default=_DEFAULTS.voice, help="fixture voice to upload")
    parser.add_argument(
        "--model",
        help="checkpoint the candidate serves, whose reference codec decodes its codes (default: the "
        "model_ref of its hello, when its weights hash matches)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=_DEFAULTS.timeouts.start_s, help="seconds to wait for hello"
    )
    parser.add_argument(
        "--timeout", type=float, default=_DEFAULTS.timeouts.message_s, help="seconds to wait for any message"
    )
    parser.add_argument(
        "--stderr-log",
        type=Path,
        help="file a worker command's stderr is appended to (default: a new file under the temp directory, "
        "named at the end)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stderr_log = args.stderr_log
    if stderr_log is None and not args.target.startswith(("ws://", "wss://")):
        stderr_log = Path(tempfile.mkdtemp(prefix="qtts-eval-check-worker-")) / "candidate.stderr.log"
    options = CheckOptions(
        frames=args.frames,
        mode=CloneMode(args.mode),
        voice=args.voice,
        model=args.model,
        timeouts=Timeouts(start_s=args.start_timeout, message_s=args.timeout),
        stderr_log=stderr_log,
    )
    results = check_target(args.target, options)
    print(format_table(results))
    if stderr_log is not None:
        print(f"the worker's stderr: {stderr_log}")
    return 1 if any(result.failed for result in results) else 0
