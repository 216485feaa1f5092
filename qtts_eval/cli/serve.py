"""`qtts-eval serve`: expose a registered pipeline over the wire protocol's WebSocket endpoint."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from qtts_eval import pipelines
from qtts_eval.cli.options import parse_options
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import PipelineConfig
from qtts_eval.wire.server import LOOPBACK_HOSTS, Host, serve_websocket

DEFAULT_PORT = 8765


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that build the pipeline being served; shared with `qtts-eval worker`."""
    defaults = PipelineConfig()
    parser.add_argument("--pipeline", default="reference", help="registry name of the pipeline to serve")
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


def load_host(args: argparse.Namespace) -> Host:
    config = PipelineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        options=parse_options(args.options),
    )
    pipeline = pipelines.create(args.pipeline, config)
    pipeline.load()
    return Host(pipeline, args.pipeline)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("serve", help="serve a pipeline over WebSocket (docs/protocol.md)")
    add_pipeline_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
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
    host = load_host(args)

    def announce(url: str) -> None:
        print(f"listening on {url}", flush=True)  # tests and scripts read the URL from this line

    try:
        asyncio.run(serve_websocket(host, args.host, args.port, announce))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        host.pipeline.close()
    return 0
