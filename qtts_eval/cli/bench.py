"""`qtts-eval bench`: run the benchmark matrix, print a per-fixture summary, write a results run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from qtts_eval.bench import Bench, BenchConfig, summarise
from qtts_eval.pipelines.base import CloneMode, Sampling

_DEFAULTS = BenchConfig()


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("bench", help="benchmark pipelines over the fixtures")
    parser.add_argument("--pipeline", dest="pipelines", action="append", help="pipeline name (repeatable)")
    parser.add_argument("--model", default=_DEFAULTS.model, help="preset, checkpoint directory or hub id")
    parser.add_argument("--device", default=_DEFAULTS.device, help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--dtype", default=_DEFAULTS.dtype, choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--attn", default=_DEFAULTS.attn_implementation, help="eager, sdpa, flash_attention_2"
    )
    parser.add_argument("--fixture", dest="fixtures", action="append", help="text fixture id (default: all)")
    parser.add_argument(
        "--voice", dest="voices", action="append", help=f"voice id (default: {_DEFAULTS.voices[0]})"
    )
    parser.add_argument("--mode", dest="modes", action="append", choices=[m.value for m in CloneMode])
    parser.add_argument("--repeats", type=int, default=_DEFAULTS.repeats)
    parser.add_argument(
        "--warmup", type=int, default=_DEFAULTS.warmup, help="unrecorded requests per pipeline"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--top-k", type=int, default=Sampling.top_k)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--repetition-penalty", type=float, default=Sampling.repetition_penalty)
    parser.add_argument(
        "--non-streaming-mode",
        action="store_true",
        help="reference prompt layout with the whole text up front",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root directory")
    parser.add_argument("--run-id", help="name of the run directory (default: UTC timestamp)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run; skips what is recorded"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        pipelines=tuple(args.pipelines or _DEFAULTS.pipelines),
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        fixtures=tuple(args.fixtures or ()),
        voices=tuple(args.voices or _DEFAULTS.voices),
        modes=tuple(args.modes or _DEFAULTS.modes),
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        sampling=Sampling(
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
        ),
        options={"non_streaming_mode": True} if args.non_streaming_mode else {},
    )


def run(args: argparse.Namespace) -> int:
    if args.resume:
        bench = Bench.resume(args.resume)
    else:
        bench = Bench.create(_config(args), args.results, args.run_id)
    frame = bench.run(progress=not args.no_progress)
    table = summarise(frame)
    with pd.option_context(
        "display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format
    ):
        print(table.to_string(index=False))
    env = frame.iloc[0] if len(frame) else None
    if env is not None and bool(env.get("env_synthetic")):
        print(
            f"\nweights: synthetic preset {env['env_synthetic_preset']!r} (random): speed and memory are "
            "real, audio is noise-like and generation runs to the frame budget."
        )
    failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
    print(f"\n{len(frame)} records, {failed} not ok -> {bench.store.directory}")
    return 0
