"""`qtts-eval candidates`: list known public ports, build their isolated environments, print a worker command.

qtts-eval candidates                      what is known, what each needs, what is installed
qtts-eval candidates install NAME         build NAME's venv (pinned, from PyPI) or binary (cargo) in the cache
qtts-eval candidates command NAME         the worker command line for check-worker (exports weights first)
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from qtts_eval.pipelines.base import PipelineConfig
from qtts_eval.pipelines.installed import installed as installed_candidates


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "candidates",
        help="public ports: list, install into isolated environments, worker command",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action")
    install = actions.add_parser("install", help="build a candidate's isolated environment (venv or cargo)")
    install.add_argument("name", help="candidate name (see `qtts-eval candidates`)")
    install.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        help="extra pip argument, e.g. --find-links=DIR (repeatable)",
    )
    command = actions.add_parser("command", help="print the worker command of an installed candidate")
    command.add_argument("name", help="candidate name")
    command.add_argument("--model", default="0.6b-base", help="model ref (default: 0.6b-base)")
    command.add_argument("--storage", default="F32", help="weight storage: F32, BF16 or Q8_0")
    command.add_argument("--device", default="cpu", help="device string handed to the port, e.g. cuda:0")
    command.add_argument("--dtype", default="float32", help="computing dtype handed to a torch port")
    command.add_argument("--threads", type=int, default=0, help="CPU threads of the port (0: its default)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qtts_eval.candidates import envs
    from qtts_eval.candidates.registry import CANDIDATES, candidate

    if args.action == "install":
        manifest = envs.install(args.name, extra_pip_args=tuple(args.pip_arg))
        port = candidate(args.name).requirements[0].partition("==")[0]
        print(
            f"installed {args.name} ({port} {manifest.versions.get(port, '?')}) in {envs.env_dir(args.name)}"
        )
        print(f"use it with --pipeline {args.name}")
        return 0
    if args.action == "command":
        from qtts_eval import pipelines
        from qtts_eval.candidates.pipeline import CandidatePipeline

        config = PipelineConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            options={"storage": args.storage, "threads": args.threads},
        )
        pipeline = pipelines.create(args.name, config)
        if not isinstance(pipeline, CandidatePipeline):
            print(f"qtts-eval candidates: error: {args.name!r} is not an installed candidate")
            return 2
        pipeline.prepare()
        print(shlex.join(pipeline.command()))
        return 0
    installed = installed_candidates()
    print(f"{'name':<22}{'device':<8}{'weights':<10}{'support':<12}{'installed':<11}summary")
    for spec in CANDIDATES:
        state = "yes" if spec.name in installed else "-"
        print(
            f"{spec.name:<22}{spec.device.value:<8}{spec.weights.value:<10}{spec.support.value:<12}{state:<11}"
            f"{spec.summary}"
        )
        for limit in spec.limits:
            print(f"{'':<22}- {limit}")
    return 0
