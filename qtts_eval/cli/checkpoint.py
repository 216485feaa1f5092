"""`qtts-eval checkpoint REF`: resolve a model ref (building a synthetic preset if needed), print its path."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from qtts_eval import checkpoints


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "checkpoint",
        help="build or locate a checkpoint",
        description=f"REF is a preset ({', '.join(checkpoints.PRESETS)}), optionally 'PRESET@seed=N', "
        "a local checkpoint directory, or a hub id.",
    )
    parser.add_argument("ref", help="model ref")
    parser.add_argument("--json", action="store_true", help="print the resolved model as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    resolved = checkpoints.resolve(args.ref)
    if args.json:
        print(json.dumps({**asdict(resolved), "path": str(resolved.path)}, indent=2))
    else:
        print(resolved.path)
    return 0
