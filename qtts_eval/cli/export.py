"""`qtts-eval export MODEL`: convert a checkpoint in the released layout to the weight format a port loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtts_eval.candidates.export import GgufType


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="convert a checkpoint to GGUF for ggml ports (qwentts.cpp)",
        description="MODEL is a preset, a checkpoint directory (synthetic or real weights) or a hub id. "
        "Writes talker-STORAGE.gguf and codec-STORAGE.gguf.",
    )
    parser.add_argument("model", help="model ref")
    parser.add_argument("--format", choices=("gguf",), default="gguf", help="weight format (default: gguf)")
    parser.add_argument(
        "--storage", choices=[t.value for t in GgufType], default=GgufType.F32.value, help="matrix storage"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qtts_eval import checkpoints
    from qtts_eval.candidates.export import export_gguf

    model = checkpoints.resolve(args.model)
    done = export_gguf(model.path, args.out, GgufType(args.storage))
    print(f"talker: {done.talker}\ncodec: {done.codec}")
    return 0
