"""`qtts-eval serve`: expose a registered pipeline over the wire protocol's WebSocket endpoint, or behind
another dialect (docs/dialects.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from qtts_eval import pipelines
from qtts_eval.cli.options import parse_options
from qtts_eval.dialects.openai_server import FAULTS as OPENAI_FAULTS
from qtts_eval.dialects.openai_server import serve_openai
from qtts_eval.dialects.speak_server import FAULTS as SPEAK_FAULTS
from qtts_eval.dialects.speak_server import serve_speak
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import Pipeline, PipelineConfig
from qtts_eval.wire.server import LOOPBACK_HOSTS, Host, serve_websocket

DEFAULT_PORT = 8765
DIALECT_FAULTS = {"openai": OPENAI_FAULTS, "speak": SPEAK_FAULTS}  # the misbehaviours each dialect can plant
HOOKED_REFERENCE = "hooked-reference"  # the reference with parity capture hooks (stage_dumps, forced_codes)
FAULT_PREFIX = (
    "fault:"  # fault:NAME serves the hooked reference with a planted fault (qtts_eval.parity.faults)
)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that build the pipeline being served; shared with `qtts-eval worker`."""
    defaults = PipelineConfig()
    parser.add_argument(
        "--pipeline",
        default="reference",
        help=f"registry name of the pipeline to serve, or {HOOKED_REFERENCE} / {FAULT_PREFIX}NAME (the "
        "reference with parity capture, without or with a planted fault; stage dumps need --dump-dir)",
    )
    parser.add_argument("--model", default=defaults.model, help="preset, checkpoint directory or hub id")
    parser.add_argument("--device", default=defaults.device, help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--dtype", default=defaults.dtype, choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--attn", default=defaults.attn_implementation, help="eager, sdpa, flash_attention_2")
    parser.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option (repeatable); VALUE is parsed as JSON when it can be, else kept as a string",
    )
    parser.add_argument(
        "--dump-dir",
        type=Path,
        help="directory parity stage dumps are written under (relative dump_path names only); without it the "
        "server declares neither stage_dumps nor forced_codes",
    )


def create_pipeline(name: str, config: PipelineConfig) -> Pipeline:
    """A registered pipeline, or the hooked reference (with a planted fault) for parity over the wire."""
    if name != HOOKED_REFERENCE and not name.startswith(FAULT_PREFIX):
        return pipelines.create(name, config)
    from qtts_eval.parity.capture import HookedReference
    from qtts_eval.parity.faults import FAULTS

    if name == HOOKED_REFERENCE:
        return HookedReference(config)
    fault = name.removeprefix(FAULT_PREFIX)
    if fault not in FAULTS:
        raise PipelineError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return HookedReference(config, fault=FAULTS[fault]())


def load_host(args: argparse.Namespace) -> Host:
    config = PipelineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        options=parse_options(args.options),
    )
    pipeline = create_pipeline(args.pipeline, config)
    pipeline.load()
    if args.dump_dir is not None:
        args.dump_dir.mkdir(parents=True, exist_ok=True)
    return Host(pipeline, args.pipeline, args.dump_dir)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("serve", help="serve a pipeline over WebSocket (docs/protocol.md)")
    add_pipeline_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--dialect",
        default="qtts",
        choices=("qtts", "openai", "speak"),
        help="qtts: the suite's WebSocket protocol; openai: POST /v1/audio/speech; speak: the plain "
        "/api/v1/speak WebSocket dialect (docs/dialects.md)",
    )
    parser.add_argument(
        "--fault",
        choices=sorted({*OPENAI_FAULTS, *SPEAK_FAULTS}),
        metavar="FAULT",
        help="with --dialect openai or speak: plant one misbehaviour of the server (tests of the clients); "
        f"openai: {', '.join(OPENAI_FAULTS)}; speak: {', '.join(SPEAK_FAULTS)}",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="permit a non-loopback --host (the server has no auth)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        raise PipelineError(
            f"--host {args.host} is not loopback; the server has no authentication, pass --allow-remote "
            "to expose it anyway"
        )
    if args.fault is not None and args.fault not in DIALECT_FAULTS.get(args.dialect, ()):
        raise PipelineError(
            f"--fault {args.fault} is not a fault of --dialect {args.dialect}; "
            + "; ".join(f"{dialect}: {', '.join(faults)}" for dialect, faults in DIALECT_FAULTS.items())
        )
    host = load_host(args)

    def announce(url: str) -> None:
        print(f"listening on {url}", flush=True)  # tests and scripts read the URL from this line

    try:
        if args.dialect == "openai":
            serve_openai(host.pipeline, args.host, args.port, announce, args.fault)
        elif args.dialect == "speak":
            asyncio.run(serve_speak(host.pipeline, args.host, args.port, announce, args.fault))
        else:
            asyncio.run(serve_websocket(host, args.host, args.port, announce))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        host.pipeline.close()
    return 0
